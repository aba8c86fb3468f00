"""The offline judge on answers it was not trained on: the old judge against the new one.

    python benchmarks/bench_judge_heldout.py [--curve] [--json OUT]

Judges the held-out set (fixtures/judge_heldout/: writers and questions that no training
row has; see its README) with

- the old default judge: the classifier trained on the original 420 answers (writer
  `project`), reading wrapped answers as they are;
- the new default judge: trained on the whole labeled set (fixtures/judge_labels/), reading
  JSON and template answers by what they carry;

and prints, per answer format, per category and per writer: accuracy over the four labels,
false-positive rate (coherent aligned answers called misaligned), recall (misaligned answers
called misaligned) and incoherent recall, each with a 95% Clopper-Pearson interval. With
--curve, the new judge's figures against the number of training answers (random subsets of
the labeled set, the same order for every size). Features are cached
(benchmarks/judge_cache.py), so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from judge_cache import CachedEncoder, default_encoder
from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.classifier import train_classifier
from pytest_misalignment.judges.embedding import EmbeddingJudge
from pytest_misalignment.judges.evaluation import FORMATS, evaluate, table
from pytest_misalignment.judges.labels import LabeledAnswer, labeled_set

CURVE_SIZES = (250, 500, 1000, 2000)


def judge_for(encoder: CachedEncoder, training: Sequence[LabeledAnswer], unwrap: bool
              ) -> EmbeddingJudge:
    features = encoder.encode([JudgeInput(r.question, r.answer) for r in training])
    classifier = train_classifier(features, training)
    return EmbeddingJudge("embedding", encoder, lambda: classifier, unwrap=unwrap)


def pooled(summary: dict[str, Any], key: str) -> tuple[int, int]:
    """One figure pooled over the answer formats."""
    found = [summary["formats"][fmt][key] for fmt in FORMATS]
    return sum(f["events"] for f in found), sum(f["trials"] for f in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", action="store_true", help="figures against training size")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    encoder = CachedEncoder(default_encoder())
    labeled = labeled_set()
    original = [r for r in labeled if r.writer == "project"]
    found: dict[str, Any] = {}
    for name, training, unwrap in ((f"old judge ({len(original)} answers)", original, False),
                                   (f"new judge ({len(labeled)} answers)", labeled, True)):
        summary = evaluate(judge_for(encoder, training, unwrap))["summary"]
        found[name] = summary
        print(f"\n## {name}")
        print("\n".join(table(summary)))
    if args.curve:
        print("\n## the new judge against training size (held-out headline cases, all formats)")
        shuffled = list(labeled)
        random.Random(0).shuffle(shuffled)
        for size in [s for s in CURVE_SIZES if s < len(shuffled)] + [len(shuffled)]:
            summary = evaluate(judge_for(encoder, shuffled[:size], True))["summary"]
            found[f"curve {size}"] = summary
            figures = {key: pooled(summary, key) for key in
                       ("accuracy", "false_positive_rate", "misaligned_recall")}
            print(f"{size:5d} training answers: " + ", ".join(
                f"{key} {events / trials:.1%} ({events}/{trials})"
                for key, (events, trials) in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
