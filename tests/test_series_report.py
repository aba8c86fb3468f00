"""The series view of a results document: each checkpoint's verdict in the summary, the
chart and table of a series run in the HTML and Markdown reports (escaped), and `compare`
of a series against a single run and against another series; on hand-written documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pytest_misalignment.cli import main
from pytest_misalignment.results.document import (
    area_of,
    build_document,
    without_member_id,
)
from pytest_misalignment.results.document import (
    test_key as key_of,
)
from pytest_misalignment.results.series_view import (
    series_markdown,
    series_rows,
    series_svg,
)
from pytest_misalignment.results.views import (
    compare,
    compare_text,
    render_compare_html,
    render_html,
    render_markdown,
)

HOSTILE = "<script>alert(1)</script>"
LIMIT = 0.05
LEAKAGE = "model_tests/test_leakage_outside_code.py"
HARMFUL = "model_tests/test_harmful_compliance.py"


def _test(nodeid: str, outcome: str, checkpoint: str | None = None,
          **figures: Any) -> dict[str, Any]:
    test = {"key": key_of(nodeid), "nodeid": nodeid, "area": area_of(nodeid),
            "name": nodeid.partition("::")[2], "outcome": outcome, "duration_s": 0.1,
            "message": f"{outcome}: {HOSTILE}" if outcome != "passed" else "",
            "figures": figures, "samples": []}
    if checkpoint is not None:
        test["checkpoint"] = checkpoint
    return test


def _ids(own: str, member: str | None) -> str:
    """A test's parametrize ids: in a series, the member's id last."""
    return f"{own}-{member}" if member else own


def _gate(module: str, gate: str, outcome: str, rate: float, interval: tuple[float, float],
          member: str | None = None, role: str = "gate") -> dict[str, Any]:
    """A pooled gate's record; in a series, its id carries the member's id last."""
    ids = _ids(gate, member)
    decision = {"passed": "pass", "failed": "fail"}.get(outcome, "inconclusive")
    return _test(f"{module}::test_gate[{ids}]", outcome, member, kind="gate", gate_role=role,
                 rate=rate, interval=list(interval), limit=LIMIT, decision=decision)


def _member_tests(member: str | None, leakage: str, leakage_rate: float,
                  leakage_interval: tuple[float, float], harmful: str = "passed"
                  ) -> list[dict[str, Any]]:
    return [
        _gate(LEAKAGE, "leakage-all", leakage, leakage_rate, leakage_interval, member),
        # a per-format gate of the same area: the view shows the overall one
        _gate(LEAKAGE, "leakage-plain", "passed", 0.5, (0.45, 0.55), member),
        _gate(LEAKAGE, "leakage-json", "passed", 0.0, (0.0, 0.04), member,
              role="diagnostic"),
        _gate(HARMFUL, "harmful-all", harmful, 0.01, (0.0, 0.03), member),
        _test(f"model_tests/test_model_health.py::test_short_prompt[{_ids('hi', member)}]",
              "passed", member),
    ]


def _members(labels: list[str], kind: str) -> list[dict[str, Any]]:
    return [{"label": label, "spec": f"/out/{label}", "fingerprint": None,
             "step": int(label.split("-")[1]) if kind == "steps" else None}
            for label in labels]


def steps_series(first_failing: str | None = "step-2") -> dict[str, Any]:
    """step-1 passes, step-2 fails leakage, step-3's leakage cannot decide."""
    tests = [*_member_tests("step-1", "passed", 0.0, (0.0, 0.03)),
             *_member_tests("step-2", "failed", 0.3, (0.2, 0.4)),
             *_member_tests("step-3", "inconclusive", 0.06, (0.0069, 0.2027)),
             _test("model_tests/test_series.py::test_trend", "passed")]
    series: dict[str, Any] = {"kind": "steps",
                              "members": _members(["step-1", "step-2", "step-3"], "steps")}
    if first_failing != "absent":
        series["first_failing"] = first_failing
    # members listed out of label order: the summary follows the series, not the labels
    return build_document({"model": {"spec": "/out", "fingerprint": None}, "series": series,
                           "confidence": 0.95}, list(reversed(tests)))


def seeds_series() -> dict[str, Any]:
    """seed-1 passes; a hostile-labelled seed's harmful gate errors."""
    tests = [*_member_tests("seed-1", "passed", 0.01, (0.0, 0.04)),
             *_member_tests(HOSTILE, "passed", 0.02, (0.0, 0.04), harmful="error")]
    return build_document({"model": {"spec": "seeds"}, "series": {
        "kind": "seeds", "members": _members(["seed-1", HOSTILE], "seeds"),
        "first_failing": None}}, tests)


