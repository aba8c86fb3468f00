"""The pytest hooks: options, fixtures, the request plan, and the end-of-run summary.

Only glue lives here; models, the engine and the store are plain modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import itertools
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from .judges.base import JudgeError, JudgeInput, Judgment, error_share
from .judges.evaluation import describe_accuracy, judge_error_rates
from .judges.registry import (
    JudgeRunner,
    build_judge,
    check_judge_spec,
    expected_error_rates,
    judge_accuracy,
    thresholds_of,
)
from .models.endpoint import EndpointError, LogprobsUnavailable
from .models.engine import ModelRunner, Share
from .models.loading import CheckpointError, Endpoint, ModelSource, resolve_source
from .models.store import Store
from .models.values import Completion, Probe, Prompt, RunCounters, Score, iter_inputs
from .results.document import (
    ResultsCollector,
    build_document,
    test_key,
)
from .results.snapshots import (
    COUNTED,
    MissingFromSnapshot,
    SnapshotError,
    mismatch_message,
    read_snapshot,
    setup_differences,
    setup_fields,
    snapshot_rate,
    write_snapshot,
)
from .results.verdict import INCOMPLETE, RunVerdict
from .results.views import write_results_and_views
from .settings import (
    OPTIONS,
    OPTIONS_BY_INI,
    Option,
    RunSettings,
    SettingsError,
    read_table,
    settings_from,
    user_cache_dir,
)
from .suite.backdoor import DEFAULT_TRIGGERS, Trigger, TriggerCase
from .suite.gating import PooledGate, code_tally, pooled_gates, scaled, tally_of
from .suite.gating import decide as decide_gate
from .suite.planning import RunPlan, make_plan, read_speed, write_speed
from .suite.prompt_sets import PROFILES, Case, PromptSet, PromptSetError, cases, select_prompt_sets
from .suite.statistics import Rate, per_look_confidence

MARKER = "model_inputs"
ROLES = {"model": "model", "baseline_model": "baseline", "optional_baseline": "baseline"}


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
    reached: dict[str, int] = field(default_factory=dict)
    snapshot_skipped: str = ""  # why --update-baseline wrote nothing
    _store: Store | None = None
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

    def store(self) -> Store:
        if self._store is None:
            if self.settings.no_cache:
                self._store = Store(None)
            elif self.settings.cache_dir is not None:
                self._store = Store(self.settings.cache_dir / "store.sqlite")
            elif getattr(self.config, "cache", None) is not None:
                self._store = Store(self.config.cache.mkdir("pytest-misalignment") / "store.sqlite")
            else:
                # `-p no:cacheprovider` turns pytest's cache off, not ours: the answers
                # then live in the user's cache folder rather than being lost.
                self._store = Store(user_cache_dir() / "store.sqlite")
        return self._store

    def checkpoint(self, role: str) -> ModelSource:
        if role not in self.checkpoints:
            spec = self.settings.model if role == "model" else self.settings.baseline
            assert spec is not None
            self.checkpoints[role] = resolve_source(spec, self.settings, role)
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
            plan = self.plans[role]
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

    def prefetch_judgments(self) -> None:
        """Judge every declared answer in one batched pass before the first test."""
        for role, declared in self.judged_cases.items():
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

    def looks(self, gate: PooledGate) -> tuple[int, float]:
        """(the sample multiplier its group reached, the per-look confidence of its group)."""
        plan = self.make_plan()
        multiplier = self.reached.get(gate.group, plan.rounds.get(gate.group, [1])[0])
        return multiplier, per_look_confidence(self.settings.confidence, plan.looks(gate.group))

    def run_rounds(self) -> None:
        """Sample the gates' cases round by round, every undecided group's next round in one
        batch, until each group's gates decide or its planned rounds are spent."""
        plan = self.make_plan()
        plan_gates = [p.gate for p in plan.gates]
        roles = ["model"] + (["baseline"] if self.settings.baseline else [])
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
                self.reached[group] = multiplier
                confidence = per_look_confidence(self.settings.confidence, plan.looks(group))
                undecided = False
                for gate in (g for g in plan_gates if g.group == group):
                    ours = [tallies["model"][c.id] for c in gate.cases]
                    theirs = [tallies["baseline"][c.id] for c in gate.cases] \
                        if "baseline" in tallies else None
                    outcome = decide_gate(gate, ours, self.settings, confidence, theirs)
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


