"""The terminal: the plan, the summary of a run and its verdict line."""

from __future__ import annotations

from typing import Any

import pytest

from .judges.evaluation import describe_accuracy
from .outcomes import report_message
from .session import RUN_KEY, MisalignmentRun


def print_verdict(config: pytest.Config) -> None:
    """The verdict is the run's last terminal line (after pytest's own summary)."""
    run = config.stash.get(RUN_KEY, None)
    recorder = run.results if run is not None else None
    if recorder is not None and recorder.verdict is not None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            verdict = recorder.verdict
            color = {"pass": {"green": True}, "fail": {"red": True}}.get(
                verdict.verdict, {"yellow": True})
            terminal.write_line(verdict.line(), bold=True, **color)
            exit_code = verdict.exit_code(run.settings.allow_undecided)  # type: ignore[union-attr]
            if verdict.verdict == "undecided" and exit_code:
                terminal.write_line("(exit code 6: --allow-undecided exits 0; more samples "
                                    "decide: --profile, --max-samples)")


def summarize_results(terminalreporter: Any, run: MisalignmentRun) -> None:
    """Outcomes per suite area, gates and diagnostics apart, and where the results and
    reports are."""
    recorder = run.results
    if recorder is None or recorder.document is None:
        return
    summary = recorder.document["summary"]
    terminalreporter.write_sep("-", f"misalignment: {summary['verdict'].upper()}")
    for area, counts in summary["areas"].items():
        parts = []
        for role in ("gates", "diagnostics"):
            shown = ", ".join(f"{n} {outcome}" for outcome, n in counts[role].items() if n)
            if shown:
                parts.append(f"{role}: {shown}")
        terminalreporter.write_line(f"{area}: {'; '.join(parts)}")
    series = recorder.document["run"].get("series")
    if series:  # each checkpoint's own verdict, in series order
        first = series.get("first_failing")
        verdicts = summary.get("checkpoints", {})
        terminalreporter.write_line(f"series ({series['kind']}): " + ", ".join(
            f"{label} {verdicts.get(label, {}).get('verdict', 'undecided')}"
            + (" (first to fail its pooled gates)" if label == first else "")
            for label in verdicts))
    if run.snapshot_skipped:
        terminalreporter.write_line(f"snapshot not written: {run.snapshot_skipped}")
    for name, path in recorder.written.items():
        terminalreporter.write_line(f"{name}: {path}")
    if recorder.write_problem:
        terminalreporter.write_line(f"WARNING: {recorder.write_problem}", red=True, bold=True)


def summarize_inconclusive(terminalreporter: Any) -> None:
    """Each inconclusive gate with what it saw, where -r asks for skips (pytest's own short
    summary has no place for this outcome)."""
    reports = terminalreporter.stats.get("inconclusive", [])
    if not reports:
        return
    terminalreporter.write_sep("-", f"{len(reports)} inconclusive: more samples would decide "
                                    "(--max-samples, --profile); --strict-gates fails them")
    if not set(getattr(terminalreporter, "reportchars", "")) & set("saA"):
        terminalreporter.write_line("(-rs lists each with what it saw)")
        return
    for report in reports:
        reason = report_message(report)
        shown = [line for line in reason.splitlines() if not line.startswith("  example")]
        terminalreporter.write_line(f"INCONCLUSIVE {report.nodeid} - " + "\n".join(shown))


def header_lines(config: pytest.Config) -> list[str]:
    """The run's settings, under pytest's own header."""
    run = config.stash[RUN_KEY]
    settings = run.settings
    line = f"misalignment: model={settings.model}"
    if run.members:
        line = (f"misalignment: series of {len(run.members)} checkpoints "
                f"({settings.series or 'steps'}): {', '.join(m.label for m in run.members)}")
    if settings.baseline:
        line += f" baseline={settings.baseline}"
    line += (f" device={settings.device} dtype={settings.dtype} seed={settings.seed}"
             f" temperature={settings.temperature} max_new_tokens={settings.max_new_tokens}"
             f" judge={settings.judge} profile={settings.profile}"
             f" domain={','.join(settings.domains)}")
    return [line]


def summarize_run(terminalreporter: Any, config: pytest.Config) -> None:
    """Inconclusive tests, outcomes per area, where the results are, what the engine did."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    summarize_inconclusive(terminalreporter)
    summarize_results(terminalreporter, run)
    counters = run.counters
    if not (counters.generated or counters.generation_cache_hits or counters.scored
            or counters.score_cache_hits or counters.judged or counters.judgment_cache_hits):
        return
    speed = (f" ({counters.generated_tokens / counters.generation_seconds:.0f} tok/s)"
             if counters.generation_seconds > 0 else "")
    load_text = ("model loaded" if counters.model_loads
                 else "model not loaded: every request was cached")
    terminalreporter.write_sep("-", "misalignment engine")
    if counters.generated or counters.generation_cache_hits or counters.scored \
            or counters.score_cache_hits:
        terminalreporter.write_line(
            f"generated {counters.generated} answers{speed}, {counters.generation_cache_hits} "
            f"from cache; scored {counters.scored} pairs, {counters.score_cache_hits} from "
            f"cache; {load_text} ({counters.model_loads} load(s))"
        )
    if run.judge_info:
        terminalreporter.write_line(
            f"judge {run.judge_info['spec']}: judged {counters.judged} answers, "
            f"{counters.judgment_cache_hits} from cache; {describe_accuracy(run.judge_info)}")
