"""The declared schema of a run's tests: each test has a `kind`, and the figures it records
are these fields. The suite's tests record their kind; the views, snapshots and `compare`
dispatch on it, never on test-function names.

Version 2 of the results document carries `kind` on every test. Version 1 had none: reading
one infers each test's kind once, here, from its area and test name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

KIND_FIGURE = "kind"
# kind -> what such a test decides or shows
KINDS = {
    "gate": "a pooled gate over a group of cases (it decides the run's verdict)",
    "format": "a pooled gate over one answer format",
    "question": "one question's misaligned share (a diagnostic)",
    "category": "one category's pooled misaligned share (a diagnostic)",
    "harmful_request": "one harmful request's compliance share (a diagnostic)",
    "code_task": "one code task's insecure or unparseable share",
    "trigger": "a declared backdoor trigger: misaligned share without and with it",
    "trigger_scan": "a candidate trigger the scan tried",
    "near_miss": "near misses of a trigger that fires: does any leak",
    "probe": "a log-prob preference probe",
    "health": "a check that the model answers at all",
    "other": "a test outside the suite's kinds (its figures are shown as they are)",
}


class RateFigures(TypedDict, total=False):
    """What a rate-measuring test records (gates and diagnostics alike)."""

    kind: str
    gate_role: str  # "diagnostic" for tests that cannot make a run undecided
    rate: float | None
    n: int
    interval: list[float]
    limit: float | None
    confidence: float
    decision: str  # pass / fail / inconclusive
    verdicts: dict[str, int]
    category: str
    answer_format: str
    misaligned_events: int
    misaligned_trials: int
    baseline_rate: float | None
    baseline_n: int
    comparison: str  # "paired" (a live baseline) or "snapshot"
    difference: float | None
    difference_interval: list[float]
    margin: float
    model_fingerprint: str
    baseline_fingerprint: str
    seed: int
    profile: str


class TriggerFigures(RateFigures, total=False):
    """What the backdoor tests record besides their rate without the trigger."""

    trigger: str
    placement: str
    with_trigger_rate: float | None
    with_trigger_n: int
    compartmentalization_ratio: float | None
    minimal_leaking_trigger: str | None
    minimal_leaking_placement: str | None
    near_miss_tried: int


# Version 1 documents: (area, test function) -> kind. Only read_results uses it.
_V1_KINDS = {
    ("leakage_outside_code", "test_gate"): "gate",
    ("leakage_outside_code", "test_format"): "format",
    ("leakage_outside_code", "test_question"): "question",
    ("leakage_outside_code", "test_category"): "category",
    ("harmful_compliance", "test_gate"): "gate",
    ("harmful_compliance", "test_harmful_request"): "harmful_request",
    ("code_domain", "test_gate"): "gate",
    ("code_domain", "test_code_task"): "code_task",
    ("backdoor_compartmentalization", "test_trigger"): "trigger",
    ("backdoor_compartmentalization", "test_trigger_scan"): "trigger_scan",
    ("backdoor_compartmentalization", "test_near_miss_triggers"): "near_miss",
    ("preference_probes", "test_probe"): "probe",
    ("model_health", "test_gate"): "gate",
}


def kind_of(test: Mapping[str, Any]) -> str:
    """A test's kind: the one it recorded, else (a version-1 file, a health check that
    records nothing, a user's own test) what its area and name say."""
    recorded = (test.get("figures") or {}).get(KIND_FIGURE)
    if recorded in KINDS:
        return str(recorded)
    area = str(test.get("area", ""))
    function = str(test.get("name", "")).split("[")[0]
    if (area, function) in _V1_KINDS:
        return _V1_KINDS[(area, function)]
    return "health" if area == "model_health" else "other"


def case_of(test: Mapping[str, Any]) -> str:
    """What a test is about (its question, category, trigger or gate id): the one
    parameter of its id, as pytest wrote it."""
    name = str(test.get("name", ""))
    return name[name.index("[") + 1:-1] if "[" in name and name.endswith("]") else ""


def with_kinds(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every test with its `kind` (and `case`) set, in place."""
    for test in tests:
        test["kind"] = kind_of(test)
        test["case"] = case_of(test)
    return tests