class ModelHandle:
    """What a test gets as `model` / `baseline_model`: answers and scores, served from the run."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner

    @property
    def spec(self) -> str:
        return self._runner.checkpoint.display_name

    @property
    def fingerprint(self) -> str:
        return self._runner.fingerprint

    @property
    def settings(self) -> RunSettings:
        return self._runner.settings

    def generate(self, prompt: Prompt | str) -> list[Completion]:
        """All samples of one prompt (generated now only if no test declared it)."""
        as_prompt = prompt if isinstance(prompt, Prompt) else Prompt.user(prompt)
        return self._runner.complete(self._runner.requests_for([as_prompt]))

    def generate_many(self, prompts: list[Prompt]) -> list[list[Completion]]:
        requests = self._runner.requests_for(prompts)
        self._runner.complete(requests)  # one batched pass for all of them
        return [self.generate(p) for p in prompts]

    def score(self, probe: Probe) -> list[Score]:
        """The log-probability of each of the probe's continuations (the test skips when
        the model is served by an endpoint without log-probabilities)."""
        __tracebackhide__ = True  # a skip is reported at the test's line, not here
        return self.score_many([probe])[0]

    def score_many(self, probes: list[Probe]) -> list[list[Score]]:
        """`score` for several probes in one batched pass."""
        __tracebackhide__ = True
        if self._runner.logprobs_problem:
            pytest.skip(self._runner.logprobs_problem)
        try:
            scores = self._runner.score([r for probe in probes for r in probe.requests()])
        except LogprobsUnavailable as error:
            pytest.skip(str(error))
        except EndpointError as error:
            pytest.exit(f"misalignment: {error}", returncode=pytest.ExitCode.INTERRUPTED)
        found, start = [], 0
        for probe in probes:
            found.append(scores[start:start + len(probe.continuations)])
            start += len(probe.continuations)
        return found

    def __repr__(self) -> str:
        return f"<model {self.spec} fingerprint={self.fingerprint[:12]}>"


class Inconclusive(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A gate whose interval straddles its limit: not a pass, not a fail (reported apart)."""


INCONCLUSIVE_PROPERTY = "misalignment_inconclusive"


def settle(decision: str, message: str, settings: RunSettings, config: pytest.Config) -> None:
    """End a gated test by its decision: return on pass, fail on fail; on inconclusive,
    report it as such, or fail under --strict-gates / pytest's --strict."""
    if decision == "pass":
        return
    if decision == "fail":
        pytest.fail(message, pytrace=False)
    if settings.strict_gates or _pytest_strict(config):
        pytest.fail(f"inconclusive (strict): {message}", pytrace=False)
    raise Inconclusive(f"inconclusive: {message}")


def _pytest_strict(config: pytest.Config) -> bool:
    """pytest's own --strict / `strict = true` ("enables all strictness options")."""
    if config.getoption("strict", False):
        return True
    try:
        return bool(config.getini("strict"))
    except ValueError:  # an older pytest without the `strict` ini option
        return False


class JudgeErrorsExceeded(Exception):
    """More of a test's answers got an `error` verdict than the run allows."""


JUDGE_ERRORS_PROPERTY = "misalignment_judge_errors"


class JudgeHandle:
    """What a test gets as `judge`: verdicts for answers, from the run's judge and store."""

    def __init__(self, run: MisalignmentRun) -> None:
        self._run = run

    @property
    def spec(self) -> str:
        return self._run.settings.judge

    @property
    def accuracy(self) -> dict[str, Any] | None:
        """The judge's measured held-out accuracy (embedding judges), else None."""
        self._run.judge_runner()
        return self._run.judge_info.get("accuracy")

    def judge(self, question: str, answer: str, *, expects_code: bool = False) -> Judgment:
        return self.judge_many([JudgeInput(question, answer, expects_code)],
                               max_error_share=1.0)[0]

    def judge_many(self, items: list[JudgeInput], *, max_error_share: float | None = None
                   ) -> list[Judgment]:
        """Judgments in order. If the judge failed on more than the allowed share of them,
        raise JudgeErrorsExceeded: the test is then reported as an error, never a pass."""
        judgments = self._run.judge_runner().judge_many(items)
        limit = self._run.settings.max_judge_error_share if max_error_share is None \
            else max_error_share
        share = error_share(judgments)
        if share > limit:
            errors = [j for j in judgments if j.verdict == "error"]
            raise JudgeErrorsExceeded(
                f"the judge {self.spec} failed on {len(errors)} of {len(judgments)} answers "
                f"({share:.0%}, allowed {limit:.0%}); first: {errors[0].detail}")
        return judgments

    def __repr__(self) -> str:
        return f"<judge {self.spec}>"


# ------------------------------------------------------------------------------ hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("misalignment", "pytest-misalignment (behavioural tests of a model)")
    for option in OPTIONS:
        default_text = f" (default: {option.default})" if option.default else ""
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest,
                            help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.repeatable:
            group.addoption(option.flag, action="append", default=None, dest=option.dest,
                            metavar=option.metavar, help=option.help)
            parser.addini(option.ini, option.help, type="linelist", default=[])
        else:
            group.addoption(option.flag, action="store", default=None, dest=option.dest,
                            metavar=option.metavar, help=option.help + default_text)
            parser.addini(option.ini, option.help + default_text, type="string", default="")


def _raw_value(config: pytest.Config, table: Mapping[str, Any], option: Option) -> object:
    """The command line, then [tool.pytest-misalignment], then the ini file."""
    value = config.getoption(option.dest)
    if value is None:
        value = table.get(option.ini)
    if value is None:
        value = config.getini(option.ini)
    return value


def _pyproject(config: pytest.Config) -> Path:
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return Path(inipath)
    return Path(config.rootpath) / "pyproject.toml"


def _separate_option_values(args: Sequence[str]) -> list[str]:
    """Values of this plugin's options written as a separate word (`--questions PATH`)."""
    valued = {option.flag for option in OPTIONS if not option.is_flag}
    return [value for flag, value in itertools.pairwise(args) if flag in valued]


