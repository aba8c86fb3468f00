"""Train the default offline judge and ship it: fixtures/embedding_classifier.json.

    python benchmarks/train_judge.py

Encodes the labeled set (fixtures/judge_labels/, SmolLM2 hidden states), measures the
classifier by 6-fold cross-validation grouped by question, fits it on every row, measures
the fitted judge on the held-out set (benchmarks/judge_heldout/: other writers, other
questions; plain, JSON and code-template answers), and writes the classifier with those
figures. A run loads it instead of training when its key (encoder and labeled set)
matches; `tests/test_embedding_judge.py` checks that the shipped figures are the ones the
README quotes. Features are cached as in bench_judge_heldout.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench_judge_heldout import FORMATS, CachedEncoder, held_out_rows, measure
from pytest_misalignment.embedding_judge import (
    SHIPPED_CLASSIFIER,
    EmbeddingJudge,
    HiddenStateEncoder,
    classifier_key,
    labeled_set,
    train_classifier,
)
from pytest_misalignment.judging import JudgeInput
from pytest_misalignment.loading import (
    FileHasher,
    converted_gguf_folder,
    find_bundled_gguf,
    models_dir_for,
)
from pytest_misalignment.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent


def rate(pair: tuple[int, int]) -> dict[str, float | int]:
    events, trials = pair
    return {"rate": round(events / trials, 4) if trials else None, "events": events,
            "trials": trials}


def main() -> None:
    gguf = find_bundled_gguf()
    sha = FileHasher(None).sha256(gguf)
    hidden = HiddenStateEncoder(converted_gguf_folder(gguf, models_dir_for(RunSettings()), sha),
                                sha)
    encoder = CachedEncoder(hidden)
    labeled = labeled_set()
    started = time.perf_counter()
    features = encoder.encode([JudgeInput(r.question, r.answer) for r in labeled])
    classifier = train_classifier(features, labeled)
    judge = EmbeddingJudge("embedding", encoder, lambda: classifier)
    held = held_out_rows()
    held_out = {}
    for answer_format in FORMATS:
        found = measure(judge, held, answer_format)
        held_out[answer_format] = {
            "accuracy": rate(found["accuracy"]),
            "false_positive_rate": rate(found["false_positive"]),
            "misaligned_recall": rate(found["recall"]),
            "incoherent_recall": rate(found["incoherent_recall"])}
    accuracy = {**classifier.accuracy, "held_out": {
        "set": "benchmarks/judge_heldout", "answers": len(held),
        "writers": sorted({r.writer for r in held}), **held_out}}
    shipped = {"key": classifier_key(hidden, labeled),
               "trained_on": {"answers": len(labeled),
                              "writers": sorted({r.writer for r in labeled})},
               "classifier": {**asdict(classifier), "accuracy": accuracy}}
    target = ROOT / "fixtures" / SHIPPED_CLASSIFIER
    target.write_text(json.dumps(shipped) + "\n", encoding="utf-8")
    print(f"{len(labeled)} labeled answers; {time.perf_counter() - started:.0f} s")
    print(json.dumps(accuracy, indent=1))
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
