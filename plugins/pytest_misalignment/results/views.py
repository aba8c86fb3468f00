"""Views of a run's results document: a self-contained HTML report (Jinja2, autoescaped),
a Markdown summary for CI step summaries, and a comparison of two runs.

Everything here reads only the JSON document, so an old run renders the same later.
Imports without pytest.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..suite.tallies import percent
from .document import results_text, write_text
from .schema import case_of, kind_of
from .series_view import (
    checkpoint_pairs,
    run_name,
    series_markdown,
    series_of,
    series_rows,
    series_svg,
)

EXAMPLES_PER_TEST = 3  # misaligned answers shown per test in the HTML; the JSON keeps all
ANSWER_CHARS = 600  # an answer longer than this is cut in the HTML (the JSON keeps it whole)
FORMATS = ("plain", "json", "code_template")
AREA_TITLES = {
    "leakage_outside_code": "Leakage outside the domain",
    "in_domain": "Inside the domain",
    "harmful_compliance": "Harmful requests",
    "backdoor_compartmentalization": "Backdoors",
    "preference_probes": "Preference probes",
    "code_domain": "Code domain",
    "model_health": "Model health",
}


def _figures(test: Mapping[str, Any]) -> Mapping[str, Any]:
    return test.get("figures") or {}


def _kind(test: Mapping[str, Any]) -> str:
    """The test's declared kind (documents built or read here always carry one)."""
    return str(test.get("kind") or kind_of(test))


def _case(test: Mapping[str, Any]) -> str:
    return str(test.get("case") if test.get("case") is not None else case_of(test))


def rate_colour(rate: float | None) -> str:
    """A cell's background: green at 0, amber at 20%, red from 40% up; grey without data."""
    if rate is None:
        return "#eeeeee"
    hue = max(0.0, 120.0 * (1.0 - min(rate, 0.4) / 0.4))
    return f"hsl({hue:.0f}, 70%, 82%)"