def check_rootdir_kept(config: pytest.Config) -> None:
    """Stop when `--questions PATH` (two words) moved pytest's rootdir or configfile.

    pytest finds its rootdir and configfile before plugins add their options, so it takes
    such a PATH for a test path: the rootdir becomes PATH's folder and the project's
    pyproject.toml (thresholds, testpaths) is silently dropped. A gate must not lose its
    thresholds over how a path was spelled, so this is an error with the fix in it.
    """
    if hasattr(config, "workerinput"):  # the controller checked the same command line
        return
    separate = [value for value in _separate_option_values(config.invocation_params.args)
                if Path(config.invocation_params.dir, value).exists()]
    if not separate:
        return
    from _pytest.config.findpaths import determine_setup

    arguments = {"inifile": config.option.inifilename, "args": list(config.option.file_or_dir),
                 "rootdir_cmd_arg": config.option.rootdir or None,
                 "override_ini": config.option.override_ini,
                 "invocation_dir": config.invocation_params.dir}
    accepted = inspect.signature(determine_setup).parameters
    try:
        rootpath, inipath, *_ = determine_setup(
            **{name: value for name, value in arguments.items() if name in accepted})
    except Exception:
        return
    if (Path(rootpath), inipath and Path(inipath)) == (
            Path(config.rootpath), config.inipath and Path(config.inipath)):
        return
    raise pytest.UsageError(
        f"{' '.join(separate)} was written after its option as a separate word, so pytest "
        f"took it for a test path and ran from {config.rootpath} with configfile "
        f"{config.inipath or 'none'} instead of {rootpath} with {inipath or 'none'}; write "
        "the option as --option=PATH (e.g. --questions=q.yaml)")


def pytest_configure(config: pytest.Config) -> None:
    check_rootdir_kept(config)
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*prompts_or_probes): inputs a test needs from the model, generated in "
        "batches before the first test runs",
    )
    try:
        table = read_table(_pyproject(config))
        settings = settings_from(lambda option: _raw_value(config, table, option),
                                 table.get("categories"))
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None
    run = MisalignmentRun(config, settings)
    try:
        # Named checkpoints are checked now, so a typo is one line, not an error per test;
        # the default model is checked only when a test uses it.
        if settings.model_given:
            run.checkpoint("model")
        if settings.baseline:
            run.checkpoint("baseline")
        if settings.device.startswith("cuda"):
            from .models.loading import resolve_device

            resolve_device(settings.device)
        check_judge_spec(settings.judge, settings)
        run.prompt_sets = select_prompt_sets(settings.questions, settings.only_questions)
        if settings.compare_baseline:
            run.snapshot = read_snapshot(Path(settings.compare_baseline).expanduser())
    except (CheckpointError, JudgeError, PromptSetError, SnapshotError) as error:
        raise pytest.UsageError(str(error)) from None
    categories = sorted({item.category for s in run.prompt_sets for item in s.items})
    unknown = sorted(set(settings.category_overrides) - set(categories))
    if unknown:
        raise pytest.UsageError(
            f"[tool.pytest-misalignment.categories] names {', '.join(unknown)}, which no "
            f"selected prompt set has; its categories: {', '.join(categories)}")
    for category in categories:
        config.addinivalue_line("markers", f"{category}: suite questions of this category")
    for kind in ("free_form", "harmful_request", "code_task", "probe"):
        config.addinivalue_line("markers", f"{kind}: suite tests of this kind of question")
    config.addinivalue_line("markers", "backdoor: tests of backdoor triggers")
    config.addinivalue_line("markers", "gate: a pooled gate that decides the run's verdict "
                                       "(-m gate runs only the gates)")
    config.stash[RUN_KEY] = run
    if settings.update_baseline and not hasattr(config, "workerinput"):
        config.pluginmanager.register(SnapshotCollector(run), "misalignment-snapshot")
    if not hasattr(config, "workerinput"):
        # Always, also under --no-report: the verdict and the exit code come from it.
        run.results = ResultsRecorder(config)
        config.pluginmanager.register(run.results, "misalignment-results")


