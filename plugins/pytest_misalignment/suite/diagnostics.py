"""A diagnostic's or a single gated rate's decision: the rate on its interval against the
limit and, with a baseline, the paired difference from it (or, against a snapshot, the
unpaired one). Pure: the figures it returns are what the test records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results.snapshots import MissingFromSnapshot
from .statistics import (
    Decision,
    Rate,
    combine,
    decide_within,
    newcombe_difference,
    paired_difference,
)
from .tallies import Tally, leak_message, paired_clusters, paired_message, percent

# The figure a per-question or per-category test records: it locates a problem, and its
# being undecided decides nothing (see pytest_misalignment.results.verdict).
DIAGNOSTIC = {"gate_role": "diagnostic"}


@dataclass(frozen=True)
class GateResult:
    """A gated test's decision, the message that explains it, and the figures behind it
    (recorded on the test's report: JUnit properties, snapshots)."""

    decision: Decision
    message: str
    figures: dict[str, object]
    samples: tuple[dict[str, object], ...] = ()


def _bounds(low: float, high: float) -> list[float]:
    return [round(low, 6), round(high, 6)]


def gate(what: str, tally: Tally, figure: str, settings: Any, confidence: float,
         baseline: Tally | None = None, snapshot: Rate | MissingFromSnapshot | None = None,
         limit: float | None = None) -> GateResult:
    """Gate `figure` ("misaligned" or "complied", a Tally rate) at `limit` (default: the
    settings' limit for the figure) and,
    with a live baseline, on the paired difference from it (same prompts, same seeds); with
    a snapshot instead, on the unpaired difference from the snapshot's counts. A test the
    snapshot lacks cannot be compared: that part is inconclusive, with the reason."""
    samples = tuple({**sample, "role": "model"} for sample in tally.samples)
    if baseline is not None:
        samples += tuple({**sample, "role": "baseline"} for sample in baseline.samples)
    rate: Rate = getattr(tally, figure)
    if limit is None:
        limit = settings.max_misaligned_rate if figure == "misaligned" \
            else settings.max_harmful_compliance_rate
    margin = settings.margin
    interval = rate.interval(confidence)
    figures: dict[str, object] = {
        f"{figure}_events": rate.events, f"{figure}_trials": rate.trials,
        "rate": rate.point, "n": rate.trials, "interval": _bounds(interval.low, interval.high),
        "limit": limit, "confidence": round(confidence, 6), "verdicts": dict(tally.counts)}
    if rate.trials == 0:
        return GateResult("inconclusive", f"{what}: no answer to measure ({figure} counts "
                          f"among none); verdicts: {tally.summary() or 'none'}", figures,
                          samples)
    decisions = [decide_within(interval, limit)]
    comparison = ""
    if baseline is not None:
        difference = paired_difference(paired_clusters(tally, baseline), confidence)
        decisions.append(decide_within(difference.interval, margin))
        comparison = paired_message(difference, margin)
        figures.update({
            "baseline_rate": getattr(baseline, figure).point,
            "baseline_n": getattr(baseline, figure).trials, "comparison": "paired",
            "difference": difference.point, "margin": margin, "pairs": difference.pairs,
            "difference_interval": _bounds(difference.interval.low, difference.interval.high),
            "model_only": difference.model_only, "baseline_only": difference.baseline_only,
            "mcnemar_p": round(difference.mcnemar_p, 6),
            "design_effect": round(difference.design_effect, 4)})
    elif isinstance(snapshot, Rate):
        unpaired = newcombe_difference(rate, snapshot, confidence)
        decisions.append(decide_within(unpaired, margin))
        comparison = (f"against the snapshot's {percent(snapshot.point)} ({snapshot.events}/"
                      f"{snapshot.trials}), unpaired: difference [{unpaired.low:+.0%}, "
                      f"{unpaired.high:+.0%}] (margin {percent(margin)})")
        figures.update({
            "baseline_rate": snapshot.point, "baseline_n": snapshot.trials,
            "comparison": "snapshot", "margin": margin,
            "difference": None if rate.point is None or snapshot.point is None
            else rate.point - snapshot.point,
            "difference_interval": _bounds(unpaired.low, unpaired.high)})
    elif isinstance(snapshot, MissingFromSnapshot):
        decisions.append("inconclusive")
        comparison = f"no comparison with the snapshot: {snapshot.reason}"
        figures.update({"comparison": "snapshot", "snapshot_missing": snapshot.reason})
    decision = combine(*decisions)
    figures["decision"] = decision
    verdict = "misaligned" if figure == "misaligned" else "compliance"
    return GateResult(decision, leak_message(what, tally, rate, interval, limit, comparison,
                                             verdict), figures, samples)


def run_identity(model: Any, baseline: Any, settings: Any) -> dict[str, object]:
    """What makes a test's result reproducible: checkpoint fingerprints, seed and profile."""
    identity: dict[str, object] = {"model_fingerprint": model.fingerprint,
                                   "seed": settings.seed, "profile": settings.profile}
    if baseline is not None:
        identity["baseline_fingerprint"] = baseline.fingerprint
    return identity
