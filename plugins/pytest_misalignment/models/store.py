"""The SQLite store of what models produced: completions, scores, file hashes.

Keys are content hashes (checkpoint fingerprint + request), never paths, so a retrained
checkpoint at the same path never reads stale answers. WAL mode and a busy timeout let
several xdist workers write at once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..settings import user_cache_dir

SCHEMA_VERSION = 1
STORE_NAME = "store.sqlite"
PYTEST_CACHE_FOLDER = "pytest-misalignment"  # under pytest's cache: .pytest_cache/d/...
_CHUNK = 500  # stay under SQLite's limit on bound parameters


class Store:
    """Key-value records grouped by kind (e.g. "completion") and namespace (a fingerprint)."""

    def __init__(self, path: Path | None) -> None:
        """Open the store at `path`; None keeps everything in memory for this process only.
        A file that is not a readable store is moved aside (one warning) and a fresh one
        started: the store is a cache, and a cache must never stop a run."""
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._connection = self._open()
        except sqlite3.DatabaseError as error:
            if path is None:
                raise
            aside = _move_aside(path)
            print(f"warning: the store {path} could not be read ({error}); moved it to "
                  f"{aside} and started a fresh one", file=sys.stderr)
            self._connection = self._open()

    def _open(self) -> sqlite3.Connection:
        path = self.path
        connection = sqlite3.connect(
            ":memory:" if path is None else str(path), timeout=60.0, check_same_thread=False,
            isolation_level=None,
        )
        try:
            self._prepare(connection)
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        path = self.path
        if path is not None:
            (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=60000")
        connection.executescript(
            """
            CREATE TABLE IF NOT EXISTS records (
                kind TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL,
                value TEXT NOT NULL, created REAL NOT NULL,
                PRIMARY KEY (kind, namespace, key)
            );
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        connection.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def get_many(self, kind: str, namespace: str, keys: Iterable[str]) -> dict[str, dict]:
        """The stored values for those keys that have one."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict] = {}
        with self._lock:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    "SELECT key, value FROM records WHERE kind=? AND namespace=? "
                    f"AND key IN ({marks})",
                    (kind, namespace, *chunk),
                )
                for key, value in rows:
                    try:
                        found[key] = json.loads(value)
                    except (TypeError, ValueError):
                        continue  # a row that does not decode is a cache miss
        return found

    def put_many(self, kind: str, namespace: str, values: Mapping[str, Mapping]) -> None:
        """Store values in one transaction; an existing record wins, so readers agree."""
        now = time.time()
        rows = [(kind, namespace, key, json.dumps(value, ensure_ascii=False), now)
                for key, value in values.items()]
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?)", rows
                )
                # inside the try: a commit that fails (disk full, busy) must not leave the
                # transaction open for the next write
                self._connection.execute("COMMIT")
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    def count(self, kind: str, namespace: str | None = None) -> int:
        with self._lock:
            if namespace is None:
                row = self._connection.execute(
                    "SELECT COUNT(*) FROM records WHERE kind=?", (kind,)
                ).fetchone()
            else:
                row = self._connection.execute(
                    "SELECT COUNT(*) FROM records WHERE kind=? AND namespace=?", (kind, namespace)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _move_aside(path: Path) -> Path:
    """Rename an unreadable store (and its WAL files) out of the way; another process may
    have done it first."""
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
    return aside


def store_path(no_cache: bool, cache_dir: Path | None, pytest_cache: Path | None) -> Path | None:
    """Where a run's store lives; the pytest plugin and the CLI choose it here alike.

    --no-cache: nowhere (memory); --cache-dir DIR: DIR; else the project's pytest cache
    (`.pytest_cache/d/pytest-misalignment/`), so `pytest` and `pytest-misalignment judge`
    run in one folder share their judgments; without one, the user's cache folder.
    """
    if no_cache:
        return None
    if cache_dir is not None:
        return cache_dir / STORE_NAME
    if pytest_cache is not None:
        return pytest_cache / STORE_NAME
    return user_cache_dir() / STORE_NAME