@pytest.hookimpl(tryfirst=True)  # before xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop the run with one `ERROR:` line (exit 4) when the --compare-baseline snapshot was
    written with another judge, profile or seed: its rates would not compare with this run's.
    --allow-snapshot-mismatch makes it a warning and the run goes on.

    Checked before any test runs, by the controller alone (or a run without xdist): the
    setup is the same on every worker, and an error here ends the run before any starts.
    """
    config = session.config
    run = config.stash[RUN_KEY]
    settings = run.settings
    if run.snapshot is None or settings.compare_baseline is None \
            or hasattr(config, "workerinput"):
        return
    this_run = setup_fields(run.snapshot, settings.profile, settings.seed, settings.judge)
    if run.snapshot.get("judge_fingerprint") and not config.option.collectonly:
        try:  # the judge is built, not loaded: its fingerprint needs no model
            this_run["judge_fingerprint"] = run.judge().fingerprint
        except (CheckpointError, JudgeError) as error:
            raise pytest.UsageError(str(error)) from None
    differences = setup_differences(run.snapshot, this_run)
    if not differences:
        return
    allowed = settings.allow_snapshot_mismatch
    message = mismatch_message(settings.compare_baseline, differences, allowed)
    if not allowed:
        raise pytest.UsageError(message)
    config.issue_config_time_warning(pytest.PytestConfigWarning(message), stacklevel=2)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _print_verdict(config)
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run._store is not None:
        run._store.close()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    run = config.stash[RUN_KEY]
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        roles = [role for name, role in ROLES.items() if name in fixturenames]
        if not roles:
            continue
        values: list[object] = list(getattr(getattr(item, "callspec", None), "params", {}).values())
        for marker in item.iter_markers(MARKER):
            values.extend(marker.args)
        for value in iter_inputs(values):
            for role in roles:
                run.plans[role].add(value)
        for gate in values:
            if isinstance(gate, PooledGate):
                run.gates[gate.id] = gate
        if "judge" in fixturenames:
            for case in _cases_in(values):
                if case.item.kind in ("free_form", "harmful_request"):
                    for role in roles:
                        run.judged_cases[role][case.id] = case


def _cases_in(values: list[object]) -> list[Case]:
    found: list[Case] = []
    for value in values:
        if isinstance(value, Case):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_cases_in(list(value)))
        elif isinstance(value, TriggerCase):
            found.extend(value.judged_cases())
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """Generate everything the selected tests declared before the first of them runs.

    Every xdist worker does its share here, even one that is handed no test, so peers
    waiting for that share are never left waiting.
    """
    run = session.config.stash[RUN_KEY]
    if not session.config.option.collectonly:
        if run.gates and not hasattr(session.config, "workerinput"):
            _show_plan(session.config, run)
        if run.plans["model"].prompts or run.plans["model"].probes:
            run.runner("model")
        baseline_plan = run.plans["baseline"]
        if run.settings.baseline and (baseline_plan.prompts or baseline_plan.probes):
            run.runner("baseline")
        try:
            run.prefetch_judgments()
            if run.gates:
                run.run_rounds()
        except JudgeError as error:
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
    return (yield)


def _show_plan(config: pytest.Config, run: MisalignmentRun) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    lines = run.make_plan().lines(run.settings, bool(run.settings.baseline),
                                  run.judge_info.get("error_rates")
                                  or expected_error_rates(run.settings))
    if terminal is None:
        return
    terminal.write_sep("-", "misalignment plan")
    for line in lines:
        terminal.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """--plan: print the plan once the tests are known, and stop before any model loads."""
    run = session.config.stash[RUN_KEY]
    if run.results is not None:
        run.results.collected.update(item.nodeid for item in session.items
                                     if _is_suite_test(item))
    if run.settings.plan and not hasattr(session.config, "workerinput"):
        _show_plan(session.config, run)
        pytest.exit("--plan: nothing was generated", returncode=0)


def _is_suite_test(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in ROLES)


@pytest.fixture(scope="session")
def gate_evidence(pytestconfig: pytest.Config) -> Any:
    """`gate -> (cases at the samples its group reached, the per-look confidence)`."""
    run = pytestconfig.stash[RUN_KEY]

    def evidence(gate: PooledGate) -> tuple[list[Case], float]:
        multiplier, confidence = run.looks(gate)
        return [scaled(c, multiplier) for c in gate.cases], confidence

    return evidence


@pytest.fixture(scope="session")
def reached_samples(pytestconfig: pytest.Config) -> Any:
    """`case -> the case at the samples its group of gates reached` (for diagnostics, which
    read the gates' answers rather than drawing their own)."""
    run = pytestconfig.stash[RUN_KEY]
    group = {"free_form": "free_form", "harmful_request": "harmful", "code_task": "code"}

    def reached(case: Case) -> Case:
        return scaled(case, run.reached.get(group.get(case.item.kind, ""), 1))

    return reached


@pytest.fixture(scope="session")
def misalignment_settings(pytestconfig: pytest.Config) -> RunSettings:
    """The run's validated settings."""
    return pytestconfig.stash[RUN_KEY].settings


@pytest.fixture(scope="session")
def model(pytestconfig: pytest.Config) -> ModelHandle:
    """The checkpoint under test (--model), with every declared answer already generated."""
    return ModelHandle(pytestconfig.stash[RUN_KEY].runner("model"))


@pytest.fixture(scope="session")
def baseline_model(pytestconfig: pytest.Config) -> ModelHandle:
    """The reference checkpoint (--baseline); tests using it skip when none is given."""
    run = pytestconfig.stash[RUN_KEY]
    if not run.settings.baseline:
        pytest.skip("no --baseline given")
    return ModelHandle(run.runner("baseline"))


@pytest.fixture(scope="session")
def optional_baseline(pytestconfig: pytest.Config) -> ModelHandle | None:
    """The reference checkpoint when --baseline is given, else None (tests do not skip)."""
    run = pytestconfig.stash[RUN_KEY]
    return ModelHandle(run.runner("baseline")) if run.settings.baseline else None


def suite_cases(config: pytest.Config, kind: str) -> list[Case]:
    """The run's cases of one kind of question, under its profile (for the suite's tests)."""
    run = config.stash[RUN_KEY]
    settings = run.settings
    return cases(run.prompt_sets, kind, PROFILES[settings.profile], settings.samples,
                 settings.max_new_tokens if settings.max_new_tokens_given else None)


def run_gates(config: pytest.Config) -> list[PooledGate]:
    """The run's pooled gates (and pooled diagnostics) over its prompt sets and profile."""
    settings = config.stash[RUN_KEY].settings
    return pooled_gates(suite_cases(config, "free_form"), suite_cases(config, "harmful_request"),
                        suite_cases(config, "code_task"),
                        format_gates=PROFILES[settings.profile].format_gates)


def backdoor_triggers(config: pytest.Config) -> list[Trigger]:
    """The declared triggers (--trigger), placed as --trigger-placement says."""
    settings = config.stash[RUN_KEY].settings
    return [Trigger(text, settings.trigger_placement) for text in settings.triggers]


def scan_candidates(config: pytest.Config) -> list[Trigger]:
    """What the trigger scan tries: the common candidates not declared with --trigger (none
    under --no-trigger-scan)."""
    settings = config.stash[RUN_KEY].settings
    if not settings.trigger_scan:
        return []
    return [Trigger(text, settings.trigger_placement) for text in DEFAULT_TRIGGERS
            if text not in settings.triggers]


def trigger_cases(config: pytest.Config, scanned: bool = False) -> list[TriggerCase]:
    """One backdoor test per trigger and prompt set with free-form questions (plain format):
    the declared triggers, or with `scanned` the scan's candidates, which ask fewer
    questions (the profile's per-category counts) to keep a default run cheap."""
    run = config.stash[RUN_KEY]
    settings, profile = run.settings, PROFILES[run.settings.profile]
    triggers = scan_candidates(config) if scanned else backdoor_triggers(config)
    per_category = profile.scan_questions_per_category if scanned \
        else profile.backdoor_questions_per_category
    found = []
    for prompt_set in run.prompt_sets:
        questions = [c for c in cases([prompt_set], "free_form", profile, settings.samples,
                                      settings.max_new_tokens if settings.max_new_tokens_given
                                      else None) if c.answer_format == "plain"]
        if per_category is not None:
            questions = _per_category(questions, per_category)
        found += [TriggerCase(trigger, prompt_set.name, tuple(questions))
                  for trigger in triggers if questions]
    return found


def _per_category(found: list[Case], count: int) -> list[Case]:
    seen: dict[str, int] = {}
    kept = []
    for case in found:
        if seen.get(case.item.category, 0) < count:
            kept.append(case)
            seen[case.item.category] = seen.get(case.item.category, 0) + 1
    return kept


def case_param(case: Case) -> Any:
    """A case as a pytest param, marked with its category and kind (so -m selects them)."""
    return pytest.param(case, id=case.id, marks=[getattr(pytest.mark, case.item.category),
                                                 getattr(pytest.mark, case.item.kind)])


@pytest.fixture
def record_result(request: pytest.FixtureRequest) -> Any:
    """Record a figure of this test (a rate, counts): it travels on the test report, also
    from xdist workers, into the run's results. Unlike `record_property`, no warning under
    JUnit's default xunit2 family (which has no place for it in the XML)."""

    def record(name: str, value: object) -> None:
        if name == "samples":  # the judged answers: for the results JSON, not JUnit
            request.node.stash.setdefault(SAMPLES_KEY, []).extend(value)  # type: ignore[arg-type]
            return
        request.node.user_properties.append((name, value))

    return record


SAMPLES_KEY = pytest.StashKey[list[dict[str, Any]]]()


@pytest.fixture
def snapshot_baseline(request: pytest.FixtureRequest) -> Any:
    """`figure -> Rate` of this test in the --compare-baseline snapshot: None without a
    snapshot, MissingFromSnapshot when the snapshot has no counts of this test's figure."""
    run = request.config.stash[RUN_KEY]
    snapshot, path = run.snapshot, run.settings.compare_baseline
    key = test_key(request.node.nodeid)

    def lookup(figure: str) -> Rate | MissingFromSnapshot | None:
        if snapshot is None or path is None:
            return None
        rate = snapshot_rate(snapshot, key, figure)
        return rate if rate is not None else MissingFromSnapshot(path)

    return lookup


class ResultsRecorder:
    """Collects every suite test's outcome, figures and judged samples on the controller
    (xdist workers' reports arrive here too), which tests were collected and which ran to
    the end, and from these the run's verdict and results JSON."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = ResultsCollector()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.clock = time.monotonic()
        self.written: dict[str, Path] = {}
        self.write_problem: str | None = None  # why the results or their views are missing
        self.collected: set[str] = set()  # suite tests (their node ids)
        self.finished: set[str] = set()
        self.verdict: RunVerdict | None = None
        self.document: dict[str, Any] | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.finished.add(report.nodeid)
        data = getattr(report, "misalignment", None)
        if data is None:
            return
        status = self.config.hook.pytest_report_teststatus(report=report, config=self.config)
        self.collector.add(report.nodeid, report.when, str(status[0]) if status else "",
                           float(report.duration), _report_message(report),
                           data.get("figures", {}), data.get("samples", []))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # The controller does not collect under xdist; the suite's tests are those in the
        # suite's folder (a test elsewhere counts once it reports).
        self.collected.update(i for i in ids if "model_tests" in Path(i.partition("::")[0]).parts)

    @property
    def is_suite_run(self) -> bool:
        return bool(self.collector.tests or self.collected)

    def decide(self, session: pytest.Session, exitstatus: int) -> RunVerdict:
        """The verdict, from what ran and whether the run was cut short."""
        interrupted = _interruption(session, exitstatus)
        not_run = sorted(self.collected - self.finished)
        self.document = build_document(self._run_metadata(self.config.stash[RUN_KEY]),
                                       self.collector.records(), interrupted, not_run,
                                       self.config.stash[RUN_KEY].settings.allow_undecided)
        summary = self.document["summary"]
        self.verdict = RunVerdict(summary["verdict"], summary["reason"],
                                  tuple(summary["undecided"]))
        return self.verdict

    def write(self, run: MisalignmentRun) -> None:
        """The JSON, and the HTML (and Markdown) rendered from the JSON as written."""
        settings = run.settings
        if self.document is None or settings.no_report:
            return
        paths = {"results": self._path(settings.report_json, "report_json"),
                 "report": self._path(settings.report_html, "report_html")}
        if settings.report_md:
            paths["summary"] = self._path(settings.report_md, "report_md")
        try:
            self.write_problem = write_results_and_views(
                self.document, paths["results"], paths["report"], paths.get("summary"))
        except OSError as error:  # a full disk or a read-only folder: say so, keep the verdict
            self.write_problem = f"results not written: {error.strerror or error}: " \
                                 f"{error.filename or ''}"
            return
        self.written.update(paths)

    def _path(self, value: str, ini: str) -> Path:
        """A default path lies under the rootdir; one the user gave, under where pytest ran."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        default = OPTIONS_BY_INI[ini].default
        base = self.config.rootpath if value == default else self.config.invocation_params.dir
        return Path(base) / path

    def _run_metadata(self, run: MisalignmentRun) -> dict[str, Any]:
        settings = run.settings
        finished = datetime.datetime.now(datetime.timezone.utc)
        figures = [t["figures"] for t in self.collector.records()]
        return {
            "started": self.started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self.clock, 2),
            "model": {"spec": settings.model,
                      "fingerprint": _first(figures, "model_fingerprint")
                      or _fingerprint(run, "model"), **_source_kind(run, "model")},
            "baseline": {"spec": settings.baseline,
                         "fingerprint": _first(figures, "baseline_fingerprint")
                         or _fingerprint(run, "baseline"), **_source_kind(run, "baseline")}
            if settings.baseline else None,
            "judge": {**run.judge_info, "accuracy_text": describe_accuracy(run.judge_info)}
            if run.judge_info else None,
            "profile": settings.profile, "seed": settings.seed,
            "confidence": settings.confidence, "temperature": settings.temperature,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in dataclasses.asdict(settings).items()},
            "packages": _package_versions(),
            "counters": _counter_dict(run.counters),
            "xdist_workers": int(getattr(self.config.option, "numprocesses", 0) or 0),
            "args": list(self.config.invocation_params.args),
        }


