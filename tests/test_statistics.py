"""The statistics of gating: intervals, their coverage and monotonicity, and decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_misalignment.judges.base import Judgment
from pytest_misalignment.suite.statistics import (
    Pair,
    Rate,
    combine,
    decide_at_most,
    decide_not_worse,
    newcombe_difference,
    paired_difference,
    per_look_confidence,
    wilson,
)
from pytest_misalignment.suite.tallies import Tally, paired_clusters

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


@settings(deadline=None, max_examples=25)
@given(st.floats(min_value=0.01, max_value=0.99), st.integers(min_value=1, max_value=60))
def test_exact_coverage_is_at_least_nominal_for_any_rate(p: float, n: int) -> None:
    """Coverage computed exactly (summing the binomial over every outcome), not simulated."""
    from scipy.stats import binom

    covered = sum(binom.pmf(k, n, p) for k in range(n + 1) if p in Rate(k, n).interval(0.95))
    assert covered >= 0.95 - 1e-9, covered


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


# ------------------------------------------------------------------ paired comparison

tables = st.tuples(*(st.integers(min_value=0, max_value=60) for _ in range(4))).filter(
    lambda t: sum(t) > 0)


def _pairs(both: int, model_only: int, baseline_only: int, neither: int) -> list[Pair]:
    return ([(True, True)] * both + [(True, False)] * model_only
            + [(False, True)] * baseline_only + [(False, False)] * neither)


@given(tables)
def test_paired_interval_holds_the_difference(table: tuple[int, int, int, int]) -> None:
    difference = paired_difference([_pairs(*table)])
    assert difference.point is not None
    assert -1.0 <= difference.interval.low <= difference.point <= difference.interval.high <= 1


@given(tables)
def test_paired_interval_moves_up_with_model_only_events(table: tuple[int, int, int, int]
                                                         ) -> None:
    both, model_only, baseline_only, neither = table
    if neither == 0:
        return
    before = paired_difference([_pairs(*table)]).interval
    after = paired_difference([_pairs(both, model_only + 1, baseline_only, neither - 1)]).interval
    assert after.low >= before.low - 1e-9 and after.high >= before.high - 1e-9


def test_pairing_narrows_the_interval_when_answers_agree() -> None:
    """The near-limit control against itself: 32 of 256 misaligned in both, every pair the
    same. Paired, +-1.3%; the same counts unpaired, +-5.8% (no pass at a 5% margin)."""
    paired = paired_difference([_pairs(32, 0, 0, 224)])
    unpaired = newcombe_difference(Rate(32, 256), Rate(32, 256))
    assert paired.interval.high < 0.015 < 0.05 < unpaired.high
    assert paired.mcnemar_p == 1.0 and paired.design_effect == 1.0


def test_paired_difference_without_pairs_proves_nothing() -> None:
    empty = paired_difference([])
    assert (empty.interval.low, empty.interval.high, empty.point) == (-1.0, 1.0, None)


def test_mcnemar_counts_only_discordant_pairs() -> None:
    assert paired_difference([_pairs(50, 20, 0, 30)]).mcnemar_p == pytest.approx(2 * 0.5 ** 20)
    assert paired_difference([_pairs(50, 5, 5, 30)]).mcnemar_p == pytest.approx(1.0)


def test_wilson_on_fractional_counts_matches_scipy_on_whole_ones() -> None:
    for k, n in ((0, 10), (3, 10), (10, 10), (17, 240)):
        ours, scipy_s = wilson(k, n, 1.959963984540054), Rate(k, n).interval(0.95, "wilson")
        assert ours.low == pytest.approx(scipy_s.low, abs=1e-9)
        assert ours.high == pytest.approx(scipy_s.high, abs=1e-9)


def _clustered_draw(rng: np.random.Generator, p1: float, p2: float, spread: float,
                    clusters: int, size: int) -> list[list[Pair]]:
    """Questions whose rates shift together on the logit scale; pairs half correlated."""
    drawn = []
    for _ in range(clusters):
        shift = rng.normal(0.0, spread)
        q1, q2 = (1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift))) for p in (p1, p2))
        u = rng.random(size)
        v = np.where(rng.random(size) < 0.5, u, rng.random(size))
        drawn.append(list(zip((u < q1).tolist(), (v < q2).tolist())))
    return drawn


@pytest.mark.parametrize(("p1", "p2", "spread", "clusters", "size", "naive_share",
                          "clustered_share"),
                         [(0.15, 0.1, 1.5, 8, 20, 0.948, 0.968),
                          (0.3, 0.2, 1.0, 6, 30, 0.930, 0.950)])
def test_clustered_paired_coverage_is_near_nominal(p1: float, p2: float, spread: float,
                                                   clusters: int, size: int, naive_share: float,
                                                   clustered_share: float) -> None:
    """Answers to one question are alike: treating them as independent pairs covered 93.0% and
    94.8% here (seed 3); the design effect brings that to 95.0% and 96.8%. These are the
    figures docs/statistics.md quotes (Paired comparison with `--baseline`): the draw is
    seeded, so they are exact."""
    rng = np.random.default_rng(3)
    shifts = rng.normal(0.0, spread, 200_000)
    def mean_rate(p: float) -> float:
        return float(np.mean(1 / (1 + np.exp(-(np.log(p / (1 - p)) + shifts)))))

    truth = mean_rate(p1) - mean_rate(p2)
    covered = naive = 0
    for _ in range(600):
        drawn = _clustered_draw(rng, p1, p2, spread, clusters, size)
        covered += truth in paired_difference(drawn).interval
        naive += truth in paired_difference([[p for c in drawn for p in c]]).interval
    assert covered >= naive, (covered / 600, naive / 600)
    assert (round(naive / 600, 3), round(covered / 600, 3)) == (naive_share, clustered_share)


def test_combined_gates() -> None:
    assert combine("pass", "pass") == "pass"
    assert combine("pass", "inconclusive") == "inconclusive"
    assert combine("inconclusive", "fail") == "fail"


def _tally(question: str, verdicts: list[str]) -> Tally:
    judgments = [Judgment(None, None, verdict, "test") for verdict in verdicts]
    return Tally.of(judgments, [""] * len(verdicts), question)


def test_answers_pair_by_prompt_and_seed_and_cluster_by_question() -> None:
    model = _tally("q1", ["misaligned", "refusal", "error"]) + _tally("q2", ["aligned"])
    baseline = _tally("q1", ["aligned", "misaligned", "aligned"]) + _tally("q2", ["aligned"])
    # the judge error drops its pair; a refusal counts as "not misaligned"
    assert paired_clusters(model, baseline) == [[(True, False), (False, True)],
                                                [(False, False)]]
    with pytest.raises(ValueError, match="do not pair up"):
        paired_clusters(model, _tally("q1", ["aligned"]))
