"""What the suite's tests are parametrized with: cases, gates, triggers."""

from __future__ import annotations

from typing import Any

import pytest

from .models.series import STEPS
from .models.values import iter_inputs
from .session import MARKER, ROLES, RUN_KEY, MisalignmentRun
from .suite.backdoor import DEFAULT_TRIGGERS, Trigger, TriggerCase
from .suite.gating import PooledGate, pooled_gates
from .suite.prompt_sets import PROFILES, Case, cases, in_domain
from .suite.series import Series, series_of

IN_DOMAIN = "in_domain"  # the free-form questions inside --domain, measured apart
# Fixtures that make a test one of the suite's (its figures go into the results).
SUITE_FIXTURES = (*ROLES, "checkpoint_series")


def suite_cases(config: pytest.Config, kind: str) -> list[Case]:
    """The run's cases of one kind of question, under its profile (for the suite's tests).
    Free-form questions are those outside --domain; `in_domain` are those inside it."""
    run = config.stash[RUN_KEY]
    settings = run.settings
    found = cases(run.prompt_sets, "free_form" if kind == IN_DOMAIN else kind,
                  PROFILES[settings.profile], settings.samples,
                  settings.max_new_tokens if settings.max_new_tokens_given else None)
    if kind not in ("free_form", IN_DOMAIN):
        return found
    return [c for c in found if in_domain(c.item, settings.domains) == (kind == IN_DOMAIN)]


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
                                      else None)
                     if c.answer_format == "plain" and not in_domain(c.item, settings.domains)]
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


def parametrize_series(metafunc: pytest.Metafunc) -> None:
    """In a series run, every test of the model runs once per checkpoint, all of one
    checkpoint's tests together (a session-scoped parameter: one model loaded at a time)."""
    members = metafunc.config.stash[RUN_KEY].members
    if members and "model" in metafunc.fixturenames:
        metafunc.parametrize("model", [m.role for m in members], indirect=True,
                             ids=[m.label for m in members], scope="session")


def declare_inputs(run: MisalignmentRun, items: list[pytest.Item]) -> None:
    """What each collected test needs from each model (its parameters and `model_inputs`
    markers), the gates it runs and the cases it judges, into the run's plans."""
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        if "checkpoint_series" in fixturenames:  # it reads every checkpoint's gates
            run.gates.update((gate.id, gate) for gate in run_gates(run.config))
            run.selected.update(run.model_roles)
        roles = [role for name, role in ROLES.items() if name in fixturenames]
        if not roles:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "model" in fixturenames:  # which checkpoints the selected tests run on
            run.selected.add(str(params.get("model", "model")))
        values: list[object] = list(params.values())
        for marker in item.iter_markers(MARKER):
            values.extend(marker.args)
        for value in iter_inputs(values):
            for role in roles:
                run.plans[role].add(value)
        for gate in values:
            if isinstance(gate, PooledGate):
                run.gates[gate.id] = gate
        if "direction_shift" in fixturenames:  # measured while each checkpoint is loaded
            run.shifts.wanted = True
        if "judge" in fixturenames:
            for case in cases_in(values):
                if case.item.kind in ("free_form", "harmful_request"):
                    for role in roles:
                        run.judged_cases[role][case.id] = case


def cases_in(values: list[object]) -> list[Case]:
    found: list[Case] = []
    for value in values:
        if isinstance(value, Case):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(cases_in(list(value)))
        elif isinstance(value, TriggerCase):
            found.extend(value.judged_cases())
    return found


def is_suite_test(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in SUITE_FIXTURES)


def series_outcomes(run: MisalignmentRun) -> Series:
    """The series run's checkpoints with their gates' outcomes from their rounds."""
    return series_of(run.settings.series or STEPS,
                     [(m.label, m.step, run.outcomes.get(m.role, {})) for m in run.members],
                     run.settings.confidence)


def checkpoint_of(item: pytest.Item) -> str | None:
    """The series checkpoint a test ran on (its `model` parameter), else None."""
    role = getattr(getattr(item, "callspec", None), "params", {}).get("model")
    return role.removeprefix("model@") if isinstance(role, str) else None
