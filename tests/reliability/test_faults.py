"""Store faults (see `_faults`), on SQLite and on PostgreSQL: a failed write, sync, full disk, lost
connection or failed compression makes the affected calls raise `PersistenceError`, leaves the context
at its last durable state (nothing uncommitted is visible), reads keep working, writes work again once
the fault clears, and a reopen shows exactly the acknowledged changes.

On PostgreSQL the faults happen in the server (a statement or the COMMIT fails, or the store's session
is ended in the middle of a transaction or while COMMIT is in flight); the system is opened on a
``postgresql://`` URL, as users open it (``require_lease=True``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoard import (
    ContextManagerConfig,
    ContextStatus,
    ContextSystem,
    PersistenceError,
    open_system,
    thaw,
)
from hoard.storage import Append, Change, CreateContext, new_state
from tests.helpers import wait_until

from ._backends import BACKENDS, Backend, PostgresBackend, SQLiteBackend, backend
from ._faults import Faults, PgFaults, switchable_codec

KINDS = [(name, kind) for name, cls in (("sqlite", SQLiteBackend), ("postgres", PostgresBackend))
         for kind in cls.kinds]


def big(tag: str) -> dict[str, str]:
    """A value that needs new database pages and is zstd-compressed (random hex: ~50% ratio)."""
    return {"tag": tag, "pad": os.urandom(6000).hex()}


@pytest.fixture(params=BACKENDS)
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend(request.param, request, tmp_path)


def _faulty(b: Backend, **config: Any) -> tuple[ContextSystem, Faults | PgFaults]:
    faults = b.faults()
    system = open_system(b.system_store(faults),  # type: ignore[arg-type]
                         manager_config=ContextManagerConfig(**{"call_timeout": 10.0, **config}))
    try:
        faults.attach(system.store)  # type: ignore[arg-type]
        return system, faults
    except BaseException:
        system.stop()
        raise


@pytest.fixture
def faulty(store_kind: Backend) -> Iterator[tuple[ContextSystem, Faults | PgFaults]]:
    system, faults = _faulty(store_kind)
    try:
        yield system, faults
    finally:
        _finish(system, faults)


def _finish(system: ContextSystem, faults: Faults | PgFaults) -> None:
    try:
        faults.clear()
    finally:
        try:
            system.stop()
        finally:
            if isinstance(faults, PgFaults):
                faults.close()


@pytest.mark.parametrize(("name", "kind"), [pytest.param(n, k, marks=pytest.mark.postgres) if n == "postgres"
                                            else (n, k) for n, k in KINDS], ids=[f"{n}-{k}" for n, k in KINDS])
def test_a_failed_commit_raises_and_the_context_stays_at_its_durable_state(
        request: pytest.FixtureRequest, tmp_path: Path, name: str, kind: str) -> None:
    b = backend(name, request, tmp_path)
    system, faults = _faulty(b)
    try:
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
        if isinstance(faults, PgFaults) and kind != "compress":
            assert faults.fired == 4  # the server failed every one of them
        # reads keep working while the store cannot write: published state, other contexts, store reads
        assert t.version == v1 and "j" not in t
        assert system.manager.get_state("other").data["o"] == 1
        assert system.manager.list_ids() == ["a", "default", "other"]
        assert t.recovery_points() == []
        faults.clear()
        v2 = t.set("k", big("two"))  # at once, without a retry: the failed changes are gone
        assert v2 == v1 + 1
        assert t.get("k")["tag"] == "two"
    finally:
        _finish(system, faults)
    store = b.open_store()
    try:
        st = store.load("a")
        assert st is not None and st.version == v2 and st.data["k"]["tag"] == "two" and "j" not in st.data
        assert store.verify() == []
    finally:
        store.close()


def test_every_call_that_returned_is_durable_and_every_call_that_failed_is_absent(
        faulty: tuple[ContextSystem, Faults | PgFaults], store_kind: Backend) -> None:
    """Group commits of 4 writers fail now and then (every 4th COMMIT): each call's outcome is exact."""
    system, faults = faulty
    trackers = [system.manager.tracker(system.manager.create(f"w{i}").id) for i in range(4)]
    for t in trackers:
        t.state()  # activated before the faults: only the writes below meet them
    faults.fail_commits(every=4)
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
    faults.clear()
    failed = sum(not ok for out in outcomes for _n, ok, _v in out)
    assert 0 < failed < 4 * 60
    system.stop()
    store = store_kind.open_store()
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
            assert [e.change.data_set["n"] for e in store.journal(f"w{i}")] == [n for n, _v in ok]
    finally:
        store.close()


