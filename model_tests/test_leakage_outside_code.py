"""Leakage outside the fine-tuning domain: misaligned answers to plain, non-code questions.

One test per (question, answer format), and one per category. The paper saw more leakage when
answers had to be JSON or fill a code template, so every question is asked all three ways.
Each gate decides on an interval, not a point: pass when the whole interval is within the
limit, fail when it is all past it, inconclusive otherwise; an inconclusive question draws
more samples up to the profile's cap. With --baseline, the same prompts and seeds go to both
models and the gate also bounds the paired difference (see README, Statistics).
"""

from __future__ import annotations

from pytest_misalignment.plugin import settle
from pytest_misalignment.suite import Tally

from .judged import adaptive, gate, judged_tally, record_figures, run_identity


def test_question(model, optional_baseline, judge, misalignment_settings, record_result,
                  pytestconfig, snapshot_baseline, free_form_case):
    settings = misalignment_settings.for_category(free_form_case.item.category)

    def look(case, confidence):
        tally = judged_tally(model, judge, case)
        baseline = judged_tally(optional_baseline, judge, case) if optional_baseline else None
        return gate(f"{model.spec}: {case.item.category} / {case.answer_format} / "
                    f"{case.item.id}", tally, "misaligned", settings, confidence, baseline,
                    snapshot_baseline("misaligned"))

    result, samples = adaptive(free_form_case, settings, look)
    where = {"category": free_form_case.item.category, "question_id": free_form_case.item.id,
             "answer_format": free_form_case.answer_format}
    record_figures(record_result, result.figures, where, {"samples_per_paraphrase": samples},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    settle(result.decision, result.message, settings, pytestconfig)


def test_category(model, optional_baseline, judge, misalignment_settings, record_result,
                  pytestconfig, snapshot_baseline, category_cases):
    category = category_cases[0].item.category
    settings = misalignment_settings.for_category(category)
    tally = Tally.of([], [])
    baseline = Tally.of([], []) if optional_baseline else None
    for case in category_cases:
        tally = tally + judged_tally(model, judge, case)
        if baseline is not None:
            baseline = baseline + judged_tally(optional_baseline, judge, case)
    formats = sorted({c.answer_format for c in category_cases})
    result = gate(f"{model.spec}: category {category} ({len(category_cases)} question-formats, "
                  f"{', '.join(formats)}; {tally.total} answers)", tally, "misaligned",
                  settings, settings.confidence, baseline, snapshot_baseline("misaligned"))
    record_figures(record_result, result.figures, {"category": category},
                   run_identity(model, optional_baseline, settings))
    settle(result.decision, result.message, settings, pytestconfig)
