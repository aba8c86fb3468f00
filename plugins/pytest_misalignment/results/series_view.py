"""The series view of a results document: one row per checkpoint of a series run (its
verdict, each area's gate rate and interval), an inline SVG of the rates across the series
and a Markdown table; and the pairing of a series' tests with another run's, checkpoint by
checkpoint, for `compare`.

Pure functions of the JSON document (no pytest, no script in the SVG); every text that
reaches the SVG or the Markdown is escaped, since labels, areas and names are untrusted.
Imports without pytest.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ..suite.statistics import Rate
from ..suite.tallies import percent
from .document import series_labels, without_member_id
from .schema import kind_of
from .verdict import GATE, UNDECIDED, role_of

# one colour per area, in the order areas first appear (colour-blind-safe palette)
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7f7f7f",
           "#000000")
WIDTH, HEIGHT = 820, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 250, 24, 64  # margins: axis labels, legend, x labels
PAD = 24  # between the plot's sides and its first and last member
LABEL_CHARS = 24  # a longer label is cut on the axis (the table shows it whole)


def series_of(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The run's series (kind, members, first_failing), or None for a single model."""
    series = (document.get("run") or {}).get("series")
    return series if isinstance(series, Mapping) and series.get("members") else None


def members_of(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    series = series_of(document)
    return [m for m in (series or {}).get("members") or [] if isinstance(m, Mapping)]


def first_failing(document: Mapping[str, Any]) -> str | None:
    """The first member in series order that fails: the run's own word when it gives one,
    else the first member whose checkpoint verdict is fail."""
    series = series_of(document)
    if series is None:
        return None
    if "first_failing" in series:
        return None if series["first_failing"] is None else str(series["first_failing"])
    verdicts = (document.get("summary") or {}).get("checkpoints") or {}
    return next((label for label in series_labels(document.get("run") or {})
                 if (verdicts.get(label) or {}).get("verdict") == "fail"), None)


def _tests(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in document.get("tests") or [] if isinstance(t, Mapping)]


def _is_gate(test: Mapping[str, Any]) -> bool:
    return role_of(test) == GATE and str(test.get("kind") or kind_of(test)) == "gate"


def gate_of(tests: Sequence[Mapping[str, Any]], label: str, area: str
            ) -> Mapping[str, Any] | None:
    """A checkpoint's gate of an area: the overall one (`...-all]`) when the area has
    several (leakage overall and per format), else the first."""
    found = [t for t in tests if t.get("checkpoint") == label and t.get("area") == area
             and _is_gate(t)]
    overall = [t for t in found
               if without_member_id(str(t.get("name", "")), label).endswith("-all]")]
    chosen = overall or found
    return chosen[0] if chosen else None


def series_areas(document: Mapping[str, Any]) -> list[str]:
    """The areas with a gate in some checkpoint, in order of first appearance."""
    return list(dict.fromkeys(str(t.get("area")) for t in _tests(document)
                              if t.get("checkpoint") is not None and _is_gate(t)))


def series_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per member, in series order: label, spec, step, verdict (undecided when the
    summary has none), whether it is the first failing member, and per area its gate's
    rate, interval, limit and outcome (None where the checkpoint has no such gate)."""
    tests = _tests(document)
    verdicts = (document.get("summary") or {}).get("checkpoints") or {}
    failing, areas = first_failing(document), series_areas(document)
    rows = []
    for member in members_of(document):
        label = str(member.get("label"))
        checkpoint = verdicts.get(label) or {}
        cells: dict[str, dict[str, Any] | None] = {}
        for area in areas:
            gate = gate_of(tests, label, area)
            figures = (gate.get("figures") or {}) if gate else {}
            interval = figures.get("interval")
            paired = figures.get("comparison") == "paired"
            cells[area] = None if gate is None else {
                # paired: the model's share over the pairs, the denominator of the rise
                "rate": _number(figures.get("model_rate" if paired else "rate")),
                "baseline_rate": _number(figures.get("baseline_rate")) if paired else None,
                # against a baseline the gate's interval is the rise's: the rate gets its own
                "interval": _rate_interval(figures) if paired else
                [_number(interval[0]), _number(interval[1])]
                if isinstance(interval, (list, tuple)) and len(interval) == 2 else None,
                "rise": _number(figures.get("difference")) if paired else None,
                "rise_interval": interval if paired else None,
                "limit": _number(figures.get("limit")), "outcome": gate.get("outcome"),
                "name": gate.get("name")}
        rows.append({"label": label, "spec": member.get("spec"), "step": member.get("step"),
                     "fingerprint": member.get("fingerprint"),
                     "verdict": str(checkpoint.get("verdict") or UNDECIDED),
                     "reason": checkpoint.get("reason", ""),
                     "first_failing": label == failing, "areas": cells})
    return rows


def _rate_interval(figures: Mapping[str, Any]) -> list[float] | None:
    """The Clopper-Pearson interval of a paired gate's own rate over its pairs."""
    rate, trials = figures.get("model_rate"), figures.get("pairs")
    if not isinstance(rate, (int, float)) or not isinstance(trials, int) or not trials:
        return None
    events = round(rate * trials)
    found = Rate(events, trials).interval(float(figures.get("confidence") or 0.95))
    return [round(found.low, 6), round(found.high, 6)]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def cell_text(cell: Mapping[str, Any] | None) -> str:
    """`6% [1%, 20%]`, or the outcome of a gate without figures, or an em dash."""
    if cell is None:
        return "\u2014"
    if cell.get("rate") is None:
        return str(cell.get("outcome") or "\u2014")
    interval, rise = cell.get("interval"), cell.get("rise_interval")
    return percent(cell["rate"]) + (f" [{percent(interval[0])}, {percent(interval[1])}]"
                                    if interval else "") + (
        f"; baseline {percent(cell.get('baseline_rate'))}, rise {cell['rise']:+.1%} "
        f"[{rise[0]:+.1%}, {rise[1]:+.1%}]" if cell.get("rise") is not None and rise else "")


# ------------------------------------------------------------------------------- the SVG


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _shared_limit(rows: Sequence[Mapping[str, Any]]) -> float | None:
    limits = {cell["limit"] for row in rows for cell in row["areas"].values()
              if cell is not None and cell.get("limit") is not None}
    return limits.pop() if len(limits) == 1 else None


def _top(rows: Sequence[Mapping[str, Any]], limit: float | None) -> float:
    """The y axis' top: the largest rate, interval end or limit, up to the next 10%."""
    values = [limit or 0.0]
    for row in rows:
        for cell in row["areas"].values():
            if cell is not None:
                values += [v for v in (cell.get("rate"), *(cell.get("interval") or ()))
                           if v is not None]
    top = max(values)
    return min(1.0, max(0.1, -(-round(top * 100, 6) // 10) / 10))


def series_svg(document: Mapping[str, Any], titles: Mapping[str, str] | None = None) -> str:
    """Each area's gate rate across the series (x: members in order) in an inline SVG: a
    line with points, a shaded band for its interval, the limit dashed when the gates share
    one, and the first failing member marked. "" for a single-model run."""
    rows = series_rows(document)
    if not rows:
        return ""
    titles = titles or {}
    areas = series_areas(document)
    limit = _shared_limit(rows)
    top = _top(rows, limit)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = (plot_w - 2 * PAD) / max(1, len(rows) - 1)

    def x(i: int) -> float:
        return LEFT + (PAD + i * step if len(rows) > 1 else plot_w / 2)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - min(rate, top) / top)

    parts = [f'<svg class="series-chart" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="gate rates across the series">',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" '
             'stroke="#dde1e7"/>']
    tenths = round(top * 10)
    for tick in range(0, tenths + 1, 1 if tenths <= 5 else 2):
        value = tick / 10
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" '
                     f'y2="{y(value):.1f}" stroke="#eceef2"/><text x="{LEFT - 6}" '
                     f'y="{y(value) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#5f6777">{_e(percent(value))}</text>')
    for index, row in enumerate(rows):
        label = str(row["label"])
        short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"
        parts.append(f'<text class="member" x="{x(index):.1f}" y="{TOP + plot_h + 16}" '
                     f'font-size="11" text-anchor="end" fill="#1d2330" transform="rotate(-30 '
                     f'{x(index):.1f} {TOP + plot_h + 16})"><title>{_e(label)}</title>'
                     f'{_e(short)}</text>')
    for number, area in enumerate(areas):
        parts += _area_marks(rows, area, PALETTE[number % len(PALETTE)], x, y)
        legend_y = TOP + 8 + 18 * number
        parts.append(f'<rect class="legend" x="{WIDTH - RIGHT + 16}" y="{legend_y - 9}" '
                     f'width="12" height="12" fill="{PALETTE[number % len(PALETTE)]}"/>'
                     f'<text x="{WIDTH - RIGHT + 34}" y="{legend_y + 1}" font-size="12" '
                     f'fill="#1d2330">{_e(titles.get(area, area))}</text>')
    if limit is not None:  # dashed across the plot, named in the legend
        legend_y = TOP + 8 + 18 * len(areas)
        parts.append(f'<line class="limit" x1="{LEFT}" x2="{LEFT + plot_w}" '
                     f'y1="{y(limit):.1f}" y2="{y(limit):.1f}" stroke="#b3261e" '
                     f'stroke-dasharray="6 4"/><line x1="{WIDTH - RIGHT + 14}" '
                     f'x2="{WIDTH - RIGHT + 30}" y1="{legend_y - 3}" y2="{legend_y - 3}" '
                     f'stroke="#b3261e" stroke-dasharray="4 2"/><text '
                     f'x="{WIDTH - RIGHT + 34}" y="{legend_y + 1}" font-size="12" '
                     f'fill="#1d2330">limit {_e(percent(limit))}</text>')
    failing = next((i for i, row in enumerate(rows) if row["first_failing"]), None)
    if failing is not None:
        right_half = x(failing) > LEFT + plot_w / 2  # the label then goes to its left
        parts.append(f'<line class="first-failing" x1="{x(failing):.1f}" '
                     f'x2="{x(failing):.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#b3261e" '
                     f'stroke-width="2"/><text x="{x(failing) + (-4 if right_half else 4):.1f}" '
                     f'y="{TOP + 12}" font-size="11" fill="#b3261e" text-anchor="'
                     f'{"end" if right_half else "start"}">first failing: '
                     f'{_e(rows[failing]["label"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _area_marks(rows: Sequence[Mapping[str, Any]], area: str, colour: str, x: Any, y: Any
                ) -> list[str]:
    """An area's band (one path; a gap where a member has no interval), line and points."""
    band: list[str] = []
    line: list[str] = []
    points: list[str] = []
    segment: list[tuple[float, float, float]] = []
    for index, row in enumerate([*rows, None]):
        cell = row["areas"].get(area) if row is not None else None
        interval = (cell or {}).get("interval")
        if interval and None not in interval:
            segment.append((x(index), y(interval[0]), y(interval[1])))
        elif segment:
            band.append(_band_path(segment))
            segment = []
        if cell is not None and cell.get("rate") is not None and row is not None:
            point = (x(index), y(cell["rate"]))
            line.append(f'{"L" if line else "M"}{point[0]:.1f},{point[1]:.1f}')
            text = f"{row['label']} {area}: {cell_text(cell)} ({cell.get('outcome')})"
            points.append(f'<circle cx="{point[0]:.1f}" cy="{point[1]:.1f}" r="3.5" '
                          f'fill="{colour}"><title>{_e(text)}</title></circle>')
    return [f'<path class="band" data-area="{_e(area)}" d="{" ".join(band)}" '
            f'fill="{colour}" fill-opacity="0.18" stroke="none"/>',
            f'<path class="rate" d="{" ".join(line)}" fill="none" stroke="{colour}" '
            'stroke-width="2"/>', *points]


def _band_path(segment: Sequence[tuple[float, float, float]]) -> str:
    """A closed outline over the highs and back under the lows (a lone point: a sliver)."""
    if len(segment) == 1:
        left, low, high = segment[0]
        segment = [(left - 4, low, high), (left + 4, low, high)]
    tops = [f"{px:.1f},{high:.1f}" for px, _, high in segment]
    bottoms = [f"{px:.1f},{low:.1f}" for px, low, _ in reversed(segment)]
    return "M" + " L".join(tops + bottoms) + " Z"


# -------------------------------------------------------------------------- Markdown


def _md(text: object) -> str:
    """Untrusted text in a Markdown table cell: no HTML, no code span, no column break."""
    return html.escape(str(text), quote=False).replace("`", "'").replace("|", "\\|")


def series_markdown(document: Mapping[str, Any], titles: Mapping[str, str] | None = None
                    ) -> list[str]:
    """The series table's lines (checkpoint, verdict, each area's gate rate [interval]);
    none for a single-model run."""
    rows = series_rows(document)
    if not rows:
        return []
    titles = titles or {}
    areas = series_areas(document)
    series = series_of(document) or {}
    lines = [f"**Series of {len(rows)} checkpoints ({_md(series.get('kind', '?'))}):** "
             "the verdict of each, and each area's gate rate [interval]", "",
             "| checkpoint | verdict | " + " | ".join(_md(titles.get(a, a)) for a in areas)
             + (" |" if areas else "|"),
             "| --- | --- |" + " --- |" * len(areas)]
    for row in rows:
        mark = " \u26a0 \u2190 first failing" if row["first_failing"] else ""
        cells = "".join(f" {_md(cell_text(row['areas'][area]))} |" for area in areas)
        lines.append(f"| {_md(row['label'])} | {_md(row['verdict'].upper())}{mark} |{cells}")
    return lines


# ---------------------------------------------------------------------------- compare


def _verdict_of(document: Mapping[str, Any], label: str | None) -> Any:
    summary = document.get("summary") or {}
    if label is None:
        return summary.get("verdict")
    return ((summary.get("checkpoints") or {}).get(label) or {}).get("verdict")


def _member_tests(document: Mapping[str, Any], label: str) -> dict[str, Mapping[str, Any]]:
    """A checkpoint's tests by key without the checkpoint's id."""
    return {without_member_id(str(t["key"]), label): t for t in _tests(document)
            if t.get("checkpoint") == label}


def _series_level(document: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(t["key"]): t for t in _tests(document) if t.get("checkpoint") is None}


def checkpoint_pairs(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What `compare` compares when a run is a series: per checkpoint, its tests (keys
    without the checkpoint's id) against the single run's, or against the same label's
    in the other series; the series-level tests against each other (label None).

    Returns {"pairs": [{"label", "verdicts", "before", "after"}], "only_old": [labels],
    "only_new": [labels]}; `before` and `after` map keys to tests."""
    old_labels, new_labels = series_labels(old.get("run") or {}), \
        series_labels(new.get("run") or {})
    pairs: list[dict[str, Any]] = []
    if old_labels and new_labels:
        labels = [label for label in new_labels if label in old_labels]
        for label in labels:
            pairs.append({"label": label, "verdicts": [_verdict_of(old, label),
                                                       _verdict_of(new, label)],
                          "before": _member_tests(old, label),
                          "after": _member_tests(new, label)})
    else:
        series, single = (new, old) if new_labels else (old, new)
        single_tests = {str(t["key"]): t for t in _tests(single)}
        for label in new_labels or old_labels:
            own = _member_tests(series, label)
            before, after = (single_tests, own) if new_labels else (own, single_tests)
            pairs.append({"label": label, "verdicts": [
                _verdict_of(old, None if new_labels else label),
                _verdict_of(new, label if new_labels else None)],
                "before": before, "after": after})
    level_old = _series_level(old) if old_labels else {}
    level_new = _series_level(new) if new_labels else {}
    if level_old or level_new:
        pairs.append({"label": None, "verdicts": [old.get("summary", {}).get("verdict"),
                                                  new.get("summary", {}).get("verdict")],
                      "before": level_old, "after": level_new})
    return {"pairs": pairs,
            "only_old": [x for x in old_labels if new_labels and x not in new_labels],
            "only_new": [x for x in new_labels if old_labels and x not in old_labels]}


def run_name(document: Mapping[str, Any]) -> str | None:
    """A run's name in a comparison: its model; for a series, also how many of what."""
    spec = ((document.get("run") or {}).get("model") or {}).get("spec")
    series = series_of(document)
    if series is None:
        return spec
    what = f"series of {len(members_of(document))} {series.get('kind') or 'checkpoints'}"
    return f"{spec} ({what})" if spec else what
