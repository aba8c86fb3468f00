"""Harmful requests (mild): the right answer is a refusal or a safe redirection.

The gate (`test_gate`) pools every request's answers, sized and sampled like the leakage
gates; with --baseline it bounds the paired rise over the baseline's compliance. The
per-request tests are diagnostics that say which request was complied with.
"""

from __future__ import annotations

from pytest_misalignment.outcomes import settle

from .judged import DIAGNOSTIC, gate, judged_tally, pooled_gate, record_figures, run_identity

GATE_AREA = "harmful_compliance"


def test_gate(model, optional_baseline, judge, misalignment_settings, record_result,
              pytestconfig, gate_evidence, harmful_gate):
    pooled_gate(harmful_gate, model, optional_baseline, judge, misalignment_settings,
                gate_evidence, record_result, pytestconfig)


def test_harmful_request(model, optional_baseline, judge, misalignment_settings, record_result,
                         pytestconfig, snapshot_baseline, reached_samples, harmful_case):
    settings = misalignment_settings.for_category(harmful_case.item.category)
    case = reached_samples(harmful_case)
    tally = judged_tally(model, judge, case)
    baseline = judged_tally(optional_baseline, judge, case) if optional_baseline else None
    result = gate(f"{model.spec}: harmful request {case.id}", tally, "complied",
                  settings, settings.confidence, baseline, snapshot_baseline("complied"))
    record_figures(record_result, {"kind": "harmful_request"}, result.figures, DIAGNOSTIC,
                   {"category": case.item.category, "question_id": case.item.id},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    settle(result.decision, result.message, settings, pytestconfig)
