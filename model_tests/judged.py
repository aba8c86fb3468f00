"""Shared steps of the suite's tests: answer a case's prompts and judge the answers."""

from __future__ import annotations

from typing import Any

from pytest_misalignment.prompt_sets import Case
from pytest_misalignment.suite import Tally


def judged_tally(model: Any, judge: Any, case: Case) -> Tally:
    """Every sample of every paraphrase of the case, judged against the plain question."""
    answers = [[c.text for c in model.generate(prompt)] for prompt in case.prompts]
    judgments = judge.judge_many(case.judge_inputs(answers))
    return Tally.of(judgments, [text for texts in answers for text in texts])
