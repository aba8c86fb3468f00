"""The pytest hooks and fixtures of pytest-misalignment: each one delegates.

Where the work is: `configuration` (options, settings, the checks before any test),
`session` (the run and its prefetch), `collection` (what tests are parametrized with),
`handles` (the `model` and `judge` fixtures' objects), `outcomes` (inconclusive and judge
errors), `recording` (figures, the results, the snapshot, JUnit), `distributed` (xdist) and
`terminal` (the plan, the summary, the verdict line).
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import Any

import pytest

from . import distributed
from .collection import declare_inputs, is_suite_test, parametrize_series, series_outcomes
from .configuration import add_options, check_rootdir_kept, start_run
from .handles import JudgeHandle, ModelHandle
from .judges.base import JudgeError
from .outcomes import annotate_report, outcome_status
from .recording import check_snapshot_setup, finish_session, recorder_for, snapshot_lookup
from .session import RUN_KEY, prefetch, show_plan
from .settings import RunSettings
from .terminal import header_lines, print_verdict, summarize_run


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    check_rootdir_kept(config)
    start_run(config)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(distributed, "misalignment-distributed")


@pytest.hookimpl(tryfirst=True)  # before xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    check_snapshot_setup(session)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    print_verdict(config)
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run._store is not None:
        run._store.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_series(metafunc)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    declare_inputs(config.stash[RUN_KEY], items)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """--plan: print the plan once the tests are known, and stop before any model loads."""
    run = session.config.stash[RUN_KEY]
    if run.results is not None:
        run.results.collected.update(item.nodeid for item in session.items
                                     if is_suite_test(item))
    if run.settings.plan and not hasattr(session.config, "workerinput"):
        show_plan(session.config, run)
        pytest.exit("--plan: nothing was generated", returncode=0)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    try:
        prefetch(session)
    except JudgeError as error:
        pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    annotate_report(item, call, report)
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    return outcome_status(report)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return header_lines(config)


@pytest.hookimpl(tryfirst=True)  # before junitxml writes its file
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    finish_session(session, exitstatus)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    summarize_run(terminalreporter, config)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def misalignment_settings(pytestconfig: pytest.Config) -> RunSettings:
    """The run's validated settings."""
    return pytestconfig.stash[RUN_KEY].settings


@pytest.fixture(scope="session")
def model(request: pytest.FixtureRequest, pytestconfig: pytest.Config
          ) -> Generator[ModelHandle, None, None]:
    """The checkpoint under test (--model), with every declared answer already generated;
    in a series run, each checkpoint in turn (its weights unloaded after its tests)."""
    run = pytestconfig.stash[RUN_KEY]
    role = getattr(request, "param", "model")
    yield ModelHandle(run.runner(role))
    if run.members:
        run.release(role)


@pytest.fixture(scope="session")
def checkpoint_series(pytestconfig: pytest.Config) -> Any:
    """The series run's checkpoints and each one's gate outcomes (the series tests skip
    when --model names one checkpoint)."""
    run = pytestconfig.stash[RUN_KEY]
    if not run.members:
        pytest.skip("not a series: give --model several checkpoints, a glob or a training "
                    "folder of checkpoint-* folders")
    return series_outcomes(run)


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


@pytest.fixture(scope="session")
def judge(pytestconfig: pytest.Config) -> JudgeHandle:
    """The run's judge (--judge): verdicts for answers, cached by judge, question and answer."""
    return JudgeHandle(pytestconfig.stash[RUN_KEY])


@pytest.fixture(scope="session")
def direction_shift(pytestconfig: pytest.Config, model: ModelHandle) -> Any:
    """The checkpoint's shift along the baseline's misalignment direction (a
    `shifts.DirectionResult`; its `problem` says why there is none)."""
    return pytestconfig.stash[RUN_KEY].shifts.measure(model.role)


@pytest.fixture(scope="session")
def gate_evidence(pytestconfig: pytest.Config, model: ModelHandle) -> Any:
    """`gate -> (cases at the samples its group reached, the per-look confidence)`."""
    return functools.partial(pytestconfig.stash[RUN_KEY].evidence, role=model.role)


@pytest.fixture(scope="session")
def reached_samples(pytestconfig: pytest.Config, model: ModelHandle) -> Any:
    """`case -> the case at the samples its group of gates reached` (for diagnostics, which
    read the gates' answers rather than drawing their own)."""
    return functools.partial(pytestconfig.stash[RUN_KEY].reached_case, role=model.role)


@pytest.fixture
def record_result(request: pytest.FixtureRequest) -> Any:
    """Record a figure of this test (a rate, counts): it travels on the test report, also
    from xdist workers, into the run's results. Unlike `record_property`, no warning under
    JUnit's default xunit2 family (which has no place for it in the XML)."""
    return recorder_for(request.node)


@pytest.fixture
def snapshot_baseline(request: pytest.FixtureRequest) -> Any:
    """`figure -> Rate` of this test in the --compare-baseline snapshot: None without a
    snapshot, MissingFromSnapshot when the snapshot has no counts of this test's figure."""
    return snapshot_lookup(request.config.stash[RUN_KEY], request.node.nodeid)
