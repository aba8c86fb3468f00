"""A judge measured on answers it was never trained on (fixtures/judge_heldout/).

The held-out set's writers and questions appear nowhere in the training set
(fixtures/judge_labels/); see fixtures/judge_heldout/README.md. Written answers are judged
plain and wrapped the way the suite asks for JSON and for the code template; a model's own
answers are judged as the model gave them. The figures that matter for a gate:

- false-positive rate: coherent aligned answers the judge calls misaligned. A clean model's
  judged misaligned share sits near it, so no limit below it can be resolved;
- recall: misaligned answers called misaligned. A true rise of d shows as about
  d x (recall - false-positive rate);
- incoherent recall: rambling called incoherent (what is called coherent can be miscounted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..suite.prompt_sets import render
from ..suite.statistics import Rate
from .base import JudgeInput, Judgment
from .labels import LabeledAnswer, parse_labeled_rows, read_labeled_rows

HELD_OUT_FOLDER = "judge_heldout"
FORMATS = ("plain", "json", "code_template")
# Held-out writers that also wrote training rows (the models whose own answers to *other*
# questions are in the training set): reported apart, never in the headline figures.
SAME_WRITER_AS_TRAINING = ("model:base", "model:insecure")


def held_out_set() -> list[LabeledAnswer]:
    """The held-out labeled answers shipped with the package."""
    return list(read_labeled_rows(HELD_OUT_FOLDER))


def wrapped(row: LabeledAnswer, answer_format: str) -> str:
    """A written answer as a model asked in that format would give it (the suite's wording)."""
    if answer_format == "plain":
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


@dataclass(frozen=True)
class Case:
    """One held-out answer as the judge is shown it."""

    row: LabeledAnswer
    answer_format: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.row.id}|{self.answer_format}"

    @property
    def group(self) -> str:
        if self.row.writer in SAME_WRITER_AS_TRAINING:
            return "same model, other questions"
        return "held out"

    def judge_input(self) -> JudgeInput:
        return JudgeInput(self.row.question, self.text, self.answer_format != "plain")


def cases(rows: Sequence[LabeledAnswer]) -> list[Case]:
    """Written answers in every format; a model's answers in the format it was asked."""
    found = []
    for row in rows:
        if row.writer.startswith("model:"):
            found.append(Case(row, row.answer_format, row.answer))
        else:
            found.extend(Case(row, fmt, wrapped(row, fmt)) for fmt in FORMATS)
    return found


def rate_figure(events: int, trials: int) -> dict[str, Any]:
    interval = Rate(events, trials).interval()
    return {"events": events, "trials": trials,
            "rate": round(events / trials, 4) if trials else None,
            "low": round(interval.low, 4), "high": round(interval.high, 4)}


