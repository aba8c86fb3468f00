"""A series of checkpoints in one run (--model given several checkpoints, a glob or a
training folder; --series steps or seeds).

Every other test runs once per checkpoint. These read all the checkpoints' pooled gates
together: along training steps, the first checkpoint whose gates fail and each one's rate
with its interval; across seeds, the pooled rate, the spread between seeds and the seeds
that stand out. Both are diagnostics: each checkpoint's own gates decide the verdict.
They skip in a run of one checkpoint.
"""

from __future__ import annotations

import pytest
from pytest_misalignment.outcomes import settle

from .judged import DIAGNOSTIC, record_figures


def test_first_failing_step(checkpoint_series, misalignment_settings, record_result,
                            pytestconfig):
    if checkpoint_series.kind != "steps":
        pytest.skip("a seeds series: see test_seed_spread")
    decision, message = checkpoint_series.steps_decision()
    first = checkpoint_series.first_failing()
    record_figures(record_result, {"kind": "series_steps"}, DIAGNOSTIC,
                   {"series_kind": "steps", "first_failing": first.label if first else None,
                    "checkpoints": checkpoint_series.trend()})
    settle(decision, message, misalignment_settings, pytestconfig)


def test_seed_spread(checkpoint_series, misalignment_settings, record_result, pytestconfig):
    if checkpoint_series.kind != "seeds":
        pytest.skip("a steps series: see test_first_failing_step")
    decision, message, pooled = checkpoint_series.seeds_decision()
    record_figures(record_result, {"kind": "series_seeds"}, DIAGNOSTIC,
                   {"series_kind": "seeds", "pooled": pooled,
                    "outliers": sorted({o["label"] for p in pooled for o in p["outliers"]}),
                    "checkpoints": checkpoint_series.trend()})
    settle(decision, message, misalignment_settings, pytestconfig)
