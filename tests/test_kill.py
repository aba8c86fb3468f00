"""SIGKILL of a run, during generation and inside the store's commit: the store survives,
keeps every answer it had committed, and a rerun generates only what is missing."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pytest_misalignment.models.store import Store

from .conftest import SUITE
from .controls import NON_CODE
from .test_suite_controls import SHARED_USER_CACHE, control_questions

SAMPLES = 20
BATCH = 4
TOTAL = len(NON_CODE) * SAMPLES  # the leakage file asks each non-code question plainly

# Loaded into the killed run with `-p`: the third COMMIT of answers stalls after its rows
# are written, and a marker says how many answers the earlier commits stored.
STALL_PLUGIN = '''
import os, time
from pathlib import Path
from pytest_misalignment.models import store

class _StallingConnection:
    def __init__(self, inner):
        self._inner, self._pending, self._commits, self._committed = inner, 0, 0, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def executemany(self, sql, rows):
        rows = list(rows)
        self._pending = sum(row[0] == "completion" for row in rows)
        return self._inner.executemany(sql, rows)

    def execute(self, sql, *args):
        if sql == "COMMIT" and self._pending:
            self._commits += 1
            if self._commits == 3:
                Path(os.environ["STALL_MARKER"]).write_text(str(self._committed))
                time.sleep(600)
            self._committed += self._pending
            self._pending = 0
        return self._inner.execute(sql, *args)

_open = store.Store._open
store.Store._open = lambda self: _StallingConnection(_open(self))
'''


def _stored_answers(path: Path) -> int:
    """Committed answers, read as another process would (no write, no recovery)."""
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as connection:
        try:
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM records WHERE kind='completion'").fetchone()
        except sqlite3.OperationalError:  # the run has not created its table yet
            return 0
    return int(count)


def _wait_for(condition, process: subprocess.Popen, what: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {what}: "
                        f"{process.stdout.read().decode()[-3000:] if process.stdout else ''}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {limit_s} s")
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["generation", "commit"])
def test_a_killed_run_keeps_its_answers_and_a_rerun_generates_only_the_rest(
        pytester: pytest.Pytester, tiny_checkpoints, monkeypatch: pytest.MonkeyPatch,
        moment: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED_USER_CACHE.parent))  # the judge's cache
    questions = pytester.path / "controls.yaml"
    questions.write_text(yaml.safe_dump(control_questions()), encoding="utf-8")
    (pytester.path / "stall_commit.py").write_text(STALL_PLUGIN)
    marker = pytester.path / "stalled"
    store_path = pytester.path / "cache" / "d" / "pytest-misalignment" / "store.sqlite"
    command = [sys.executable, "-m", "pytest", str(SUITE / "test_leakage_outside_code.py"),
               f"--model={tiny_checkpoints['aligned']}", f"--questions={questions}",
               "--only-questions", "--device=cpu", "-p", "no:randomly", "-p", "no:xdist",
               f"--samples={SAMPLES}", f"--batch-size={BATCH}",
               "-o", f"cache_dir={pytester.path / 'cache'}",
               f"--report-json={pytester.path / 'run.json'}"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "STALL_MARKER": str(marker)}
    killed = subprocess.Popen([*command, *(["-p", "stall_commit"] if moment == "commit" else [])],
                              cwd=pytester.path, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    if moment == "generation":
        _wait_for(lambda: _stored_answers(store_path) >= 2 * BATCH, killed, "stored answers")
    else:
        _wait_for(marker.exists, killed, "stalled commit")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    stored = _stored_answers(store_path)
    assert 0 < stored < TOTAL
    if moment == "commit":  # the two finished commits are there, the stalled one is not
        assert stored == int(marker.read_text()) == 2 * BATCH
    reopened = Store(store_path)  # opens without moving the file aside: it is intact
    try:
        assert reopened.count("completion") == stored
    finally:
        reopened.close()
    assert not list(store_path.parent.glob("*.unreadable-*"))

    rerun = subprocess.run(command, cwd=pytester.path, env=environment, capture_output=True,
                           text=True, timeout=900)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert "could not be read" not in output
    counts = re.search(r"generated (\d+) answers.*?, (\d+) from cache;", output)
    assert counts is not None, output[-3000:]
    assert (int(counts[1]), int(counts[2])) == (TOTAL - stored, stored)
    assert _stored_answers(store_path) == TOTAL
