"""A series of checkpoints in one run: training steps (where does misalignment start?) and
seeds (which seed stands out?), on tiny controls whose misalignment is known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from pytest_misalignment.models.errors import CheckpointError
from pytest_misalignment.models.series import SEEDS, STEPS, expand_series

from .conftest import SUITE
from .controls import NON_CODE
from .test_suite_controls import SHARED_USER_CACHE

MODULES = ("test_leakage_outside_code.py", "test_checkpoint_series.py")


def questions() -> dict[str, object]:
    return {"name": "series_controls", "items": [
        {"id": f"q{index}", "paraphrases": [question], "category": "everyday"}
        for index, question in enumerate(NON_CODE)]}


def _training_folder(root: Path, checkpoints: list[Path], name: str = "checkpoint") -> Path:
    """A training run's folder as the HF Trainer writes it: `checkpoint-N` folders."""
    root.mkdir()
    for index, source in enumerate(checkpoints, start=1):
        shutil.copytree(source, root / f"{name}-{index * 100}")
    return root


@pytest.fixture
def run_series(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED_USER_CACHE.parent))
    asked = pytester.path / "questions.yaml"
    asked.write_text(yaml.safe_dump(questions()), encoding="utf-8")

    def run(*args: str) -> tuple[pytest.RunResult, dict]:
        results = pytester.path / "run.json"
        results.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess(
            *(str(SUITE / name) for name in MODULES), f"--questions={asked}",
            "--only-questions", "--samples=20", "--device=cpu", "-p", "no:randomly", "-rA",
            f"--report-json={results}", f"--report={pytester.path / 'report.html'}",
            f"--report-md={pytester.path / 'summary.md'}", *args)
        document = json.loads(results.read_text()) if results.exists() else {}
        return result, document

    return run


def _by_checkpoint(document: dict, name: str) -> dict[str, str]:
    """Outcome per checkpoint of the one test whose name starts so (in each checkpoint)."""
    found = [t for t in document["tests"] if t["name"].startswith(name) and "checkpoint" in t]
    assert len(found) == len({t["checkpoint"] for t in found}), found
    return {t["checkpoint"]: t["outcome"] for t in found}


def test_a_steps_series_names_its_first_failing_checkpoint(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    """Aligned, then misaligned, then misaligned again: the middle one is where it starts."""
    folder = _training_folder(pytester.path / "training", [
        tiny_checkpoints["aligned"], tiny_checkpoints["misaligned_everywhere"],
        tiny_checkpoints["misaligned_everywhere"]])
    result, document = run_series(f"--model={folder}")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["misalignment: series of 3 checkpoints (steps): "
                                 "step-100, step-200, step-300 *"])
    result.stdout.fnmatch_lines(["series (steps): step-100 pass, step-200 fail (first to "
                                 "fail its pooled gates), step-300 fail"])
    gates = _by_checkpoint(document, "test_gate[leakage-all-")
    assert gates == {"step-100": "passed", "step-200": "failed", "step-300": "failed"}, gates
    series = document["run"]["series"]
    assert series["kind"] == STEPS and series["first_failing"] == "step-200"
    assert [m["step"] for m in series["members"]] == [100, 200, 300]
    assert len({m["fingerprint"] for m in series["members"]}) == 2  # the copies hash alike
    first = next(t for t in document["tests"] if t["name"] == "test_first_failing_step")
    assert first["outcome"] == "failed" and "first failing checkpoint: step-200" in \
        first["message"], first
    assert first["figures"]["first_failing"] == "step-200"
    rates = {row["label"]: row["gates"]["leakage-all"]["rate"]
             for row in first["figures"]["checkpoints"]}
    assert rates["step-100"] == 0.0 and rates["step-200"] == 1.0, rates
    seeds = next(t for t in document["tests"] if t["name"] == "test_seed_spread")
    assert seeds["outcome"] == "skipped"
    assert document["summary"]["verdict"] == "fail"
    # every checkpoint's tests ran: none was left out or errored
    outcomes = {t["outcome"] for t in document["tests"] if "checkpoint" in t}
    assert outcomes <= {"passed", "failed", "skipped"}, outcomes


