"""Fault injection into a real, open `SQLiteStore`.

Nothing of the store's own logic is replaced: its sqlite3 connection is wrapped by `FaultyConnection`,
which passes every statement to SQLite except the ones a test arms it to fail (with the error SQLite
itself raises for a failing disk), and its codec's zstd compressor can be swapped for one that fails.
"Disk full" is real: SQLite's ``max_page_count`` is lowered to the database's current size, so the
next write that needs a page gets SQLite's own SQLITE_FULL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import zstandard

from storage import SQLiteStore


def _shape(sql: str) -> list[str]:
    words = sql.split()
    if len(words) >= 3 and [w.upper() for w in words[:3]] in (["INSERT", "OR", "REPLACE"], ["INSERT", "OR", "IGNORE"]):
        words = [words[0], *words[3:]]
    return [w.upper() for w in words]


class FaultyConnection:
    """Delegates to a real sqlite3 connection; fails the statements `fail_when` selects."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail_when: Callable[[str], bool] | None = None
        self.error: Exception = sqlite3.OperationalError("disk I/O error")
        self.remaining: int | None = None  # None: fail until cleared
        self.failures = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self.fail_when is not None and self.fail_when(sql) and self.remaining != 0:
            self.failures += 1
            if self.remaining is not None:
                self.remaining -= 1
            raise self.error
        return self._db.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def close(self) -> None:
        self._db.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class FailingCompressor:
    """Stands in for the codec's zstd compressor and fails like zstd does when it runs out of memory."""

    def compress(self, data: bytes) -> bytes:
        raise zstandard.ZstdError("simulated: cannot allocate compression context")


class Faults:
    """Arms and clears faults on one open store (owned by a running system's persistence actor)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        db = store._db  # noqa: SLF001 - the test wraps the real connection
        assert isinstance(db, sqlite3.Connection)
        self.real = db
        self.conn = FaultyConnection(db)
        store._db = self.conn  # type: ignore[assignment]  # noqa: SLF001
        self._compressor = store.codec._cctx  # noqa: SLF001

    def fail_sql(self, prefix: str, *, times: int | None = None, error: Exception | None = None) -> None:
        """Fail every statement that starts like `prefix` (`times` of them, or until cleared). "INSERT
        INTO t" also matches "INSERT OR REPLACE INTO t" (the statement's verb and table are what count)."""
        self.conn.error = error or sqlite3.OperationalError("disk I/O error")
        self.conn.remaining = times
        want = _shape(prefix)
        self.conn.fail_when = lambda sql: _shape(sql)[: len(want)] == want

    def disk_full(self) -> None:
        pages = self.real.execute("PRAGMA page_count").fetchone()[0]
        self.real.execute(f"PRAGMA max_page_count={pages}")

    def fail_compress(self) -> None:
        self.store.codec._cctx = FailingCompressor()  # type: ignore[assignment]  # noqa: SLF001

    def arm(self, kind: str) -> None:
        if kind == "write":  # the journal insert, after the version update in the same transaction
            self.fail_sql("INSERT INTO journal")
        elif kind == "sync":  # the commit itself (where SQLite writes and syncs the WAL)
            self.fail_sql("COMMIT")
        elif kind == "disk_full":
            self.disk_full()
        elif kind == "compress":
            self.fail_compress()
        else:
            raise ValueError(kind)

    def clear(self) -> None:
        self.conn.fail_when = None
        if self.store._db is not None:  # noqa: SLF001 - still open
            self.real.execute("PRAGMA max_page_count=1073741823")
        self.store.codec._cctx = self._compressor  # noqa: SLF001
