"""Shared steps of the suite's tests: answer a case's prompts, judge the answers, gate a rate
on its interval (and on the difference from a baseline), and draw more samples while a gate
is inconclusive (adaptive sampling)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_misalignment.prompt_sets import PROFILES, Case
from pytest_misalignment.snapshots import MissingFromSnapshot
from pytest_misalignment.statistics import (
    Decision,
    Rate,
    combine,
    decide_within,
    newcombe_difference,
    paired_difference,
    per_look_confidence,
)
from pytest_misalignment.suite import Tally, leak_message, paired_clusters, paired_message, percent


def judged_tally(model: Any, judge: Any, case: Case) -> Tally:
    """Every sample of every paraphrase of the case, judged against the plain question."""
    answers = [[c.text for c in model.generate(prompt)] for prompt in case.prompts]
    inputs = case.judge_inputs(answers)
    judgments = judge.judge_many(inputs)
    samples = [{"case": case.id, "question": given.question, "answer": given.answer,
                "aligned": judgment.aligned, "coherent": judgment.coherent,
                "verdict": judgment.verdict, "detail": judgment.detail}
               for given, judgment in zip(inputs, judgments)]
    return Tally.of(judgments, [text for texts in answers for text in texts], case.item.id,
                    samples)


@dataclass(frozen=True)
class GateResult:
    """A gated test's decision, the message that explains it, and the figures behind it
    (recorded on the test's report: JUnit properties, snapshots)."""

    decision: Decision
    message: str
    figures: dict[str, object]
    samples: tuple[dict[str, object], ...] = ()
    # False when what leaves the gate inconclusive is not the sample size (a test missing
    # from the snapshot): adaptive sampling then stops drawing.
    more_samples_can_decide: bool = True


def _bounds(low: float, high: float) -> list[float]:
    return [round(low, 6), round(high, 6)]


def gate(what: str, tally: Tally, figure: str, settings: Any, confidence: float,
         baseline: Tally | None = None, snapshot: Rate | MissingFromSnapshot | None = None
         ) -> GateResult:
    """Gate `figure` ("misaligned" or "complied", a Tally rate) at the settings' limit and,
    with a live baseline, on the paired difference from it (same prompts, same seeds); with
    a snapshot instead, on the unpaired difference from the snapshot's counts. A test the
    snapshot lacks cannot be compared: that part is inconclusive, with the reason."""
    samples = tuple({**sample, "role": "model"} for sample in tally.samples)
    if baseline is not None:
        samples += tuple({**sample, "role": "baseline"} for sample in baseline.samples)
    rate: Rate = getattr(tally, figure)
    limit = settings.max_misaligned_rate if figure == "misaligned" \
        else settings.max_harmful_compliance_rate
    margin = settings.baseline_margin
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
    more_samples_can_decide = True
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
        # Only the limit part can still change with more samples (to a fail).
        more_samples_can_decide = decisions[0] == "inconclusive"
        comparison = f"no comparison with the snapshot: {snapshot.reason}"
        figures.update({"comparison": "snapshot", "snapshot_missing": snapshot.reason})
    decision = combine(*decisions)
    figures["decision"] = decision
    verdict = "misaligned" if figure == "misaligned" else "compliance"
    return GateResult(decision, leak_message(what, tally, rate, interval, limit, comparison,
                                             verdict), figures, samples,
                      more_samples_can_decide)


def run_identity(model: Any, baseline: Any, settings: Any) -> dict[str, object]:
    """What makes a test's result reproducible: checkpoint fingerprints, seed and profile."""
    identity: dict[str, object] = {"model_fingerprint": model.fingerprint,
                                   "seed": settings.seed, "profile": settings.profile}
    if baseline is not None:
        identity["baseline_fingerprint"] = baseline.fingerprint
    return identity


def record_figures(record_result: Callable[[str, object], None], *parts: dict[str, object],
                   samples: tuple[dict[str, object], ...] = ()) -> None:
    """A test's figures (JUnit properties and the results JSON) and its judged answers
    (the results JSON only)."""
    for part in parts:
        for name, value in part.items():
            record_result(name, value)
    if samples:
        record_result("samples", list(samples))


def sample_schedule(first: int, settings: Any) -> list[int]:
    """Samples per paraphrase at each look: the first count, doubling up to the cap."""
    cap = settings.max_samples or first * PROFILES[settings.profile].growth
    looks = [first]
    while looks[-1] < cap:
        looks.append(min(looks[-1] * 2, cap))
    return looks


def adaptive(case: Case, settings: Any, look: Callable[[Case, float], GateResult]
             ) -> tuple[GateResult, int]:
    """Run `look` (a gate at a confidence) on growing samples until it is not inconclusive
    or the cap is reached; return the last result and its samples per paraphrase. Each look
    uses the confidence of a Bonferroni split over the planned looks, so peeking does not
    inflate the error rate."""
    first = case.prompts[0].samples if case.prompts else 1
    schedule = sample_schedule(first, settings)
    confidence = per_look_confidence(settings.confidence, len(schedule))
    result = None
    for samples in schedule:
        result = look(case.with_samples(samples), confidence)
        if result.decision != "inconclusive" or not result.more_samples_can_decide:
            return result, samples
    assert result is not None
    return result, schedule[-1]
