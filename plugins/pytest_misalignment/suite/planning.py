"""The run's plan, made before any generation: each gate's planned answers (from --detect,
--power and its lines), the rounds each group of cases may take, the answers to generate
and the estimated minutes from measured throughput. Imports without pytest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gating import (
    PRIOR_BASELINE_RATE,
    PRIOR_KEPT_SHARE,
    PooledGate,
    lines_for,
    planned_trials,
    schedule,
    trials_for,
)
from .statistics import per_look_confidence

# Measured on SmolLM2-135M with the batched engine (docs/speed.md): a CPU with bf16
# matrix instructions, and one with AVX2 only. Used until this machine has measured its own.
FALLBACK_TOKENS_PER_SECOND = {True: 590.0, False: 169.0}
FALLBACK_TOKENS_PER_ANSWER_SHARE = 0.8  # of max_new_tokens: small models often run long
# The offline embedding judge read 5.6 answers/s on 2 cores (2026-12-01); LLM judges differ.
EMBEDDING_JUDGE_SECONDS_PER_ANSWER = 0.18


@dataclass(frozen=True)
class GatePlan:
    gate: PooledGate
    pass_line: float
    fail_line: float
    planned: int  # answers in the denominator that decide it at --power
    first_answers: int  # answers generated for it in the first round
    max_answers: int  # ... once every planned round has run


@dataclass(frozen=True)
class RunPlan:
    gates: tuple[GatePlan, ...]
    rounds: dict[str, list[int]]  # group -> sample multipliers, round by round
    first_answers: int
    max_answers: int
    other_answers: int  # what the other tests declared (diagnostics, probes' prompts...)
    seconds_per_answer: float
    speed_source: str

    def looks(self, group: str) -> int:
        return len(self.rounds.get(group, [1]))

    def lines(self, settings: Any, paired: bool,
              judge_rates: dict[str, Any] | None = None) -> list[str]:
        """The plan as the terminal shows it; `judge_rates`, the judge's held-out
        false-positive rate and recall, flag what the judge cannot resolve."""
        minutes_first = self.first_answers * self.seconds_per_answer / 60
        minutes_max = self.max_answers * self.seconds_per_answer / 60
        mode = "paired with the baseline" if paired else "absolute limits"
        gates = [p for p in self.gates if p.gate.role == "gate"]
        found = [f"plan: {len(gates)} gates ({mode}), detect {settings.detect:.1%} at "
                 f"power {settings.power:.0%}, confidence {settings.confidence:.0%} split over "
                 "each group's rounds",
                 f"domain: {', '.join(settings.domains)} (leakage is measured outside it)",
                 *judge_lines(judge_rates, settings.judge)]
        for plan in self.gates:
            rounds = self.rounds[plan.gate.group]
            if plan.gate.role != "gate":
                found.append(f"  {plan.gate.id}: a diagnostic at this profile (reads the "
                             f"gates' rounds: {plan.first_answers} answers in round 1, up to "
                             f"{plan.max_answers}); a gate at standard and full")
                continue
            found.append(
                f"  {plan.gate.id}: passes at or under {plan.pass_line:.1%}, fails above "
                f"{plan.fail_line:.1%}; needs ~{plan.planned} judged answers; "
                f"{plan.first_answers} in round 1, up to {plan.max_answers} over "
                f"{len(rounds)} round(s) (samples x{', x'.join(map(str, rounds))})")
            found.extend(judge_limits(plan, settings, paired, judge_rates))
            if plan.max_answers * PRIOR_KEPT_SHARE < plan.planned:
                found.append(f"    the profile's budget gives it ~{plan.max_answers} answers: "
                             "a rate in its undecided zone may stay undecided (--profile, "
                             "--max-samples)")
        found.append(
            f"answers to generate (all models): {self.first_answers + self.other_answers} in "
            "round 1 "
            f"(~{minutes_first + self.other_answers * self.seconds_per_answer / 60:.0f} min), "
            f"at most {self.max_answers + self.other_answers} "
            f"(~{minutes_max + self.other_answers * self.seconds_per_answer / 60:.0f} min); "
            f"{self.speed_source}")
        return found


# measures counted from the judge's misaligned verdicts
JUDGED_MEASURES = ("misaligned", "complied")


def judge_lines(judge_rates: dict[str, Any] | None, spec: str) -> list[str]:
    """What the judge's measured error rates mean for every gate it decides."""
    from ..judges.evaluation import not_measured, worst_rates

    if not judge_rates:
        return [f"judge {spec}: {not_measured(spec)}; a limit cannot be checked against them"]
    fp, recall = judge_rates["false_positive_rate"], judge_rates["misaligned_recall"]
    return [f"judge {spec}: {worst_rates(judge_rates)}: a clean model reads about {fp:.1%} "
            f"misaligned, and a true rise of d shows as about d x {recall - fp:.2f}"]


