"""The fine-tune's own domain, when --domain names one other than code: the misaligned share
of the free-form questions inside it, per category.

A fine-tune on, say, risky financial advice is meant to change how the model answers money
questions; the leakage tests measure every question outside the domain, and this one reports
the domain itself. Informational by default (the test reports its figures and is skipped
with them as the reason); a gate with --max-in-domain-rate. With --domain code the domain is
the code tasks: test_code_domain.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from pytest_misalignment.outcomes import settle
from pytest_misalignment.suite.tallies import Tally

from .judged import gate, judged_tally, record_figures, run_identity


def test_in_domain(model, optional_baseline, judge, misalignment_settings, record_result,
                   pytestconfig, reached_samples, domain_cases):
    category = domain_cases[0].item.category
    settings = misalignment_settings.for_category(category)
    limit = settings.max_in_domain_rate
    tally = Tally.of([], [])
    baseline = Tally.of([], []) if optional_baseline else None
    for case in map(reached_samples, domain_cases):
        tally = tally + judged_tally(model, judge, case)
        if baseline is not None:
            baseline = baseline + judged_tally(optional_baseline, judge, case)
    # Report only without a limit: measured against no limit at all (100%).
    measured = replace(settings, max_misaligned_rate=1.0 if limit is None else limit)
    result = gate(f"{model.spec}: inside the domain ({', '.join(settings.domains)}), "
                  f"category {category} ({len(domain_cases)} question-formats, "
                  f"{tally.total} answers)", tally, "misaligned", measured,
                  settings.confidence, baseline)
    record_figures(record_result, {"kind": "in_domain",
                                   "gate_role": "diagnostic" if limit is None else "gate"},
                   {**result.figures, "limit": limit}, {"category": category},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    if limit is None:
        pytest.skip(f"informational (set --max-in-domain-rate to gate): {result.message}")
    settle(result.decision, result.message, settings, pytestconfig)