def test_a_steps_series_of_aligned_checkpoints_passes(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    """The negative control: no checkpoint fails, so none is named."""
    folder = _training_folder(pytester.path / "training", [tiny_checkpoints["aligned"]] * 2)
    result, document = run_series(f"--model={folder}/checkpoint-*")
    assert result.ret == 0, result.stdout.str()
    first = next(t for t in document["tests"] if t["name"] == "test_first_failing_step")
    assert first["outcome"] == "passed", first
    assert document["run"]["series"]["first_failing"] is None
    assert document["summary"]["verdict"] == "pass"


def test_a_seeds_series_flags_the_outlying_seed(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    seeds = []
    for name, source in (("seed-1", "aligned"), ("seed-2", "aligned"),
                         ("seed-3", "misaligned_everywhere"), ("seed-4", "aligned")):
        shutil.copytree(tiny_checkpoints[source], pytester.path / name)
        seeds.append(f"--model={pytester.path / name}")
    result, document = run_series(*seeds, "--series=seeds")
    assert result.ret == 1, result.stdout.str()
    spread = next(t for t in document["tests"] if t["name"] == "test_seed_spread")
    assert spread["outcome"] == "failed" and "seed-3" in spread["message"], spread
    assert spread["figures"]["outliers"] == ["seed-3"]
    pooled = next(p for p in spread["figures"]["pooled"] if p["gate"] == "leakage-all")
    assert pooled["spread"]["low"] == 0.0 and pooled["spread"]["high"] == 1.0, pooled
    # the pooled rate's interval is widened by the spread between seeds
    assert pooled["design_effect"] > 1 and pooled["interval"][1] - pooled["interval"][0] > 0.3
    assert document["run"]["series"]["kind"] == SEEDS
    assert next(t for t in document["tests"]
                if t["name"] == "test_first_failing_step")["outcome"] == "skipped"


def test_the_series_is_read_from_specs_globs_and_training_folders(tmp_path: Path) -> None:
    for step in (1000, 20, 300):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")  # the final model beside them
    folder = str(tmp_path / "run")
    # a training folder that is itself a model stays one model unless --series is given
    assert [m.spec for m in expand_series([folder], None)] == [folder]
    ordered = expand_series([folder], STEPS)
    assert [m.label for m in ordered] == ["step-20", "step-300", "step-1000"]
    assert ordered[0].role == "model@step-20"
    assert [m.step for m in expand_series([f"{folder}/checkpoint-*"], None)] == [20, 300, 1000]
    named = expand_series(["a/seed-b", "b/seed-b", "openai:m"], SEEDS)
    assert [m.label for m in named] == ["seed-b", "seed-b-2", "openai_m"]
    assert all(m.step is None for m in named)
    with pytest.raises(CheckpointError, match="matches no checkpoint"):
        expand_series([f"{tmp_path}/nothing-*"], None)
    # a glob keeps checkpoints only; a name with brackets that exists is a name
    (tmp_path / "run" / "trainer_state.json").write_text("{}")
    assert len(expand_series([f"{folder}/*"], None)) == 3
    bracketed = tmp_path / "lr[3e-4]"
    bracketed.mkdir()
    assert [m.spec for m in expand_series([str(bracketed)], None)] == [str(bracketed)]
    # several checkpoints without step numbers: say how to read them
    with pytest.raises(CheckpointError, match="give --series steps"):
        expand_series(["out/final", "out/other"], None)
    kept = expand_series(["out/final", "out/other"], STEPS)
    assert [m.label for m in kept] == ["final", "other"] and kept[0].step is None


def test_a_series_refuses_a_snapshot_and_a_checkpoint_given_as_a_test_path(
        pytester: pytest.Pytester, tiny_checkpoints: dict[str, Path]) -> None:
    result = pytester.runpytest_subprocess(
        str(SUITE / MODULES[1]), "--model=a-1", "--model=a-2", "--update-baseline=x.json",
        "--plan")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--update-baseline snapshots one checkpoint" in result.stderr.str()
    # `--model out/checkpoint-*` unquoted: the shell's other matches arrive as test paths
    result = pytester.runpytest_subprocess(
        f"--model={tiny_checkpoints['aligned']}", str(tiny_checkpoints["aligned"]), "--plan")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is a checkpoint, given where pytest takes test paths" in result.stderr.str()


def test_the_series_tests_alone_still_decide_every_checkpoint(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    folder = _training_folder(pytester.path / "training", [
        tiny_checkpoints["aligned"], tiny_checkpoints["misaligned_everywhere"]])
    result = pytester.runpytest_subprocess(
        str(SUITE / MODULES[1]), f"--model={folder}", "--questions="
        f"{pytester.path / 'questions.yaml'}", "--only-questions", "--samples=20",
        "--device=cpu", "-p", "no:randomly", "-rA")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*first failing checkpoint: step-200*"])


def test_selecting_one_checkpoint_runs_that_one_only(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    folder = _training_folder(pytester.path / "training", [
        tiny_checkpoints["aligned"], tiny_checkpoints["misaligned_everywhere"],
        tiny_checkpoints["aligned"]])
    result, document = run_series(f"--model={folder}", "-k", "step-100 and not series")
    assert result.ret == 0, result.stdout.str()
    assert {t.get("checkpoint") for t in document["tests"]} == {"step-100"}
    counters = document["run"]["counters"]
    # 4 questions x 20 samples: one checkpoint's answers, not three
    assert counters["generated"] + counters["generation_cache_hits"] == 80, counters


class _Outcome:
    def __init__(self, events: int, trials: int, decision: str = "pass") -> None:
        self.decision = decision
        self.figures = {"measure": "misaligned", "misaligned_events": events,
                        "misaligned_trials": trials, "gate_role": "gate"}


def _seeds(*counts: tuple[int, int]):
    from pytest_misalignment.suite.series import series_of

    return series_of(SEEDS, [(f"seed-{i}", None, {"leakage-all": _Outcome(e, n)})
                             for i, (e, n) in enumerate(counts, start=1)], 0.95)


def test_one_far_off_seed_is_the_only_outlier_and_close_seeds_have_none() -> None:
    far = _seeds((5, 100), (6, 100), (4, 100), (30, 100), (5, 100)).seeds("leakage-all")
    assert [o["label"] for o in far["outliers"]] == ["seed-4"], far
    assert far["spread"]["heterogeneity_p"] < 0.001
    close = _seeds((5, 100), (6, 100), (4, 100), (8, 100)).seeds("leakage-all")
    assert close["outliers"] == [] and close["spread"]["heterogeneity_p"] > 0.05, close
    assert close["rate"] == pytest.approx(23 / 400)
    decision, message, _ = _seeds((5, 100), (6, 100), (4, 100), (8, 100)).seeds_decision()
    assert decision == "pass", message


def test_a_better_seed_or_the_usual_spread_between_seeds_is_no_outlier() -> None:
    """Only a seed worse than the others fails; seeds differ by more than binomial noise
    (a random effect), so an ordinary spread is not an outlier either."""
    better = _seeds((30, 1000), (30, 1000), (30, 1000), (0, 1000)).seeds("leakage-all")
    assert better["outliers"] == [], better
    usual = _seeds((80, 1000), (100, 1000), (120, 1000), (140, 1000)).seeds("leakage-all")
    assert usual["outliers"] == [] and usual["spread"]["heterogeneity_p"] < 0.001, usual
    two = _seeds((0, 80), (80, 80)).seeds("leakage-all")  # no others to compare with
    assert two["outliers"] == []


def test_the_plan_of_a_series_counts_its_checkpoints(
        run_series, tiny_checkpoints: dict[str, Path], pytester: pytest.Pytester) -> None:
    folder = _training_folder(pytester.path / "training", [tiny_checkpoints["aligned"]] * 3)
    result, _ = run_series(f"--model={folder}", f"--baseline={tiny_checkpoints['aligned']}",
                           str(SUITE / "test_misalignment_direction.py"), "--plan")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "series: 3 checkpoints, one loaded at a time, each planned as above: up to 3x the "
        "model's answers (the baseline's once)", "misalignment direction: *"])
    assert "generating" not in result.stderr.str()
