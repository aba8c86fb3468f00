"""Baseline snapshots: a run's per-test counts in a JSON file users commit, and reading one
back to gate a new checkpoint against it without loading the old model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .results import read_json, write_json
from .statistics import Rate

SNAPSHOT_VERSION = 1
COUNTED = ("misaligned", "complied")  # figures whose events/trials a snapshot keeps


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message says why."""


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
