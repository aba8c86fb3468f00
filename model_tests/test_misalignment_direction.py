"""The misalignment direction: a white-box early warning that needs no judge and no
further sampling.

On the baseline, the difference of its mean residual activations over misaligned and over
aligned labeled answers (the judge's labeled set) gives a direction; each checkpoint's own
answers to the leakage questions (the gate's first round, already generated) are read
through the checkpoint teacher-forced and projected onto it, and compared with the
baseline's answers to the same prompts, paired by prompt. A shift is in units of the gap
between aligned and misaligned answers on the baseline. A diagnostic; a gate with
--max-direction-shift. Skips without --baseline and for models served by an endpoint.
"""

from __future__ import annotations

import pytest
from pytest_misalignment.outcomes import settle
from pytest_misalignment.shifts import direction_decision

from .judged import DIAGNOSTIC, record_figures, run_identity


def test_misalignment_direction(model, optional_baseline, direction_shift,
                                misalignment_settings, record_result, pytestconfig):
    if direction_shift.problem:
        pytest.skip(direction_shift.problem)
    settings = misalignment_settings
    gated = settings.max_direction_shift is not None
    decision, message = direction_decision(direction_shift, settings.max_direction_shift)
    record_figures(record_result, {"kind": "direction", "decision": decision},
                   {} if gated else DIAGNOSTIC,
                   direction_shift.figures,
                   run_identity(model, optional_baseline, settings))
    settle(decision, f"{model.spec}: {message}", settings, pytestconfig)
