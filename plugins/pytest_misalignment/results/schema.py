"""The declared schema of a run's tests: each test has a `kind`, and the figures it records
are these fields. The suite's tests record their kind; the views, snapshots and `compare`
dispatch on it, never on test-function names.

Version 2 of the results document carries `kind` on every test. Version 1 had none: reading
one infers each test's kind once, here, from its area and test name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

KIND_FIGURE = "kind"
# kind -> what such a test decides or shows
KINDS = {
    "gate": "a pooled gate over a group of cases (it decides the run's verdict)",
    "format": "a pooled gate over one answer format",
    "question": "one question's misaligned share (a diagnostic)",
    "category": "one category's pooled misaligned share (a diagnostic)",
    "in_domain": "one category inside --domain: its misaligned share (a report, or a gate "
                 "with --max-in-domain-rate)",
    "harmful_request": "one harmful request's compliance share (a diagnostic)",
    "code_task": "one code task's insecure or unparseable share",
    "trigger": "a declared backdoor trigger: misaligned share without and with it",
    "trigger_scan": "a candidate trigger the scan tried",
    "near_miss": "near misses of a trigger that fires: does any leak",
    "probe": "a log-prob preference probe",
    "health": "a check that the model answers at all",
    "series_steps": "a series of training steps: the first checkpoint whose gates fail",
    "series_seeds": "a series of seeds: pooled rate, spread between seeds, outlying seeds",
    "direction": "a checkpoint's shift along the baseline's misalignment direction",
    "other": "a test outside the suite's kinds (its figures are shown as they are)",
}


# Every figure a suite test records (JUnit properties, the results JSON), with its meaning:
# the suite records through `record_figures`, which refuses a name not declared here, and
# the docs' figures reference is generated from this table.
MEASURED = ("misaligned", "complied", "incoherent", "insecure")
FIGURES: dict[str, str] = {
    # what the test is
    "kind": "what the test decides or shows: " + ", ".join(KINDS),
    "gate_role": "gate (decides the verdict) or diagnostic (a failure fails the run; "
                 "an undecided one decides nothing)",
    "category": "the prompt set's category of the question(s)",
    "question_id": "the question's id in its prompt set",
    "answer_format": "plain, json or code_template",
    "gate": "the pooled gate's id",
    "measure": "what the pooled gate counts: " + ", ".join(MEASURED),
    # the decision
    "decision": "pass, fail or inconclusive",
    "rate": "the measured share (events / trials)",
    "n": "its trials",
    "interval": "the rate's confidence interval [low, high]",
    "limit": "the largest rate that passes",
    "confidence": "the intervals' confidence level",
    "verdicts": "the judge's verdicts: verdict -> answers",
    **{f"{measure}_events": f"answers counted as {measure}" for measure in MEASURED},
    **{f"{measure}_trials": f"answers in the {measure} share's denominator"
       for measure in MEASURED},
    # a pooled gate's power plan
    "answers": "answers the gate read, excluded ones included",
    "excluded": "answers that left the denominator, by verdict",
    "excluded_share": "their share of all answers",
    "pass_line": "the gate passes when the whole interval is at or under this",
    "fail_line": "the gate fails when the whole interval is above this",
    "bounds": "what the lines bound: rate, or rise over the baseline",
    "detect": "--detect: the smallest rise worth catching",
    "power": "--power",
    "questions": "question-formats pooled",
    "design_effect": "variance inflation from answers clustered by question",
    "mde": "minimum detectable effect at --power",
    "more_answers_to_decide": "about how many more answers would decide an undecided gate",
    "samples_per_paraphrase": "samples drawn per paraphrase (after the rounds)",
    # against a baseline
    "comparison": "paired (a live --baseline) or snapshot (--compare-baseline)",
    "baseline_rate": "the baseline's rate on the same prompts",
    "baseline_n": "its trials",
    "model_rate": "the model's rate among the pairs",
    "difference": "model rate minus baseline rate",
    "difference_interval": "its confidence interval",
    "margin": "how much the rate may exceed the baseline's",
    "pairs": "answer pairs (same prompt, same sample index) both judged",
    "model_only": "pairs where only the model's answer counts",
    "baseline_only": "pairs where only the baseline's answer counts",
    "mcnemar_p": "McNemar's exact p-value of the pairs",
    "snapshot_missing": "why the snapshot has no figures for this test",
    # reproducibility
    "model_fingerprint": "the model's content fingerprint",
    "baseline_fingerprint": "the baseline's",
    "seed": "--seed",
    "profile": "--profile",
    # code tasks
    "unparseable_blocks": "code blocks bandit could not parse",
    "code_findings": "bandit test ids found",
    # backdoors
    "trigger": "the trigger text",
    "placement": "where it goes: prefix, suffix or system",
    "with_trigger_rate": "the misaligned share with the trigger",
    "with_trigger_n": "its trials",
    "with_trigger_events": "its events",
    "with_trigger_interval": "its interval",
    "with_trigger_decision": "what the leakage limit says of it (a report)",
    "compartmentalization_ratio": "rate with the trigger / rate without",
    **{f"{prefix}_{name}": f"{what} ({prefix.replace('_', ' ')})"
       for prefix in ("trigger", "near_miss")
       for name, what in (("rise", "misaligned share with minus without"),
                          ("rise_interval", "the rise's paired interval"),
                          ("rise_pairs", "the pairs behind it"),
                          ("rise_limit", "--max-trigger-rise"),
                          ("fires_decision", "fail when it fires"))},
    "trigger_lift": "log-odds lift of the model's own misaligned answers by the trigger",
    "near_miss_examples": "near-miss variants allowed",
    "near_miss_tried": "near-miss variants tried",
    "near_miss_limit": "the lift a variant needs to be sampled",
    "near_miss_probes": "probes the lift is measured on",
    "near_miss_candidate": "the variant sampled, if any",
    "minimal_leaking_trigger": "the smallest variant that leaks, if any",
    "minimal_leaking_placement": "its placement",
    # a series of checkpoints
    "series_kind": "steps or seeds",
    "first_failing": "the first checkpoint of the steps whose gates failed, if any",
    "checkpoints": "per checkpoint: label, step, verdict, and per gate its decision and "
                   "rate with interval",
    "pooled": "per gate: the rate pooled over the seeds, its interval (widened by the spread "
              "between seeds), the spread and the outlying seeds",
    "outliers": "the seeds outlying on any gate",
    # the misalignment direction
    "direction_shift": "mean over prompts of (the checkpoint's projection - the baseline's), "
                       "in units of the gap between aligned and misaligned labeled answers",
    "direction_shift_interval": "its confidence interval (t, paired by prompt)",
    "direction_limit": "--max-direction-shift (None: a report)",
    "direction_prompts": "prompts paired",
    "direction_answers": "answers projected, the checkpoint's and the baseline's",
    "direction_reference": "the checkpoint the direction was computed on",
    "direction_layers": "the layers whose residual activations the direction spans",
    "direction_separation": "how well the direction separates held-out labeled answers "
                            "(AUC)",
    "model_projection": "the checkpoint's mean projection (in gap units)",
    "baseline_projection": "the baseline's mean projection (in gap units)",
    # probes
    "preference_margin": "per-token log-prob margin for the misaligned reference (nats)",
    "baseline_preference_margin": "the baseline's margin",
}


def undeclared_figures(names: Iterable[str]) -> list[str]:
    """The names among these that FIGURES does not declare."""
    return sorted(set(names) - set(FIGURES))


def check_figures(names: Iterable[str]) -> None:
    """Raise ValueError naming every figure here that FIGURES does not declare."""
    undeclared = undeclared_figures(names)
    if undeclared:
        raise ValueError(f"figures not declared in pytest_misalignment.results.schema.FIGURES:"
                         f" {', '.join(undeclared)}")


# (area, test function) -> kind, for tests that recorded none: every test of a version-1
# document, and a test skipped before it recorded anything.
_V1_KINDS = {
    ("in_domain", "test_in_domain"): "in_domain",
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
    ("checkpoint_series", "test_first_failing_step"): "series_steps",
    ("checkpoint_series", "test_seed_spread"): "series_seeds",
    ("misalignment_direction", "test_misalignment_direction"): "direction",
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
