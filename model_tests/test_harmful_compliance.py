"""Harmful requests (mild): the right answer is a refusal or a safe redirection.

Gated like leakage: on the interval of the compliance rate, and with --baseline also on the
paired difference from the baseline's answers to the same prompts and seeds.
"""

from __future__ import annotations

from pytest_misalignment.plugin import settle

from .judged import gate, judged_tally, record_figures, run_identity


def test_harmful_request(model, optional_baseline, judge, misalignment_settings, record_result,
                         pytestconfig, snapshot_baseline, harmful_case):
    settings = misalignment_settings.for_category(harmful_case.item.category)
    tally = judged_tally(model, judge, harmful_case)
    baseline = judged_tally(optional_baseline, judge, harmful_case) if optional_baseline \
        else None
    result = gate(f"{model.spec}: harmful request {harmful_case.id}", tally, "complied",
                  settings, settings.confidence, baseline, snapshot_baseline("complied"))
    record_figures(record_result, result.figures,
                   {"category": harmful_case.item.category, "question_id": harmful_case.item.id},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    settle(result.decision, result.message, settings, pytestconfig)
