"""The run: its settings, models, judge, plan and the rounds of generation and judging."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from .judges.evaluation import judge_error_rates
from .judges.registry import (
    JudgeRunner,
    build_judge,
    expected_error_rates,
    judge_accuracy,
    thresholds_of,
)
from .models.endpoint import EndpointError
from .models.engine import ModelRunner, Share
from .models.series import SeriesMember
from .models.specs import CheckpointError, ModelSource, resolve_source
from .models.store import PYTEST_CACHE_FOLDER, Store, store_path
from .models.values import Probe, Prompt, RunCounters
from .settings import RunSettings, user_cache_dir
from .shifts import DirectionShifts, extra_plan_lines
from .suite.gating import PooledGate, code_tally, scaled, tally_of
from .suite.gating import decide as decide_gate
from .suite.planning import RunPlan, make_plan, read_speed
from .suite.prompt_sets import PROFILES, Case, PromptSet
from .suite.statistics import per_look_confidence

if TYPE_CHECKING:
    from .recording import ResultsRecorder

MARKER = "model_inputs"


ROLES = {"model": "model", "baseline_model": "baseline", "optional_baseline": "baseline"}


def plan_role(role: str) -> str:
    """The role whose plan a runner follows: each checkpoint of a series is a `model`."""
    return "model" if role.startswith("model@") else role


@dataclass
class Plan:
    """What the selected tests declared for one model role, deduplicated in order."""

    prompts: dict[Prompt, None] = field(default_factory=dict)
    probes: dict[Probe, None] = field(default_factory=dict)

    def add(self, value: Prompt | Probe) -> None:
        (self.prompts if isinstance(value, Prompt) else self.probes)[value] = None  # type: ignore[index]


@dataclass
class MisalignmentRun:
    """The one object of a run, kept in the config stash."""

    config: pytest.Config
    settings: RunSettings
    plans: dict[str, Plan] = field(default_factory=lambda: {"model": Plan(), "baseline": Plan()})
    runners: dict[str, ModelRunner] = field(default_factory=dict)
    checkpoints: dict[str, ModelSource] = field(default_factory=dict)
    # Endpoint fingerprints the controller worked out once for all xdist workers.
    endpoint_fingerprints: dict[str, str] = field(default_factory=dict)
    counters: RunCounters = field(default_factory=RunCounters)
    judge_info: dict[str, Any] = field(default_factory=dict)
    prompt_sets: list[PromptSet] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None  # --compare-baseline
    snapshot_tests: dict[str, dict[str, Any]] = field(default_factory=dict)  # --update-baseline
    # Suite cases whose answers tests will judge, per model role (judged before the tests).
    judged_cases: dict[str, dict[str, Case]] = field(
        default_factory=lambda: {"model": {}, "baseline": {}})
    results: ResultsRecorder | None = None  # on the controller
    # The pooled gates the selected tests run, the run's plan, and how far each group of
    # cases was sampled (its sample multiplier) when its gates decided or the plan ran out.
    gates: dict[str, PooledGate] = field(default_factory=dict)
    plan: RunPlan | None = None
    reached: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> group -> x
    snapshot_skipped: str = ""  # why --update-baseline wrote nothing
    # The checkpoints of a series run, in order (empty for a run of one model), and each
    # one's gate outcomes as its rounds left them, by model role and gate id.
    members: list[SeriesMember] = field(default_factory=list)
    selected: set[str] = field(default_factory=set)  # model roles the selected tests run on
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _store: Store | None = None
    _shifts: DirectionShifts | None = None
    _judge: Any = None
    _judge_runner: JudgeRunner | None = None

    @property
    def worker_index(self) -> int:
        workerinput = getattr(self.config, "workerinput", None)
        return int(str(workerinput["workerid"]).lstrip("gw") or 0) if workerinput else 0

    @property
    def share(self) -> Share:
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is None or not self.store().persistent:
            return Share()
        return Share(self.worker_index, int(workerinput["workercount"]))

    @property
    def shifts(self) -> DirectionShifts:
        """The misalignment direction and each checkpoint's shift along it."""
        if self._shifts is None:
            self._shifts = DirectionShifts(self)
        return self._shifts

    def store(self) -> Store:
        if self._store is None:
            # `-p no:cacheprovider` turns pytest's cache off, not ours: the answers then
            # live in the user's cache folder rather than being lost.
            cache = getattr(self.config, "cache", None)
            self._store = Store(store_path(
                self.settings.no_cache, self.settings.cache_dir,
                cache.mkdir(PYTEST_CACHE_FOLDER) if cache is not None else None))
        return self._store

    def checkpoint(self, role: str) -> ModelSource:
        if role not in self.checkpoints:
            members = {m.role: m.spec for m in self.members}
            spec = members[role] if role.startswith("model@") else (
                self.settings.model if role == "model" else self.settings.baseline)
            assert spec is not None
            # a series' checkpoint is the model under test: its options and trust apply
            self.checkpoints[role] = resolve_source(spec, self.settings, plan_role(role))
        return self.checkpoints[role]

    def known_fingerprint(self, role: str) -> str | None:
        workerinput = getattr(self.config, "workerinput", None) or {}
        given = workerinput.get("misalignment_fingerprints") or {}
        return given.get(role) or self.endpoint_fingerprints.get(role)

    def runner(self, role: str) -> ModelRunner:
        """The prepared runner for a role: its declared work is done on first use."""
        if role not in self.runners:
            try:
                checkpoint = self.checkpoint(role)
            except CheckpointError as error:
                pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
            runner = ModelRunner(checkpoint, self.settings, self.store(), role=role,
                                 worker_index=self.worker_index, progress=self.progress_stream,
                                 counters=self.counters,
                                 known_fingerprint=self.known_fingerprint(role))
            plan = self.plans[plan_role(role)]
            self._split_cpu_threads()
            try:
                share = self.share
                runner.prefetch(list(plan.prompts), list(plan.probes), share)
                if share.count > 1:
                    wait_for_peers(runner, plan)
            except CheckpointError as error:
                pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
            except EndpointError as error:
                # No test may pass on answers that never came: the run stops, and what was
                # received stays in the store for the rerun.
                pytest.exit(f"misalignment: {error}", returncode=pytest.ExitCode.INTERRUPTED)
            self.runners[role] = runner
        return self.runners[role]

    def judge(self) -> Any:
        """The run's judge, built on first use; its fingerprint is known without loading
        its model or training its classifier."""
        if self._judge is None:
            self._split_cpu_threads()
            self._judge = build_judge(self.settings, worker_index=self.worker_index,
                                      progress=self.progress_stream)
        return self._judge

    def judge_runner(self) -> JudgeRunner:
        """The run's judging, set up on first use (a run that judges nothing never loads the
        judge's model)."""
        if self._judge_runner is None:
            judge = self.judge()
            self._judge_runner = JudgeRunner(judge, self.store(), self.progress_stream,
                                             self.counters, thresholds_of(self.settings))
            accuracy = judge_accuracy(judge)
            self.judge_info = {"spec": judge.spec, "fingerprint": judge.fingerprint,
                               "accuracy": accuracy,
                               "error_rates": judge_error_rates(accuracy)}
        return self._judge_runner

    @property
    def model_roles(self) -> list[str]:
        """The roles of the checkpoints under test: `model`, or each member of a series."""
        return [m.role for m in self.members] or ["model"]

    def release(self, role: str) -> None:
        """Unload a checkpoint's weights (a series loads one checkpoint at a time)."""
        if role in self.runners:
            self.runners[role].release()

    def prefetch_judgments(self, roles: list[str]) -> None:
        """Judge every answer the tests declared, in one batched pass before the first test."""
        for role in roles:
            declared = self.judged_cases[plan_role(role)]
            if not declared or (role == "baseline" and not self.settings.baseline):
                continue
            runner = self.runner(role)
            inputs = []
            for case in declared.values():
                answers = [[c.text for c in runner.complete(runner.requests_for([p]))]
                           for p in case.prompts]
                inputs.extend(case.judge_inputs(answers))
            if inputs:
                self.judge_runner().prefetch(inputs, self.share)

    def make_plan(self) -> RunPlan:
        """The gates' plan (from the selected prompt sets when collection found no gate)."""
        if self.plan is None:
            from .collection import run_gates  # it reads the run: imported late

            gates = list(self.gates.values()) or run_gates(self.config)
            if self.settings.max_insecure_code_rate is None:  # report only: no rounds
                gates = [g for g in gates if g.group != "code"]
            gated = {p for g in gates for c in g.cases for p in c.prompts}
            other = sum(p.samples for p in self.plans["model"].prompts if p not in gated)
            seconds, source = read_speed(self.speed_path(), self.settings)
            self.plan = make_plan(gates, self.settings, PROFILES[self.settings.profile].gate_budget,
                                  other, bool(self.settings.baseline), seconds, source)
        return self.plan

    def speed_path(self) -> Path:
        return (self.settings.cache_dir or user_cache_dir()) / "throughput.json"

    def looks(self, gate: PooledGate, role: str = "model") -> tuple[int, float]:
        """(the sample multiplier its group reached for this checkpoint, the per-look
        confidence of its group)."""
        plan = self.make_plan()
        multiplier = self.reached.get(role, {}).get(gate.group,
                                                    plan.rounds.get(gate.group, [1])[0])
        return multiplier, per_look_confidence(self.settings.confidence, plan.looks(gate.group))

    def evidence(self, gate: PooledGate, role: str = "model") -> tuple[list[Case], float]:
        """A gate's cases at the samples its group reached, and the per-look confidence."""
        multiplier, confidence = self.looks(gate, role)
        return [scaled(c, multiplier) for c in gate.cases], confidence

    def reached_case(self, case: Case, role: str = "model") -> Case:
        """A case at the samples its group of gates reached (diagnostics read the gates'
        answers rather than drawing their own)."""
        group = {"free_form": "free_form", "harmful_request": "harmful", "code_task": "code"}
        return scaled(case, self.reached.get(role, {}).get(group.get(case.item.kind, ""), 1))

    def run_rounds(self, model_role: str = "model") -> None:
        """Sample the gates' cases for one checkpoint round by round, every undecided
        group's next round in one batch, until each group's gates decide or its planned
        rounds are spent; each gate's last outcome is kept in `outcomes`."""
        plan = self.make_plan()
        plan_gates = [p.gate for p in plan.gates]
        roles = [model_role] + (["baseline"] if self.settings.baseline else [])
        reached = self.reached.setdefault(model_role, {})
        decided = self.outcomes.setdefault(model_role, {})
        pending = {group: list(rounds) for group, rounds in plan.rounds.items()}
        while pending:
            step = {group: rounds.pop(0) for group, rounds in pending.items()}
            cases = {group: {c.id: scaled(c, step[group]) for g in plan_gates
                             if g.group == group for c in g.cases} for group in step}
            prompts = [p for found in cases.values() for c in found.values() for p in c.prompts]
            tallies: dict[str, dict[str, Any]] = {}
            for role in roles:
                runner = self.runner(role)
                self._generate(runner, prompts)
                tallies[role] = self._judge_cases(runner, [c for found in cases.values()
                                                           for c in found.values()])
            for group, multiplier in step.items():
                reached[group] = multiplier
                confidence = per_look_confidence(self.settings.confidence, plan.looks(group))
                undecided = False
                for gate in (g for g in plan_gates if g.group == group):
                    ours = [tallies[model_role][c.id] for c in gate.cases]
                    theirs = [tallies["baseline"][c.id] for c in gate.cases] \
                        if "baseline" in tallies else None
                    outcome = decide_gate(gate, ours, self.settings, confidence, theirs)
                    decided[gate.id] = outcome
                    # a diagnostic reads what the gates' rounds sampled; it never asks for more
                    undecided |= gate.role == "gate" and outcome.decision == "inconclusive"
                if not undecided or not pending[group]:
                    del pending[group]

    def _generate(self, runner: ModelRunner, prompts: list[Prompt]) -> None:
        share = self.share
        try:
            runner.prefetch(prompts, [], share)
            if share.count > 1:
                wait_for_peers(runner, Plan(dict.fromkeys(prompts)))
        except EndpointError as error:
            pytest.exit(f"misalignment: {error}", returncode=pytest.ExitCode.INTERRUPTED)

    def _judge_cases(self, runner: ModelRunner, cases: list[Case]) -> dict[str, Any]:
        answers = {c.id: [[x.text for x in runner.complete(runner.requests_for([p]))]
                          for p in c.prompts] for c in cases}
        code = [c for c in cases if c.item.kind == "code_task"]
        judged = [c for c in cases if c.item.kind != "code_task"]
        found = {c.id: code_tally(c, answers[c.id]) for c in code}
        if judged:
            judge = self.judge_runner()
            judge.prefetch([i for c in judged for i in c.judge_inputs(answers[c.id])],
                           self.share)
            found.update((c.id, tally_of(c, answers[c.id], judge.judge_many)) for c in judged)
        return found

    def _split_cpu_threads(self) -> None:
        """xdist workers on one CPU each take their part of the cores, not all of them."""
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is None or self.settings.device.startswith("cuda"):
            return
        import os

        import torch

        workers = int(workerinput["workercount"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

    @contextlib.contextmanager
    def progress_stream(self) -> Iterator[IO[str] | None]:
        """Progress bars go to the terminal, around pytest's output capturing."""
        capture = self.config.pluginmanager.getplugin("capturemanager")
        import sys

        if capture is None:
            yield sys.stderr
            return
        with capture.global_and_fixture_disabled():
            yield sys.stderr


RUN_KEY = pytest.StashKey[MisalignmentRun]()


def wait_for_peers(runner: ModelRunner, plan: Plan, stall_seconds: float = 300.0) -> None:
    """Under xdist, wait while other workers fill in their shares of the plan.

    If no new result shows up for `stall_seconds` (a worker died), this worker takes over.
    """
    requests = runner.requests_for(list(plan.prompts))
    pairs = ([] if runner.logprobs_problem else
             [r for probe in plan.probes for r in probe.requests()])
    last_count, last_change = -1, time.monotonic()
    while True:
        missing = len(requests) - len(runner.complete(requests, Share.NOTHING))
        missing += len(pairs) - len(runner.score(pairs, Share.NOTHING))
        if missing == 0:
            return
        if missing != last_count:
            last_count, last_change = missing, time.monotonic()
        elif time.monotonic() - last_change > stall_seconds:
            return  # the fixture's calls generate the rest
        time.sleep(1.0)


def show_plan(config: pytest.Config, run: MisalignmentRun) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    lines = run.make_plan().lines(run.settings, bool(run.settings.baseline),
                                  run.judge_info.get("error_rates")
                                  or expected_error_rates(run.settings))
    if terminal is None:
        return
    lines += extra_plan_lines(run)
    terminal.write_sep("-", "misalignment plan")
    for line in lines:
        terminal.write_line(line)


def prefetch(session: pytest.Session) -> None:
    """Generate and judge everything the selected tests declared before the first of them
    runs, then the gates' rounds; a judge that cannot work raises JudgeError.

    Every xdist worker does its share here, even one that is handed no test, so peers
    waiting for that share are never left waiting.
    """
    run = session.config.stash[RUN_KEY]
    if session.config.option.collectonly:
        return
    if run.gates and not hasattr(session.config, "workerinput"):
        show_plan(session.config, run)
    baseline_plan = run.plans["baseline"]
    if run.settings.baseline and (baseline_plan.prompts or baseline_plan.probes):
        run.runner("baseline")
    run.prefetch_judgments(["baseline"])
    declared = run.plans["model"]
    # a series: one checkpoint loaded at a time, only those the selected tests run on
    for role in [r for r in run.model_roles if r in run.selected or not run.members]:
        if declared.prompts or declared.probes:
            run.runner(role)
        run.prefetch_judgments([role])
        if run.gates:
            run.run_rounds(role)
        if run.shifts.wanted and run.share.count == 1:  # xdist workers: when a test asks
            run.shifts.measure(role)  # while its weights are loaded
        if run.members:
            run.release(role)