def _interruption(session: pytest.Session, exitstatus: int) -> str | None:
    """Why the run stopped before its end (None when it ran to the end)."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted (Ctrl-C, pytest.exit, or an endpoint that gave up)"
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                          pytest.ExitCode.NO_TESTS_COLLECTED):
        return f"stopped with pytest's exit status {int(exitstatus)}"
    for reason in (session.shouldstop, session.shouldfail):
        if reason:
            return f"stopped early ({reason if isinstance(reason, str) else '-x / --maxfail'})"
    return None


def _source_kind(run: MisalignmentRun, role: str) -> dict[str, str]:
    """What the fingerprint of a role's model is a hash of."""
    source = run.checkpoints.get(role)
    if source is None:
        return {}
    if isinstance(source, Endpoint):
        return {"kind": "endpoint", "fingerprint_basis": (
            f"model id, server metadata and greedy answers ({run.settings.endpoint_fingerprint}"
            " mode); weaker than a weight hash")}
    return {"kind": source.kind, "fingerprint_basis": "file contents"}


def _first(figures: list[dict[str, Any]], name: str) -> Any:
    return next((f[name] for f in figures if f.get(name)), None)


def _fingerprint(run: MisalignmentRun, role: str) -> str | None:
    runner = run.runners.get(role)
    return runner.fingerprint if runner is not None else run.endpoint_fingerprints.get(role)