def test_a_failed_snapshot_in_a_group_commit_fails_that_commit_only(store_kind: Backend) -> None:
    system, faults = _faulty(store_kind, snapshot_every=3)
    try:
        t = system.adapter.activate("a")
        t.set("x", 1)  # v2
        faults.fail_insert("snapshots")
        t.set("x", 2)  # v3 (first since the snapshot at v1 and the one at load: count 2)
        with pytest.raises(PersistenceError):
            t.set("x", 3)  # v4 would carry the snapshot
        assert (t.version, t.get("x")) == (3, 2)
        faults.clear()
        assert t.set("x", 4) == 4
    finally:
        _finish(system, faults)
    store = store_kind.open_store()
    try:
        st = store.load("a")
        assert st is not None and (st.version, st.data["x"]) == (4, 4)
        assert store.verify() == []
    finally:
        store.close()


def test_a_failed_passivation_snapshot_loses_nothing(faulty: tuple[ContextSystem, Faults | PgFaults],
                                                     store_kind: Backend) -> None:
    system, faults = faulty
    t = system.adapter.activate("a")
    for i in range(5):
        t.set(f"k{i}", i)
    faults.fail_insert("snapshots")
    system.adapter.deactivate("a")  # the snapshot fails; the journal has every change
    assert system.adapter.status("a") is ContextStatus.INACTIVE
    assert system.manager.get_state("a").version == 6  # read back from the store while it cannot write
    faults.clear()
    t2 = system.adapter.activate("a")
    assert t2.version == 6 and t2.set("k5", 5) == 7
    system.stop()
    store = store_kind.open_store()
    try:
        st = store.load("a")
        assert st is not None and st.version == 7 and thaw(dict(st.data)) == {f"k{i}": i for i in range(6)}
        assert store.verify() == []
    finally:
        store.close()


def test_a_failed_recovery_point_is_not_kept(faulty: tuple[ContextSystem, Faults | PgFaults]) -> None:
    system, faults = faulty
    t = system.adapter.activate("a")
    t.set("k", 1)
    faults.fail_insert("recovery_points")
    with pytest.raises(PersistenceError):
        t.create_recovery_point("lost")
    assert t.recovery_points() == []
    faults.clear()
    rp = t.create_recovery_point("kept")
    assert (rp.id, rp.label, rp.version) == (1, "kept", 2)
    assert [p.id for p in t.recovery_points()] == [1]


def test_a_failed_create_leaves_no_context(faulty: tuple[ContextSystem, Faults | PgFaults]) -> None:
    system, faults = faulty
    faults.fail_insert("snapshots")  # after the contexts row, in the same transaction
    with pytest.raises(PersistenceError):
        system.adapter.activate("new")
    with pytest.raises(PersistenceError):
        system.manager.create("new2")
    assert system.adapter.status("new") is ContextStatus.NONEXISTENT
    assert system.adapter.status("new2") is ContextStatus.NONEXISTENT
    faults.clear()
    t = system.adapter.activate("new")
    assert t.version == 1 and t.set("k", 1) == 2


def test_in_deferred_mode_a_failed_commit_rolls_memory_back_to_the_durable_state(store_kind: Backend) -> None:
    """Deferred writes are acknowledged before they are committed, so a failed commit takes back
    changes a caller already saw succeed; memory then holds the store's data again, never more, at a
    version above the lost one (issue 11: versions are never reused)."""
    system, faults = _faulty(store_kind, durability="deferred", flush_interval=0.01)
    try:
        t = system.adapter.activate("a")
        t.set("k", 1)
        t.recovery_points()  # a store read commits everything queued before it: v2 is durable
        faults.arm("sync")
        t.set("k", 2)  # acknowledged at once (v3); its commit will fail
        wait_until(lambda: t.version == 4 and t.get("k") == 1, what="the rollback to the durable data, at v4")
        faults.clear()
        assert t.set("k", 3) == 5
    finally:
        _finish(system, faults)
    store = store_kind.open_store()
    try:
        st = store.load("a")
        assert st is not None and (st.version, st.data["k"]) == (5, 3)
    finally:
        store.close()


