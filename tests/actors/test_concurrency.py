"""Concurrency guarantees, each proven by a test that would fail without it."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from hoard import (
    ContextAdapterConfig,
    ContextManagerConfig,
    PersistenceError,
    VersionConflictError,
    open_system,
)
from tests.helpers import RecordingStore, run_in_threads, wait_until

THREADS = 8


_run = run_in_threads


@pytest.mark.parametrize("durability", ["immediate", "none"])
def test_n_threads_times_m_transact_increments_give_exactly_n_times_m(store_path: Path, durability: str) -> None:
    m = 150
    with open_system(store_path, manager_config=ContextManagerConfig(durability=durability)) as s:
        t = s.adapter.activate("counter")

        def inc(d):
            d["n"] = d.get("n", 0) + 1

        errors = _run(THREADS, lambda _i: [t.transact(inc) for _ in range(m)])
        assert errors == []
        assert t.get("n") == THREADS * m
        assert t.version == 1 + THREADS * m
    with open_system(store_path) as s:  # and all of it is durable
        assert s.manager.get_state("counter").data["n"] == THREADS * m


def test_concurrent_activate_of_one_id_yields_one_actor(system) -> None:
    refs = []

    def activate(_i: int) -> None:
        refs.append(system.adapter.activate("shared").actor_ref)

    assert _run(16, activate) == []
    assert len({r.actor_urn for r in refs}) == 1
    actors = [t for t in threading.enumerate() if t.name.startswith("ContextActor-")]
    assert len(actors) == 2  # "default" and "shared"
    assert sorted(system.adapter.list_active()) == ["default", "shared"]


def test_conflicts_under_contention_are_reported_never_lost(system) -> None:
    t = system.adapter.activate("cas")
    t.set("n", 0)
    outcome: Counter[str] = Counter()
    lock_free_tally = []  # list.append is atomic; no lock needed

    def worker(_i: int) -> None:
        for _ in range(100):
            st = t.state()
            try:
                t.set("n", st.data["n"] + 1, expected_version=st.version)
                lock_free_tally.append("ok")
            except VersionConflictError as e:
                assert e.expected == st.version and e.actual > st.version
                lock_free_tally.append("conflict")

    assert _run(THREADS, worker) == []
    outcome.update(lock_free_tally)
    assert outcome["ok"] + outcome["conflict"] == THREADS * 100
    assert outcome["conflict"] > 0  # contention really happened
    # every acknowledged compare-and-set is in the value: none was lost, none applied twice
    assert t.get("n") == outcome["ok"]
    assert t.version == 2 + outcome["ok"]


def test_readers_never_see_an_uncommitted_change(store_path: Path) -> None:
    store = RecordingStore(store_path)
    committed: dict[str, int] = {}
    seen_ahead: list[tuple[int, int]] = []
    with open_system(store) as s:
        t = s.adapter.activate("rc")
        committed["rc"] = t.version

        def check(ops) -> None:
            # called in the persistence actor right before the commit: what readers see now must
            # already be committed
            visible = t.state().version
            if visible > committed["rc"]:
                seen_ahead.append((visible, committed["rc"]))

        store.before_commit = check
        original = RecordingStore.commit

        def commit_and_note(self, ops) -> None:
            original(self, ops)
            committed["rc"] = max([committed["rc"], *[op.change.version for op in ops if hasattr(op, "change")]])

        store.commit = commit_and_note.__get__(store)  # type: ignore[method-assign]
        errors = _run(4, lambda i: [t.set(f"k{i}", j) for j in range(100)])
        assert errors == []
        assert seen_ahead == []
        assert t.version == 1 + 400


def test_writers_read_their_own_writes_at_once(system) -> None:
    t = system.adapter.activate("ryw")

    def worker(i: int) -> None:
        for j in range(100):
            v = t.set(f"k{i}", j)
            assert t.get(f"k{i}") == j
            assert t.version >= v

    assert _run(THREADS, worker) == []


def test_group_commit_puts_many_writers_in_one_transaction(store_path: Path) -> None:
    store = RecordingStore(store_path)
    gate = threading.Event()
    entered = threading.Event()
    writers = 16

    def hold_first(ops) -> None:
        if not entered.is_set():
            entered.set()
            assert gate.wait(30)

    with open_system(store, adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        trackers = [s.adapter.activate(f"c{i}") for i in range(writers + 1)]
        store.batches.clear()
        store.before_commit = hold_first
        holder = threading.Thread(target=lambda: trackers[-1].set("k", 0))
        holder.start()
        assert entered.wait(10)
        threads = [threading.Thread(target=tr.set, args=("k", 1)) for tr in trackers[:writers]]
        for th in threads:
            th.start()
        # every writer's Commit is queued behind the held commit
        inbox = s.persistence_ref.actor_inbox
        wait_until(lambda: inbox.qsize() >= writers, what="all commits queued")
        gate.set()
        for th in [holder, *threads]:
            th.join(30)
        assert store.appends()[:2] == [1, writers]  # 16 durable writes, one transaction, one sync
        assert all(tr.get("k") == 1 for tr in trackers[:writers])


def test_a_failed_commit_raises_and_leaves_the_last_durable_state(store_path: Path) -> None:
    store = RecordingStore(store_path)
    with open_system(store) as s:
        t = s.adapter.activate("f")
        t.set("a", 1)
        durable = t.state()
        store.fail_next = PersistenceError("disk full (injected)")
        with pytest.raises(PersistenceError, match="disk full"):
            t.set("a", 2)
        assert t.state() == durable and t.get("a") == 1
        assert t.set("a", 3) == durable.version + 1  # writes work again once the fault clears
    with open_system(store_path) as s:
        st = s.manager.get_state("f")
        assert st.data["a"] == 3 and st.version == durable.version + 1
