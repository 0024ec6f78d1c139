"""The SQLite store's feed offsets: handed out in commit order by the one writer, never reused:
across reopens, after a failed commit, and after retention pruned entries."""

from __future__ import annotations

import time
from pathlib import Path

import immutables
import pytest

from hoard.storage import Append, Change, ContextState, CreateContext, PersistenceError, SQLiteStore
from tests.helpers import opened_sqlite


def _create(store: SQLiteStore, cid: str) -> None:
    now = time.time()
    store.commit([CreateContext(ContextState(cid, 1, immutables.Map(), immutables.Map(), now, now))])


def _append(store: SQLiteStore, cid: str, version: int) -> None:
    store.commit([Append(cid, Change(version, time.time(), {"v": version}))])


def _offsets(store: SQLiteStore) -> list[int]:
    return [e.offset for e in store.feed(store.feed_bounds()[0], 100_000)]


def test_offsets_continue_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with opened_sqlite(path) as store:
        _create(store, "a")
        for v in range(2, 5):
            _append(store, "a", v)
    with opened_sqlite(path) as store:
        _append(store, "a", 5)
        assert _offsets(store) == [1, 2, 3, 4, 5]
        assert store.feed_bounds() == (0, 5)


def test_a_failed_commit_gives_back_no_offset_and_takes_none(tmp_path: Path) -> None:
    with opened_sqlite(tmp_path / "s.db") as store:
        _create(store, "a")
        with pytest.raises(PersistenceError):
            _append(store, "a", 7)  # does not follow v1: refused, nothing of the batch is written
        _append(store, "a", 2)
        assert _offsets(store) == [1, 2]


