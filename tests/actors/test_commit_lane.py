"""The persistence actor's commit lane (`PersistenceInbox`): context actors post their `Commit`s there
and ask for one `Flush` (immediate mode) or `ArmFlush` (deferred mode) per group, never one mailbox
message per change. No commit
may be missed (posted after a take, it finds the wake-up token or a later take gives it back) and
none may wait for an actor that has stopped."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, PersistenceError, open_system
from hoard.actors._context import PersistenceInbox
from tests.helpers import RecordingStore, run_in_threads, wait_until


def test_only_the_first_commit_after_a_take_asks_for_a_flush() -> None:
    lane = PersistenceInbox()
    assert lane.post("c1") is True  # the token: this poster tells the actor Flush
    assert lane.post("c2") is False  # that Flush is on its way and takes this one too
    assert lane.qsize() == 2 and len(lane) == 2  # metrics count the lane as mailbox depth
    assert lane.take() == ["c1", "c2"]
    assert lane.qsize() == 0
    assert lane.post("c3") is True  # the take gave the token back
    assert lane.take() == ["c3"]
    assert lane.take() == []


def test_a_commit_posted_once_the_actor_stopped_is_refused_not_left_waiting() -> None:
    lane = PersistenceInbox()
    lane.closed = True
    assert lane.post("late") is None


def test_concurrent_posters_never_lose_a_commit(tmp_path: Path) -> None:
    """Many writers post while the actor takes: every write is committed and answered once."""
    writers, each = 12, 30
    with open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        trackers = [s.adapter.activate(f"c{i}") for i in range(writers)]

        def write(i: int) -> None:
            for n in range(each):
                trackers[i].set("n", n, timeout=60)

        errors = run_in_threads(writers, write)
        assert not errors
        assert all(t.get("n") == each - 1 and t.version == each + 1 for t in trackers)
        assert s.persistence_ref.actor_inbox.qsize() == 0
    with open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        assert all(s.manager.get_state(f"c{i}").version == each + 1 for i in range(writers))


@pytest.mark.parametrize("durability", ["immediate", "deferred"])
def test_a_write_after_the_persistence_actor_stopped_fails_at_once(tmp_path: Path, durability: str) -> None:
    """Its commit would never be taken: the caller gets an error now, not a timeout later."""
    system = open_system(tmp_path / "s.db", manager_config=ContextManagerConfig(durability=durability),  # type: ignore[arg-type]
                         adapter_config=ContextAdapterConfig(auto_activate_default=False))
    try:
        t = system.adapter.activate("c")
        t.set("a", 1)
        system.persistence_ref.stop()
        try:
            t.set("a", 2, timeout=30)
        except TimeoutError as exc:  # pragma: no cover - the failure this test guards against
            raise AssertionError("a write to a stopped persistence actor waited for its timeout") from exc
        except Exception:  # noqa: BLE001, S110 - any prompt error is the expected outcome
            pass
    finally:
        with contextlib.suppress(Exception):  # stopping without a persistence actor reports that
            system.stop()


# -- deferred mode: its commits go by the lane too, one ArmFlush per flush interval ------------------------
def _deferred(flush_interval: float) -> ContextManagerConfig:
    return ContextManagerConfig(durability="deferred", flush_interval=flush_interval, call_timeout=10.0)


def test_deferred_writes_from_many_threads_are_all_committed_by_stop(tmp_path: Path) -> None:
    """Deferred commits posted by many context actors at once: none is lost, each is committed once,
    those still in the lane when the system stops included (Close takes the lane)."""
    writers, each = 12, 40
    store = RecordingStore(tmp_path / "s.db")
    with open_system(store, manager_config=_deferred(0.01),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        trackers = [s.adapter.activate(f"c{i}") for i in range(writers)]

        def write(i: int) -> None:
            for n in range(each):
                trackers[i].set("n", n)

        assert not run_in_threads(writers, write)
    assert sum(store.appends()) == writers * each  # every change appended once, none twice
    with open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        assert all(s.manager.get_state(f"c{i}").version == each + 1 for i in range(writers))
        assert all(s.manager.get_state(f"c{i}").data["n"] == each - 1 for i in range(writers))


def test_a_deferred_write_is_committed_by_the_flush_timer_alone(tmp_path: Path) -> None:
    """The first commit posted since a take arms the timer (nothing else asks for a flush here)."""
    store = RecordingStore(tmp_path / "s.db")
    with open_system(store, manager_config=_deferred(0.02),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        t = s.adapter.activate("c")
        for round_ in range(3):  # and again after each timer's flush gave the wake-up token back
            before = sum(store.appends())
            t.set("n", round_)
            wait_until(lambda before=before: sum(store.appends()) == before + 1, what="the timer's flush")


def test_a_write_waiting_for_its_commit_is_not_held_until_the_flush_timer(tmp_path: Path) -> None:
    """While a deferred context's commits fail, each write waits for its own commit: that commit goes
    now, even with another context's commit waiting for a flush timer an hour away."""
    store = RecordingStore(tmp_path / "s.db")
    with open_system(store, manager_config=_deferred(3600.0),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        failing, other = s.adapter.activate("failing"), s.adapter.activate("other")
        s.manager.list_ids()  # a store read commits what is queued: both contexts are stored
        store.fail_next = PersistenceError("injected")
        failing.set("a", 1)  # acknowledged, then lost: its commit fails
        s.manager.list_ids()  # the failing commit: "failing" rolls back and waits for its commits now
        other.set("b", 1)  # deferred: posted, and the flush timer (an hour) armed
        version = failing.set("a", 2, timeout=5.0)  # committed now, not in an hour (nor timed out)
        assert s.manager.get_state("failing").version == version
        assert other.get("b") == 1
    with open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False)) as s:
        assert s.manager.get_state("failing").data["a"] == 2
        assert s.manager.get_state("other").data["b"] == 1
