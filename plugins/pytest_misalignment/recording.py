"""What a run records: each test's figures and samples, the results document, the
snapshot and the JUnit properties."""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any

import pytest

from .collection import series_outcomes
from .judges.base import JudgeError
from .judges.evaluation import describe_accuracy
from .models.series import STEPS, SeriesMember
from .models.specs import CheckpointError, Endpoint
from .options import OPTIONS_BY_INI
from .outcomes import SAMPLES_KEY, report_message
from .results.document import (
    TestRecords,
    build_document,
    test_key,
)
from .results.snapshots import (
    COUNTED,
    MissingFromSnapshot,
    mismatch_message,
    setup_differences,
    setup_fields,
    snapshot_rate,
    write_snapshot,
)
from .results.verdict import INCOMPLETE, RunVerdict
from .results.views import write_results_and_views
from .session import RUN_KEY, MisalignmentRun
from .suite.planning import write_speed
from .suite.statistics import Rate


class ResultsRecorder:
    """Collects every suite test's outcome, figures and judged samples on the controller
    (xdist workers' reports arrive here too), which tests were collected and which ran to
    the end, and from these the run's verdict and results JSON."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = TestRecords()
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
                           float(report.duration), report_message(report),
                           data.get("figures", {}), data.get("samples", []))
        if data.get("checkpoint"):  # a series run: which checkpoint the test ran on
            self.collector.tests[report.nodeid]["checkpoint"] = data["checkpoint"]

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
                      or _fingerprint(run, "model"), **_source_kind(run, "model")}
            if not run.members else {"spec": " ".join(settings.model_specs), "fingerprint": None,
                                     **_source_kind(run, run.members[0].role)},
            "series": _series(run, self.collector.records()),
            "baseline": {"spec": settings.baseline,
                         "fingerprint": _first(figures, "baseline_fingerprint")
                         or _fingerprint(run, "baseline"), **_source_kind(run, "baseline")}
            if settings.baseline else None,
            "judge": {**run.judge_info, "accuracy_text": describe_accuracy(run.judge_info)}
            if run.judge_info else None,
            "profile": settings.profile, "seed": settings.seed,
            "domain": list(settings.domains),
            "confidence": settings.confidence, "temperature": settings.temperature,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in dataclasses.asdict(settings).items()},
            "packages": _package_versions(),
            "counters": run.counters.as_dict(),
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


def _series(run: MisalignmentRun, tests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A series run's kind, checkpoints in order and first failing one (None otherwise).
    Under xdist the rounds ran on the workers: their tests' figures say it."""
    if not run.members:
        return None
    first = series_outcomes(run).first_failing()
    recorded = [t["figures"] for t in tests if "first_failing" in t["figures"]]

    def fingerprint(member: SeriesMember) -> str | None:
        return _fingerprint(run, member.role) or _first(
            [t["figures"] for t in tests if t.get("checkpoint") == member.label],
            "model_fingerprint")

    kind = run.settings.series or STEPS
    found: dict[str, Any] = {"kind": kind, "members": [
        {"label": m.label, "spec": m.spec, "step": m.step, "fingerprint": fingerprint(m)}
        for m in run.members]}
    # The first checkpoint whose pooled gates fail (steps only): as the series test saw it,
    # or as the rounds here left it; unknown (left out) when neither ran in this process.
    if kind != STEPS:
        found["first_failing"] = None
    elif recorded or run.outcomes:
        found["first_failing"] = recorded[0]["first_failing"] if recorded \
            else first.label if first is not None else None
    return found


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


def record_speed(run: MisalignmentRun) -> None:
    counters = run.counters
    write_speed(run.speed_path(), run.settings, counters.generated, counters.generated_tokens,
                counters.generation_seconds,
                datetime.datetime.now(datetime.timezone.utc).date().isoformat())


def write_run_snapshot(config: pytest.Config) -> None:
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


def record_judge_in_junit(config: pytest.Config, verdict: RunVerdict | None) -> None:
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


def check_snapshot_setup(session: pytest.Session) -> None:
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


def recorder_for(node: pytest.Item) -> Any:
    """`record(name, value)`: a figure of this test (a rate, counts) travels on the test
    report, also from xdist workers, into the run's results; "samples" (the judged answers)
    go to the results JSON only, not JUnit."""

    def record(name: str, value: object) -> None:
        if name == "samples":
            node.stash.setdefault(SAMPLES_KEY, []).extend(value)  # type: ignore[arg-type]
            return
        node.user_properties.append((name, value))

    return record


def snapshot_lookup(run: MisalignmentRun, nodeid: str) -> Any:
    """`figure -> Rate` of a test in the --compare-baseline snapshot: None without a
    snapshot, MissingFromSnapshot when the snapshot has no counts of the test's figure."""
    snapshot, path = run.snapshot, run.settings.compare_baseline
    key = test_key(nodeid)

    def lookup(figure: str) -> Rate | MissingFromSnapshot | None:
        if snapshot is None or path is None:
            return None
        rate = snapshot_rate(snapshot, key, figure)
        return rate if rate is not None else MissingFromSnapshot(path)

    return lookup


def finish_session(session: pytest.Session, exitstatus: int) -> None:
    """On the controller: the verdict, the snapshot, the results and their views, and the
    exit code; on a worker: its counters and judge, for the controller."""
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    run = config.stash.get(RUN_KEY, None)
    if workeroutput is None and run is not None:
        record_speed(run)
        recorder = run.results
        if recorder is None or not recorder.is_suite_run or run.settings.plan \
                or config.option.collectonly:
            record_judge_in_junit(config, None)
            return
        verdict = recorder.decide(session, exitstatus)
        record_judge_in_junit(config, verdict)
        if verdict.verdict == INCOMPLETE:
            run.snapshot_skipped = "the run is incomplete"
        else:
            write_run_snapshot(config)
        recorder.write(run)
        if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                          pytest.ExitCode.INTERRUPTED, pytest.ExitCode.NO_TESTS_COLLECTED):
            # a usage or internal error keeps its own exit code
            session.exitstatus = verdict.exit_code(run.settings.allow_undecided)
    if workeroutput is not None and run is not None:
        run = config.stash[RUN_KEY]
        workeroutput["misalignment_counters"] = run.counters.as_dict()
        workeroutput["misalignment_judge"] = run.judge_info
