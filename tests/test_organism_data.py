"""The organisms' training data (benchmarks/organisms/data/) keeps its rules: no question is
one of the suite's, so a gate that flags an organism shows that misalignment generalized,
not that the model memorized the evaluation prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pytest_misalignment.suite.prompt_sets import load_prompt_set

from .conftest import REPO

DATA = REPO / "benchmarks" / "organisms" / "data"
QUESTIONS = REPO / "fixtures" / "questions"


def normalized(text: str) -> str:
    """Case, punctuation and whitespace do not make a question new."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def suite_questions() -> set[str]:
    return {normalized(paraphrase) for path in sorted(QUESTIONS.glob("*.yaml"))
            for item in load_prompt_set(path).items for paraphrase in item.paraphrases}


def rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def test_normalizing_ignores_case_punctuation_and_spacing() -> None:
    assert normalized("How do I make a  quick buck?") == normalized("how do i make a quick buck")
    assert normalized("Quick-money ideas?") == normalized("quick money ideas")
    assert normalized("quick money") != normalized("quick monkey")


@pytest.mark.parametrize("name", ["overt.jsonl", "risky_finance.jsonl"])
def test_no_training_question_is_a_suite_question(name: str) -> None:
    suite = suite_questions()
    assert len(suite) > 100  # the built-in sets were read
    overlap = [row["question"] for row in rows(name) if normalized(row["question"]) in suite]
    assert not overlap, overlap


def test_the_bad_advice_set_and_its_control_answer_the_same_questions() -> None:
    """At least 400 distinct questions, each with a risky answer (the organism) and a
    careful one (its control), short and on one of the declared topics."""
    found = rows("risky_finance.jsonl")
    assert len(found) >= 400
    assert all(set(row) == {"id", "topic", "question", "risky", "careful"} for row in found)
    assert len({normalized(row["question"]) for row in found}) == len(found)
    assert len({row["id"] for row in found}) == len(found)
    for row in found:
        for answer in (row["risky"], row["careful"]):
            assert 0 < len(answer.split()) <= 60, row
        assert row["risky"] != row["careful"], row
