"""The durable write's hand-offs without pykka's tell and ask around them.

An ``immediate`` context actor posts its commit and, when it took the commit lane's wake-up token,
puts a prebuilt `Flush` letter in the persistence actor's mailbox itself (`PersistenceInbox.commit_now`);
callers send with `Reply.send`, which must behave as pykka's ``ask(block=False)``. pykka's actor loop
must take both as it takes its own envelopes (it reads only ``message`` and ``reply_to``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pykka
import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.actors import Reply
from hoard.actors._context import PersistenceInbox
from hoard.actors._messages import Flush


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def test_commit_now_sends_one_flush_per_take_and_refuses_once_the_actor_stopped() -> None:
    lane = PersistenceInbox()
    assert lane.commit_now("c1") is True
    assert lane.commit_now("c2") is True  # no second Flush: the first takes this commit too
    letter = lane.get(timeout=1)
    assert type(letter.message) is Flush and letter.reply_to is None  # what pykka's loop reads
    assert lane.empty()
    assert lane.take() == ["c1", "c2"]
    assert lane.commit_now("c3") is True  # the take gave the token back: a new Flush
    assert type(lane.get(timeout=1).message) is Flush
    lane.closed = True
    assert lane.commit_now("late") is False  # as a tell to a stopped actor: refused at once


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
    """Every write is answered, reads back, and is in the store after a stop right after."""
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
