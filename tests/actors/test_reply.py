"""`Reply`, the future of every context call: answered once (the first answer wins), every waiter
wakes, timeouts are pykka's, and it composes as a pykka future. Its waiting is a one-token
`SimpleQueue`, not pykka's Condition, so these pin the semantics that one relied on."""

from __future__ import annotations

import queue
import threading

import pykka
import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.actors import ContextActor, Reply


def test_the_first_answer_wins_and_later_ones_are_ignored() -> None:
    reply = Reply()
    reply.fail(ValueError("first"))
    reply.resolve(2)
    reply.set(3)
    with pytest.raises(ValueError, match="first"):
        reply.outcome(0)
    answered = Reply()
    answered.resolve(1)
    answered.fail(ValueError("late"))
    assert answered.outcome(0) == 1
    assert answered.get(timeout=0) == 1  # read as often as wanted
    assert answered.done


def test_every_waiting_thread_wakes_with_the_answer() -> None:
    reply = Reply()
    got: list[object] = []
    waiting = threading.Barrier(5)

    def wait() -> None:
        waiting.wait(10)
        got.append(reply.outcome(10))

    threads = [threading.Thread(target=wait) for _ in range(4)]
    for th in threads:
        th.start()
    waiting.wait(10)
    reply.resolve("v")
    for th in threads:
        th.join(10)
    assert got == ["v"] * 4
    assert not any(th.is_alive() for th in threads)


def test_an_unanswered_reply_times_out_as_pykka_futures_do() -> None:
    reply = Reply()
    with pytest.raises(pykka.Timeout):
        reply.outcome(0)
    with pytest.raises(pykka.Timeout):
        reply.outcome(0.01)
    reply.resolve(7)
    assert reply.outcome(0) == 7


def test_a_reply_composes_as_a_pykka_future() -> None:
    a, b = Reply(), Reply()
    doubled = a.map(lambda v: v * 2)
    a.resolve(21)
    b.resolve(1)
    assert doubled.get(timeout=1) == 42
    assert pykka.get_all([a, b], timeout=1) == [21, 1]
    hooked = Reply()
    hooked.resolve(1)
    with pytest.raises(queue.Full):  # as pykka: answered already
        hooked.set_get_hook(lambda _t: 2)


def test_a_context_mailbox_counts_what_waits_in_it() -> None:
    """A context actor's mailbox (a `ContextInbox`) is what the metrics read as its depth."""
    system = open_system(None, manager_config=ContextManagerConfig(durability="none"),
                         adapter_config=ContextAdapterConfig(auto_activate_default=False))
    entered, release = threading.Event(), threading.Event()
    try:
        tracker = system.adapter.activate("c")

        def hold(_draft: object) -> None:
            entered.set()
            release.wait(10)

        held = tracker.transact_async(hold)
        assert entered.wait(10)
        pending = [tracker.set_async("k", i) for i in range(3)]
        depths = system.metrics().mailbox_depths
        assert depths["contexts_total"] == 3
        assert depths["contexts_max"] == 3
        release.set()
        assert pykka.get_all(pending, timeout=10)[-1] == tracker.version
        held.get(timeout=10)
        assert system.metrics().mailbox_depths["contexts_total"] == 0
        assert type(tracker.actor_ref.actor_inbox).__name__ == "ContextInbox"
        assert ContextActor._create_actor_inbox().qsize() == 0  # noqa: SLF001
    finally:
        release.set()
        system.stop()
