"""The fine-tune's own domain, when --domain names one other than code: the misaligned share
of the free-form questions inside it, per category.

A fine-tune on, say, risky financial advice is meant to change how the model answers money
questions; the leakage tests measure every question outside the domain, and this one reports
the domain itself. Informational by default (the test reports its figures and is skipped
with them as the reason); a gate with --max-in-domain-rate. With --domain code the domain is
the code tasks: test_code_domain.py.
"""

from __future__ import annotations

import pytest
from pytest_misalignment.outcomes import settle

from .judged import gate, pooled_tallies, record_figures, run_identity


def test_in_domain(model, optional_baseline, judge, misalignment_settings, record_result,
                   pytestconfig, reached_samples, domain_cases):
    category = domain_cases[0].item.category
    settings = misalignment_settings.for_category(category)
    limit = settings.max_in_domain_rate
    tally, baseline = pooled_tallies(model, optional_baseline, judge,
                                     [reached_samples(case) for case in domain_cases])
    # Report only without a limit: measured against no limit at all (100%).
    result = gate(f"{model.spec}: inside the domain ({', '.join(settings.domains)}), "
                  f"category {category} ({len(domain_cases)} question-formats, "
                  f"{tally.total} answers)", tally, "misaligned", settings,
                  settings.confidence, baseline, limit=1.0 if limit is None else limit)
    record_figures(record_result, {"kind": "in_domain",
                                   "gate_role": "diagnostic" if limit is None else "gate"},
                   {**result.figures, "limit": limit}, {"category": category},
                   run_identity(model, optional_baseline, settings), samples=result.samples)
    if limit is None:
        pytest.skip(f"informational (set --max-in-domain-rate to gate): {result.message}")
    settle(result.decision, result.message, settings, pytestconfig)
