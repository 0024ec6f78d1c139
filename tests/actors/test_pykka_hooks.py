"""pykka's private hooks that hoard relies on are still there and still behave as hoard expects.

pyproject bounds pykka to ``>=4.1,<5``; docs/design.md ("pykka's private hooks") lists each hook and
why. Each test names the hook it checks, so an upgrade that breaks one fails here, by name, rather
than as a hang or a lost reply deep in the actor suites.
"""

from __future__ import annotations

import inspect
import queue
import threading
from importlib import metadata
from typing import Any

import pykka
import pytest

from hoard.actors import ContextActor, PersistenceActor, Reply


def _hook(owner: type, name: str) -> Any:
    raw = inspect.getattr_static(owner, name, None)
    assert raw is not None, f"pykka hook {owner.__name__}.{name} is gone (pykka {metadata.version('pykka')})"
    return raw


def test_pykka_is_within_the_bound_pyproject_declares() -> None:
    major, minor = (int(p) for p in metadata.version("pykka").split(".")[:2])
    assert (4, 1) <= (major, minor) < (5, 0), f"pykka {metadata.version('pykka')} is outside >=4.1,<5"


@pytest.mark.parametrize("name", ["_create_actor_inbox", "_create_future"])
def test_the_factory_hooks_are_static_and_take_no_arguments(name: str) -> None:
    raw = _hook(pykka.ThreadingActor, name)
    assert isinstance(raw, staticmethod), f"pykka hook ThreadingActor.{name} is no longer a staticmethod"
    assert inspect.signature(raw.__func__).parameters == {}, f"pykka hook ThreadingActor.{name} takes arguments now"


def test_create_actor_inbox_gives_a_queue_the_actor_loop_reads_with_get() -> None:
    """`_create_actor_inbox`: our `Inbox` (a `queue.SimpleQueue` that remembers the envelope `get` returned)
    must be the mailbox, and the actor loop must take each message with `get`; `mailbox_depth` and
    `mailbox_empty` read it (a `queue.Queue` or a `queue.SimpleQueue`)."""
    assert isinstance(pykka.ThreadingActor._create_actor_inbox(), queue.Queue), (  # noqa: SLF001
        "pykka hook ThreadingActor._create_actor_inbox no longer returns a queue.Queue")
    seen: list[Any] = []

    class Recording(queue.Queue):  # type: ignore[type-arg]
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            envelope = super().get(block, timeout)
            seen.append(envelope)
            return envelope

    class Echo(pykka.ThreadingActor):
        @staticmethod
        def _create_actor_inbox() -> Any:
            return Recording()

        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        future = ref.ask("asked", block=False)
        assert future.get(timeout=10) == "asked"
        ref.tell("told")
        assert ref.ask("sync", timeout=10) == "sync"
    finally:
        ref.stop(timeout=10)
    assert isinstance(ref.actor_inbox, Recording), "pykka hook _create_actor_inbox is no longer used for the mailbox"
    asked, told = seen[0], seen[1]
    assert getattr(asked, "reply_to", None) is future, (
        "pykka hook Envelope.reply_to: an ask's envelope no longer carries the future ask returned")
    assert hasattr(told, "reply_to") and told.reply_to is None, (
        "pykka hook Envelope.reply_to: a tell's envelope no longer has reply_to None")


def test_create_future_makes_the_future_ask_returns() -> None:
    """`_create_future`: `ActorRef.ask` must answer with the actor class's own future (our `Reply`)."""
    assert isinstance(ContextActor._create_future(), Reply)  # noqa: SLF001
    assert isinstance(PersistenceActor._create_actor_inbox(), queue.SimpleQueue)  # noqa: SLF001

    class Replying(pykka.ThreadingActor):
        @staticmethod
        def _create_future() -> Reply:
            return Reply()

        def on_receive(self, message: Any) -> Any:
            return message

    ref = Replying.start()
    try:
        future = ref.ask("x", block=False)
        assert isinstance(future, Reply), "pykka hook _create_future is no longer what ActorRef.ask returns"
        assert future.get(timeout=10) == "x"
    finally:
        ref.stop(timeout=10)


def test_stop_ends_the_actor_without_handling_its_mailbox() -> None:
    """`_stop`: a crashing context actor stops at once; what waits in its mailbox is failed with
    `ActorDeadError` (the tracker re-activates and retries), never handled."""
    raw = _hook(pykka.Actor, "_stop")
    assert list(inspect.signature(raw).parameters) == ["self"], "pykka hook Actor._stop takes arguments now"
    release = threading.Event()
    handled: list[Any] = []

    class Crashing(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            if message == "crash":
                release.wait(10)
                self._stop()
                return None
            handled.append(message)
            return message

    ref = Crashing.start()
    crash = ref.ask("crash", block=False)
    waiting = ref.ask("after", block=False)  # queued behind the crash
    release.set()
    crash.get(timeout=10)
    with pytest.raises(pykka.ActorDeadError):
        waiting.get(timeout=10)
    assert handled == [], "pykka hook Actor._stop handled the rest of the mailbox"
    assert not ref.is_alive()
