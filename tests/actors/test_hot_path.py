"""The durable write's hand-offs: who wakes whom, and when.

A context actor that took the commit lane's wake-up token owes the persistence actor a `Flush`; its
mailbox puts it there as the actor comes back for its next message (`ContextInbox.due`). The
callers of a flush are answered as the persistence actor comes back for its next message
(`PersistenceInbox.answers`), or by its `on_stop`. Nothing may be lost on the way: a Flush owed by an
actor that stops, an answer due when the persistence actor stops. Callers send with `Reply.send`,
which must behave as pykka's ``ask(block=False)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pykka
import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.actors import Reply
from hoard.actors._context import ContextInbox, PersistenceInbox
from hoard.actors._messages import Flush


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_a_flush_owed_by_a_context_actor_is_put_in_the_lane_before_it_takes_its_next_message() -> None:
    lane = PersistenceInbox()
    inbox = ContextInbox()
    inbox.put("next message")
    inbox.due = lane
    assert inbox.get() == "next message"
    assert inbox.due is None
    letter = lane.get(timeout=1)
    assert type(letter.message) is Flush and letter.reply_to is None  # what pykka's loop reads
    inbox.put("another")
    inbox.get()
    assert lane.empty()  # owed once, put once


def test_the_callers_of_a_flush_are_answered_before_the_persistence_actor_takes_its_next_message() -> None:
    class Done:
        def __init__(self, reply: Reply, result: int) -> None:
            self.reply, self.result = reply, result

    lane = PersistenceInbox()
    replies = [Reply(), Reply()]
    lane.answers.extend(Done(r, n) for n, r in enumerate(replies, 7))
    lane.put("next message")
    assert lane.get() == "next message"
    assert [r.get(timeout=1) for r in replies] == [7, 8]
    assert lane.answers == []


def test_reply_send_is_an_ask_without_blocking() -> None:
    ref = _Echo.start()
    try:
        assert Reply.send(ref, "hello").get(timeout=5) == "hello"
    finally:
        ref.stop()
    late = Reply.send(ref, "too late")  # the actor has stopped: the reply fails at once, as ask's does
    with pytest.raises(pykka.ActorDeadError):
        late.outcome(0)


@pytest.mark.parametrize("writers", [1, 8])
def test_every_durable_write_is_answered_and_read_back_when_the_system_stops_right_after(
        tmp_path: Path, writers: int) -> None:
    """Writes answered at the persistence actor's next wait are all answered, none lost at stop."""
    system = open_system(tmp_path / "s.db", manager_config=ContextManagerConfig(durability="immediate"),
                         adapter_config=ContextAdapterConfig(auto_activate_default=False))
    try:
        trackers = [system.adapter.activate(f"c{i}") for i in range(writers)]
        futures = [t.set_async("k", n) for n in range(20) for t in trackers]
        assert [f.get(timeout=30) for f in futures] == [n + 2 for n in range(20) for _ in trackers]
        assert all(t.get("k") == 19 for t in trackers)  # each caller reads its own write
    finally:
        system.stop()
    with open_system(tmp_path / "s.db", adapter_config=ContextAdapterConfig(auto_activate_default=False)) as again:
        assert all(again.manager.get_state(f"c{i}").data["k"] == 19 for i in range(writers))
