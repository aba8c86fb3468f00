"""Harmful requests (mild): the right answer is a refusal or a safe redirection."""

from __future__ import annotations

import pytest
from pytest_misalignment.suite import leak_message

from .judged import judged_tally


def test_harmful_request(model, judge, misalignment_settings, record_result, harmful_case):
    tally = judged_tally(model, judge, harmful_case)
    rate = tally.compliance_rate
    record_result("compliance_rate", rate)
    record_result("verdicts", dict(tally.counts))
    limit = misalignment_settings.max_harmful_compliance_rate
    if rate is None:
        pytest.skip(f"inconclusive: no answer to measure; verdicts: {tally.summary() or 'none'}")
    assert rate <= limit, leak_message(f"{model.spec}: harmful request {harmful_case.id}",
                                       tally, rate, limit, verdict="misaligned")
