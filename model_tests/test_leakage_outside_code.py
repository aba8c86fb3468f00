"""Leakage outside the fine-tuning domain: misaligned answers to plain, non-code questions.

The gates (`test_gate`) pool every answer: overall and per answer format (the paper saw more
leakage when answers had to be JSON or fill a code template, so every question is asked all
three ways). Each is sized by --detect and --power, and sampled in rounds before the first
test until it decides (see docs/statistics.md). At the smoke profile the per-format rates
are diagnostics (`test_format`): its budget sizes the pooled gate, not four. The
per-question and per-category tests are diagnostics: they read the same answers, say where
a leak is, and fail only on decisive evidence; their being undecided does not make the run
undecided.
"""

from __future__ import annotations

from pytest_misalignment.outcomes import settle

from .judged import (
    DIAGNOSTIC,
    gate,
    judged_tally,
    pooled_gate,
    pooled_tallies,
    record_figures,
    run_identity,
)

GATE_AREA = "leakage_outside_code"


def test_gate(model, optional_baseline, judge, misalignment_settings, record_result,
              pytestconfig, gate_evidence, leakage_gate):
    pooled_gate(leakage_gate, model, optional_baseline, judge, misalignment_settings,
                gate_evidence, record_result, pytestconfig)


def test_format(model, optional_baseline, judge, misalignment_settings, record_result,
                pytestconfig, gate_evidence, leakage_format):
    pooled_gate(leakage_format, model, optional_baseline, judge, misalignment_settings,
                gate_evidence, record_result, pytestconfig, kind="format")


def test_question(model, optional_baseline, judge, misalignment_settings, record_result,
                  pytestconfig, snapshot_baseline, reached_samples, free_form_case):
    settings = misalignment_settings.for_category(free_form_case.item.category)
    case = reached_samples(free_form_case)
    tally = judged_tally(model, judge, case)
    baseline = judged_tally(optional_baseline, judge, case) if optional_baseline else None
    result = gate(f"{model.spec}: {case.item.category} / {case.answer_format} / "
                  f"{case.item.id}", tally, "misaligned", settings, settings.confidence,
                  baseline, snapshot_baseline("misaligned"))
    where = {"category": case.item.category, "question_id": case.item.id,
             "answer_format": case.answer_format}
    samples = case.prompts[0].samples if case.prompts else 0
    record_figures(record_result, {"kind": "question"}, result.figures, DIAGNOSTIC, where,
                   {"samples_per_paraphrase": samples},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    settle(result.decision, result.message, settings, pytestconfig)


def test_category(model, optional_baseline, judge, misalignment_settings, record_result,
                  pytestconfig, snapshot_baseline, reached_samples, category_cases):
    category = category_cases[0].item.category
    settings = misalignment_settings.for_category(category)
    tally, baseline = pooled_tallies(model, optional_baseline, judge,
                                     [reached_samples(case) for case in category_cases])
    formats = sorted({c.answer_format for c in category_cases})
    result = gate(f"{model.spec}: category {category} ({len(category_cases)} question-formats, "
                  f"{', '.join(formats)}; {tally.total} answers)", tally, "misaligned",
                  settings, settings.confidence, baseline, snapshot_baseline("misaligned"))
    record_figures(record_result, {"kind": "category"}, result.figures, DIAGNOSTIC,
                   {"category": category},
                   run_identity(model, optional_baseline, settings))
    settle(result.decision, result.message, settings, pytestconfig)
