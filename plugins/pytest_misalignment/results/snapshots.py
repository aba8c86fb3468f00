"""Baseline snapshots: a run's per-test counts in a JSON file users commit, and reading one
back to gate a new checkpoint against it without loading the old model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..suite.statistics import Rate
from .document import read_json, write_json

SNAPSHOT_VERSION = 1
COUNTED = ("misaligned", "complied")  # figures whose events/trials a snapshot keeps
ALLOW_MISMATCH = "--allow-snapshot-mismatch"


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message says why."""


@dataclass(frozen=True)
class MissingFromSnapshot:
    """A test (or one figure of it) the --compare-baseline snapshot has no counts for: its
    comparison with the snapshot cannot be decided."""

    path: str

    @property
    def reason(self) -> str:
        return f"not in the snapshot {self.path}"


def write_snapshot(path: Path, meta: Mapping[str, Any], tests: Mapping[str, Mapping[str, Any]]
                   ) -> None:
    write_json(path, {"version": SNAPSHOT_VERSION, **meta,
                      "tests": {key: dict(value) for key, value in sorted(tests.items())}})


def read_snapshot(path: Path) -> dict[str, Any]:
    document = read_json(path, SnapshotError, "--compare-baseline: ")
    if not isinstance(document, dict) or document.get("version") != SNAPSHOT_VERSION \
            or not isinstance(document.get("tests"), dict):
        raise SnapshotError(f"--compare-baseline: {path} is not a snapshot of version "
                            f"{SNAPSHOT_VERSION} (write one with --update-baseline)")
    return document


def snapshot_rate(document: Mapping[str, Any], key: str, figure: str) -> Rate | None:
    entry = document["tests"].get(key, {})
    events, trials = entry.get(f"{figure}_events"), entry.get(f"{figure}_trials")
    if isinstance(events, int) and isinstance(trials, int):
        return Rate(events, trials)
    return None


def setup_fields(document: Mapping[str, Any], profile: str, seed: int, judge: str
                 ) -> dict[str, object]:
    """What of this run's setup can be checked against the snapshot before anything loads:
    profile and seed, and the judge's spec where the snapshot has no judge fingerprint (one
    written before fingerprints were recorded); the fingerprint is checked once known."""
    fields: dict[str, object] = {"profile": profile, "seed": seed}
    if not document.get("judge_fingerprint"):
        fields["judge"] = judge
    return fields


def setup_differences(document: Mapping[str, Any], this_run: Mapping[str, object]
                      ) -> list[str]:
    """Each field of `this_run` whose value the snapshot recorded differently, as
    "name: snapshot X vs this run Y"."""
    differences = []
    for name, value in this_run.items():
        recorded = document.get(name)
        if recorded != value:
            shown = "not recorded" if recorded is None else recorded
            differences.append(f"{name}: snapshot {shown} vs this run {value}")
    return differences


def mismatch_message(path: str, differences: list[str], allowed: bool) -> str:
    """One line: which snapshot, what differs, and what happens now."""
    what = f"--compare-baseline: {path} was written with another setup ({'; '.join(differences)})"
    if allowed:
        return f"{what}; compared anyway ({ALLOW_MISMATCH})"
    return f"{what}; rerun with the snapshot's setup, or add {ALLOW_MISMATCH} to compare anyway"
