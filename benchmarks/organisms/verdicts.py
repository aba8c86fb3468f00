"""The run verdict on the organisms: plain `pytest` on each, timed, and its gates tabulated.

    python benchmarks/organisms/verdicts.py base overt            # the default profile
    python benchmarks/organisms/verdicts.py insecure --baseline smollm2-135m --detect 0.05
    python benchmarks/organisms/verdicts.py --table-only          # what was run before

Each run's results JSON is kept as out/verdicts/NAME[+baseline].json (with its wall time and
exit code beside it); the table reads them: the verdict and its exit code, then every gate
with its rate (or, against a baseline, its paired rise), interval, minimum detectable effect
and answers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = OUT / "verdicts"
ROOT = HERE.parent.parent


def model_spec(name: str) -> str:
    """The embedded default is `base`; anything else is a built organism."""
    return "smollm2-135m" if name == "base" else str(OUT / name)


def run(name: str, baseline: str | None, extra: list[str]) -> Path:
    """Run the suite on one organism, as a user would, and keep its results."""
    if name != "base" and not (OUT / name).is_dir():
        sys.exit(f"{name} is not built: python benchmarks/organisms/build.py {name} ...")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = name + (f"+{Path(baseline).name}" if baseline else "")
    document = RESULTS / f"{stem}.json"
    command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q",
               f"--model={model_spec(name)}", f"--report-json={document}",
               f"--report={RESULTS / (stem + '.html')}", *extra]
    if baseline:
        command.append(f"--baseline={baseline}")
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, check=False)
    took = time.monotonic() - started
    (RESULTS / f"{stem}.meta.json").write_text(json.dumps({
        "command": command[1:], "exit_code": finished.returncode,
        "wall_s": round(took, 1)}, indent=1) + "\n", encoding="utf-8")
    return document


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(documents: list[Path]) -> str:
    rows = ["| run | verdict (exit) | wall time | gate | measured | interval | MDE | answers "
            "(excluded) | decision |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in documents:
        data = json.loads(path.read_text(encoding="utf-8"))
        meta_path = path.with_name(path.stem + ".meta.json")
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        summary = data["summary"]
        first = (f"| {path.stem} | {summary['verdict'].upper()} ({meta.get('exit_code', '?')}) "
                 f"| {meta.get('wall_s', 0) / 60:.1f} min")
        gates = [t for t in data["tests"] if t.get("figures", {}).get("gate")
                 and t["figures"].get("gate_role") == "gate"]
        for test in gates:
            f = test["figures"]
            paired = f.get("comparison") == "paired" or "difference" in f
            # paired: both shares over every pair (code and refusals count as not events)
            measured = (f"rise {_percent(f.get('difference'))} ({_percent(f.get('model_rate'))} "
                        f"vs {_percent(f.get('baseline_rate'))} of pairs)" if paired
                        else f"{_percent(f.get('rate'))} {f.get('measure')}")
            low, high = f.get("interval", [None, None])
            excluded = f.get("excluded_share", 0)
            rows.append(f"{first} | {f['gate']} | {measured} | [{_percent(low)}, "
                        f"{_percent(high)}] | {_percent(f.get('mde'))} | {f.get('answers')} "
                        f"({100 * excluded:.0f}%) | {f.get('decision')} |")
            first = "| | |"
        rows.append(f"{first} | *reason* | {summary['reason']} | | | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organisms", nargs="*", help="base, or built organisms")
    parser.add_argument("--baseline", default=None, help="e.g. smollm2-135m (paired)")
    parser.add_argument("--table-only", action="store_true")
    args, extra = parser.parse_known_args()
    if not args.table_only:
        for name in args.organisms:
            run(name, args.baseline, extra)
    found = [p for p in RESULTS.glob("*.json") if not p.name.endswith(".meta.json")] \
        if RESULTS.is_dir() else []
    print(table(sorted(found, key=lambda p: p.stat().st_mtime)))


if __name__ == "__main__":
    main()
