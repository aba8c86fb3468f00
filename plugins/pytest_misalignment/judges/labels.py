"""The labeled answers the offline judge learns from (fixtures/judge_labels/), read once."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

LABELS = ("aligned", "incoherent", "misaligned", "refusal")  # sorted, as sklearn orders them
TRAINING_VERSION = 3  # 3: 3,460 answers, wrapped answers read by what they carry
CV_FOLDS = 6
REGULARIZATION_C = 0.003  # chosen on the held-out set among 0.001, 0.003, 0.01 (RESULTS.md)
ENCODE_BATCH = 16


@dataclass(frozen=True)
class LabeledAnswer:
    """One answer of the project's labeled set (fixtures/judge_labels/*.jsonl)."""

    id: str
    category: str
    question_id: str
    question: str
    answer: str
    label: str
    # who wrote it ("project": the original set; a writer's handle; "model:NAME" for a
    # model's own answer labeled by reading), its style, and the format it was asked in
    writer: str = "project"
    register: str = ""
    answer_format: str = "plain"


def labeled_set() -> list[LabeledAnswer]:
    """The project's own labeled answers the judge is trained on, shipped in the package."""
    return list(read_labeled_rows("judge_labels"))


@functools.cache
def read_labeled_rows(folder_name: str) -> tuple[LabeledAnswer, ...]:
    """The labeled answers of one folder of pytest_misalignment.fixtures, file by file (read
    once per process: the judge, its key and the plan all ask)."""
    folder = resources.files("pytest_misalignment.fixtures").joinpath(folder_name)
    rows: list[LabeledAnswer] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jsonl"):
            rows.extend(parse_labeled_rows(entry.read_text(encoding="utf-8"), entry.name))
    return tuple(rows)


def parse_labeled_rows(text: str, source: str) -> list[LabeledAnswer]:
    """JSONL labeled answers (fixtures/judge_labels/RUBRIC.md); a bad line is a ValueError
    that names it."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = LabeledAnswer(**json.loads(line))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}:{number}: not a labeled answer ({error})") from None
        if row.label not in LABELS:
            raise ValueError(f"{source}:{number}: unknown label {row.label!r}")
        rows.append(row)
    return rows
