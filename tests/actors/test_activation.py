"""Activation, eviction (LRU), pinning, passivation and reopen."""

from __future__ import annotations

import threading
from pathlib import Path

import pykka
import pytest

from hoard import (
    CapacityError,
    ContextAdapterConfig,
    ContextManagerConfig,
    ContextNotFoundError,
    ContextStatus,
    open_system,
)
from hoard.actors import Set, StoreCall
from hoard.storage import Append, Change, CreateContext, PutSnapshot, SQLiteStore, freeze_mapping, new_state
from tests.helpers import RecordingStore


def _lru(path: Path, limit: int = 3, **mgr):
    return open_system(path, adapter_config=ContextAdapterConfig(max_active_contexts=limit),
                       manager_config=ContextManagerConfig(**mgr))


def test_eviction_never_evicts_the_current_or_default_context(store_path: Path) -> None:
    with _lru(store_path) as s:
        a = s.adapter
        a.activate("a")
        tb = a.activate("b")  # full: default, a, b (current)
        for i in range(10):
            # a non-current activation (a tracker or manager call) must not evict the current one
            s.manager.create(f"side{i}")
            s.manager.update(f"side{i}", {"x": i})
            active = a.list_active()
            assert a.current_id() == "b" and "b" in active and "default" in active and len(active) <= 3
        for i in range(10):
            a.activate(f"n{i}")  # becomes current; the previous current may now go
            active = a.list_active()
            assert "default" in active and f"n{i}" in active and a.current_id() == f"n{i}"
            assert len(active) <= 3
        assert tb.get("x", 1) == 1  # an evicted context's tracker still works (re-activates it)


def test_lru_order_follows_use(store_path: Path) -> None:
    with _lru(store_path, limit=4) as s:
        a = s.adapter
        t1, t2 = a.activate("one"), a.activate("two")
        a.activate("three")  # current
        t1.set("k", 1)  # "one" used after "two"
        a.activate("four")  # evicts "two", the least recently used
        assert sorted(a.list_active()) == ["default", "four", "one", "three"]
        assert a.status("two") is ContextStatus.INACTIVE
        assert t2.version == 1  # re-activating "two" evicts the LRU again ("three")
        assert sorted(a.list_active()) == ["default", "four", "one", "two"]


def test_pinned_contexts_are_never_evicted(store_path: Path) -> None:
    with _lru(store_path, limit=3) as s:
        a = s.adapter
        a.activate("p").pin()
        a.activate("x")
        for i in range(5):
            a.activate(f"y{i}")
            assert "p" in a.list_active()
        a.switch("p")
        a.activate("p").unpin()
        a.activate("z")
        a.activate("w")  # now "p" may go
        assert "p" not in a.list_active()


def test_all_protected_raises_capacity_error(store_path: Path) -> None:
    with _lru(store_path, limit=2) as s:
        a = s.adapter
        a.activate("p").pin()  # default + p (pinned, current)
        with pytest.raises(CapacityError):
            a.activate("q")
        s.manager.create("r")
        a.activate("p").unpin()
        with pytest.raises(CapacityError):
            s.manager.update("r", {"x": 1})  # not becoming current: the current "p" is protected
        a.activate("q")  # becomes current: "p" may be evicted now
        assert sorted(a.list_active()) == ["default", "q"]


@pytest.mark.parametrize("durability", ["immediate", "deferred", "none"])
def test_passivation_and_reopen_keep_everything(store_path: Path, durability: str) -> None:
    expected = {}
    with _lru(store_path, limit=3, durability=durability, snapshot_every=5) as s:
        a = s.adapter
        for i in range(8):
            t = a.activate(f"ctx{i}")
            for j in range(i + 3):
                t.set(f"k{j}", {"i": i, "j": j})
            t.set_metadata("owner", f"o{i}")
            rp = t.create_recovery_point(f"rp{i}")
            t.delete("k0")
            expected[f"ctx{i}"] = (t.version, dict(t.state().data), rp)
        # most were evicted along the way; every value is still there
        for cid, (version, data, _rp) in expected.items():
            st = s.manager.get_state(cid)
            assert st.version == version and dict(st.data) == data
    with open_system(store_path) as s:
        for cid, (version, data, rp) in expected.items():
            t = s.adapter.activate(cid)
            assert t.version == version and dict(t.state().data) == data
            assert t.metadata()["owner"] == f"o{cid[3:]}"
            points = t.recovery_points()
            assert [(p.id, p.version, p.label) for p in points] == [(rp.id, rp.version, rp.label)]
            assert points[0].state == rp.state
            assert t.restore(rp.id) == version + 1
            assert "k0" in t


