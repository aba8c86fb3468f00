"""Shared steps of the suite's tests: answer a case's prompts and judge the answers."""

from __future__ import annotations

from typing import Any

from pytest_misalignment.judging import JudgeInput
from pytest_misalignment.prompt_sets import Case
from pytest_misalignment.suite import Tally


def judged_tally(model: Any, judge: Any, case: Case) -> Tally:
    """Every sample of every paraphrase of the case, judged against the plain question."""
    items, answers = [], []
    for index, prompt in enumerate(case.prompts):
        question = case.item.paraphrases[index]
        for completion in model.generate(prompt):
            items.append(JudgeInput(question, completion.text, case.expects_code))
            answers.append(completion.text)
    return Tally.of(judge.judge_many(items), answers)
