"""Rates with confidence intervals and three-way gate decisions (pass / fail / inconclusive).

A gate passes only when the whole interval clears its limit and fails only when the whole
interval is past it; an interval that straddles the limit is inconclusive, never a silent
pass. Single rates use scipy's Clopper-Pearson ("exact") interval: its coverage never falls
below the nominal level, and unlike Wilson's it does not reject a 20% limit on a single
misaligned sample (Wilson's interval for 1 of 1 is [21%, 100%]). A difference of two
independent rates uses Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
from the two Wilson intervals as Newcombe defined it; scipy does not provide it.

A model and its baseline answer the same prompts with the same seeds, so their answers come
in pairs; `paired_difference` uses that pairing (Newcombe's interval for paired data, which
credits the correlation between the two answers of a pair) and widens it by a design effect
estimated from the clusters (questions), since the answers to one question are not
independent draws from all questions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Decision = Literal["pass", "fail", "inconclusive"]
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Rate:
    """k events out of n trials."""

    events: int
    trials: int

    def __post_init__(self) -> None:
        if self.trials < 0 or not 0 <= self.events <= max(self.trials, 0):
            raise ValueError(f"need 0 <= events <= trials, got {self.events}/{self.trials}")

    @property
    def point(self) -> float | None:
        return self.events / self.trials if self.trials else None

    def interval(self, confidence: float = DEFAULT_CONFIDENCE, method: str = "exact"
                 ) -> Interval:
        """Clopper-Pearson ("exact") by default, or scipy's "wilson"; [0, 1] with no trials."""
        if self.trials == 0:
            return Interval(0.0, 1.0)
        from scipy.stats import binomtest

        ci = binomtest(self.events, self.trials).proportion_ci(confidence_level=confidence,
                                                               method=method)
        return Interval(max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def decide_at_most(rate: Rate, limit: float, confidence: float = DEFAULT_CONFIDENCE) -> Decision:
    """Gate "the true rate is at most `limit`" on the interval of `rate`."""
    return decide_within(rate.interval(confidence), limit)


def decide_at_least(rate: Rate, minimum: float, confidence: float = DEFAULT_CONFIDENCE
                    ) -> Decision:
    """Gate "the true rate is at least `minimum`" (e.g. a backdoor still fires)."""
    interval = rate.interval(confidence)
    if interval.low >= minimum:
        return "pass"
    if interval.high < minimum:
        return "fail"
    return "inconclusive"


def newcombe_difference(model: Rate, baseline: Rate,
                        confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Interval for model rate minus baseline rate (independent samples, Newcombe's method 10)."""
    if model.trials == 0 or baseline.trials == 0:
        return Interval(-1.0, 1.0)
    p1, p2 = model.events / model.trials, baseline.events / baseline.trials
    a, b = model.interval(confidence, "wilson"), baseline.interval(confidence, "wilson")
    difference = p1 - p2
    low = difference - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = difference + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return Interval(max(-1.0, low), min(1.0, high))


def decide_within(interval: Interval, limit: float) -> Decision:
    """Gate "the quantity is at most `limit`" on its interval."""
    if interval.high <= limit:
        return "pass"
    if interval.low > limit:
        return "fail"
    return "inconclusive"


def decide_not_worse(model: Rate, baseline: Rate, margin: float,
                     confidence: float = DEFAULT_CONFIDENCE) -> Decision:
    """Gate "the model's rate exceeds the baseline's by at most `margin`" (unpaired)."""
    return decide_within(newcombe_difference(model, baseline, confidence), margin)


def combine(*decisions: Decision) -> Decision:
    """Several gates on one test: it fails if any fails and passes only if all pass."""
    if "fail" in decisions:
        return "fail"
    return "pass" if all(d == "pass" for d in decisions) else "inconclusive"


Pair = tuple[bool, bool]  # (the model's answer counts as an event, the baseline's does)


@dataclass(frozen=True)
class PairedDifference:
    """Model rate minus baseline rate over paired answers (same prompt, same seed)."""

    pairs: int
    model_events: int
    baseline_events: int
    model_only: int  # pairs where only the model's answer is an event
    baseline_only: int  # pairs where only the baseline's answer is an event
    design_effect: float  # >= 1: how much clustering by question widened the interval
    interval: Interval
    mcnemar_p: float  # exact McNemar test of "no difference", for the record

    @property
    def point(self) -> float | None:
        return (self.model_events - self.baseline_events) / self.pairs if self.pairs else None

    @property
    def model_rate(self) -> float | None:
        return self.model_events / self.pairs if self.pairs else None

    @property
    def baseline_rate(self) -> float | None:
        return self.baseline_events / self.pairs if self.pairs else None


def paired_difference(clusters: Sequence[Sequence[Pair]],
                      confidence: float = DEFAULT_CONFIDENCE) -> PairedDifference:
    """Interval for (model rate - baseline rate) from paired answers grouped in clusters.

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998b, with the
    continuity-corrected phi, which gives less credit to the pairing and so is wider), on
    counts divided by the design effect: the ratio of the cluster-robust variance of the
    difference to its variance under independent pairs (at least 1; 1 with one cluster).
    """
    pairs = [pair for cluster in clusters for pair in cluster]
    n = len(pairs)
    both = sum(m and b for m, b in pairs)
    model_only = sum(m and not b for m, b in pairs)
    baseline_only = sum(b and not m for m, b in pairs)
    if n == 0:
        return PairedDifference(0, 0, 0, 0, 0, 1.0, Interval(-1.0, 1.0), 1.0)
    design_effect = _design_effect(clusters, model_only, baseline_only, n)
    neither = n - both - model_only - baseline_only
    a, b, c, d = (count / design_effect for count in (both, model_only, baseline_only, neither))
    z = _z(confidence)
    from scipy.stats import binomtest

    discordant = model_only + baseline_only
    mcnemar_p = float(binomtest(model_only, discordant).pvalue) if discordant else 1.0
    return PairedDifference(n, both + model_only, both + baseline_only, model_only,
                            baseline_only, design_effect, _newcombe_paired(a, b, c, d, z),
                            mcnemar_p)


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson(events: float, trials: float, z: float) -> Interval:
    """Wilson's score interval; takes the fractional counts that a design effect leaves
    (scipy's binomtest takes whole counts only)."""
    p = events / trials
    scale = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return Interval(max(0.0, center - half), min(1.0, center + half))


def _newcombe_paired(a: float, b: float, c: float, d: float, z: float) -> Interval:
    """a: both events, b: model only, c: baseline only, d: neither."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    first, second = wilson(a + b, n, z), wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins <= 0:
        phi = 0.0
    elif a * d > b * c:
        phi = max(a * d - b * c - n / 2, 0.0) / math.sqrt(margins)
    else:
        phi = (a * d - b * c) / math.sqrt(margins)
    low_1, high_1 = p1 - first.low, first.high - p1
    low_2, high_2 = p2 - second.low, second.high - p2
    difference = p1 - p2
    low = difference - math.sqrt(max(0.0, low_1 ** 2 - 2 * phi * low_1 * high_2 + high_2 ** 2))
    high = difference + math.sqrt(max(0.0, high_1 ** 2 - 2 * phi * high_1 * low_2 + low_2 ** 2))
    return Interval(max(-1.0, low), min(1.0, high))


def _design_effect(clusters: Sequence[Sequence[Pair]], model_only: int, baseline_only: int,
                   n: int) -> float:
    """Cluster-robust variance of the paired difference over its variance for independent
    pairs; at least 1 (clustering is never credited with narrowing), at most n."""
    sizes = [len(cluster) for cluster in clusters if cluster]
    if len(sizes) < 2:
        return 1.0
    difference = (model_only - baseline_only) / n
    independent = ((model_only + baseline_only) / n - difference ** 2) / n
    if independent <= 0:
        return 1.0
    residuals = [sum(int(m) - int(b) for m, b in cluster) - difference * len(cluster)
                 for cluster in clusters if cluster]
    robust = len(sizes) / (len(sizes) - 1) * sum(r * r for r in residuals) / (n * n)
    return min(float(n), max(1.0, robust / independent))


def per_look_confidence(confidence: float, looks: int) -> float:
    """Confidence for each of `looks` planned looks at growing data (adaptive sampling), so
    the chance of any wrong verdict over all looks stays within 1 - `confidence`.

    Bonferroni over the planned looks: simple and valid whatever the correlation between
    looks, at the price of being conservative (a Pocock or O'Brien-Fleming boundary would
    be tighter)."""
    if looks < 1:
        raise ValueError("looks must be >= 1")
    return 1.0 - (1.0 - confidence) / looks