def test_versions_never_go_backwards_across_restarts(store_path: Path) -> None:
    versions = []
    for _ in range(3):
        with open_system(store_path, manager_config=ContextManagerConfig(snapshot_every=3)) as s:
            t = s.adapter.activate("v")
            for _ in range(4):
                versions.append(t.set("k", len(versions)))
    assert versions == list(range(2, 14))


def test_recovery_points_are_trimmed_oldest_first_never_the_new_one(store_path: Path) -> None:
    with open_system(store_path, manager_config=ContextManagerConfig(max_recovery_points=3)) as s:
        t = s.adapter.activate("r")
        made = []
        for i in range(5):  # many within the same clock tick: ids are a sequence, not timestamps
            t.set("i", i)
            made.append(t.create_recovery_point(str(i)))
        points = t.recovery_points()
        assert [p.id for p in points] == [3, 4, 5]
        assert points[-1] == made[-1]
        t.delete_recovery_point(4)
        assert [p.id for p in t.recovery_points()] == [3, 5]
        assert t.create_recovery_point().id == 6  # ids are never reused


def test_the_journal_read_at_activation_counts_towards_the_next_snapshot(store_path: Path) -> None:
    store = SQLiteStore(store_path)  # a snapshot at v1 and three journal entries after it, as a crash leaves them
    store.open()
    try:
        store.commit([CreateContext(new_state("c", freeze_mapping({"a": 1}), now=1.0)),
                      *(Append("c", Change(v, float(v), freeze_mapping({"k": v}))) for v in range(2, 5))])
    finally:
        store.close()
    with open_system(store_path, manager_config=ContextManagerConfig(snapshot_every=5)) as s:

        def snapshot_version() -> int:
            return s.ask_persistence(StoreCall("info", ("c",)), None, "info").snapshot_version  # type: ignore[no-any-return]

        t = s.adapter.activate("c")
        assert t.set("k", 5) == 5 and snapshot_version() == 1  # four changes after the snapshot
        assert t.set("k", 6) == 6 and snapshot_version() == 6  # the fifth: a snapshot


def test_snapshots_truncate_the_journal(store_path: Path) -> None:
    with open_system(store_path, manager_config=ContextManagerConfig(snapshot_every=10)) as s:
        t = s.adapter.activate("j")
        for i in range(35):
            t.set("k", i)
        info = s.ask_persistence(__import__("hoard.actors._messages", fromlist=["StoreCall"]).StoreCall("info", ("j",)),
                                 None, "info")
        # two snapshots kept; the journal holds only what the older one does not cover
        assert info.journal_entries <= 20
        assert info.snapshot_version >= 30
    st = SQLiteStore(store_path, readonly=True)
    st.open()
    try:
        assert st.load("j").data["k"] == 34
        assert st.verify() == []
    finally:
        st.close()


def test_a_refused_activation_evicts_nothing(store_path: Path) -> None:

    with _lru(store_path, limit=3) as s:
        a = s.adapter
        a.activate("a")
        a.activate("b")  # full: default, a, b (current)
        with pytest.raises(ContextNotFoundError):
            a.tracker("missing")  # refused by the load: nobody is evicted for it
        assert sorted(a.list_active()) == ["a", "b", "default"]


def test_a_call_that_reaches_a_passivating_actor_is_refused_and_retried_not_written_after_its_snapshot(
        store_path: Path) -> None:



    store = RecordingStore(store_path)
    with open_system(store) as s:
        t = s.adapter.activate("p")
        t.set("k", 0)
        ref = t.actor_ref  # what a tracker holds if it read the cell just before the passivation
        gate, entered = threading.Event(), threading.Event()

        def hold_snapshot(ops) -> None:
            if any(isinstance(op, PutSnapshot) for op in ops) and not entered.is_set():
                entered.set()
                assert gate.wait(10)

        store.before_commit = hold_snapshot
        deactivating = threading.Thread(target=lambda: s.adapter.deactivate("p"))
        deactivating.start()
        try:
            assert entered.wait(10)  # the final snapshot is being written; the actor is not stopped yet
            late = ref.ask(Set("k", 1), block=False)
            with pytest.raises(pykka.ActorDeadError):
                late.get(timeout=5)  # refused at once: nothing may be written after the snapshot
        finally:
            gate.set()
            deactivating.join(20)
        store.before_commit = None
        snapshot = max(op.state.version for b in store.batches for op in b if isinstance(op, PutSnapshot))
        appended = [op.change.version for b in store.batches for op in b if isinstance(op, Append)]
        assert max(appended) <= snapshot  # no journal entry after the final snapshot
        assert t.set("k", 2) == 3 and t.get("k") == 2  # a tracker re-activates and goes on