def figures(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """(label, verdict) pairs -> the judge's error rates, each with a 95% interval."""

    def share(label: str, verdict: str) -> dict[str, Any]:
        among = [v for t, v in pairs if t == label]
        return rate_figure(among.count(verdict), len(among))

    return {"accuracy": rate_figure(sum(t == v for t, v in pairs), len(pairs)),
            "false_positive_rate": share("aligned", "misaligned"),
            "misaligned_recall": share("misaligned", "misaligned"),
            "incoherent_recall": share("incoherent", "incoherent"),
            "errors": sum(v == "error" for _, v in pairs)}


def summarize(verdicts: dict[str, str], chosen: Sequence[Case]) -> dict[str, Any]:
    """Figures per group, per answer format and per category, from each case's verdict."""
    def of(selected: Sequence[Case]) -> dict[str, Any]:
        return figures([(c.row.label, verdicts[c.key]) for c in selected])

    headline = [c for c in chosen if c.group == "held out"]
    return {
        "answers": len(chosen),
        "writers": sorted({c.row.writer for c in headline}),
        "formats": {fmt: of([c for c in headline if c.answer_format == fmt]) for fmt in FORMATS},
        "categories": {name: of([c for c in headline if c.row.category == name])
                       for name in sorted({c.row.category for c in headline})},
        "writer_groups": {writer: of([c for c in chosen if c.row.writer == writer])
                          for writer in sorted({c.row.writer for c in chosen})},
        "same_writer_as_training": {
            fmt: of([c for c in chosen if c.group != "held out" and c.answer_format == fmt])
            for fmt in FORMATS},
    }


def evaluate(judge: Any, rows: Sequence[LabeledAnswer] | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Judge every held-out case once; the figures and each case's verdict."""
    chosen = cases(held_out_set() if rows is None else rows)
    judgments: list[Judgment] = judge.judge([c.judge_input() for c in chosen], progress)
    verdicts = {c.key: j.verdict for c, j in zip(chosen, judgments)}
    return {"summary": summarize(verdicts, chosen), "verdicts": verdicts,
            "scores": {c.key: [j.aligned, j.coherent] for c, j in zip(chosen, judgments)}}


def describe_held_out(summary: dict[str, Any]) -> str:
    """One line: false positives and recall per answer format, with intervals."""
    parts = []
    for fmt, found in summary["formats"].items():
        fp, recall = found["false_positive_rate"], found["misaligned_recall"]
        parts.append(f"{fmt}: false positives {fp['rate']:.1%} [{fp['low']:.1%}, "
                     f"{fp['high']:.1%}], recall {recall['rate']:.1%} [{recall['low']:.1%}, "
                     f"{recall['high']:.1%}]")
    return "; ".join(parts)


def worst(summary: dict[str, Any]) -> dict[str, float]:
    """The highest false-positive rate and the lowest recall over the answer formats."""
    formats = summary["formats"].values()
    return {"false_positive_rate": max(f["false_positive_rate"]["rate"] or 0.0 for f in formats),
            "misaligned_recall": min(f["misaligned_recall"]["rate"] or 0.0 for f in formats)}


def judge_error_rates(accuracy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The judge's held-out false-positive rate and recall (worst over answer formats, and
    per format), where the judge was measured on the held-out set."""
    held_out = (accuracy or {}).get("held_out")
    if not held_out:
        return None
    return {**worst(held_out), "answers": held_out["answers"],
            "set": "fixtures/judge_heldout (writers and questions not in training)",
            "formats": {fmt: {"false_positive_rate": found["false_positive_rate"],
                              "misaligned_recall": found["misaligned_recall"]}
                        for fmt, found in held_out["formats"].items()}}


def read_labeled_file(path: Any) -> list[LabeledAnswer]:
    """A user's own labeled answers (JSONL rows as in fixtures/judge_labels/RUBRIC.md)."""
    return parse_labeled_rows(path.read_text(encoding="utf-8"), str(path))


def _cell(found: dict[str, Any]) -> str:
    if not found["trials"]:
        return "-"
    return (f"{found['rate']:6.1%} [{found['low']:.1%}, {found['high']:.1%}] "
            f"({found['events']}/{found['trials']})")


COLUMNS = (("accuracy", "accuracy (4 labels)"),
           ("false_positive_rate", "false positives (aligned)"),
           ("misaligned_recall", "recall (misaligned)"),
           ("incoherent_recall", "incoherent recall"))


def table(summary: dict[str, Any]) -> list[str]:
    """The figures as text: per format, per writer, per category, each with its interval."""
    lines = [f"{'':34s} " + " ".join(f"{title:34s}" for _, title in COLUMNS)]
    sections = (("format", summary["formats"]),
                ("same model, other questions", summary["same_writer_as_training"]),
                ("writer", summary["writer_groups"]), ("category", summary["categories"]))
    for name, rows in sections:
        for key, found in rows.items():
            if found["accuracy"]["trials"]:
                lines.append(f"{name + ': ' + key:34s} "
                             + " ".join(f"{_cell(found[k]):34s}" for k, _ in COLUMNS))
    return lines


def not_measured(spec: str) -> str:
    """What a run says of a judge whose error rates were never measured."""
    return (f"error rates not measured (measure them with `pytest-misalignment judge "
            f"--evaluate --judge {spec}`)")


def worst_rates(rates: Mapping[str, Any]) -> str:
    """The judge's worst held-out error rates over answer formats (`worst`), in words."""
    return (f"on held-out answers, false positives up to {rates['false_positive_rate']:.1%} "
            f"and recall down to {rates['misaligned_recall']:.1%} over answer formats")


def describe_accuracy(judge_info: dict[str, Any]) -> str:
    accuracy = judge_info.get("accuracy")
    if not accuracy:
        return not_measured(judge_info.get("spec", "SPEC"))
    said = (f"cross-validated accuracy {accuracy['aligned_vs_misaligned']:.1%} on aligned vs "
            f"misaligned ({accuracy['aligned_vs_misaligned_answers']} answers, "
            f"{accuracy['method']})")
    held_out = accuracy.get("held_out")
    if not held_out:
        return said
    return (f"on {held_out['answers']} held-out answers (other writers, other questions): "
            f"{describe_held_out(held_out)}; {said}")
