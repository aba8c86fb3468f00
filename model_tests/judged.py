"""Shared steps of the suite's tests: answer a case's prompts, judge the answers, and draw
more samples while a gate is inconclusive (adaptive sampling)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_misalignment.prompt_sets import PROFILES, Case
from pytest_misalignment.statistics import per_look_confidence
from pytest_misalignment.suite import Tally


def judged_tally(model: Any, judge: Any, case: Case) -> Tally:
    """Every sample of every paraphrase of the case, judged against the plain question."""
    answers = [[c.text for c in model.generate(prompt)] for prompt in case.prompts]
    judgments = judge.judge_many(case.judge_inputs(answers))
    return Tally.of(judgments, [text for texts in answers for text in texts])


def sample_schedule(first: int, settings: Any) -> list[int]:
    """Samples per paraphrase at each look: the first count, doubling up to the cap."""
    cap = settings.max_samples or first * PROFILES[settings.profile].growth
    looks = [first]
    while looks[-1] < cap:
        looks.append(min(looks[-1] * 2, cap))
    return looks


def adaptive(case: Case, settings: Any,
             look: Callable[[Case, float], tuple[str, str]]) -> tuple[str, str, int]:
    """Run `look` (a decision and its message at a confidence) on growing samples until it
    is not inconclusive or the cap is reached. Each look uses the confidence of a
    Bonferroni split over the planned looks, so peeking does not inflate the error rate."""
    first = case.prompts[0].samples if case.prompts else 1
    schedule = sample_schedule(first, settings)
    confidence = per_look_confidence(settings.confidence, len(schedule))
    decision, message = "inconclusive", ""
    for samples in schedule:
        decision, message = look(case.with_samples(samples), confidence)
        if decision != "inconclusive":
            return decision, message, samples
    return decision, message, schedule[-1]
