"""ContextTracker details: factory presets, direct actor messages, passivation transparency."""

from __future__ import annotations

import pykka
import pytest

from hoard import ContextTimeoutError, ContextTrackerFactory, VersionConflictError
from hoard.actors import Delete, Get, GetState, Set, Transact, UnknownMessageError, Update


def test_factory_presets_timeout_and_current(system) -> None:
    factory = ContextTrackerFactory(system.adapter, timeout=0.5)
    t = factory.create("f")
    assert system.adapter.current_id() == "default"  # not made current by default
    assert t.set("k", 1) == 2
    current = ContextTrackerFactory(system.adapter, make_current=True).create("g")
    assert system.adapter.current_id() == "g" and current.id == "g"


def test_another_actor_can_drive_a_context_by_messages_only(system) -> None:
    ref = system.adapter.actor_ref("m")

    class Client(pykka.ThreadingActor):
        def on_receive(self, message):
            futures = [ref.ask(Set("a", 1), block=False), ref.ask(Update({"b": 2}), block=False)]
            return pykka.get_all(futures, timeout=5)

    client = Client.start()
    try:
        assert client.ask("go", timeout=5) == [2, 3]
    finally:
        client.stop()
    assert ref.ask(Get("a"), timeout=5) == 1
    assert ref.ask(GetState(), timeout=5).version == 3
    assert ref.ask(Transact(lambda d: d.pop("a")), timeout=5) == 1
    assert ref.ask(Delete(("b",)), timeout=5) == 5
    with pytest.raises(VersionConflictError):
        ref.ask(Set("a", 1, expected_version=1), timeout=5)
    with pytest.raises(UnknownMessageError):
        ref.ask("hello", timeout=5)
    ref.tell(Set("told", True))  # fire and forget: committed and published all the same
    t = system.adapter.tracker("m")
    t.transact(lambda d: None)  # ordered after the tell
    assert t.get("told") is True


def test_a_tracker_survives_passivation_reads_included(system) -> None:
    t = system.adapter.activate("p")
    t.set("k", "v")
    system.adapter.deactivate("p")
    assert "p" not in system.adapter.list_active()
    assert t.get("k") == "v"  # a read re-activates it
    assert "p" in system.adapter.list_active()
    assert system.adapter.current_id() == "default"  # ...without making it current
    system.adapter.deactivate("p")
    assert t.set("k", "w") == 3


def test_a_transaction_calling_its_own_tracker_times_out_instead_of_hanging(system) -> None:
    t = system.adapter.activate("self")
    with pytest.raises(ContextTimeoutError):
        t.transact(lambda d: t.set("x", 1, timeout=0.2), timeout=5)
    t.transact(lambda d: None)
    assert t.get("x") is None  # the inner set timed out before it started: cancelled, never applied (issue 12)
