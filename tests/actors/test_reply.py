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
from tests.helpers import wait_until


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


@pytest.mark.parametrize("durability", ["immediate", "none"])
def test_a_done_callback_raising_a_base_exception_is_logged_and_stops_no_actor(
        tmp_path, caplog, durability: str) -> None:
    # the callback runs in the thread that answers: the persistence actor (immediate) or the context
    # actor (none), where a SystemExit would make pykka stop every actor of the process
    system = open_system(tmp_path / "s.db", manager_config=ContextManagerConfig(durability=durability))
    try:
        t = system.adapter.activate("c")
        entered, release, ran = threading.Event(), threading.Event(), threading.Event()

        def hold(_draft) -> None:
            entered.set()
            release.wait(10)

        holder = threading.Thread(target=t.transact, args=(hold,), kwargs={"timeout": 10})
        holder.start()
        assert entered.wait(10)
        pending = t.set_async("k", 1, timeout=10)  # queued behind the transaction: not answered yet

        def quits(_reply: Reply) -> None:
            ran.set()
            raise SystemExit(1)

        later = Reply()
        pending.add_done_callback(quits)
        pending.add_done_callback(lambda _r: later.resolve("after"))  # the other callbacks still run
        release.set()
        holder.join(10)
        assert pending.get(timeout=10) == 3
        assert ran.wait(10) and later.get(timeout=10) == "after"
        wait_until(lambda: "SystemExit" in caplog.text, what="the callback's log line")
        assert t.set("k", 2, timeout=5) == 4  # every actor still runs
    finally:
        system.stop()


def test_a_done_callback_raising_a_base_exception_in_the_main_thread_is_raised_there() -> None:
    # added after the answer, a callback runs in the adding thread: a KeyboardInterrupt (Ctrl-C) or
    # SystemExit there is the program's own, never swallowed
    reply = Reply()
    reply.resolve(1)

    def interrupted(_reply: Reply) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reply.add_done_callback(interrupted)