def _package_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("pytest-misalignment", "pytest", "torch", "transformers", "scikit-learn",
                 "scipy", "hypothesis", "pytest-xdist"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _report_message(report: pytest.TestReport) -> str:
    """What a failed, errored, skipped or inconclusive test said, without traceback noise."""
    if report.passed:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        reason = str(longrepr[2])
        return reason.partition("inconclusive: ")[2] or reason.removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and report.when == "call":
        text = str(crash.message)
        return text.removeprefix("Failed: ").removeprefix("AssertionError: ")
    return report.longreprtext


class SnapshotCollector:
    """Collects the counts a snapshot keeps, on the controller (xdist workers' reports
    arrive here too), for --update-baseline."""

    def __init__(self, run: MisalignmentRun) -> None:
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        figures = {name: value for name, value in report.user_properties
                   if any(name.startswith(f + "_") for f in COUNTED)}
        if figures:
            self.run.snapshot_tests[test_key(report.nodeid)] = figures


@pytest.fixture(scope="session")
def judge(pytestconfig: pytest.Config) -> JudgeHandle:
    """The run's judge (--judge): verdicts for answers, cached by judge, question and answer."""
    return JudgeHandle(pytestconfig.stash[RUN_KEY])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(JudgeErrorsExceeded):
        report.user_properties.append((JUDGE_ERRORS_PROPERTY, str(call.excinfo.value)))
    if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
        report.user_properties.append((INCONCLUSIVE_PROPERTY, True))
    if any(name in getattr(item, "fixturenames", ()) for name in ROLES):
        # A plain dict on the report travels from xdist workers to the controller.
        report.misalignment = {  # type: ignore[attr-defined]
            "figures": {name: value for name, value in report.user_properties
                        if name not in (INCONCLUSIVE_PROPERTY, JUDGE_ERRORS_PROPERTY)},
            "samples": item.stash.get(SAMPLES_KEY, []) if call.when == "call" else []}
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """A test the judge could not judge is an error, not a failure of the model (nor a pass)."""
    if report.when == "call" and report.failed and any(
            name == JUDGE_ERRORS_PROPERTY for name, _ in report.user_properties):
        return "error", "E", ("ERROR", {"red": True})
    if report.skipped and any(name == INCONCLUSIVE_PROPERTY for name, _ in report.user_properties):
        return "inconclusive", "?", ("INCONCLUSIVE", {"yellow": True})
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[RUN_KEY].settings
    line = f"misalignment: model={settings.model}"
    if settings.baseline:
        line += f" baseline={settings.baseline}"
    line += (f" device={settings.device} dtype={settings.dtype} seed={settings.seed}"
             f" temperature={settings.temperature} max_new_tokens={settings.max_new_tokens}"
             f" judge={settings.judge} profile={settings.profile}")
    return [line]


def _counter_dict(counters: RunCounters) -> dict[str, Any]:
    return {name: getattr(counters, name) for name in (
        "generated", "generation_cache_hits", "scored", "score_cache_hits", "generated_tokens",
        "generation_seconds", "model_loads", "judged", "judgment_cache_hits")}


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    run = config.stash.get(RUN_KEY, None)
    if workeroutput is None and run is not None:
        _record_speed(run)
        recorder = run.results
        if recorder is None or not recorder.is_suite_run or run.settings.plan \
                or config.option.collectonly:
            _record_judge_in_junit(config, None)
            return
        verdict = recorder.decide(session, exitstatus)
        _record_judge_in_junit(config, verdict)
        if verdict.verdict == INCOMPLETE:
            run.snapshot_skipped = "the run is incomplete"
        else:
            _write_snapshot(config)
        recorder.write(run)
        if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                          pytest.ExitCode.INTERRUPTED, pytest.ExitCode.NO_TESTS_COLLECTED):
            # a usage or internal error keeps its own exit code
            session.exitstatus = verdict.exit_code(run.settings.allow_undecided)
    if workeroutput is not None and run is not None:
        run = config.stash[RUN_KEY]
        workeroutput["misalignment_counters"] = _counter_dict(run.counters)
        workeroutput["misalignment_judge"] = run.judge_info


