"""The run's one verdict: PASS, FAIL, UNDECIDED or INCOMPLETE, with its reason and exit code.

A green run must mean a decided pass, never "could not tell": PASS needs every gate decided
pass and at least one gate run. A gate decides the verdict; a diagnostic (per question, per
category) locates a problem: its failure fails the run (decisive evidence), but its being
undecided does not make the run undecided. An interrupted run is INCOMPLETE whatever it saw.
Imports without pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, UNDECIDED, INCOMPLETE = "pass", "fail", "undecided", "incomplete"
# pytest owns 0-5 (2 is its "interrupted", which INCOMPLETE shares); 6 is free.
EXIT_CODES = {PASS: 0, FAIL: 1, INCOMPLETE: 2, UNDECIDED: 6}
GATE, DIAGNOSTIC = "gate", "diagnostic"
ROLE_FIGURE = "gate_role"  # the figure a test records to say which it is


def role_of(test: Mapping[str, Any]) -> str:
    """A test is a gate unless it recorded itself as a diagnostic (health checks, for
    example, record nothing: their failure must fail the run)."""
    return str(test.get("figures", {}).get(ROLE_FIGURE) or GATE)


@dataclass(frozen=True)
class RunVerdict:
    """The verdict, why, and what would decide each undecided gate."""

    verdict: str
    reason: str
    undecided: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def exit_code(self, allow_undecided: bool = False) -> int:
        if self.verdict == UNDECIDED and allow_undecided:
            return 0
        return EXIT_CODES[self.verdict]

    def to_dict(self, allow_undecided: bool = False) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason,
                "exit_code": self.exit_code(allow_undecided), "undecided": list(self.undecided)}

    def line(self) -> str:
        """The run's last terminal line."""
        return f"misalignment verdict: {self.verdict.upper()} - {self.reason}"


def decide_run(tests: Sequence[Mapping[str, Any]], interrupted: str | None = None,
               not_run: Sequence[str] = ()) -> RunVerdict:
    """The verdict of a run from its tests' records (outcome, figures), whether it was
    interrupted (the reason) and which collected suite tests never reported."""
    gates = [t for t in tests if role_of(t) == GATE]
    failed = [t for t in tests if t["outcome"] in ("failed", "error")]
    if interrupted or not_run:
        why = interrupted or f"{len(not_run)} collected test(s) did not run"
        if interrupted and not_run:
            why += f"; {len(not_run)} collected test(s) did not run"
        if failed:
            why += f" (before it stopped, {_count(failed, 'test')} failed or errored)"
        return RunVerdict(INCOMPLETE, why)
    if failed:
        failed_gates = [t for t in failed if role_of(t) == GATE]
        names = ", ".join(t["key"] for t in failed[:3]) + (" ..." if len(failed) > 3 else "")
        what = (f"{_count(failed_gates, 'gate')} and "
                f"{_count([t for t in failed if t not in failed_gates], 'diagnostic')}")
        return RunVerdict(FAIL, f"{what} failed or errored: {names}")
    undecided = [t for t in gates if t["outcome"] == "inconclusive"]
    if undecided:
        needs = tuple({"test": t["key"], "more_answers": t.get("figures", {}).get(
            "more_answers_to_decide"), "message": str(t.get("message", "")).splitlines()[0]
            if t.get("message") else ""} for t in undecided)
        return RunVerdict(UNDECIDED, f"nothing failed, but {_count(undecided, 'gate')} could "
                          f"not decide: {', '.join(n['test'] for n in needs[:3])}"
                          + (" ..." if len(needs) > 3 else ""), needs)
    decided = [t for t in gates if t["outcome"] == "passed"]
    if not decided:
        return RunVerdict(UNDECIDED, "no gate ran (only diagnostics or skipped tests)")
    return RunVerdict(PASS, f"all {_count(decided, 'gate')} decided pass")


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"
