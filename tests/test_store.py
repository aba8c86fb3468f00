"""The store is a cache: an unreadable file, a row that does not decode or a failed commit
must never stop a run or leave it unable to write."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pytest_misalignment.models.store import Store


def test_a_corrupted_store_is_moved_aside_and_a_fresh_one_started(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)  # a header, then garbage
    store = Store(path)
    store.put_many("completion", "fp", {"k": {"text": "kept"}})
    assert store.get_many("completion", "fp", ["k"]) == {"k": {"text": "kept"}}
    store.close()
    warning = capsys.readouterr().err
    assert f"warning: the store {path} could not be read" in warning
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("store.sqlite.unreadable-")]
    assert len(moved) == 1 and moved[0].read_bytes().endswith(b"\xff" * 16)
    assert Store(path).get_many("completion", "fp", ["k"]) == {"k": {"text": "kept"}}


def test_a_row_that_does_not_decode_is_a_cache_miss(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    store = Store(path)
    store.put_many("completion", "fp", {"good": {"text": "ok"}})
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO records VALUES ('completion', 'fp', 'bad', '{not json', 0)")
    assert Store(path).get_many("completion", "fp", ["good", "bad"]) == {"good": {"text": "ok"}}


def test_a_failed_commit_leaves_no_open_transaction(tmp_path: Path) -> None:
    """A commit that fails (disk full, a busy database) rolls back, so the next write works."""
    store = Store(tmp_path / "store.sqlite")
    real = store._connection

    class FailingCommit:
        """The store's connection, whose next COMMIT fails as a full disk would."""

        def __init__(self) -> None:
            self.failed = False

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> object:
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    store._connection = FailingCommit()  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.put_many("completion", "fp", {"a": {"text": "lost"}})
    assert not real.in_transaction
    store.put_many("completion", "fp", {"b": {"text": "stored"}})
    assert store.get_many("completion", "fp", ["a", "b"]) == {"b": {"text": "stored"}}