def test_offsets_are_never_reused_after_retention_pruned_entries(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with opened_sqlite(path, feed_retention=1, sync="normal") as store:
        _create(store, "a")
        for v in range(2, 1100):  # past a prune point (the first commit, then every 1,024 entries)
            _append(store, "a", v)
        floor, head = store.feed_bounds()
        assert (floor, head) == (1024, 1099)  # pruned at offset 1,025 down to the newest entry
    with opened_sqlite(path, feed_retention=1, sync="normal") as store:
        _append(store, "a", 1100)
        assert store.feed_bounds()[1] == 1100
        assert _offsets(store)[-1] == 1100


def test_feed_dicts_is_the_feed_s_to_dict_for_every_kind_of_entry(tmp_path: Path) -> None:
    """The relay's lean read (`feed_dicts`) gives what `feed()` gives: creations, changes with
    metadata and removals, a restore, a deletion with and without its version."""
    from hoard.storage import DeleteContext  # noqa: PLC0415 - this test only

    with opened_sqlite(tmp_path / "s.db") as store:
        _create(store, "a")
        _append(store, "a", 2)
        store.commit([Append("a", Change(3, time.time(), {"z": [1, {"y": None}], "b": 2.5}, ("v",),
                                         {"m": "x"}, ("old",), by="svc"))])
        store.commit([Append("a", Change(4, time.time(), {"only": 1}, replace=True))])
        store.commit([DeleteContext("a", version=4, by="ops")])
        _create(store, "b")
        store.commit([DeleteContext("b")])  # no version known: stored at 0
        entries = store.feed(0, 100)
        assert [e.deleted for e in entries] == [False] * 4 + [True, False, True]
        assert store.feed_dicts(0, 100) == [e.to_dict() for e in entries]
        assert store.feed_dicts(3, 2) == [e.to_dict() for e in entries[3:5]]


def test_feed_dicts_reads_entries_of_another_shape_as_feed_does(tmp_path: Path) -> None:
    """An entry not exactly as this hoard writes it (an integer time, optional fields left out, as a
    foreign or older writer may store it) takes the field-by-field path of `feed_dicts` and gives
    what `feed()` gives; one that is wrong (an empty key) is refused by both alike."""
    import sqlite3  # noqa: PLC0415 - rows written past the store, this test only

    from hoard.storage import CorruptStateError  # noqa: PLC0415
    from hoard.storage._codec import KIND_CHANGE, Codec  # noqa: PLC0415 - the blob format itself

    path = tmp_path / "s.db"
    with opened_sqlite(path) as store:
        _create(store, "a")
    codec = Codec()
    short = codec.encode_json(KIND_CHANGE, {"version": 2, "at": 1_700_000_000, "data_set": {"k": [1, {"x": "y"}]},
                                            "data_del": ["gone"]})
    wrong = codec.encode_json(KIND_CHANGE, {"version": 3, "at": 1.5, "data_set": {"": 1}, "data_del": [],
                                            "meta_set": {}, "meta_del": [], "replace": False, "request_id": None,
                                            "forget": [], "by": None})
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO feed (context_id, version, blob) VALUES ('a', 2, ?)", (short,))
        db.execute("INSERT INTO feed (context_id, version, blob) VALUES ('a', 3, ?)", (wrong,))
    db.close()
    with opened_sqlite(path) as store:
        entries = store.feed(0, 2)
        assert entries[1].at == 1_700_000_000.0 and entries[1].removed == ("gone",)
        assert store.feed_dicts(0, 2) == [e.to_dict() for e in entries]
        for read in (store.feed, store.feed_dicts):
            with pytest.raises(CorruptStateError, match="empty key"):
                read(2, 1)


def test_a_commit_that_landed_although_it_raised_takes_no_offset_again(tmp_path: Path) -> None:
    """COMMIT can report an error after the transaction reached the file (a late fsync error): the
    writer then reads its feed head from the store again, so the next commit neither reuses an offset
    nor fails on one taken."""
    import sqlite3  # noqa: PLC0415 - the connection factory of this test

    armed = {"late": False}

    class LateError:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
            cur = self.db.execute(sql, params)  # type: ignore[arg-type]
            if sql == "COMMIT" and armed["late"]:
                armed["late"] = False
                raise sqlite3.OperationalError("disk I/O error (after the commit landed)")
            return cur

        def __getattr__(self, name: str) -> object:
            return getattr(self.db, name)

    def connect(*args: object, **kw: object) -> object:
        return LateError(sqlite3.connect(*args, **kw))  # type: ignore[arg-type]

    with opened_sqlite(tmp_path / "s.db", connect=connect) as store:
        _create(store, "a")
        armed["late"] = True
        with pytest.raises(PersistenceError):
            _append(store, "a", 2)
        _append(store, "a", 3)  # v2 landed: v3 follows it
        assert _offsets(store) == [1, 2, 3]


def test_a_store_made_with_autoincrement_offsets_continues_past_every_pruned_one(tmp_path: Path) -> None:
    """Stores made before the writer handed out offsets itself have an AUTOINCREMENT feed; their
    sqlite_sequence counts too: offsets continue past the highest ever given, also when the rows
    holding it are gone and the recorded floor is behind it."""
    import sqlite3  # noqa: PLC0415 - the older schema, made past the store

    path = tmp_path / "s.db"
    with opened_sqlite(path) as store:
        _create(store, "a")
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE feed")
        db.execute("CREATE TABLE feed (pos INTEGER PRIMARY KEY AUTOINCREMENT, context_id TEXT NOT NULL, "
                   "version INTEGER NOT NULL, blob BLOB NOT NULL)")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('feed', 41)")
    db.close()
    with opened_sqlite(path) as store:
        assert store.feed_bounds() == (0, 41)
        _append(store, "a", 2)
        assert _offsets(store) == [42]
        assert store.feed_bounds() == (0, 42)


def test_feed_entries_read_in_a_batch_are_those_of_one_row_at_a_time_and_stay_frozen(tmp_path: Path) -> None:
    """`feed()` builds its common entries in one loop (`feed_entries`): the same entries as
    `feed_entry` row by row, for every kind of entry; still frozen, nested values too."""
    import sqlite3  # noqa: PLC0415 - the rows as stored, this test only

    import attrs  # noqa: PLC0415

    from hoard.storage import DeleteContext  # noqa: PLC0415
    from hoard.storage._codec import Codec  # noqa: PLC0415 - the one-row path it must agree with
    from hoard.storage._feed import feed_entry  # noqa: PLC0415

    with opened_sqlite(tmp_path / "s.db") as store:
        _create(store, "a")
        store.commit([Append("a", Change(2, time.time(), {"z": [1, {"y": None}], "b": 2.5}, ("v",),
                                         {"m": {"n": [1]}}, ("old",), by="svc"))])
        store.commit([Append("a", Change(3, time.time(), {"only": 1}, replace=True))])
        store.commit([DeleteContext("a", version=3, by="ops")])
        entries = store.feed(0, 100)
    db = sqlite3.connect(tmp_path / "s.db")
    rows = db.execute("SELECT pos, context_id, blob FROM feed ORDER BY pos").fetchall()
    db.close()
    assert [e.deleted for e in entries] == [False, False, False, True]
    assert entries == [feed_entry(Codec(), *row) for row in rows]
    change = entries[1]
    assert change.changed == ("b", "z") and change.removed == ("v",) and change.metadata_removed == ("old",)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        change.version = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        change.values["z"][1]["y"] = 1
    with pytest.raises(TypeError):
        change.metadata["m"]["n"].append(2)
