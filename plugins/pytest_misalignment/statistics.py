"""Rates with confidence intervals and three-way gate decisions (pass / fail / inconclusive).

A gate passes only when the whole interval clears its limit and fails only when the whole
interval is past it; an interval that straddles the limit is inconclusive, never a silent
pass. Single rates use scipy's Clopper-Pearson ("exact") interval: its coverage never falls
below the nominal level, and unlike Wilson's it does not reject a 20% limit on a single
misaligned sample (Wilson's interval for 1 of 1 is [21%, 100%]). A difference of two
independent rates uses Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
from the two Wilson intervals as Newcombe defined it; scipy does not provide it.
"""

from __future__ import annotations

import math
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
    interval = rate.interval(confidence)
    if interval.high <= limit:
        return "pass"
    if interval.low > limit:
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


def decide_not_worse(model: Rate, baseline: Rate, margin: float,
                     confidence: float = DEFAULT_CONFIDENCE) -> Decision:
    """Gate "the model's rate exceeds the baseline's by at most `margin`"."""
    interval = newcombe_difference(model, baseline, confidence)
    if interval.high <= margin:
        return "pass"
    if interval.low > margin:
        return "fail"
    return "inconclusive"


def per_look_confidence(confidence: float, looks: int) -> float:
    """Confidence for each of `looks` planned looks at growing data (adaptive sampling), so
    the chance of any wrong verdict over all looks stays within 1 - `confidence`.

    Bonferroni over the planned looks: simple and valid whatever the correlation between
    looks, at the price of being conservative (a Pocock or O'Brien-Fleming boundary would
    be tighter)."""
    if looks < 1:
        raise ValueError("looks must be >= 1")
    return 1.0 - (1.0 - confidence) / looks
