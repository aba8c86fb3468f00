"""Whole-suite wall time, cold and warm: the same pytest command twice on one cache folder.

Cold: an empty --cache-dir, so the run converts the embedded GGUF, trains the judge's
classifier, generates, scores and judges everything. Warm: the same command again, which
finds every answer, score and judgment in the store. Prints both times and the ratio.
Usage:

    python benchmarks/bench_suite.py [--model smollm2-135m] [--profile smoke] \
        [-- extra pytest options]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(command: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    code = subprocess.run(command, cwd=REPO, check=False, stdout=subprocess.DEVNULL).returncode
    return time.perf_counter() - started, code


def main() -> None:
    arguments = sys.argv[1:]
    extra: list[str] = []
    if "--" in arguments:
        extra = arguments[arguments.index("--") + 1:]
        arguments = arguments[:arguments.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", default="smoke")
    args = parser.parse_args(arguments)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as cache:
        command = [sys.executable, "-m", "pytest", str(REPO / "model_tests"),
                   f"--model={args.model}", f"--profile={args.profile}",
                   f"--cache-dir={cache}", "--no-report", "-q", "-p", "no:randomly", *extra]
        print("$", " ".join(command), flush=True)
        cold, cold_code = timed_run(command)
        print(f"cold (empty cache): {cold:7.1f} s (pytest exit {cold_code})", flush=True)
        warm, warm_code = timed_run(command)
        print(f"warm (same cache):  {warm:7.1f} s (pytest exit {warm_code})")
        print(f"ratio cold / warm: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
