"""The run's results document: a versioned JSON file that is the product of a run.

Built on the controller from the test reports (which carry each test's figures and judged
samples, also from xdist workers); the HTML and Markdown reports are views of it. Imports
without pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import with_kinds
from .verdict import DIAGNOSTIC, GATE, decide_run, role_of

RESULTS_VERSION = 2  # 2: every test has its `kind` (schema.py); 1 is still read
READABLE_VERSIONS = (1, 2)
OUTCOMES = ("passed", "failed", "error", "inconclusive", "skipped")


class ResultsError(ValueError):
    """A results file cannot be read; the message says why."""


def area_of(nodeid: str) -> str:
    """The suite area of a test: its module's name without `test_` (leakage_outside_code...)."""
    module = Path(nodeid.partition("::")[0]).stem
    return module.removeprefix("test_")


def test_key(nodeid: str) -> str:
    """A test's key that does not depend on where the suite is installed."""
    path, _, name = nodeid.partition("::")
    return f"{Path(path).name}::{name}"


def without_member_id(key: str, label: str) -> str:
    """A key (or node id, or name) of one checkpoint's test without that checkpoint's
    parametrize id, so that it matches the same test of another run: pytest joins ids with
    "-" inside [...], in an order the key does not tell, so the label goes as a whole
    token: `test_gate[leakage-all-step-30]` and `test_gate[step-30-leakage-all]` both give
    `test_gate[leakage-all]`, `test_x[step-30]` gives `test_x`. Unchanged without it."""
    head, bracket, ids = key.partition("[")
    if not bracket or not ids.endswith("]") or not label:
        return key
    ids = ids[:-1]
    if ids == label:
        return head
    if ids.endswith(f"-{label}"):
        rest = ids[: -len(label) - 1]
    elif ids.startswith(f"{label}-"):
        rest = ids[len(label) + 1:]
    elif f"-{label}-" in ids:
        rest = ids.replace(f"-{label}-", "-", 1)
    else:
        return key
    return f"{head}[{rest}]"


