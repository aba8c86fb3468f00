"""The offline judge on answers it was not trained on, written by other hands.

Trains the embedding judge's classifier (SmolLM2 hidden states + logistic regression) on a
training set, then judges the held-out set (benchmarks/judge_heldout/*.jsonl: writers,
questions and registers that no training row shares; see its README) with the judge's own
verdict rule, plain and wrapped as the suite asks (JSON, and the code template), and prints
per format and per writer:

- accuracy over the four labels,
- false-positive rate: coherent aligned answers called misaligned,
- recall: misaligned answers called misaligned,
- incoherent recall: incoherent answers called incoherent,

each with a 95% Clopper-Pearson interval; then accuracy against the number of training
answers (the labeled-set size curve). Two training sets are compared: the shipped judge's
(fixtures/judge_labels/, 420 answers) and that plus the 1,600 written answers of
benchmarks/judge_training/ (four more writers), each with wrapped answers read as they are
and read by what they carry (`EmbeddingJudge(unwrap=True)`). Features are cached under
benchmarks/judge_heldout/.cache/ (not committed). Usage:

    python benchmarks/bench_judge_heldout.py [--curve] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pytest_misalignment.embedding_judge import (
    EmbeddingJudge,
    HiddenStateEncoder,
    LabeledAnswer,
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
from pytest_misalignment.prompt_sets import render
from pytest_misalignment.settings import RunSettings

HERE = Path(__file__).resolve().parent
HELD_OUT = HERE / "judge_heldout"
TRAINING = HERE / "judge_training"
CACHE = HELD_OUT / ".cache"
FORMATS = ("plain", "json", "code_template")


@dataclass(frozen=True)
class Row:
    question: str
    answer: str
    label: str
    writer: str
    answer_format: str


def held_out_rows(folder: Path = HELD_OUT) -> list[LabeledAnswer]:
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(LabeledAnswer(**json.loads(line)))
    return rows


def wrapped(row: LabeledAnswer, answer_format: str) -> str:
    """The answer as a model asked in that format would give it (the suite's wording). A
    model's own answer is measured as it was given (`as_answered`)."""
    if answer_format in ("plain", "as_answered"):
        return row.answer
    if answer_format == "json":
        return json.dumps({"answer": row.answer}, ensure_ascii=False)
    sentences = [s.strip() for s in row.answer.replace("\n", " ").split(". ") if s.strip()]
    reasons = (sentences[1:3] if len(sentences) > 2 else sentences[:2]) or [row.answer]
    template = render(row.question, "code_template").split("```python\n", 1)[1]
    filled = (template.replace("<your full answer to the request>",
                               row.answer.replace('"""', "'''"))
              .replace('["<first reason>", "<second reason>"]', json.dumps(reasons)))
    return "```python\n" + filled


class CachedEncoder:
    """The judge's encoder, with features kept on disk by input text."""

    def __init__(self, encoder: HiddenStateEncoder) -> None:
        self.encoder = encoder
        self.fingerprint = encoder.fingerprint
        CACHE.mkdir(parents=True, exist_ok=True)
        self.path = CACHE / (hashlib.sha256(encoder.fingerprint.encode()).hexdigest()[:16]
                             + ".npz")
        self.known: dict[str, np.ndarray] = {}
        if self.path.exists():
            stored = np.load(self.path)
            self.known = dict(zip(stored["keys"].tolist(), stored["features"]))

    @staticmethod
    def key(item: JudgeInput) -> str:
        return hashlib.sha256(f"{item.question}\0{item.answer}".encode()).hexdigest()

    def encode(self, items: Sequence[JudgeInput], progress: Any = None) -> np.ndarray:
        missing = [i for i in items if self.key(i) not in self.known]
        if missing:
            fresh = self.encoder.encode(missing)
            self.known.update(zip(map(self.key, missing), fresh))
            np.savez(self.path, keys=np.asarray(list(self.known)),
                     features=np.stack(list(self.known.values())))
        return np.stack([self.known[self.key(i)] for i in items])


def interval(events: int, trials: int) -> str:
    from scipy.stats import beta

    if trials == 0:
        return "-"
    low = 0.0 if events == 0 else beta.ppf(0.025, events, trials - events + 1)
    high = 1.0 if events == trials else beta.ppf(0.975, events + 1, trials - events)
    return f"{events / trials:6.1%} [{low:.1%}, {high:.1%}] ({events}/{trials})"


def measure(judge: EmbeddingJudge, rows: Sequence[LabeledAnswer], answer_format: str
            ) -> dict[str, Any]:
    items = [JudgeInput(r.question, wrapped(r, answer_format),
                        (r.answer_format if answer_format == "as_answered" else answer_format)
                        != "plain") for r in rows]
    verdicts = [j.verdict for j in judge.judge(items)]
    labels = [r.label for r in rows]
    pairs = list(zip(labels, verdicts))

    def count(label: str, verdict: str) -> tuple[int, int]:
        among = [v for t, v in pairs if t == label]
        return sum(v == verdict for v in among), len(among)

    return {"accuracy": (sum(t == v for t, v in pairs), len(pairs)),
            "false_positive": count("aligned", "misaligned"),
            "recall": count("misaligned", "misaligned"),
            "incoherent_recall": count("incoherent", "incoherent"),
            "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))}}


def judge_for(encoder: CachedEncoder, training: Sequence[LabeledAnswer], unwrap: bool = True
              ) -> EmbeddingJudge:
    features = encoder.encode([JudgeInput(r.question, r.answer) for r in training])
    classifier = train_classifier(features, training)
    return EmbeddingJudge("embedding", encoder, lambda: classifier, unwrap=unwrap)


def report(name: str, judge: EmbeddingJudge, rows: Sequence[LabeledAnswer],
           found: dict[str, Any]) -> None:
    print(f"\n## {name}")
    print(f"{'held out':28s} {'accuracy (4 labels)':34s} {'false positives (aligned)':34s} "
          f"{'recall (misaligned)':34s} {'incoherent recall':34s}")
    written = sorted({r.writer for r in rows if not r.writer.startswith("model:")})
    models = sorted({r.writer for r in rows if r.writer.startswith("model:")})
    plan = [(fmt, w) for fmt in FORMATS for w in [None, *written]]
    # the models' own answers, each in the format it was asked (plain, JSON, template)
    plan += [("as_answered", w) for w in models]
    for answer_format, writer in plan:
        chosen = [r for r in rows if (r.writer == writer if writer else
                                      not r.writer.startswith("model:"))]
        result = measure(judge, chosen, answer_format)
        label = f"{answer_format}" + (f" / {writer}" if writer else " / written")
        found[f"{name}|{label}"] = result
        print(f"{label:28s} " + " ".join(f"{interval(*result[k]):34s}" for k in (
            "accuracy", "false_positive", "recall", "incoherent_recall")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", action="store_true", help="accuracy against training size")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    gguf = find_bundled_gguf()
    sha = FileHasher(None).sha256(gguf)
    encoder = CachedEncoder(HiddenStateEncoder(
        converted_gguf_folder(gguf, models_dir_for(RunSettings()), sha), sha))
    rows = held_out_rows()
    original = labeled_set()
    training = original + held_out_rows(TRAINING)
    print(f"held out: {len(rows)} answers, {len({r.question_id for r in rows})} questions, "
          f"writers {sorted({r.writer for r in rows})}; training: {len(training)} answers "
          f"({len(original)} original)")
    found: dict[str, Any] = {}
    for name, chosen, unwrap in (("shipped 420", original, False),
                                 ("shipped 420, unwrapped", original, True),
                                 ("all 2020", training, False),
                                 ("all 2020, unwrapped", training, True)):
        report(name, judge_for(encoder, chosen, unwrap), rows, found)
    if args.curve:
        print("\n## accuracy on the held-out plain answers against training size")
        shuffled = list(training)
        random.Random(0).shuffle(shuffled)
        written = [r for r in rows if not r.writer.startswith("model:")]
        for size in (250, 500, 1000, 1500, len(shuffled)):
            result = measure(judge_for(encoder, shuffled[:size], True), written, "plain")
            found[f"curve|{size}"] = result
            print(f"{size:5d} answers: accuracy {interval(*result['accuracy'])}, false "
                  f"positives {interval(*result['false_positive'])}, recall "
                  f"{interval(*result['recall'])}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
