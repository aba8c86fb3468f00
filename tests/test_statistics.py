"""The statistics of gating: intervals, their coverage and monotonicity, and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_misalignment.statistics import (
    Rate,
    decide_at_most,
    decide_not_worse,
    newcombe_difference,
    per_look_confidence,
)

counts = st.integers(min_value=1, max_value=400).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n)))


@given(counts)
def test_interval_holds_the_point_and_stays_in_range(kn: tuple[int, int]) -> None:
    k, n = kn
    interval = Rate(k, n).interval()
    assert 0.0 <= interval.low <= k / n <= interval.high <= 1.0


@given(counts)
def test_interval_moves_up_with_more_events(kn: tuple[int, int]) -> None:
    k, n = kn
    if k < n:
        lower, higher = Rate(k, n).interval(), Rate(k + 1, n).interval()
        assert higher.low >= lower.low and higher.high >= lower.high


@given(counts, st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_higher_confidence_gives_a_wider_interval(kn: tuple[int, int], confidence: float) -> None:
    k, n = kn
    narrow, wide = Rate(k, n).interval(confidence), Rate(k, n).interval(0.995)
    assert wide.low <= narrow.low and wide.high >= narrow.high


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=2, max_value=10))
def test_more_trials_at_the_same_rate_narrow_the_interval(k: int, factor: int) -> None:
    n = 2 * k + 3
    small, large = Rate(k, n).interval(), Rate(k * factor, n * factor).interval()
    assert large.high - large.low < small.high - small.low


@settings(deadline=None)
@given(counts, st.floats(min_value=0.0, max_value=1.0))
def test_decisions_agree_with_the_point_estimate(kn: tuple[int, int], limit: float) -> None:
    k, n = kn
    decision = decide_at_most(Rate(k, n), limit)
    if decision == "pass":
        assert k / n <= limit
    if decision == "fail":
        assert k / n > limit


@pytest.mark.parametrize(("p", "n"), [(0.05, 40), (0.2, 40), (0.5, 40), (0.1, 200), (0.3, 200)])
def test_gate_interval_covers_at_least_nominal(p: float, n: int) -> None:
    # Clopper-Pearson never covers less than 95% (up to simulation noise); the Wald interval
    # at p=0.05, n=40 covers ~86%, Wilson at p=0.2, n=40 ~92%.
    draws = np.random.default_rng(0).binomial(n, p, size=2000)
    covered = np.mean([p in Rate(int(k), n).interval(0.95) for k in draws])
    assert covered >= 0.94, covered


def test_one_sample_never_decides() -> None:
    # Wilson's interval for 1 of 1 is [21%, 100%], which would fail a 20% limit on one answer.
    assert Rate(1, 1).interval(0.95, "wilson").low > 0.2
    assert decide_at_most(Rate(1, 1), 0.2) == "inconclusive"
    assert decide_at_most(Rate(0, 1), 0.2) == "inconclusive"


@pytest.mark.parametrize(("p1", "p2", "n"), [(0.1, 0.1, 60), (0.3, 0.1, 60), (0.2, 0.25, 150)])
def test_newcombe_coverage_is_near_nominal(p1: float, p2: float, n: int) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.binomial(n, p1, size=1500), rng.binomial(n, p2, size=1500)
    covered = np.mean([(p1 - p2) in newcombe_difference(Rate(int(x), n), Rate(int(y), n))
                       for x, y in zip(a, b)])
    assert covered >= 0.93, covered


def test_three_outcomes() -> None:
    assert decide_at_most(Rate(0, 60), 0.2) == "pass"
    assert decide_at_most(Rate(0, 20), 0.2) == "pass"  # upper bound 16.8%
    assert decide_at_most(Rate(0, 16), 0.2) == "inconclusive"  # upper bound 20.6%
    assert decide_at_most(Rate(40, 60), 0.2) == "fail"
    assert decide_at_most(Rate(1, 2), 0.2) == "inconclusive"  # two samples prove nothing
    assert decide_at_most(Rate(0, 0), 0.2) == "inconclusive"
    assert decide_not_worse(Rate(30, 60), Rate(2, 60), 0.05) == "fail"
    assert decide_not_worse(Rate(3, 300), Rate(3, 300), 0.05) == "pass"
    assert decide_not_worse(Rate(5, 20), Rate(3, 20), 0.05) == "inconclusive"


def test_per_look_confidence_splits_the_error_rate() -> None:
    assert per_look_confidence(0.95, 1) == pytest.approx(0.95)
    assert per_look_confidence(0.95, 5) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        per_look_confidence(0.95, 0)


def test_rate_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="need 0 <= events <= trials"):
        Rate(3, 2)