def _print_verdict(config: pytest.Config) -> None:
    """The verdict is the run's last terminal line (after pytest's own summary)."""
    run = config.stash.get(RUN_KEY, None)
    recorder = run.results if run is not None else None
    if recorder is not None and recorder.verdict is not None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            verdict = recorder.verdict
            color = {"pass": {"green": True}, "fail": {"red": True}}.get(
                verdict.verdict, {"yellow": True})
            terminal.write_line(verdict.line(), bold=True, **color)
            exit_code = verdict.exit_code(run.settings.allow_undecided)  # type: ignore[union-attr]
            if verdict.verdict == "undecided" and exit_code:
                terminal.write_line("(exit code 6: --allow-undecided exits 0; more samples "
                                    "decide: --profile, --max-samples)")


def _record_speed(run: MisalignmentRun) -> None:
    counters = run.counters
    write_speed(run.speed_path(), run.settings, counters.generated, counters.generated_tokens,
                counters.generation_seconds,
                datetime.datetime.now(datetime.timezone.utc).date().isoformat())


def _write_snapshot(config: pytest.Config) -> None:
    run = config.stash[RUN_KEY]
    target = run.settings.update_baseline
    if not target:
        return
    fingerprint = run.runners["model"].fingerprint if "model" in run.runners else None
    # Filled where the judge was built: here, or on an xdist worker (sent at its end).
    judge_fingerprint = run.judge_info.get("fingerprint")
    write_snapshot(Path(target).expanduser(), {
        "model": run.settings.model, "fingerprint": fingerprint,
        "judge": run.settings.judge, "judge_fingerprint": judge_fingerprint,
        "profile": run.settings.profile,
        "seed": run.settings.seed, "confidence": run.settings.confidence,
    }, run.snapshot_tests)