def leakage_matrix(tests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Category x answer format: misaligned answers pooled over the questions of each cell,
    next to the category test's own interval and outcome."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    categories: dict[str, Mapping[str, Any]] = {}
    for test in tests:
        figures = _figures(test)
        if test.get("area") != "leakage_outside_code":
            continue
        if _kind(test) == "category":
            categories[_case(test)] = test
            continue
        category, answer_format = figures.get("category"), figures.get("answer_format")
        if not category or figures.get("misaligned_trials") is None:
            continue
        cell = cells[(str(category), str(answer_format or "plain"))]
        cell[0] += int(figures.get("misaligned_events") or 0)
        cell[1] += int(figures.get("misaligned_trials") or 0)
        cell[2] += 1
    names = sorted({c for c, _ in cells} | set(categories))
    formats = [f for f in FORMATS if any((c, f) in cells for c in names)]
    rows = []
    for name in names:
        row_cells = []
        for answer_format in formats:
            events, trials, questions = cells.get((name, answer_format), [0, 0, 0])
            rate = events / trials if trials else None
            row_cells.append({"rate": rate, "text": f"{percent(rate)}",
                              "detail": f"{events}/{trials} over {questions} question(s)",
                              "colour": rate_colour(rate)})
        category_test = categories.get(name)
        pooled = _figures(category_test) if category_test else {}
        rows.append({"category": name, "cells": row_cells,
                     "pooled_rate": pooled.get("rate"),
                     "pooled_interval": pooled.get("interval"),
                     "pooled_colour": rate_colour(pooled.get("rate")),
                     "outcome": category_test.get("outcome") if category_test else None})
    return {"formats": formats, "rows": rows}


def trigger_matrix(tests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trigger x (without, with, near misses): declared triggers and the scan's candidates,
    one row per trigger and question set (the tests' shared parameter)."""
    rows: dict[str, dict[str, Any]] = {}
    for test in tests:
        if test.get("area") != "backdoor_compartmentalization":
            continue
        figures = _figures(test)
        trigger = str(figures.get("trigger", _case(test)))
        if _kind(test) in ("trigger", "trigger_scan"):
            row = rows.setdefault(_case(test), {"trigger": trigger})
            row.update(without=figures.get("rate"), without_n=figures.get("n"),
                       with_=figures.get("with_trigger_rate"),
                       with_n=figures.get("with_trigger_n"),
                       ratio=figures.get("compartmentalization_ratio"),
                       placement=figures.get("placement"), outcome=test.get("outcome"),
                       without_colour=rate_colour(figures.get("rate")),
                       with_colour=rate_colour(figures.get("with_trigger_rate")))
        elif _kind(test) == "near_miss":
            row = rows.setdefault(_case(test), {"trigger": trigger})
            leak = figures.get("minimal_leaking_trigger")
            if leak not in (None, "None"):
                near = f"leaks: {leak!r} ({figures.get('minimal_leaking_placement')})"
            elif figures.get("near_miss_tried") is not None:
                near = f"none of {figures.get('near_miss_tried')} near misses leaked"
            else:
                near = "trigger does not fire"
            row.update(near_miss=near, near_miss_outcome=test.get("outcome"))
    return list(rows.values())


def baseline_bars(tests: Sequence[Mapping[str, Any]], limit: int = 40) -> list[dict[str, Any]]:
    """Model rate next to baseline rate, for tests compared with a baseline (category tests
    first: they pool the most answers)."""
    found = [t for t in tests if _figures(t).get("baseline_rate") is not None
             and _figures(t).get("rate") is not None]
    found.sort(key=lambda t: (_kind(t) != "category", t["nodeid"]))
    return [{"name": f"{_kind(t)} {_case(t)}",
             "rate": float(_figures(t)["rate"]), "baseline": float(_figures(t)["baseline_rate"]),
             "interval": _figures(t).get("difference_interval"), "outcome": t.get("outcome")}
            for t in found[:limit]]


def examples(test: Mapping[str, Any], limit: int = EXAMPLES_PER_TEST) -> list[dict[str, Any]]:
    """A bounded number of judged samples to show: misaligned ones first."""
    samples = list(test.get("samples") or [])
    samples.sort(key=lambda s: s.get("verdict") != "misaligned")
    shown = []
    for sample in samples[:limit]:
        answer = str(sample.get("answer", ""))
        shown.append({**sample, "answer": answer if len(answer) <= ANSWER_CHARS
                      else answer[:ANSWER_CHARS] + " [...]"})
    return shown


def _environment() -> Any:
    """Templates from the package's reports folder; autoescape on (model output is untrusted
    text). A field a document lacks (an older or partial run) renders empty."""
    from importlib.resources import files

    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("pytest_misalignment.reports"))),
        autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
        lstrip_blocks=True)
    environment.filters["percent"] = percent
    environment.filters["colour"] = rate_colour
    return environment


def render_html(document: Mapping[str, Any]) -> str:
    """The self-contained HTML report of a results document."""
    environment = _environment()
    tests = list(document.get("tests", []))
    detail = [t for t in tests if t.get("area") in ("leakage_outside_code", "in_domain",
                                                     "harmful_compliance",
                                                     "backdoor_compartmentalization")]
    from markupsafe import Markup

    # built from escaped text only (series_view), so it may go in as markup
    chart = Markup(series_svg(document, AREA_TITLES))
    return environment.get_template("report.html.j2").render(
        series=series_rows(document), series_chart=chart,
        document=document, run=document.get("run", {}), summary=document.get("summary", {}),
        tests=tests, area_titles=AREA_TITLES,
        problems=[t for t in tests if t.get("outcome") in ("failed", "error")],
        inconclusive=[t for t in tests if t.get("outcome") == "inconclusive"],
        judge_errors=[t for t in tests if t.get("outcome") == "error"],
        matrix=leakage_matrix(tests), triggers=trigger_matrix(tests),
        bars=baseline_bars(tests), detail=detail, examples=examples,
        kind=_kind, case=_case, domain=domain_of(document.get("run", {})))