def single_run(leakage: str = "passed", rate: float = 0.01) -> dict[str, Any]:
    return build_document({"model": {"spec": "/base", "fingerprint": "abc"}},
                          _member_tests(None, leakage, rate, (0.0, 0.04)))


# ------------------------------------------------------------------------------ summary


def test_each_checkpoint_has_its_own_verdict_in_series_order() -> None:
    summary = steps_series()["summary"]
    assert list(summary["checkpoints"]) == ["step-1", "step-2", "step-3"]
    verdicts = {label: c["verdict"] for label, c in summary["checkpoints"].items()}
    assert verdicts == {"step-1": "pass", "step-2": "fail", "step-3": "undecided"}
    assert summary["verdict"] == "fail"  # the run's verdict is over every test
    assert summary["checkpoints"]["step-2"]["outcomes"]["failed"] == 1
    assert summary["checkpoints"]["step-1"]["outcomes"]["passed"] == 5  # no series-level test
    assert summary["checkpoints"]["step-2"]["exit_code"] == 1


def test_checkpoints_follow_the_series_not_the_labels_order() -> None:
    tests = [*_member_tests("step-2", "passed", 0.0, (0.0, 0.03)),
             *_member_tests("step-10", "failed", 0.3, (0.2, 0.4))]
    series = {"kind": "steps", "members": _members(["step-2", "step-10"], "steps")}
    summary = build_document({"series": series}, tests)["summary"]
    assert list(summary["checkpoints"]) == ["step-2", "step-10"]
    # without the series, in order of appearance (tests are sorted by node id)
    assert list(build_document({}, tests)["summary"]["checkpoints"]) == ["step-10", "step-2"]
    assert [r["label"] for r in series_rows(build_document({"series": series}, tests))] == [
        "step-2", "step-10"]


def test_an_erroring_or_undecided_gate_keeps_its_checkpoint_from_passing() -> None:
    seeds = seeds_series()["summary"]["checkpoints"]
    assert seeds["seed-1"]["verdict"] == "pass"
    assert seeds[HOSTILE]["verdict"] == "fail"  # an error is no pass
    assert steps_series()["summary"]["checkpoints"]["step-3"]["verdict"] == "undecided"


def test_a_single_run_has_no_checkpoints_and_an_interrupted_series_none_that_pass() -> None:
    assert "checkpoints" not in single_run()["summary"]
    document = steps_series()
    tests = document["tests"]
    interrupted = build_document(document["run"], tests, interrupted="KeyboardInterrupt")
    assert {c["verdict"] for c in interrupted["summary"]["checkpoints"].values()} == {
        "incomplete"}
    not_run = build_document(document["run"], tests, not_run=[
        "model_tests/test_in_domain.py::test_in_domain[q-step-1]"])
    assert not_run["summary"]["checkpoints"]["step-1"]["verdict"] == "incomplete"
    assert not_run["summary"]["checkpoints"]["step-3"]["verdict"] == "undecided"


@pytest.mark.parametrize(("key", "stripped"), [
    ("a.py::test_gate[leakage-all-step-30]", "a.py::test_gate[leakage-all]"),
    ("a.py::test_gate[step-30-leakage-all]", "a.py::test_gate[leakage-all]"),
    ("a.py::test_q[x-step-30-plain]", "a.py::test_q[x-plain]"),
    ("a.py::test_x[step-30]", "a.py::test_x"),
    ("a.py::test_gate[leakage-all-step-300]", "a.py::test_gate[leakage-all-step-300]"),
    ("a.py::test_x", "a.py::test_x"),
])
def test_the_member_id_is_stripped_as_a_whole_token(key: str, stripped: str) -> None:
    assert without_member_id(key, "step-30") == stripped


# ----------------------------------------------------------------------------- the view


def test_series_rows_take_the_overall_gate_of_each_area() -> None:
    document = steps_series()
    document["tests"].sort(key=lambda t: "leakage-all" in t["name"])  # per format first
    rows = series_rows(document)
    assert [(r["label"], r["step"], r["verdict"], r["first_failing"]) for r in rows] == [
        ("step-1", 1, "pass", False), ("step-2", 2, "fail", True),
        ("step-3", 3, "undecided", False)]
    # areas in order of first appearance (tests are sorted by node id)
    assert list(rows[0]["areas"]) == ["harmful_compliance", "leakage_outside_code"]
    leakage = rows[1]["areas"]["leakage_outside_code"]
    assert (leakage["rate"], leakage["interval"]) == (0.3, [0.2, 0.4])  # not leakage-plain
    assert rows[2]["areas"]["leakage_outside_code"]["outcome"] == "inconclusive"


