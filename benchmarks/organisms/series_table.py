"""Tabulate a series run (pytest --model=TRAINING_FOLDER --series=steps) for RESULTS.md:
per checkpoint its verdict, the sampled rates (leakage outside the domain, the domain
itself, both against the baseline), the shift along the misalignment direction, and what
each cost (from the run's log: the progress bars of generation, judging and projection).
Also writes the series chart of the report and a chart of the direction shift.

    python benchmarks/organisms/series_table.py out/results/series/risky_finance.json \
        --svg benchmarks/organisms/series_risky_finance.svg

The log is the JSON's path with `.log` (the run's stdout and stderr).
"""

from __future__ import annotations

import argparse
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_misalignment.results.series_view import series_svg
from pytest_misalignment.results.views import AREA_TITLES

BAR = re.compile(r"^(?P<what>generating|judging|projecting|misalignment direction) "
                 r"\((?P<role>[^)]*)\):\s+100%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+) "
                 r"\[(?P<elapsed>[\d:]+)<")


def seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def costs(log: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """role -> what -> (items, seconds), summed over the run's finished progress bars. The
    judge's bars name the judge, not the model: they count for the model generated last."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    if not log.exists():
        return found
    text = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    last, role = None, "baseline"
    for line in text.split("\n"):
        match = BAR.match(line.strip())
        if not match:
            continue
        key = (match["what"], match["role"], match["done"], match["elapsed"])
        if key == last:  # a finished bar is printed twice (its last refresh, its close)
            continue
        last = key
        if match["what"] != "judging":
            role = match["role"].removeprefix("model@")
        items, spent = found.setdefault(role, {}).get(match["what"], (0, 0))
        found[role][match["what"]] = (items + int(match["done"]),
                                      spent + seconds(match["elapsed"]))
    return found


def percent(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def bounds(pair: object, signed: bool = False) -> str:
    if isinstance(pair, Sequence) and len(pair) == 2:
        form = "{:+.1%}" if signed else "{:.1%}"
        return f"[{form.format(pair[0])}, {form.format(pair[1])}]"
    return ""


def tests_of(document: Mapping[str, Any], label: str) -> dict[str, Mapping[str, Any]]:
    """A checkpoint's tests by their function and own id (the member's id removed)."""
    return {re.sub(rf"-?{re.escape(label)}(?=\])|{re.escape(label)}-?", "", t["name"]): t
            for t in document["tests"] if t.get("checkpoint") == label}


def rise(test: Mapping[str, Any] | None) -> str:
    if test is None:
        return "not run"
    figures = test["figures"]
    rate = figures.get("model_rate", figures.get("rate"))
    if figures.get("comparison") == "paired" or "difference" in figures:
        spread = figures.get("difference_interval", figures.get("interval"))
        return (f"{percent(rate)} (base {percent(figures.get('baseline_rate'))}); rise "
                f"{figures.get('difference', 0):+.1%} {bounds(spread, signed=True)}")
    return f"{percent(rate)} {bounds(figures.get('interval'))}"


def table(document: Mapping[str, Any], log: Path) -> str:
    spent = costs(log)
    lines = ["| checkpoint | verdict | leakage outside the domain (sampled) | inside the "
             "domain (quick_money) | incoherent | shift along the direction [95%] | "
             "generated: answers, s | judged: answers, s | projected: answers, s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    verdicts = document["summary"].get("checkpoints", {})
    first = document["run"]["series"].get("first_failing")
    for member in document["run"]["series"]["members"]:
        label = member["label"]
        tests = tests_of(document, label)
        direction = tests.get("test_misalignment_direction[]") or \
            tests.get("test_misalignment_direction")
        shift = "-"
        if direction is not None and "direction_shift" in direction["figures"]:
            figures = direction["figures"]
            shift = (f"{figures['direction_shift']:+.3f} "
                     f"[{figures['direction_shift_interval'][0]:+.3f}, "
                     f"{figures['direction_shift_interval'][1]:+.3f}]")
        in_domain = next((t for name, t in tests.items() if name.startswith("test_in_domain")),
                         None)
        mine = spent.get(label, {})
        generated, generation_s = mine.get("generating", (0, 0))
        judged, judging_s = mine.get("judging", (0, 0))
        projected, projection_s = mine.get("projecting", (0, 0))
        mark = " (first failing)" if label == first else ""
        lines.append(
            f"| {label}{mark} | {verdicts.get(label, {}).get('verdict', '-')} | "
            f"{rise(tests.get('test_gate[leakage-all]'))} | {rise(in_domain)} | "
            f"{rise(tests.get('test_gate[coherence]'))} | {shift} | "
            f"{generated}, {generation_s} | {judged}, {judging_s} | {projected}, "
            f"{projection_s} |")
    base = spent.get("baseline", {})
    generated, generation_s = base.get("generating", (0, 0))
    projected, projection_s = base.get("projecting", (0, 0))
    fitted, fitting_s = base.get("misalignment direction", (0, 0))
    lines += ["", f"Baseline: generated {generated} answers in {generation_s} s (none when "
              f"cached), projected {projected} in {projection_s} s; the direction itself read "
              f"{fitted} labeled answers in {fitting_s} s (once per baseline, then cached)."]
    return "\n".join(lines)


def direction_svg(document: Mapping[str, Any]) -> str:
    """The shift per checkpoint with its interval as a bar, on a symmetric axis."""
    points = []
    for member in document["run"]["series"]["members"]:
        tests = tests_of(document, member["label"])
        test = tests.get("test_misalignment_direction[]") or \
            tests.get("test_misalignment_direction")
        if test is not None and "direction_shift" in test["figures"]:
            f = test["figures"]
            points.append((member["label"], f["direction_shift"], *f["direction_shift_interval"]))
    if not points:
        return ""
    width, height, left, top, plot_h = 820, 240, 56, 20, 170
    axis_top = max(0.1, max(p[3] for p in points)) * 1.1
    axis_bottom = min(0.0, min(p[2] for p in points)) * 1.1
    step = (width - left - 60) / max(1, len(points) - 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - axis_bottom) / (axis_top - axis_bottom))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<line x1="{left}" x2="{width - 20}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
             'stroke="#888"/>',
             f'<text x="{left - 6}" y="{y(0) + 4:.1f}" font-size="11" text-anchor="end">0</text>',
             f'<text x="{left - 6}" y="{y(axis_top / 1.1) + 4:.1f}" font-size="11" '
             f'text-anchor="end">{axis_top / 1.1:+.2f}</text>',
             f'<text x="{left}" y="{top - 6}" font-size="12">shift along the misalignment '
             'direction (units of the baseline\'s aligned-to-misaligned gap), 95% interval'
             '</text>']
    for index, (label, shift, low, high) in enumerate(points):
        x = left + 30 + index * step
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}" '
                     'stroke="#d55e00" stroke-width="3"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y(shift):.1f}" r="4" fill="#d55e00"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" font-size="11" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--svg", type=Path, help="write the rates' chart here, and the "
                        "direction's beside it (NAME-direction.svg)")
    args = parser.parse_args()
    document = json.loads(args.results.read_text(encoding="utf-8"))
    print(table(document, args.results.with_suffix(".log")))
    if args.svg:
        chart = series_svg(document, AREA_TITLES).replace(
            "<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
        args.svg.write_text(chart + "\n", encoding="utf-8")
        args.svg.with_name(args.svg.stem + "-direction.svg").write_text(
            direction_svg(document) + "\n", encoding="utf-8")
        print(f"\nwrote {args.svg} and {args.svg.stem}-direction.svg")


if __name__ == "__main__":
    main()