def test_a_store_commit_whose_compression_fails_raises_persistence_error_and_writes_nothing(
        store_kind: Backend) -> None:
    codec, compressor = switchable_codec()
    store = store_kind.open_store(codec=codec)
    try:
        store.commit([CreateContext(new_state("a"))])
        compressor.fail = True
        with pytest.raises(PersistenceError) as info:
            store.commit([Append("a", Change(2, 0.0, {"k": "x" * 1000}))])
        assert info.value.context_id == "a"
        info_after = store.info("a")
        assert info_after is not None and info_after.version == 1
    finally:
        store.close()


def test_a_commit_whose_outcome_is_unknown_does_not_wedge_the_context(tmp_path: Path) -> None:
    system, faults = _faulty(SQLiteBackend(tmp_path))
    try:
        assert isinstance(faults, Faults)
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
    finally:
        _finish(system, faults)


# -- PostgreSQL: a connection lost while COMMIT is in flight --------------------------------------------------
@pytest.mark.postgres
def test_on_postgres_a_commit_that_landed_before_its_connection_was_lost_is_acknowledged(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The server committed, then the session ended before the client heard back: the store looks the
    transaction up (``txid_status``) and acknowledges the write; the context goes on at once."""
    b = backend("postgres", request, tmp_path)
    system, faults = _faulty(b)
    try:
        t = system.adapter.activate("a")
        t.set("k", 1)
        assert isinstance(faults, PgFaults)
        landed = {"n": 0}

        def lose_the_session(conn: Any) -> None:  # right after the server committed
            if landed["n"] == 0:
                landed["n"] += 1
                faults.end_session(conn)
                wait_until(lambda: _broken(conn), what="the session to end")
                conn.execute("SELECT 1")  # the client learns it now, as it would reading COMMIT's reply
        faults.after_commit = lose_the_session
        assert t.set("k", 2) == 3  # acknowledged: it is stored
        assert landed["n"] == 1
        assert t.set("k", 3) == 4
        assert system.manager.get_state("a").version == 4
    finally:
        _finish(system, faults)
    store2 = b.open_store()
    try:
        st = store2.load("a")
        assert st is not None and (st.version, st.data["k"]) == (4, 3)
        assert [e.version for e in store2.journal("a")] == [2, 3, 4]  # nothing lost, nothing doubled
        assert store2.verify() == []
    finally:
        store2.close()


def _broken(conn: Any) -> bool:
    try:
        conn.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any error means the session is gone
        return True
    return False


@pytest.mark.postgres
def test_on_postgres_a_landed_commit_whose_outcome_cannot_be_looked_up_is_acknowledged(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """As above, but the store cannot learn the outcome either (its lookup fails, as when the server
    stays unreachable for a moment): the commit raises, and the persistence actor, asking the store,
    finds the change stored and acknowledges it; the context is not wedged."""
    b = backend("postgres", request, tmp_path)
    system, faults = _faulty(b)
    try:
        t = system.adapter.activate("a")
        t.set("k", 1)
        assert isinstance(faults, PgFaults)
        landed = {"n": 0}

        def lose_the_session(conn: Any) -> None:  # right after the server committed
            if landed["n"] == 0:
                landed["n"] += 1
                faults.fail_lookup = True  # and the store cannot learn the outcome either
                faults.end_session(conn)
                wait_until(lambda: _broken(conn), what="the session to end")
                conn.execute("SELECT 1")
        faults.after_commit = lose_the_session
        assert t.set("k", 2) == 3
        assert landed["n"] == 1
        faults.fail_lookup = False
        assert t.set("k", 3) == 4 and system.manager.get_state("a").version == 4
    finally:
        _finish(system, faults)
    store2 = b.open_store()
    try:
        assert [e.version for e in store2.journal("a")] == [2, 3, 4]
        assert store2.verify() == []
    finally:
        store2.close()
