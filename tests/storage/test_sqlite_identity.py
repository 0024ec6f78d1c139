"""The SQLite store is bound to the file its writer opened: once that file is deleted or replaced,
no write of any kind is acknowledged, and readers made from the writer (`SQLiteStore.reader`) read
that file only, whatever the working directory, or refuse."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import immutables
import pytest

from hoard.storage import (
    Append,
    Change,
    ContextState,
    CreateContext,
    HistoryPolicy,
    PersistenceError,
    SQLiteStore,
)
from tests.helpers import opened_sqlite


def _create(store: SQLiteStore, cid: str, data: dict[str, object] | None = None) -> None:
    now = time.time()
    store.commit([CreateContext(ContextState(cid, 1, immutables.Map(data or {}), immutables.Map(), now, now))])


def _append(store: SQLiteStore, cid: str, version: int) -> None:
    store.commit([Append(cid, Change(version, time.time(), {"v": version}))])


def _replace_with_another_store(path: Path) -> None:
    """Put another hoard store (one context "other") at `path`, as a restore from a backup would."""
    other = path.with_name("other.db")
    with opened_sqlite(other) as o:
        _create(o, "other")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    os.replace(other, path)


_WRITES: dict[str, Callable[[SQLiteStore], object]] = {
    "set_consumer (register)": lambda s: s.set_consumer("new"),
    "set_consumer (commit a position)": lambda s: s.set_consumer("billing", 1),
    "remove_consumer": lambda s: s.remove_consumer("billing"),
    "set_history": lambda s: s.set_history(HistoryPolicy.parse("all")),
    "compact_history": lambda s: s.compact_history(),
    "vacuum": lambda s: s.vacuum(),
    "train_dictionary": lambda s: s.train_dictionary(),
}


@pytest.mark.parametrize("how", ["replaced", "deleted"])
@pytest.mark.parametrize("write", list(_WRITES))
def test_no_write_of_any_kind_is_acknowledged_once_the_store_file_is_replaced_or_deleted(
        tmp_path: Path, write: str, how: str) -> None:
    path = tmp_path / "s.db"
    with opened_sqlite(path) as store:
        _create(store, "a")
        store.set_consumer("billing")
        if how == "replaced":
            _replace_with_another_store(path)
        else:
            path.unlink()
        with pytest.raises(PersistenceError, match=how):
            _WRITES[write](store)
        with pytest.raises(PersistenceError, match=how):  # and every later write too
            _append(store, "a", 2)
    if how == "replaced":  # the file now at the path got nothing of it
        with opened_sqlite(path, readonly=True) as now:
            assert now.consumers() == {}
            assert now.list_ids() == ["other"]
            assert now.history_policy.text == "recovery"


def test_a_reader_reads_the_writer_s_file_after_the_working_directory_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with opened_sqlite(tmp_path / "b" / "s.db") as other:  # another store, under the same relative name
        _create(other, "other")
    monkeypatch.chdir(tmp_path / "a")
    with opened_sqlite("s.db") as store:
        _create(store, "a", {"k": 1})
        _append(store, "a", 2)
        monkeypatch.chdir(tmp_path / "b")
        reader = store.reader()
        reader.open()
        try:
            assert reader.list_ids() == ["a"]
            assert dict(reader.state_at("a", 1).data) == {"k": 1}
            assert [(e.context_id, e.version) for e in reader.feed()] == [("a", 1), ("a", 2)]
        finally:
            reader.close()


@pytest.mark.parametrize("how", ["replaced", "deleted"])
def test_a_reader_refuses_a_file_that_is_no_longer_the_writer_s_store(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.db"
    with opened_sqlite(path) as store:
        _create(store, "other", {"mine": 1})  # the same id as the replacement's context
        early = store.reader()  # opened before the file goes
        early.open()
        late = store.reader()  # opened after
        try:
            assert early.list_ids() == ["other"]
            if how == "replaced":
                _replace_with_another_store(path)
            else:
                path.unlink()
            with pytest.raises(PersistenceError, match=how):
                late.open()
            for read in (lambda r: r.state_at("other", 1), lambda r: r.feed(), lambda r: r.list_ids(),
                         lambda r: r.count()):
                with pytest.raises(PersistenceError, match=how):
                    read(early)
        finally:
            early.close()
            late.close()