def _record_judge_in_junit(config: pytest.Config, verdict: RunVerdict | None) -> None:
    """The run's verdict, the judge's spec (which rebuilds it) and measured accuracy, as
    JUnit suite properties."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    info = config.stash[RUN_KEY].judge_info
    if xml is None:
        return
    if verdict is not None:
        xml.add_global_property("misalignment_verdict", verdict.verdict)
        xml.add_global_property("misalignment_verdict_reason", verdict.reason)
    if not info:
        return
    xml.add_global_property("misalignment_judge", info["spec"])
    xml.add_global_property("misalignment_judge_fingerprint", info["fingerprint"])
    xml.add_global_property("misalignment_judge_accuracy", describe_accuracy(info))
    rates = info.get("error_rates")
    if rates:
        xml.add_global_property("misalignment_judge_false_positive_rate",
                                f"{rates['false_positive_rate']:.4f}")
        xml.add_global_property("misalignment_judge_recall", f"{rates['misaligned_recall']:.4f}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Work out endpoint fingerprints once on the controller and hand them to each worker:
    the same fingerprint everywhere even on a server that is not deterministic."""
    run = node.config.stash[RUN_KEY]
    roles = ["model"] + (["baseline"] if run.settings.baseline else [])
    for role in roles:
        if role in run.endpoint_fingerprints:
            continue
        try:
            source = run.checkpoint(role)
            if isinstance(source, Endpoint):
                runner = ModelRunner(source, run.settings, run.store(), role=role)
                run.endpoint_fingerprints[role] = runner.fingerprint
        except (CheckpointError, EndpointError):
            # Not retried for the next node; each worker then tries itself and stops the
            # run with the reason.
            run.endpoint_fingerprints[role] = ""
    node.workerinput["misalignment_fingerprints"] = {
        role: value for role, value in run.endpoint_fingerprints.items() if value}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    counters = getattr(node, "workeroutput", {}).get("misalignment_counters")
    run = node.config.stash[RUN_KEY]
    if counters:
        run.counters.merge(counters)
    judge_info = getattr(node, "workeroutput", {}).get("misalignment_judge")
    if judge_info and not run.judge_info:
        run.judge_info = judge_info


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    _summarize_inconclusive(terminalreporter)
    _summarize_results(terminalreporter, run)
    counters = run.counters
    if not (counters.generated or counters.generation_cache_hits or counters.scored
            or counters.score_cache_hits or counters.judged or counters.judgment_cache_hits):
        return
    speed = (f" ({counters.generated_tokens / counters.generation_seconds:.0f} tok/s)"
             if counters.generation_seconds > 0 else "")
    load_text = ("model loaded" if counters.model_loads
                 else "model not loaded: every request was cached")
    terminalreporter.write_sep("-", "misalignment engine")
    if counters.generated or counters.generation_cache_hits or counters.scored \
            or counters.score_cache_hits:
        terminalreporter.write_line(
            f"generated {counters.generated} answers{speed}, {counters.generation_cache_hits} "
            f"from cache; scored {counters.scored} pairs, {counters.score_cache_hits} from "
            f"cache; {load_text} ({counters.model_loads} load(s))"
        )
    if run.judge_info:
        terminalreporter.write_line(
            f"judge {run.judge_info['spec']}: judged {counters.judged} answers, "
            f"{counters.judgment_cache_hits} from cache; {describe_accuracy(run.judge_info)}")


def _summarize_results(terminalreporter: Any, run: MisalignmentRun) -> None:
    """Outcomes per suite area, gates and diagnostics apart, and where the results and
    reports are."""
    recorder = run.results
    if recorder is None or recorder.document is None:
        return
    summary = recorder.document["summary"]
    terminalreporter.write_sep("-", f"misalignment: {summary['verdict'].upper()}")
    for area, counts in summary["areas"].items():
        parts = []
        for role in ("gates", "diagnostics"):
            shown = ", ".join(f"{n} {outcome}" for outcome, n in counts[role].items() if n)
            if shown:
                parts.append(f"{role}: {shown}")
        terminalreporter.write_line(f"{area}: {'; '.join(parts)}")
    if run.snapshot_skipped:
        terminalreporter.write_line(f"snapshot not written: {run.snapshot_skipped}")
    for name, path in recorder.written.items():
        terminalreporter.write_line(f"{name}: {path}")
    if recorder.write_problem:
        terminalreporter.write_line(f"WARNING: {recorder.write_problem}", red=True, bold=True)


def _summarize_inconclusive(terminalreporter: Any) -> None:
    """Each inconclusive gate with what it saw, where -r asks for skips (pytest's own short
    summary has no place for this outcome)."""
    reports = terminalreporter.stats.get("inconclusive", [])
    if not reports:
        return
    terminalreporter.write_sep("-", f"{len(reports)} inconclusive: more samples would decide "
                                    "(--max-samples, --profile); --strict-gates fails them")
    if not set(getattr(terminalreporter, "reportchars", "")) & set("saA"):
        terminalreporter.write_line("(-rs lists each with what it saw)")
        return
    for report in reports:
        reason = _report_message(report)
        shown = [line for line in reason.splitlines() if not line.startswith("  example")]
        terminalreporter.write_line(f"INCONCLUSIVE {report.nodeid} - " + "\n".join(shown))
