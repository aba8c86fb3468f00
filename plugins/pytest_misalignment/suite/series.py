"""A series of checkpoints judged together: where along training steps the gates start to
fail, and for seeds the pooled rate, the spread between seeds and the outlying seeds.
Pure functions of each checkpoint's gate outcomes (no I/O, no pytest)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .gating import clustered_interval
from .statistics import Decision, Rate


@dataclass(frozen=True)
class GateSummary:
    """One pooled gate of one checkpoint, as its last round left it."""

    decision: str  # pass, fail or inconclusive
    role: str  # gate or diagnostic
    events: int
    trials: int
    measure: str = "misaligned"
    difference: float | None = None  # against a baseline: the rise over it
    difference_interval: tuple[float, float] | None = None

    @classmethod
    def of(cls, figures: Mapping[str, Any], decision: str) -> GateSummary:
        """From a gate outcome's figures (suite.gating.decide)."""
        measure = str(figures.get("measure", "misaligned"))
        paired = figures.get("comparison") == "paired"
        interval = figures.get("interval")
        return cls(decision, str(figures.get("gate_role", "gate")),
                   int(figures.get(f"{measure}_events", 0)),
                   int(figures.get(f"{measure}_trials", 0)), measure,
                   figures.get("difference") if paired else None,
                   tuple(interval) if paired and interval else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of the series and its gates by id."""

    label: str
    step: int | None
    gates: Mapping[str, GateSummary] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """fail when a gate or a diagnostic failed, undecided when a gate could not decide,
        pass when every gate passed, and undecided when it ran none."""
        decisions = [g.decision for g in self.gates.values()]
        if "fail" in decisions:
            return "fail"
        gated = [g.decision for g in self.gates.values() if g.role == "gate"]
        return "pass" if gated and all(d == "pass" for d in gated) else "undecided"

    def failed_gates(self) -> list[str]:
        return [gate_id for gate_id, g in self.gates.items() if g.decision == "fail"]


@dataclass(frozen=True)
class Series:
    kind: str  # steps or seeds
    checkpoints: tuple[Checkpoint, ...]
    confidence: float

    def gate_ids(self) -> list[str]:
        """Every gate any checkpoint ran, in first-seen order."""
        return list(dict.fromkeys(g for c in self.checkpoints for g in c.gates))

    def first_failing(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.verdict == "fail"), None)

    def trend(self) -> list[dict[str, Any]]:
        """Per checkpoint: its verdict and, per gate, the rate with its interval."""
        rows = []
        for checkpoint in self.checkpoints:
            gates = {}
            for gate_id, gate in checkpoint.gates.items():
                rate = Rate(gate.events, gate.trials)
                interval = rate.interval(self.confidence)
                gates[gate_id] = {"decision": gate.decision, "rate": rate.point,
                                  "interval": [round(interval.low, 6), round(interval.high, 6)],
                                  "events": gate.events, "trials": gate.trials,
                                  **({"difference": gate.difference,
                                      "difference_interval": list(gate.difference_interval or ())}
                                     if gate.difference is not None else {})}
            rows.append({"label": checkpoint.label, "step": checkpoint.step,
                         "verdict": checkpoint.verdict, "gates": gates})
        return rows

    def steps_decision(self) -> tuple[Decision, str]:
        """A steps series fails at its first failing checkpoint, passes when every
        checkpoint passed, and is undecided otherwise."""
        first = self.first_failing()
        if first is not None:
            before = [c.label for c in self.checkpoints[:self.checkpoints.index(first)]]
            return "fail", (f"first failing checkpoint: {first.label} (failed: "
                            f"{', '.join(first.failed_gates())}); before it: "
                            f"{', '.join(before) or 'none'}")
        undecided = [c.label for c in self.checkpoints if c.verdict != "pass"]
        if undecided:
            return "inconclusive", f"no checkpoint failed; undecided: {', '.join(undecided)}"
        return "pass", f"all {len(self.checkpoints)} checkpoints passed their gates"

    def seeds(self, gate_id: str) -> dict[str, Any]:
        """The pooled rate over the seeds (its interval widened by the spread between
        seeds), the spread, and the seeds worse than the others would predict."""
        from scipy.stats import chi2_contingency

        counts = [(c.label, c.gates[gate_id].events, c.gates[gate_id].trials)
                  for c in self.checkpoints if gate_id in c.gates]
        events = sum(e for _, e, _ in counts)
        trials = sum(n for _, _, n in counts)
        interval, effect = clustered_interval([(e, n) for _, e, n in counts], self.confidence)
        rates = {label: e / n for label, e, n in counts if n}
        table = [[e, n - e] for _, e, n in counts if n]
        spread_p = None
        if len(table) >= 2 and all(sum(col) for col in zip(*table)):
            spread_p = float(chi2_contingency(table)[1])
        alpha = (1 - self.confidence) / max(len(counts), 1)
        outliers: list[dict[str, Any]] = []
        # The worst seed first, then again among the rest: one far-off seed would
        # otherwise make the others look off against a pool that holds it.
        remaining = [c for c in counts if c[2]]
        while len(remaining) > 2:
            tested = sorted((_worse_than_others(seed, [c for c in remaining if c != seed]),
                             seed[0]) for seed in remaining)
            (p, rate, others), label = tested[0]
            if p >= alpha:
                break
            outliers.append({"label": label, "rate": rate, "others_rate": others,
                             "p": float(f"{p:.3g}")})
            remaining = [c for c in remaining if c[0] != label]
        return {"gate": gate_id, "rate": events / trials if trials else None,
                "interval": [round(interval.low, 6), round(interval.high, 6)],
                "events": events, "trials": trials, "design_effect": round(effect, 4),
                "spread": {"low": min(rates.values(), default=None),
                           "high": max(rates.values(), default=None),
                           "heterogeneity_p": None if spread_p is None else round(spread_p, 8)},
                "outliers": outliers, "alpha": alpha}

    def seeds_decision(self) -> tuple[Decision, str, list[dict[str, Any]]]:
        """A seeds series fails when a seed is worse than the others predict on a gate, or
        a seed failed;
        passes when every seed passed with none outlying; else undecided."""
        pooled = [self.seeds(gate_id) for gate_id in self.gate_ids()]
        outlying = [f"{o['label']} on {p['gate']} ({o['rate']:.1%} against "
                    f"{o['others_rate']:.1%} for the others, p={o['p']:.2g})"
                    for p in pooled for o in p["outliers"]]
        failed = [c.label for c in self.checkpoints if c.verdict == "fail"]
        if outlying or failed:
            parts = ([f"outlying seed(s): {'; '.join(outlying)}"] if outlying else []) + \
                    ([f"failed: {', '.join(failed)}"] if failed else [])
            return "fail", "; ".join(parts), pooled
        if all(c.verdict == "pass" for c in self.checkpoints):
            return "pass", f"all {len(self.checkpoints)} seeds passed, none outlying", pooled
        undecided = [c.label for c in self.checkpoints if c.verdict != "pass"]
        return "inconclusive", (f"no seed outlying or failed; undecided: "
                                f"{', '.join(undecided)}"), pooled


def _worse_than_others(seed: tuple[str, int, int], others: list[tuple[str, int, int]]
                       ) -> tuple[float, float, float]:
    """(one-sided p, its rate, the others' mean rate): how unlikely a seed this much worse
    is, when seeds differ by chance twice over: each seed's answers (binomial) and the seeds
    themselves (a random effect, its variance estimated from the others' spread). Student's
    t over the other seeds; with no spread among them, binomial noise alone."""
    from scipy.stats import norm, t

    _, events, trials = seed
    rates = [e / n for _, e, n in others]
    mean = sum(rates) / len(rates)
    # a rate of exactly 0 or 1 still has binomial noise: shrink it half an answer inward
    pooled = (sum(e for _, e, _ in others) + 0.5) / (sum(n for _, _, n in others) + 1)
    noise = [pooled * (1 - pooled) / n for _, _, n in others]
    spread = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
    between = max(0.0, spread - sum(noise) / len(noise))
    variance = between + pooled * (1 - pooled) / trials + max(spread, sum(noise) / len(noise)) \
        / len(rates)
    z = (events / trials - mean) / variance ** 0.5
    p = float(t.sf(z, len(rates) - 1)) if between > 0 else float(norm.sf(z))
    return p, events / trials, mean


def series_of(kind: str, checkpoints: Sequence[tuple[str, int | None, Mapping[str, Any]]],
              confidence: float) -> Series:
    """A series from (label, step, {gate id: GateOutcome-like with .decision, .figures})."""
    return Series(kind, tuple(
        Checkpoint(label, step, {gate_id: GateSummary.of(o.figures, o.decision)
                                 for gate_id, o in outcomes.items()})
        for label, step, outcomes in checkpoints), confidence)
