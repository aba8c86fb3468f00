"""Baseline snapshots: a run's per-test counts in a JSON file users commit, and reading one
back to gate a new checkpoint against it without loading the old model."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .statistics import Rate

SNAPSHOT_VERSION = 1
COUNTED = ("misaligned", "complied")  # figures whose events/trials a snapshot keeps


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message says why."""


def test_key(nodeid: str) -> str:
    """A test's key that does not depend on where the suite is installed."""
    path, _, name = nodeid.partition("::")
    return f"{Path(path).name}::{name}"


def write_snapshot(path: Path, meta: Mapping[str, Any], tests: Mapping[str, Mapping[str, Any]]
                   ) -> None:
    document = {"version": SNAPSHOT_VERSION, **meta,
                "tests": {key: dict(value) for key, value in sorted(tests.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(document, stream, indent=1, sort_keys=False)
        stream.write("\n")
    os.replace(staging, path)


def read_snapshot(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SnapshotError(f"--compare-baseline: cannot read {path}: "
                            f"{error.strerror or error}") from None
    except ValueError as error:
        raise SnapshotError(f"--compare-baseline: {path} is not JSON: {error}") from None
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