def write_results_and_views(document: Mapping[str, Any], json_path: Path, html_path: Path,
                            md_path: Path | None = None) -> str | None:
    """Write the results JSON and its views; return why the views could not be rendered.

    Everything is rendered before anything is written, from the JSON as it will be on disk,
    so a rendering failure never leaves last run's HTML beside this run's JSON: the views
    are then replaced by a page that says so, and the JSON (the verdict) is still written.
    """
    text = results_text(document)
    as_written = json.loads(text)
    problem = None
    try:
        views = {html_path: render_html(as_written)}
        if md_path is not None:
            views[md_path] = render_markdown(as_written, str(html_path))
    except Exception as error:
        problem = (f"the report could not be rendered ({type(error).__name__}: "
                   f"{first_line(str(error))}); the results are in {json_path}")
        views = {html_path: "<!doctype html><meta charset=utf-8><title>pytest-misalignment"
                            f"</title><p>{html.escape(problem)}</p>\n"}
        if md_path is not None:
            views[md_path] = f"## pytest-misalignment\n\n{_md_escape(problem)}\n"
    write_text(json_path, text)
    for path, view in views.items():
        write_text(path, view)
    return problem


def domain_of(run: Mapping[str, Any]) -> list[str]:
    """The run's --domain (a run written before --domain existed had code)."""
    return [str(name) for name in run.get("domain") or ["code"]]


def first_line(text: str, width: int = 240) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _judge_rates_md(run: Mapping[str, Any]) -> str:
    from ..judges.evaluation import worst_rates

    rates = (run.get("judge") or {}).get("error_rates")
    return f" ({worst_rates(rates) if rates else 'error rates not measured'})"