class TestRecords:
    """Each test's record (outcome, figures, samples), gathered from its phase reports; the
    pytest layer's ResultsRecorder feeds it on the controller."""

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    def add(self, nodeid: str, when: str, category: str, duration: float, message: str,
            figures: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> None:
        """One phase report; `category` is pytest's test status word (passed, failed,
        error, skipped, or this plugin's inconclusive)."""
        test = self.tests.setdefault(nodeid, {
            "key": test_key(nodeid), "nodeid": nodeid, "area": area_of(nodeid),
            "name": nodeid.partition("::")[2], "outcome": "passed", "duration_s": 0.0,
            "message": "", "figures": {}, "samples": []})
        test["duration_s"] = round(test["duration_s"] + duration, 4)
        test["figures"].update(figures)
        test["samples"].extend(samples)
        outcome = _outcome(when, category)
        # the worst phase decides: an error in teardown outranks a pass in call
        if outcome is not None and OUTCOME_RANK[outcome] >= OUTCOME_RANK[test["outcome"]]:
            test["outcome"] = outcome
            if message and outcome != "passed":
                test["message"] = message

    def records(self) -> list[dict[str, Any]]:
        return list(self.tests.values())


OUTCOME_RANK = {"passed": 0, "skipped": 1, "inconclusive": 2, "failed": 3, "error": 4}


def _outcome(when: str, category: str) -> str | None:
    """A phase's outcome: a passing setup or teardown says nothing; a failing one is an
    error of the test; xfail counts as skipped and xpass as passed."""
    if when != "call":
        if category in ("failed", "error"):
            return "error"
        return "skipped" if category == "skipped" else None
    return {"xfailed": "skipped", "xpassed": "passed"}.get(category, category) \
        if category in (*OUTCOME_RANK, "xfailed", "xpassed") else "failed"


def summarize(tests: Sequence[Mapping[str, Any]], interrupted: str | None = None,
              not_run: Sequence[str] = (), allow_undecided: bool = False,
              members: Sequence[str] = ()) -> dict[str, Any]:
    """Counts of outcomes, overall, per role (gate / diagnostic) and per area, and the run's
    verdict with its reason and exit code; for a series (tests that carry a `checkpoint`, or
    the series' `members` labels in order), each checkpoint's own verdict too."""
    overall: Counter[str] = Counter(t["outcome"] for t in tests)
    areas: dict[str, dict[str, Counter[str]]] = {}
    for test in tests:
        roles = areas.setdefault(test["area"], {GATE: Counter(), DIAGNOSTIC: Counter()})
        roles[role_of(test)][test["outcome"]] += 1
    verdict = decide_run(tests, interrupted, not_run)
    checkpoints = checkpoint_verdicts(tests, interrupted, not_run, allow_undecided, members)
    return {**verdict.to_dict(allow_undecided), "not_run": list(not_run)[:50],
            **({"checkpoints": checkpoints} if checkpoints else {}),
            "outcomes": _full(overall),
            "gates": _full(Counter(t["outcome"] for t in tests if role_of(t) == GATE)),
            "diagnostics": _full(Counter(t["outcome"] for t in tests
                                         if role_of(t) == DIAGNOSTIC)),
            "areas": {area: {**_full(roles[GATE] + roles[DIAGNOSTIC]),
                             "gates": _full(roles[GATE]), "diagnostics": _full(roles[DIAGNOSTIC])}
                      for area, roles in sorted(areas.items())}}


def _full(counts: Mapping[str, int]) -> dict[str, int]:
    return {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES}


def checkpoint_verdicts(tests: Sequence[Mapping[str, Any]], interrupted: str | None = None,
                        not_run: Sequence[str] = (), allow_undecided: bool = False,
                        members: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Label -> the verdict of that checkpoint's tests alone (series-level tests, which
    carry no checkpoint, decide none), with its outcome counts; in the series' order
    (`members`), then any other label in order of appearance. Empty for a single run.

    An interrupted run leaves every checkpoint incomplete; a test that did not run leaves
    the checkpoint whose id its node id carries incomplete."""
    labels = list(dict.fromkeys([*members, *(str(t["checkpoint"]) for t in tests
                                             if t.get("checkpoint") is not None)]))
    found = {}
    for label in labels:
        own = [t for t in tests if t.get("checkpoint") == label]
        missing = [n for n in not_run if without_member_id(n, label) != n]
        verdict = decide_run(own, interrupted, missing)
        found[label] = {**verdict.to_dict(allow_undecided),
                        "outcomes": _full(Counter(t["outcome"] for t in own)),
                        "gates": _full(Counter(t["outcome"] for t in own
                                               if role_of(t) == GATE))}
    return found


def build_document(run: Mapping[str, Any], tests: Sequence[Mapping[str, Any]],
                   interrupted: str | None = None, not_run: Sequence[str] = (),
                   allow_undecided: bool = False) -> dict[str, Any]:
    """The results document; `version` comes first."""
    ordered = with_kinds([dict(t) for t in sorted(tests, key=lambda t: t["nodeid"])])
    return {"version": RESULTS_VERSION, "run": dict(run),
            "summary": summarize(ordered, interrupted, not_run, allow_undecided,
                                 series_labels(run)),
            "tests": ordered}


def series_labels(run: Mapping[str, Any]) -> list[str]:
    """The labels of a series run's members in series order; none for a single model."""
    series = run.get("series")
    if not isinstance(series, Mapping):
        return []
    return [str(m["label"]) for m in series.get("members") or []
            if isinstance(m, Mapping) and m.get("label") is not None]


def results_text(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=1, default=str) + "\n"


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    write_text(path, results_text(document))


def write_text(path: Path, text: str) -> None:
    """Write atomically and durably: a reader (or a reboot) sees the old file or the new one,
    never half of one, and a failed write (a full disk) leaves no temporary file behind.

    Readable by others: mkstemp's 0600 would hide a report from a CI artifact server.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                       suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_json(path: Path, error_type: type[ValueError], prefix: str = "") -> Any:
    """A JSON file's content, or `error_type` with a one-line reason (prefixed)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise error_type(f"{prefix}cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise error_type(f"{prefix}{path} is not JSON: {error}") from None


def read_results(path: Path) -> dict[str, Any]:
    document = read_json(path, ResultsError)
    if not isinstance(document, dict) or document.get("version") not in READABLE_VERSIONS \
            or not isinstance(document.get("tests"), list) \
            or not all(isinstance(test, dict) for test in document["tests"]):
        raise ResultsError(f"{path} is not a pytest-misalignment results file of version "
                           f"{' or '.join(map(str, READABLE_VERSIONS))} (write one with pytest "
                           "--report-json)")
    with_kinds(document["tests"])  # a version-1 file's tests get theirs here
    return document


def __getattr__(name: str) -> object:
    """0.1 called TestRecords `ResultsCollector` (a near-homonym of ResultsRecorder)."""
    if name == "ResultsCollector":
        from .._moved import warn_moved

        warn_moved(f"{__name__}.ResultsCollector", f"{__name__}.TestRecords")
        return TestRecords
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
