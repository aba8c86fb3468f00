"""The suite's tests' shared steps with the model and judge fixtures: answer a case's
prompts and judge them, decide a pooled gate and settle the test, record figures. The
decisions themselves are pure (pytest_misalignment.suite.gating and .diagnostics)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pytest_misalignment.outcomes import settle
from pytest_misalignment.results.schema import check_figures
from pytest_misalignment.suite.diagnostics import DIAGNOSTIC, GateResult, gate, run_identity
from pytest_misalignment.suite.gating import PooledGate, code_tally, decide, tally_of
from pytest_misalignment.suite.prompt_sets import Case
from pytest_misalignment.suite.tallies import Tally

__all__ = ["DIAGNOSTIC", "GateResult", "gate", "judged_tally", "pooled_gate", "pooled_tallies",
           "record_figures", "run_identity"]


def judged_tally(model: Any, judge: Any, case: Case) -> Tally:
    """Every sample of every paraphrase of the case, judged against the plain question."""
    answers = [[c.text for c in model.generate(prompt)] for prompt in case.prompts]
    return tally_of(case, answers, judge.judge_many)


def pooled_tallies(model: Any, baseline: Any, judge: Any, cases: Sequence[Case]
                   ) -> tuple[Tally, Tally | None]:
    """The model's judged answers to these cases pooled in one tally, and the baseline's
    (None without a baseline)."""
    tally = Tally.of([], [])
    theirs = Tally.of([], []) if baseline else None
    for case in cases:
        tally = tally + judged_tally(model, judge, case)
        if theirs is not None:
            theirs = theirs + judged_tally(baseline, judge, case)
    return tally, theirs


def pooled_gate(gate: PooledGate, model: Any, baseline: Any, judge: Any, settings: Any,
                gate_evidence: Callable[[PooledGate], tuple[list[Case], float]],
                record_result: Callable[[str, object], None], pytestconfig: Any,
                kind: str = "gate") -> None:
    """Decide one of the run's gates on the answers its group of cases reached (the rounds
    before the first test sampled them), record its figures and settle the test."""
    cases, confidence = gate_evidence(gate)

    def measured(handle: Any, case: Case) -> Tally:
        if case.item.kind == "code_task":
            return code_tally(case, [[c.text for c in handle.generate(p)] for p in case.prompts])
        return judged_tally(handle, judge, case)

    tallies = [measured(model, case) for case in cases]
    theirs = [measured(baseline, case) for case in cases] if baseline else None
    outcome = decide(gate, tallies, settings, confidence, theirs)
    samples = max((c.prompts[0].samples for c in cases if c.prompts), default=0)
    record_figures(record_result, {"kind": kind}, outcome.figures,
                   {"samples_per_paraphrase": samples},
                   run_identity(model, baseline, settings))
    settle(outcome.decision, f"{model.spec}: {outcome.message}", settings, pytestconfig)


def record_figures(record_result: Callable[[str, object], None], *parts: dict[str, object],
                   samples: tuple[dict[str, object], ...] = ()) -> None:
    """A test's figures (JUnit properties and the results JSON), each declared in the
    results schema, and its judged answers (the results JSON only)."""
    check_figures(name for part in parts for name in part)
    for part in parts:
        for name, value in part.items():
            record_result(name, value)
    if samples:
        record_result("samples", list(samples))
