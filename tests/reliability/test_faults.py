"""Store faults on the real SQLite store (see `_faults`): a failed write, sync, full disk or failed
compression makes the affected calls raise `PersistenceError`, leaves the context at its last durable
state (nothing uncommitted is visible), reads keep working, writes work again once the fault clears,
and a reopen shows exactly the acknowledged changes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    ContextManagerConfig,
    ContextStatus,
    ContextSystem,
    PersistenceError,
    open_system,
    thaw,
)
from storage import Append, Change, CreateContext, SQLiteStore, new_state
from tests.helpers import wait_until

from ._faults import FailingCompressor, Faults

KINDS = ["write", "sync", "disk_full", "compress"]


def big(tag: str) -> dict[str, str]:
    """A value that needs new database pages and is zstd-compressed (random hex: ~50% ratio)."""
    return {"tag": tag, "pad": os.urandom(6000).hex()}


def reopen(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    store.open()
    return store


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[ContextSystem, Faults]]:
    system = open_system(tmp_path / "f.db", manager_config=ContextManagerConfig(call_timeout=10.0))
    faults = Faults(system.store)  # type: ignore[arg-type]
    try:
        yield system, faults
    finally:
        faults.clear()
        system.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_commit_raises_and_the_context_stays_at_its_durable_state(
        faulty: tuple[ContextSystem, Faults], kind: str, tmp_path: Path) -> None:
    system, faults = faulty
    system.manager.create("other", {"o": 1})
    t = system.adapter.activate("a")
    v1 = t.set("k", big("one"))
    durable = t.state()
    faults.arm(kind)
    for attempt in range(3):  # the fault stays: every write fails, none is half-applied
        with pytest.raises(PersistenceError):
            t.set("k", big(f"lost-{attempt}"))
        assert t.state() == durable
        assert t.get("k")["tag"] == "one"
    with pytest.raises(PersistenceError):
        t.update({"k": big("lost-update"), "j": 1})
    # reads keep working while the store cannot write: published state, other contexts, store reads
    assert t.version == v1 and "j" not in t
    assert system.manager.get_state("other").data["o"] == 1
    assert system.manager.list_ids() == ["a", "default", "other"]
    assert t.recovery_points() == []
    faults.clear()
    v2 = t.set("k", big("two"))  # at once, without a retry: the failed changes are gone
    assert v2 == v1 + 1
    assert t.get("k")["tag"] == "two"
    system.stop()
    store = reopen(tmp_path / "f.db")
    try:
        st = store.load("a")
        assert st is not None and st.version == v2 and st.data["k"]["tag"] == "two" and "j" not in st.data
        assert store.verify() == []
    finally:
        store.close()


def test_every_call_that_returned_is_durable_and_every_call_that_failed_is_absent(
        faulty: tuple[ContextSystem, Faults], tmp_path: Path) -> None:
    """Group commits of 4 writers fail now and then (every 4th COMMIT): each call's outcome is exact."""
    system, faults = faulty
    trackers = [system.manager.tracker(system.manager.create(f"w{i}").id) for i in range(4)]
    calls = {"n": 0}
    real_execute = faults.conn.execute

    def every_fourth_commit(sql: str, params: Any = ()) -> Any:
        if sql == "COMMIT":
            calls["n"] += 1
            if calls["n"] % 4 == 0:
                raise faults.conn.error
        return real_execute(sql, params)
    faults.conn.execute = every_fourth_commit  # type: ignore[method-assign]
    outcomes: list[list[tuple[int, bool, int | None]]] = [[] for _ in trackers]
    start = threading.Barrier(len(trackers))

    def write(i: int) -> None:
        start.wait(timeout=10)
        for n in range(60):
            try:
                v = trackers[i].set("n", n)
                outcomes[i].append((n, True, v))
            except PersistenceError:
                outcomes[i].append((n, False, None))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(trackers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    faults.conn.execute = real_execute  # type: ignore[method-assign]
    failed = sum(not ok for out in outcomes for _n, ok, _v in out)
    assert 0 < failed < 4 * 60
    system.stop()
    store = reopen(tmp_path / "f.db")
    try:
        assert store.verify() == []
        for i, out in enumerate(outcomes):
            ok = [(n, v) for n, good, v in out if good]
            # versions of the acknowledged calls: 2, 3, 4, ... (gapless: failed calls took none)
            assert [v for _n, v in ok] == list(range(2, 2 + len(ok)))
            st = store.load(f"w{i}")
            assert st is not None and st.version == 1 + len(ok)
            assert st.data.get("n") == (ok[-1][0] if ok else None)
            # the journal holds exactly the acknowledged values, in order
            db = store._require()  # noqa: SLF001
            rows = db.execute("SELECT version, blob FROM journal WHERE context_id=? ORDER BY version", (f"w{i}",))
            assert [store.codec.decode_change(b).data_set["n"] for _v, b in rows] == [n for n, _v in ok]
    finally:
        store.close()


def test_a_failed_snapshot_in_a_group_commit_fails_that_commit_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_system(path, manager_config=ContextManagerConfig(snapshot_every=3)) as system:
        faults = Faults(system.store)  # type: ignore[arg-type]
        t = system.adapter.activate("a")
        t.set("x", 1)  # v2
        faults.fail_sql("INSERT INTO snapshots")
        t.set("x", 2)  # v3 (first since the snapshot at v1 and the one at load: count 2)
        with pytest.raises(PersistenceError):
            t.set("x", 3)  # v4 would carry the snapshot
        assert (t.version, t.get("x")) == (3, 2)
        faults.clear()
        assert t.set("x", 4) == 4
    store = reopen(path)
    try:
        st = store.load("a")
        assert st is not None and (st.version, st.data["x"]) == (4, 4)
        assert store.verify() == []
    finally:
        store.close()


def test_a_failed_passivation_snapshot_loses_nothing(faulty: tuple[ContextSystem, Faults], tmp_path: Path) -> None:
    system, faults = faulty
    t = system.adapter.activate("a")
    for i in range(5):
        t.set(f"k{i}", i)
    faults.fail_sql("INSERT INTO snapshots")
    system.adapter.deactivate("a")  # the snapshot fails; the journal has every change
    assert system.adapter.status("a") is ContextStatus.INACTIVE
    assert system.manager.get_state("a").version == 6  # read back from the store while it cannot write
    faults.clear()
    t2 = system.adapter.activate("a")
    assert t2.version == 6 and t2.set("k5", 5) == 7
    system.stop()
    store = reopen(tmp_path / "f.db")
    try:
        st = store.load("a")
        assert st is not None and st.version == 7 and thaw(dict(st.data)) == {f"k{i}": i for i in range(6)}
        assert store.verify() == []
    finally:
        store.close()


def test_a_failed_recovery_point_is_not_kept(faulty: tuple[ContextSystem, Faults]) -> None:
    system, faults = faulty
    t = system.adapter.activate("a")
    t.set("k", 1)
    faults.fail_sql("INSERT INTO recovery_points")
    with pytest.raises(PersistenceError):
        t.create_recovery_point("lost")
    assert t.recovery_points() == []
    faults.clear()
    rp = t.create_recovery_point("kept")
    assert (rp.id, rp.label, rp.version) == (1, "kept", 2)
    assert [p.id for p in t.recovery_points()] == [1]


def test_a_failed_create_leaves_no_context(faulty: tuple[ContextSystem, Faults]) -> None:
    system, faults = faulty
    faults.fail_sql("INSERT INTO snapshots")  # after the contexts row, in the same transaction
    with pytest.raises(PersistenceError):
        system.adapter.activate("new")
    with pytest.raises(PersistenceError):
        system.manager.create("new2")
    assert system.adapter.status("new") is ContextStatus.NONEXISTENT
    assert system.adapter.status("new2") is ContextStatus.NONEXISTENT
    faults.clear()
    t = system.adapter.activate("new")
    assert t.version == 1 and t.set("k", 1) == 2


def test_in_deferred_mode_a_failed_commit_rolls_memory_back_to_the_durable_state(tmp_path: Path) -> None:
    """Deferred writes are acknowledged before they are committed, so a failed commit takes back
    changes a caller already saw succeed; memory then equals the store again, never more."""
    path = tmp_path / "d.db"
    cfg = ContextManagerConfig(durability="deferred", flush_interval=0.01)
    with open_system(path, manager_config=cfg) as system:
        faults = Faults(system.store)  # type: ignore[arg-type]
        t = system.adapter.activate("a")
        t.set("k", 1)
        t.recovery_points()  # a store read commits everything queued before it: v2 is durable
        faults.arm("sync")
        t.set("k", 2)  # acknowledged at once; its commit will fail
        wait_until(lambda: t.version == 2 and t.get("k") == 1, what="the rollback to the durable v2")
        faults.clear()
        assert t.set("k", 3) == 3
    store = reopen(path)
    try:
        st = store.load("a")
        assert st is not None and (st.version, st.data["k"]) == (3, 3)
    finally:
        store.close()


def test_a_store_commit_whose_compression_fails_raises_persistence_error_and_writes_nothing(
        tmp_path: Path) -> None:
    store = reopen(tmp_path / "c.db")
    try:
        store.commit([CreateContext(new_state("a"))])
        store.codec._cctx = FailingCompressor()  # type: ignore[assignment]  # noqa: SLF001
        with pytest.raises(PersistenceError) as info:
            store.commit([Append("a", Change(2, 0.0, {"k": "x" * 1000}))])
        assert info.value.context_id == "a"
        info_after = store.info("a")
        assert info_after is not None and info_after.version == 1
    finally:
        store.close()


def test_a_commit_whose_outcome_is_unknown_does_not_wedge_the_context(faulty: tuple[ContextSystem, Faults]) -> None:
    system, faults = faulty
    t = system.adapter.activate("a")
    t.set("k", 1)
    real_execute = faults.conn.execute
    landed = {"n": 0}

    def commit_then_fail(sql: str, params: Any = ()) -> Any:
        cur = real_execute(sql, params)
        if sql == "COMMIT" and landed["n"] == 0:
            landed["n"] += 1
            raise faults.conn.error  # the data is committed, the caller is told it failed
        return cur
    faults.conn.execute = commit_then_fail  # type: ignore[method-assign]
    # the COMMIT raised after the transaction reached the store: the store holds the change, so it is
    # acknowledged (the persistence actor asks the store instead of trusting the error)
    assert t.set("k", 2) == 3
    assert landed["n"] == 1
    faults.conn.execute = real_execute  # type: ignore[method-assign]
    v = t.set("k", 3)  # and the context goes on
    assert v == 4 and t.get("k") == 3
    assert system.manager.get_state("a").version == v
