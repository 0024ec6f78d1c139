"""The persistence actor's commit lane (`PersistenceInbox`): immediate-mode context actors post their
`Commit`s there and ask for one `Flush` per group, never one mailbox message per change. No commit
may be missed (posted after a take, it finds the wake-up token or a later take gives it back) and
none may wait for an actor that has stopped."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hoard import ContextAdapterConfig, open_system
from hoard.actors._context import PersistenceInbox
from tests.helpers import run_in_threads


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


def test_a_write_after_the_persistence_actor_stopped_fails_at_once(tmp_path: Path) -> None:
    """Its commit would never be taken: the caller gets an error now, not a timeout later."""
    system = open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False))
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