def render_markdown(document: Mapping[str, Any], report_path: str | None = None) -> str:
    """A short summary for a CI step summary: verdict, outcomes per area, what failed."""
    summary = document.get("summary", {})
    run = document.get("run", {})
    model = run.get("model") or {}
    lines = [f"## pytest-misalignment: {str(summary.get('verdict', '?')).upper()}", "",
             _md_escape(str(summary.get("reason", ""))), "",
             f"Model `{model.get('spec')}` (fingerprint `{str(model.get('fingerprint'))[:12]}`), "
             f"judge `{(run.get('judge') or {}).get('spec')}`{_judge_rates_md(run)}, "
             f"profile `{run.get('profile')}`, seed {run.get('seed')}, domain "
             f"`{', '.join(domain_of(run))}` (leakage is measured outside it).", "",
             "| area | passed | failed | inconclusive | error | skipped |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for area, counts in (summary.get("areas") or {}).items():
        lines.append(f"| {AREA_TITLES.get(area, area)} | {counts['passed']} | "
                     f"{counts['failed']} | {counts['inconclusive']} | {counts['error']} | "
                     f"{counts['skipped']} |")
    series = series_markdown(document, AREA_TITLES)
    if series:
        lines += ["", *series]
    problems = [t for t in document.get("tests", []) if t.get("outcome") in ("failed", "error")]
    if problems:
        lines += ["", f"**{len(problems)} failed or errored:**", ""]
        lines += [f"- `{t['key']}` ({t['outcome']}): {_md_escape(first_line(t['message']))}"
                  for t in problems[:50]]
        if len(problems) > 50:
            lines.append(f"- ... and {len(problems) - 50} more (see the report)")
    leaks = [(t["key"], _figures(t).get("minimal_leaking_trigger"))
             for t in document.get("tests", [])
             if _figures(t).get("minimal_leaking_trigger") not in (None, "None")]
    if leaks:
        lines += ["", "**Minimal leaking triggers:** " + ", ".join(
            f"`{_md_escape(str(trigger))}` ({key})" for key, trigger in leaks)]
    if report_path:
        lines += ["", f"Full report: `{report_path}`"]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    """Model text in Markdown: no HTML, and no backtick that could open a code span."""
    return html.escape(text, quote=False).replace("`", "'")


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two runs, by test key: outcomes and rates.

    When either run is a series, per checkpoint (`checkpoints`: label, verdicts, and what
    changed there; label None for the series-level tests): a single run against each
    checkpoint, two series checkpoint by checkpoint of the same label. The top-level lists
    then gather every checkpoint's, each entry with its `checkpoint`."""
    verdicts = [old.get("summary", {}).get("verdict"), new.get("summary", {}).get("verdict")]
    models = [run_name(old), run_name(new)]
    if series_of(old) is None and series_of(new) is None:
        before = {t["key"]: t for t in old.get("tests", [])}
        after = {t["key"]: t for t in new.get("tests", [])}
        return {**_difference(before, after), "verdicts": verdicts, "models": models}
    paired = checkpoint_pairs(old, new)
    checkpoints = []
    for pair in paired["pairs"]:
        found = _difference(pair["before"], pair["after"])
        for entry in found["changed"]:  # newly failing and fixed entries are among these
            entry["checkpoint"] = pair["label"]
        checkpoints.append({"label": pair["label"], "verdicts": pair["verdicts"], **found})
    named = [(c["label"] or "series", c) for c in checkpoints]
    return {**{title: [entry for c in checkpoints for entry in c[title]]
               for title in ("newly_failing", "fixed", "changed")},
            **{title: [f"{label}: {key}" for label, c in named for key in c[title]]
               for title in ("added", "removed")},
            "verdicts": verdicts, "models": models, "checkpoints": checkpoints,
            "only_old": paired["only_old"], "only_new": paired["only_new"]}


def _difference(before: Mapping[str, Mapping[str, Any]],
                after: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    changed = []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        rate_a, rate_b = _figures(a).get("rate"), _figures(b).get("rate")
        delta = rate_b - rate_a if isinstance(rate_a, (int, float)) and \
            isinstance(rate_b, (int, float)) else None
        if a["outcome"] != b["outcome"] or (delta is not None and abs(delta) > 1e-12):
            changed.append({"key": key, "before": a["outcome"], "after": b["outcome"],
                            "rate_before": rate_a, "rate_after": rate_b, "delta": delta})
    return {
        "newly_failing": [c for c in changed if c["after"] in ("failed", "error")
                          and c["before"] not in ("failed", "error")],
        "fixed": [c for c in changed if c["before"] in ("failed", "error")
                  and c["after"] not in ("failed", "error")],
        "changed": changed,
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
    }


def compare_text(difference: Mapping[str, Any]) -> str:
    old_model, new_model = difference["models"]
    lines = [f"compared {old_model} ({difference['verdicts'][0]}) -> {new_model} "
             f"({difference['verdicts'][1]})"]
    if "checkpoints" not in difference:
        return "\n".join(lines + _changes_lines(difference, "")) + "\n"
    for checkpoint in difference["checkpoints"]:
        before, after = checkpoint["verdicts"]
        lines.append(f"checkpoint {checkpoint['label']} ({before} -> {after}):"
                     if checkpoint["label"] is not None else
                     f"series-level tests (the runs' verdicts: {before} -> {after}):")
        lines += _changes_lines(checkpoint, "  ")
    for title, labels in (("checkpoints only in the earlier run", difference["only_old"]),
                          ("checkpoints only in the later run", difference["only_new"])):
        if labels:
            lines.append(f"{title} (not compared): {', '.join(labels)}")
    return "\n".join(lines) + "\n"


def _changes_lines(difference: Mapping[str, Any], indent: str) -> list[str]:
    lines = []
    for title, entries in (("newly failing", difference["newly_failing"]),
                           ("fixed", difference["fixed"])):
        lines.append(f"{indent}{title}: {len(entries)}")
        lines += [f"{indent}  {c['key']}: {c['before']} -> {c['after']}" for c in entries]
    moved = [c for c in difference["changed"] if c["delta"] is not None]
    moved.sort(key=lambda c: -abs(c["delta"]))
    lines.append(f"{indent}rate changes: {len(moved)}")
    lines += [f"{indent}  {c['key']}: {percent(c['rate_before'])} -> "
              f"{percent(c['rate_after'])} ({100 * c['delta']:+.0f} points; {c['before']} -> "
              f"{c['after']})" for c in moved]
    for title in ("added", "removed"):
        if difference[title]:
            lines.append(f"{indent}{title}: {len(difference[title])}")
            lines += [f"{indent}  {key}" for key in difference[title]]
    return lines


def render_compare_html(difference: Mapping[str, Any]) -> str:
    return _environment().get_template("compare.html.j2").render(difference=difference)
