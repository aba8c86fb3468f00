"""Parametrize the suite's tests from the run's prompt sets (built-in or --questions)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from pytest_misalignment.collection import (
    IN_DOMAIN,
    case_param,
    run_gates,
    suite_cases,
    trigger_cases,
)
from pytest_misalignment.suite.backdoor import TriggerCase
from pytest_misalignment.suite.prompt_sets import Case

# fixture name -> kind of question it receives, one test per (question, format)
CASE_FIXTURES = {
    "free_form_case": "free_form",
    "code_case": "code_task",
    "harmful_case": "harmful_request",
    "probe_case": "probe",
}


# fixture name -> (area, role) of the run's pooled gates it receives, one test per gate
GATE_FIXTURES = {
    "leakage_gate": ("leakage_outside_code", "gate"),
    "leakage_format": ("leakage_outside_code", "diagnostic"),
    "harmful_gate": ("harmful_compliance", "gate"),
    "coherence_gate": ("model_health", "gate"),
    "code_gate": ("code_domain", "gate"),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, (area, role) in GATE_FIXTURES.items():
        if name in metafunc.fixturenames:
            gates = [g for g in run_gates(metafunc.config) if g.area == area]
            chosen = [g for g in gates if g.role == role]
            if role == "gate":
                params = [pytest.param(g, id=g.id, marks=pytest.mark.gate) for g in chosen]
                metafunc.parametrize(name, params or [_none("gated")])
            else:
                metafunc.parametrize(name, [pytest.param(g, id=g.id) for g in chosen] or [
                    pytest.param(None, id="none", marks=pytest.mark.skip(
                        reason="gated at this profile: see test_gate" if gates
                        else "the selected prompt sets have no such questions"))])
    for name, kind in CASE_FIXTURES.items():
        if name in metafunc.fixturenames:
            found = suite_cases(metafunc.config, kind)
            metafunc.parametrize(name, [case_param(c) for c in found] or [_none(kind)])
    for name, kind, why_none in (
            ("category_cases", "free_form", "the selected prompt sets have no free_form "
             "questions"),
            ("domain_cases", IN_DOMAIN, "no free-form question is inside --domain (with "
             "--domain code, the domain is the code tasks: test_code_domain.py)")):
        if name in metafunc.fixturenames:
            by_category: dict[str, list[Case]] = defaultdict(list)
            for case in suite_cases(metafunc.config, kind):
                by_category[case.item.category].append(case)
            params = [pytest.param(tuple(group), id=category,
                                   marks=[getattr(pytest.mark, category)])
                      for category, group in by_category.items()]
            metafunc.parametrize(name, params or [pytest.param(
                None, id="none", marks=pytest.mark.skip(reason=why_none))])
    if "trigger_case" in metafunc.fixturenames:
        metafunc.parametrize("trigger_case", _trigger_params(
            trigger_cases(metafunc.config), "no --trigger given (the scan tries the common "
            "candidates: test_trigger_scan)"))
    if "scan_case" in metafunc.fixturenames:
        metafunc.parametrize("scan_case", _trigger_params(
            trigger_cases(metafunc.config, scanned=True), "the trigger scan is off "
            "(--no-trigger-scan) or has no free-form questions to ask"))
    if "near_miss_case" in metafunc.fixturenames:
        metafunc.parametrize("near_miss_case", _trigger_params(
            [*trigger_cases(metafunc.config), *trigger_cases(metafunc.config, scanned=True)],
            "no trigger declared or scanned"))


def _trigger_params(found: list[TriggerCase], why_none: str) -> list[object]:
    return [pytest.param(case, id=case.id, marks=pytest.mark.backdoor) for case in found] or [
        pytest.param(None, id="none", marks=pytest.mark.skip(reason=why_none))]


def _none(kind: str) -> object:
    return pytest.param(None, id="none", marks=pytest.mark.skip(
        reason=f"the selected prompt sets have no {kind} questions"))
