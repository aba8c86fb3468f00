"""Outcomes: how a gated test ends (pass, fail, inconclusive), how a report says so (also
across xdist), and how a judge error shows as an error: all in this one place."""

from __future__ import annotations

from typing import Any

import pytest

from .collection import checkpoint_of, is_suite_test
from .handles import JUDGE_ERRORS_PROPERTY, JudgeErrorsExceeded
from .settings import RunSettings


class Inconclusive(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A gate whose interval straddles its limit: not a pass, not a fail (reported apart)."""


INCONCLUSIVE_PROPERTY = "misalignment_inconclusive"
INCONCLUSIVE_PREFIX = "inconclusive: "
# A test's judged samples: stashed on its item, sent on its report to the results JSON.
SAMPLES_KEY = pytest.StashKey[list[dict[str, Any]]]()


def settle(decision: str, message: str, settings: RunSettings, config: pytest.Config) -> None:
    """End a gated test by its decision: return on pass, fail on fail; on inconclusive,
    report it as such, or fail under --strict-gates / pytest's --strict."""
    if decision == "pass":
        return
    if decision == "fail":
        pytest.fail(message, pytrace=False)
    if settings.strict_gates or _pytest_strict(config):
        pytest.fail(f"inconclusive (strict): {message}", pytrace=False)
    raise Inconclusive(f"{INCONCLUSIVE_PREFIX}{message}")


def _pytest_strict(config: pytest.Config) -> bool:
    """pytest's own --strict / `strict = true` ("enables all strictness options")."""
    if config.getoption("strict", False):
        return True
    try:
        return bool(config.getini("strict"))
    except ValueError:  # an older pytest without the `strict` ini option
        return False


def annotate_report(item: pytest.Item, call: pytest.CallInfo[None],
                    report: pytest.TestReport) -> None:
    """Mark the report inconclusive or a judge error, and give a suite test's figures and
    samples a plain dict on the report, which travels from xdist workers."""
    if call.excinfo is not None and call.excinfo.errisinstance(JudgeErrorsExceeded):
        report.user_properties.append((JUDGE_ERRORS_PROPERTY, str(call.excinfo.value)))
    if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
        report.user_properties.append((INCONCLUSIVE_PROPERTY, True))
    if is_suite_test(item):
        report.misalignment = {  # type: ignore[attr-defined]
            "figures": {name: value for name, value in report.user_properties
                        if name not in (INCONCLUSIVE_PROPERTY, JUDGE_ERRORS_PROPERTY)},
            "samples": item.stash.get(SAMPLES_KEY, []) if call.when == "call" else [],
            "checkpoint": checkpoint_of(item)}


def outcome_status(report: pytest.TestReport
                   ) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """A test the judge could not judge is an error, not a failure of the model (nor a pass)."""
    if report.when == "call" and report.failed and any(
            name == JUDGE_ERRORS_PROPERTY for name, _ in report.user_properties):
        return "error", "E", ("ERROR", {"red": True})
    if report.skipped and any(name == INCONCLUSIVE_PROPERTY for name, _ in report.user_properties):
        return "inconclusive", "?", ("INCONCLUSIVE", {"yellow": True})
    return None


def report_message(report: pytest.TestReport) -> str:
    """What a failed, errored, skipped or inconclusive test said, without traceback noise."""
    if report.passed:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        reason = str(longrepr[2])
        return reason.partition(INCONCLUSIVE_PREFIX)[2] or reason.removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and report.when == "call":
        text = str(crash.message)
        return text.removeprefix("Failed: ").removeprefix("AssertionError: ")
    return report.longreprtext