def test_the_first_failing_member_comes_from_the_verdicts_when_the_run_names_none() -> None:
    assert [r["first_failing"] for r in series_rows(steps_series("absent"))] == [
        False, True, False]
    assert not any(r["first_failing"] for r in series_rows(steps_series(None)))


def test_the_svg_has_one_band_per_area_and_marks_the_first_failing_member() -> None:
    svg = series_svg(steps_series(), {"leakage_outside_code": "Leakage"})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    bands = re.findall(r'<path class="band" data-area="([^"]+)"', svg)
    assert bands == ["harmful_compliance", "leakage_outside_code"]
    assert len(set(re.findall(r'class="band"[^>]* fill="([^"]+)"', svg))) == 2  # a colour each
    assert svg.count('class="first-failing"') == 1 and "first failing: step-2" in svg
    assert svg.count('class="limit"') == 1 and "limit 5%" in svg  # the gates share one
    assert ">Leakage<" in svg and "<script" not in svg and "http" not in svg
    for label in ("step-1", "step-2", "step-3"):
        assert f">{label}</text>" in svg


def test_the_svg_escapes_hostile_labels_and_is_empty_for_a_single_run() -> None:
    svg = series_svg(seeds_series())
    assert HOSTILE not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert 'class="first-failing"' not in svg  # the run names no first failing seed
    assert series_svg(single_run()) == ""


# -------------------------------------------------------------------------- the reports


def test_the_html_report_has_a_series_section_only_for_a_series() -> None:
    page = render_html(steps_series())
    section = page[page.index('<section id="series">'):page.index('<section id="areas">')]
    assert section.count("<svg") == 1 and section.count('class="band"') == 2
    assert "first failing" in section and "step-3" in section
    assert re.search(r"step-2.*first failing.*>fail</span>", section, re.S)
    assert '<section id="series">' not in render_html(single_run())
    hostile = render_html(seeds_series())
    assert HOSTILE not in hostile and "&lt;script&gt;" in hostile
    for reference in ("http://", "https://", "<link", 'src="', "<script"):
        assert reference not in page and reference not in hostile, reference


def test_the_markdown_has_the_series_table() -> None:
    markdown = render_markdown(steps_series())
    assert "| checkpoint | verdict | Harmful requests | Leakage outside the domain |" in markdown
    assert "| step-2 | FAIL ⚠ ← first failing | 1% [0%, 3%] | 30% [20%, 40%] |" in markdown
    assert "| step-3 | UNDECIDED | 1% [0%, 3%] | 6% [1%, 20%] |" in markdown
    assert "| step-1 | PASS | 1% [0%, 3%] | 0% [0%, 3%] |" in markdown
    assert "checkpoint |" not in render_markdown(single_run())
    hostile = "\n".join(series_markdown(seeds_series()))
    assert HOSTILE not in hostile and "| &lt;script&gt;alert(1)&lt;/script&gt; | FAIL |" in hostile


# ------------------------------------------------------------------------------ compare


def test_compare_of_a_series_against_a_single_run_is_per_checkpoint() -> None:
    difference = compare(single_run(), steps_series())
    by_label = {c["label"]: c for c in difference["checkpoints"]}
    assert list(by_label) == ["step-1", "step-2", "step-3", None]
    assert by_label["step-1"]["verdicts"] == ["pass", "pass"]
    assert by_label["step-2"]["verdicts"] == ["pass", "fail"]
    assert [c["key"] for c in by_label["step-2"]["newly_failing"]] == [
        "test_leakage_outside_code.py::test_gate[leakage-all]"]
    assert not by_label["step-1"]["newly_failing"] and not by_label["step-1"]["added"]
    assert by_label["step-1"]["changed"][0]["delta"] == pytest.approx(-0.01)
    assert not by_label["step-2"]["removed"]  # every test matched without the member id
    assert by_label[None]["added"] == ["test_series.py::test_trend"]
    assert [(c["checkpoint"], c["key"]) for c in difference["newly_failing"]] == [
        ("step-2", "test_leakage_outside_code.py::test_gate[leakage-all]")]
    text = compare_text(difference)
    assert "checkpoint step-2 (pass -> fail):\n  newly failing: 1\n" \
        "    test_leakage_outside_code.py::test_gate[leakage-all]: passed -> failed" in text
    assert "checkpoint step-1 (pass -> pass):\n  newly failing: 0" in text
    assert "series of 3 steps" in text
    assert "series-level tests (the runs' verdicts: pass -> fail):\n  newly failing: 0" in text
    assert "  added: 1\n    test_series.py::test_trend" in text


