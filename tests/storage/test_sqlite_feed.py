"""The SQLite store's feed offsets: handed out by the store (the one writer), never reused.

The feed table keys entries by their offset without ``AUTOINCREMENT`` (which costs a write of the
``sqlite_sequence`` page in every commit); the store itself keeps the head. These tests pin that the
offsets still only grow: across reopens, after a failed commit, after retention pruned entries, and
in a store whose feed table was made by an older hoard (with ``AUTOINCREMENT``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import immutables
import pytest

from hoard.storage import Append, Change, ContextState, CreateContext, PersistenceError, SQLiteStore


@contextlib.contextmanager
def _opened(path: Path, **kw: int) -> Iterator[SQLiteStore]:
    store = SQLiteStore(path, **kw)  # type: ignore[arg-type]
    store.open()
    try:
        yield store
    finally:
        store.close()


def _create(store: SQLiteStore, cid: str) -> None:
    now = time.time()
    store.commit([CreateContext(ContextState(cid, 1, immutables.Map(), immutables.Map(), now, now))])


def _append(store: SQLiteStore, cid: str, version: int) -> None:
    store.commit([Append(cid, Change(version, time.time(), {"v": version}))])


def _offsets(store: SQLiteStore) -> list[int]:
    return [e.offset for e in store.feed(store.feed_bounds()[0], 100_000)]


def test_offsets_continue_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with _opened(path) as store:
        _create(store, "a")
        for v in range(2, 5):
            _append(store, "a", v)
    with _opened(path) as store:
        _append(store, "a", 5)
        assert _offsets(store) == [1, 2, 3, 4, 5]
        assert store.feed_bounds() == (0, 5)


def test_a_failed_commit_gives_back_no_offset_and_takes_none(tmp_path: Path) -> None:
    with _opened(tmp_path / "s.db") as store:
        _create(store, "a")
        with pytest.raises(PersistenceError):
            _append(store, "a", 7)  # does not follow v1: refused, nothing of the batch is written
        _append(store, "a", 2)
        assert _offsets(store) == [1, 2]


def test_offsets_are_never_reused_after_retention_pruned_entries(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with _opened(path, feed_retention=1) as store:
        _create(store, "a")
        for v in range(2, 1100):  # past a prune point (every 1,024 entries): all but the newest go
            _append(store, "a", v)
        floor, head = store.feed_bounds()
        assert (floor, head) == (1023, 1099)  # pruned at offset 1,024 down to the newest entry
    with _opened(path, feed_retention=1) as store:
        _append(store, "a", 1100)
        assert store.feed_bounds()[1] == 1100
        assert _offsets(store)[-1] == 1100


def test_a_feed_table_made_with_autoincrement_keeps_its_offsets(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with _opened(path) as store:
        _create(store, "a")
        _append(store, "a", 2)
    # the layout of stores made before: offsets from AUTOINCREMENT, the head in sqlite_sequence
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.execute("ALTER TABLE feed RENAME TO feed_new")
    db.execute("CREATE TABLE feed (pos INTEGER PRIMARY KEY AUTOINCREMENT, context_id TEXT NOT NULL, "
               "version INTEGER NOT NULL, blob BLOB NOT NULL)")
    db.execute("INSERT INTO feed SELECT * FROM feed_new")
    db.execute("DROP TABLE feed_new")
    db.execute("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'feed'")  # entries up to 40 were pruned
    db.execute("DELETE FROM feed")
    db.execute("INSERT OR REPLACE INTO hoard_meta VALUES ('feed_floor', '40')")
    db.execute("COMMIT")
    db.close()
    with _opened(path) as store:
        assert store.feed_bounds() == (40, 40)
        _append(store, "a", 3)
        assert _offsets(store) == [41]
        assert store.feed_bounds() == (40, 41)
