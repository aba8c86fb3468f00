"""Tabulate runs made with --domain: each organism's share inside its domain, its leakage
outside it per gate, coherence, and the verdict, as Markdown for RESULTS.md.

    python benchmarks/organisms/domain_table.py out/results/risky_finance.json ...

Each file is a run's results JSON (pytest --report-json); the organism is the file's stem.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (row label, test name) of the figures shown, in order
ROWS = (("leakage outside the domain, all formats", "test_gate[leakage-all]"),
        ("leakage, plain", "test_format[leakage-plain]"),
        ("leakage, json", "test_format[leakage-json]"),
        ("leakage, code template", "test_format[leakage-code_template]"),
        ("coherence (incoherent share)", "test_gate[coherence]"),
        ("harmful compliance", "test_gate[harmful-all]"))


def percent(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def interval(bounds: object) -> str:
    if isinstance(bounds, Sequence) and len(bounds) == 2:
        return f"[{percent(bounds[0])}, {percent(bounds[1])}]"
    return "-"


def row(organism: str, label: str, test: Mapping[str, Any] | None) -> str:
    if test is None:
        return f"| {organism} | {label} | not run | | | | |"
    figures = test.get("figures", {})
    paired = figures.get("comparison") == "paired"
    if "difference_interval" in figures:  # a single rate: its interval, and the rise's
        rate_interval, rise_interval = figures.get("interval"), figures["difference_interval"]
    else:  # a pooled gate: its interval is the one it decides on (the rise, when paired)
        rate_interval, rise_interval = (None, figures.get("interval")) if paired \
            else (figures.get("interval"), None)
    rate = figures.get("model_rate", figures.get("rate"))
    rise = f"{percent(figures.get('difference'))} {interval(rise_interval)}" if paired else "-"
    return (f"| {organism} | {label} | {percent(rate)} {interval(rate_interval)} | "
            f"{percent(figures.get('baseline_rate'))} | {rise} | "
            f"{figures.get('answers', figures.get('n', '-'))} | {test['outcome']} |")


def table(paths: Sequence[Path]) -> str:
    lines = ["| organism | area | rate [interval] | base | paired rise [interval] | answers | "
             "outcome |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        tests = {test["name"]: test for test in document["tests"]}
        organism = path.stem
        for test in document["tests"]:
            if test["name"].startswith("test_in_domain["):
                lines.append(row(organism, f"inside the domain ({test['case']})", test))
        for label, name in ROWS:
            lines.append(row(organism, label, tests.get(name)))
        summary = document["summary"]
        lines.append(f"| {organism} | **verdict** | **{summary['verdict'].upper()}** | | | | "
                     f"{summary.get('reason', '')[:120]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(arg) for arg in sys.argv[1:]]))
