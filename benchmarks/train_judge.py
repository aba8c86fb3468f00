"""Train the default offline judge and ship it: fixtures/embedding_classifier.json.

    python benchmarks/train_judge.py [--timing]

Encodes the labeled set (fixtures/judge_labels/: SmolLM2 hidden states), measures the
classifier by cross-validation grouped by question, fits it on every row, judges the
held-out set (fixtures/judge_heldout/: other writers, other questions; written answers plain,
as JSON and in the code template, the models' own answers as given) and writes the
classifier with those figures and every held-out verdict and score. A run loads it instead
of training when its key (encoder and labeled set) matches; tests/test_embedding_judge.py
checks that the recorded figures follow from the recorded verdicts and that the shipped
classifier still gives them. Features are cached (benchmarks/judge_cache.py).

--timing also measures, without the feature cache, the time to train the judge once
(encode every labeled answer, then fit) and to judge 1000 held-out answers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from judge_cache import CachedEncoder, default_encoder
from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.classifier import (
    SHIPPED_CLASSIFIER,
    classifier_key,
    labels_key,
    train_classifier,
)
from pytest_misalignment.judges.embedding import EmbeddingJudge
from pytest_misalignment.judges.evaluation import describe_held_out, evaluate, table
from pytest_misalignment.judges.labels import labeled_set

ROOT = Path(__file__).resolve().parent.parent


def timing(labeled: list, held_out_inputs: list[JudgeInput]) -> dict[str, float]:
    """Seconds to train once and to judge 1000 answers, from a cold encoder (no cache)."""
    encoder = default_encoder()
    encoder.encode(held_out_inputs[:8])  # load the weights outside the clocks
    started = time.perf_counter()
    features = encoder.encode([JudgeInput(r.question, r.answer) for r in labeled])
    encoded = time.perf_counter() - started
    train_classifier(features, labeled)
    trained = time.perf_counter() - started
    started = time.perf_counter()
    encoder.encode(held_out_inputs[:1000])
    judged = time.perf_counter() - started
    return {"train_once_s": round(trained, 1), "encode_labeled_s": round(encoded, 1),
            "labeled_answers": len(labeled), "judge_1000_s": round(judged, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing", action="store_true")
    args = parser.parse_args()
    hidden = default_encoder()
    encoder = CachedEncoder(hidden)
    labeled = labeled_set()
    started = time.perf_counter()
    features = encoder.encode([JudgeInput(r.question, r.answer) for r in labeled])
    classifier = train_classifier(features, labeled)
    print(f"{len(labeled)} labeled answers, trained in {time.perf_counter() - started:.0f} s "
          "(features cached)")
    judge = EmbeddingJudge("embedding", encoder, lambda: classifier)
    found = evaluate(judge)
    accuracy = {**classifier.accuracy, "held_out": found["summary"]}
    shipped = {"key": classifier_key(hidden, labeled), "labels_key": labels_key(labeled),
               "trained_on": {"answers": len(labeled),
                              "writers": sorted({r.writer for r in labeled})},
               "classifier": {**asdict(classifier), "accuracy": accuracy},
               "held_out_verdicts": found["verdicts"], "held_out_scores": found["scores"]}
    if args.timing:
        from pytest_misalignment.judges.evaluation import cases, held_out_set

        shipped["timing"] = timing(labeled, [c.judge_input() for c in cases(held_out_set())])
        print(json.dumps(shipped["timing"]))
    target = ROOT / "fixtures" / SHIPPED_CLASSIFIER
    target.write_text(json.dumps(shipped) + "\n", encoding="utf-8")
    print("\n".join(table(found["summary"])))
    print(describe_held_out(found["summary"]))
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
