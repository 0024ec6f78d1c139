"""The SQLite store's feed offsets: handed out in commit order by the one writer, never reused:
across reopens, after a failed commit, and after retention pruned entries."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import immutables
import pytest

from hoard.storage import Append, Change, ContextState, CreateContext, PersistenceError, SQLiteStore


@contextlib.contextmanager
def _opened(path: Path, **kw: object) -> Iterator[SQLiteStore]:
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
    with _opened(path, feed_retention=1, sync="normal") as store:
        _create(store, "a")
        for v in range(2, 1100):  # past a prune point (every 1,024 entries): all but the newest go
            _append(store, "a", v)
        floor, head = store.feed_bounds()
        assert (floor, head) == (1023, 1099)  # pruned at offset 1,024 down to the newest entry
    with _opened(path, feed_retention=1, sync="normal") as store:
        _append(store, "a", 1100)
        assert store.feed_bounds()[1] == 1100
        assert _offsets(store)[-1] == 1100