def judge_limits(plan: GatePlan, settings: Any, paired: bool,
                 judge_rates: dict[str, Any] | None) -> list[str]:
    """A flag for a gate whose limit or margin is below what the judge can resolve."""
    if not judge_rates or plan.gate.measure not in JUDGED_MEASURES:
        return []
    fp, recall = judge_rates["false_positive_rate"], judge_rates["misaligned_recall"]
    if not paired and plan.pass_line <= fp:
        return [f"    BELOW THE JUDGE'S RESOLUTION: the limit {plan.pass_line:.1%} is at or "
                f"under the judge's false-positive rate {fp:.1%}; a clean model can fail it "
                "on judge noise alone (raise the limit, or compare with --baseline)"]
    sensitivity = recall - fp
    if not paired:
        return []
    if sensitivity <= 0:
        return ["    BELOW THE JUDGE'S RESOLUTION: its recall is no higher than its "
                "false-positive rate; no rise can be told from judge noise"]
    return [f"    sized for a judged rise of {settings.detect:.1%}: a true rise of about "
            f"{min(1.0, settings.detect / sensitivity):.1%} (judge recall - false positives = "
            f"{sensitivity:.2f})"]


def make_plan(gates: Sequence[PooledGate], settings: Any, budget: int, other_answers: int,
              paired: bool, seconds_per_answer: float, speed_source: str) -> RunPlan:
    """Rounds per group: doubling samples until the planned answers, within the budget."""
    groups: dict[str, list[PooledGate]] = {}
    for gate in gates:
        groups.setdefault(gate.group, []).append(gate)
    rounds: dict[str, list[int]] = {}
    plans: list[GatePlan] = []
    first_total = max_total = 0
    for group, members in groups.items():
        unique = {c.id: c for g in members for c in g.cases}
        group_first = sum(_case_answers(c) for c in unique.values())
        allowed = schedule(_cap(members, settings, budget // max(1, group_first)))
        needs = {g.id: _planned(g, settings, paired, len(allowed)) for g in members}
        # diagnostics read what the gates' rounds sample: they size nothing
        wanted = max((math.ceil(needs[g.id] / max(1, _answers(g) * PRIOR_KEPT_SHARE))
                      for g in members if g.role == "gate"), default=1)
        # the shortest run of rounds that reaches what the plan wants, within the budget;
        # the looks are fixed now, before any answer, and the confidence is split over them
        rounds[group] = next((allowed[:i + 1] for i, m in enumerate(allowed) if m >= wanted),
                             allowed)
        needs = {g.id: _planned(g, settings, paired, len(rounds[group])) for g in members}
        first_total += group_first
        max_total += group_first * rounds[group][-1]
        for gate in members:
            pass_line, fail_line, _ = lines_for(gate.measure, settings, paired)
            plans.append(GatePlan(gate, pass_line, fail_line, needs[gate.id], _answers(gate),
                                  _answers(gate) * rounds[group][-1]))
    models = 2 if paired else 1  # the baseline answers the same prompts
    return RunPlan(tuple(plans), rounds, first_total * models, max_total * models,
                   other_answers * models, seconds_per_answer, speed_source)


def _cap(members: Sequence[PooledGate], settings: Any, multiplier: int) -> int:
    """The largest sample multiplier: the profile's budget's, or --max-samples'."""
    if settings.max_samples:
        first = min(_first_samples(c) for g in members for c in g.cases)
        return max(1, settings.max_samples // max(1, first))
    return max(1, multiplier)


def _planned(gate: PooledGate, settings: Any, paired: bool, looks: int) -> int:
    pass_line, fail_line, _ = lines_for(gate.measure, settings, paired)
    if not paired:
        return planned_trials(pass_line, fail_line, settings.confidence, settings.power, looks)
    # paired: the difference's spread comes from discordant pairs (both models' judge
    # noise at the prior rate, plus the rise itself)
    discordant = 2 * PRIOR_BASELINE_RATE * (1 - PRIOR_BASELINE_RATE) + settings.detect
    return trials_for(math.sqrt(discordant), max(pass_line - fail_line, 1e-3),
                      per_look_confidence(settings.confidence, looks), settings.power)


def _first_samples(case: Any) -> int:
    return case.prompts[0].samples if case.prompts else 1


def _case_answers(case: Any) -> int:
    return sum(p.samples for p in case.prompts)


def _answers(gate: PooledGate) -> int:
    return sum(_case_answers(c) for c in gate.cases)


# ------------------------------------------------------------------------- throughput


def speed_key(settings: Any) -> str:
    return f"{settings.model}|{settings.device}|{settings.dtype}"


def answer_cap(settings: Any) -> int:
    """Most new tokens of a prose answer in this run: --max-new-tokens, else the profile's."""
    from .prompt_sets import PROFILES

    if settings.max_new_tokens_given:
        return int(settings.max_new_tokens)
    return PROFILES[settings.profile].max_new_tokens


def read_speed(path: Path, settings: Any) -> tuple[float, str]:
    """Seconds per answer: measured here before for this model (scaled by the answers'
    token cap when that run's differed: small models often write to the cap), else the
    engine's figures for this CPU's kind."""
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get(speed_key(settings))
    except (OSError, ValueError, AttributeError):
        record = None
    judging = EMBEDDING_JUDGE_SECONDS_PER_ANSWER if settings.judge.startswith("embedding") \
        else 0.0
    judged = (f" plus {judging:.2f} s per answer judged offline" if judging
              else "; judging not counted")
    cap = answer_cap(settings)
    if isinstance(record, dict) and record.get("seconds_per_answer"):
        measured_cap = int(record.get("max_new_tokens") or cap)
        scaled = (f" (scaled from answers of up to {measured_cap} tokens to {cap})"
                  if measured_cap != cap else "")
        return float(record["seconds_per_answer"]) * cap / measured_cap + judging, (
            f"generation speed measured here on {record.get('measured', 'an earlier run')}: "
            f"{record.get('tokens_per_second', 0):.0f} tok/s{scaled}{judged}")
    from ..models.loading import cpu_has_fast_bfloat16

    fast = cpu_has_fast_bfloat16()
    tokens = FALLBACK_TOKENS_PER_SECOND[fast]
    per_answer = FALLBACK_TOKENS_PER_ANSWER_SHARE * cap
    return per_answer / tokens + judging, (
        f"speed not measured here yet: the embedded model's {tokens:.0f} tok/s on a CPU "
        f"{'with' if fast else 'without'} bf16 instructions{judged}")


def write_speed(path: Path, settings: Any, answers: int, tokens: int, seconds: float,
                when: str) -> None:
    """Keep this run's measured generation speed for the next plan (per model, device and
    dtype; with the answers' token cap, by which a plan with another cap scales it)."""
    if answers < 32 or seconds <= 0:
        return
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known[speed_key(settings)] = {"seconds_per_answer": round(seconds / answers, 4),
                                  "tokens_per_second": round(tokens / seconds, 1),
                                  "max_new_tokens": answer_cap(settings), "measured": when}
    from ..results.document import write_text

    write_text(path, json.dumps(known, indent=1) + "\n")