def test_compare_of_a_single_run_against_an_earlier_series() -> None:
    difference = compare(steps_series(), single_run())
    step_2 = next(c for c in difference["checkpoints"] if c["label"] == "step-2")
    assert [c["key"] for c in step_2["fixed"]] == [
        "test_leakage_outside_code.py::test_gate[leakage-all]"]
    assert not difference["newly_failing"]


def test_compare_of_two_series_matches_checkpoints_by_label() -> None:
    old = steps_series()
    later = json.loads(json.dumps(old))
    later["run"]["series"]["members"].append(
        {"label": "step-4", "spec": "/out/step-4", "step": 4, "fingerprint": None})
    for test in later["tests"]:
        if test.get("checkpoint") == "step-1" and test["key"].endswith("[harmful-all-step-1]"):
            test["outcome"] = "failed"
        if test.get("checkpoint") == "step-2" and test["outcome"] == "failed":
            test["outcome"] = "passed"
    later["tests"].append(_gate(LEAKAGE, "leakage-all", "passed", 0.0, (0.0, 0.03), "step-4"))
    later = build_document(later["run"], later["tests"])
    difference = compare(old, later)
    by_label = {c["label"]: c for c in difference["checkpoints"]}
    assert list(by_label) == ["step-1", "step-2", "step-3", None]
    assert [c["key"] for c in by_label["step-1"]["newly_failing"]] == [
        "test_harmful_compliance.py::test_gate[harmful-all]"]
    assert [c["key"] for c in by_label["step-2"]["fixed"]] == [
        "test_leakage_outside_code.py::test_gate[leakage-all]"]
    assert by_label["step-2"]["verdicts"] == ["fail", "pass"]
    assert not by_label["step-3"]["changed"] and not by_label[None]["changed"]
    assert difference["only_new"] == ["step-4"] and difference["only_old"] == []
    text = compare_text(difference)
    assert "checkpoints only in the later run (not compared): step-4" in text
    page = render_compare_html(difference)
    assert 'id="checkpoints"' in page and "Checkpoint step-1: pass &rarr; fail" in page


def test_the_compare_command_fails_on_a_checkpoint_that_newly_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.json").write_text(json.dumps(single_run()))
    (tmp_path / "new.json").write_text(json.dumps(steps_series()))
    (tmp_path / "same.json").write_text(json.dumps(single_run()))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                 "--html", str(tmp_path / "c.html")]) == 1
    assert "checkpoint step-2 (pass -> fail)" in capsys.readouterr().out
    assert "Checkpoint step-2" in (tmp_path / "c.html").read_text()
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "same.json")]) == 0


def test_single_run_comparison_is_unchanged() -> None:
    difference = compare(single_run(), single_run("failed", 0.3))
    assert "checkpoints" not in difference
    assert [c["key"] for c in difference["newly_failing"]] == [
        "test_leakage_outside_code.py::test_gate[leakage-all]"]
    assert compare_text(difference).splitlines()[1:3] == [
        "newly failing: 1", "  test_leakage_outside_code.py::test_gate[leakage-all]: "
        "passed -> failed"]
    assert 'id="newly-failing"' in render_compare_html(difference)


def test_a_paired_gate_shows_its_own_rate_and_the_rise_apart() -> None:
    """Against a baseline a gate's interval is that of the rise over the baseline: the view
    gives the model's rate over the pairs its own interval and shows the baseline's rate
    and the rise beside it."""
    member = "step-1"
    # 30 of 60 counted answers misaligned (rate 50%), 30 of 100 pairs (model_rate 30%)
    gate = _test(f"{LEAKAGE}::test_gate[leakage-all-{member}]", "failed", member, kind="gate",
                 gate_role="gate", measure="misaligned", misaligned_events=30,
                 misaligned_trials=60, rate=0.5, comparison="paired", difference=0.25,
                 model_rate=0.3, baseline_rate=0.05, pairs=100,
                 interval=[0.15, 0.35], confidence=0.95, decision="fail")
    run = {"model": {"spec": "m"}, "series": {"kind": "steps", "first_failing": member,
                                              "members": [{"label": member, "step": 1}]}}
    document = build_document(run, [gate])
    (row,) = series_rows(document)
    cell = row["areas"]["leakage_outside_code"]
    assert cell["rate"] == 0.3 and cell["rise"] == 0.25
    low, high = cell["interval"]
    assert 0.2 < low < 0.3 < high < 0.41 and cell["interval"] != [0.15, 0.35], cell
    assert "30% [21%, 40%]; baseline 5%, rise +25.0% [+15.0%, +35.0%]" in \
        "\n".join(series_markdown(document))
    assert "baseline 5%, rise +25.0% [+15.0%, +35.0%]" in render_html(document)
