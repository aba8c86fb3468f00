"""Baseline snapshots without a model: a snapshot written under another judge, profile or
seed stops --compare-baseline with one line (unless --allow-snapshot-mismatch), and a test
the snapshot lacks is compared as undecided, with the reason.

The round trip through real runs is in test_suite_controls.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pytest_misalignment.judges.registry import build_judge
from pytest_misalignment.results.snapshots import (
    MissingFromSnapshot,
    mismatch_message,
    setup_differences,
    setup_fields,
)
from pytest_misalignment.settings import RunSettings
from pytest_misalignment.suite.statistics import Rate
from pytest_misalignment.suite.tallies import Tally

from model_tests.judged import gate

LOOKUP_TEST = """
def test_in_snapshot(snapshot_baseline):
    print("FOUND", repr(snapshot_baseline("misaligned")))

def test_not_in_snapshot(snapshot_baseline):
    print("FOUND", repr(snapshot_baseline("misaligned")))
"""
JUDGE_URL = "http://127.0.0.1:9/v1"  # never asked: only the judge's fingerprint is needed


def _snapshot(path: Path, **meta: Any) -> Path:
    """A snapshot of version 1 with one test of LOOKUP_TEST in it (no model wrote it)."""
    document = {"version": 1, "model": "m", "fingerprint": "f", "judge": "embedding",
                "profile": "smoke", "seed": 0, "confidence": 0.95, **meta,
                "tests": {"test_lookup.py::test_in_snapshot": {
                    "misaligned_events": 1, "misaligned_trials": 40}}}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stderr.lines + result.stdout.lines
            if line.startswith("ERROR")]


# ------------------------------------------------------------------ setup checks


def test_setup_differences_say_snapshot_value_vs_this_run() -> None:
    snapshot = {"profile": "standard", "seed": 1, "judge": "embedding",
                "judge_fingerprint": "embedding:abc"}
    this_run = setup_fields(snapshot, "smoke", 0, "embedding:minilm")
    assert this_run == {"profile": "smoke", "seed": 0}  # the fingerprint decides the judge
    differences = setup_differences(snapshot, this_run)
    assert differences == ["profile: snapshot standard vs this run smoke",
                           "seed: snapshot 1 vs this run 0"]
    assert mismatch_message("b.json", differences, allowed=False) == (
        "--compare-baseline: b.json was written with another setup (profile: snapshot "
        "standard vs this run smoke; seed: snapshot 1 vs this run 0); rerun with the "
        "snapshot's setup, or add --allow-snapshot-mismatch to compare anyway")
    assert setup_differences(snapshot, {"judge_fingerprint": "embedding:abc"}) == []


def test_a_snapshot_without_a_judge_fingerprint_is_checked_on_the_judge_spec() -> None:
    older = {"profile": "smoke", "seed": 0, "judge": "embedding"}
    this_run = setup_fields(older, "smoke", 0, "openai:gpt-4o")
    assert setup_differences(older, this_run) == [
        "judge: snapshot embedding vs this run openai:gpt-4o"]
    assert setup_differences({}, {"seed": 0}) == ["seed: snapshot not recorded vs this run 0"]


def test_another_profile_or_seed_is_one_error_line_exit_4(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lookup=LOOKUP_TEST)
    _snapshot(pytester.path / "snap.json", profile="standard")
    result = pytester.runpytest("--compare-baseline=snap.json", "--seed=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _error_lines(result) == [
        "ERROR: --compare-baseline: snap.json was written with another setup (profile: "
        "snapshot standard vs this run smoke; seed: snapshot 0 vs this run 3); rerun with the "
        "snapshot's setup, or add --allow-snapshot-mismatch to compare anyway"]
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_allow_snapshot_mismatch_warns_and_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lookup=LOOKUP_TEST)
    _snapshot(pytester.path / "snap.json", judge="embedding:minilm")
    result = pytester.runpytest("--compare-baseline=snap.json", "--allow-snapshot-mismatch")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*warnings summary*", "*pytest_misalignment/*.py:*",
        "  --compare-baseline: snap.json was written with another setup "
        "(judge: snapshot embedding:minilm vs this run embedding); compared anyway "
        "(--allow-snapshot-mismatch)"])


def test_the_ini_twin_allows_a_mismatch(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nallow_snapshot_mismatch = true\n")
    pytester.makepyfile(test_lookup=LOOKUP_TEST)
    _snapshot(pytester.path / "snap.json", seed=7)
    pytester.runpytest("--compare-baseline=snap.json").assert_outcomes(passed=2)


def test_another_judge_fingerprint_is_one_error_line_exit_4(pytester: pytest.Pytester) -> None:
    """Checked once the judge is built, before any test runs (an endpoint judge here: its
    fingerprint is its URL and model, so nothing is loaded or asked)."""
    pytester.makepyfile(test_lookup=LOOKUP_TEST)
    ours = build_judge(RunSettings(judge="openai:judge", judge_base_url=JUDGE_URL)).fingerprint
    theirs = ours.replace("127.0.0.1:9", "judge.example")
    _snapshot(pytester.path / "snap.json", judge="openai:judge", judge_fingerprint=theirs)
    args = ("--compare-baseline=snap.json", "--judge=openai:judge",
            f"--judge-base-url={JUDGE_URL}")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _error_lines(result) == [
        f"ERROR: --compare-baseline: snap.json was written with another setup "
        f"(judge_fingerprint: snapshot {theirs} vs this run {ours}); rerun with the "
        "snapshot's setup, or add --allow-snapshot-mismatch to compare anyway"]
    assert "test_in_snapshot" not in result.stdout.str()  # no test ran

    pytester.runpytest(*args, "--allow-snapshot-mismatch").assert_outcomes(passed=2)
    _snapshot(pytester.path / "snap.json", judge="openai:judge", judge_fingerprint=ours)
    pytester.runpytest(*args).assert_outcomes(passed=2)


# ------------------------------------------------------------------ a test not in the snapshot


def test_snapshot_baseline_tells_a_missing_test_from_no_snapshot(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lookup=LOOKUP_TEST)
    _snapshot(pytester.path / "snap.json")
    compared = pytester.runpytest("-s", "--compare-baseline=snap.json")
    compared.assert_outcomes(passed=2)
    compared.stdout.fnmatch_lines(["*FOUND Rate(events=1, trials=40)*",
                                   "*FOUND MissingFromSnapshot(path='snap.json')*"])
    alone = pytester.runpytest("-s")
    alone.stdout.fnmatch_lines(["*FOUND None*", "*FOUND None*"])


def _aligned(answers: int, misaligned: int = 0) -> Tally:
    return Tally(Counter({"aligned": answers - misaligned, "misaligned": misaligned}))


def test_a_test_missing_from_the_snapshot_is_inconclusive_with_the_reason() -> None:
    missing = MissingFromSnapshot("/ci/baseline.json")
    result = gate("q0", _aligned(100), "misaligned", RunSettings(), 0.95, snapshot=missing)
    assert result.decision == "inconclusive"  # the limit alone would pass (0/100)
    assert "not in the snapshot /ci/baseline.json" in result.message
    assert result.figures["snapshot_missing"] == "not in the snapshot /ci/baseline.json"
    compared = gate("q0", _aligned(100), "misaligned", RunSettings(), 0.95,
                    snapshot=Rate(0, 100))
    assert compared.decision == "pass"


def test_a_test_missing_from_the_snapshot_still_fails_on_its_limit() -> None:
    result = gate("q0", _aligned(100, misaligned=90), "misaligned", RunSettings(), 0.95,
                  snapshot=MissingFromSnapshot("b.json"))
    assert result.decision == "fail"
