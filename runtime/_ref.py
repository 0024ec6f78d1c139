"""`ContextRef`: a stable address of one context, shaped like a pykka `ActorRef`.

A context actor's own `pykka.ActorRef` dies when the context is passivated (evicted, idle,
deactivated) or restarted. A `ContextRef` stays valid for the life of the system: each message goes
to the context's current actor, and a passivated context is activated again first (not as current).

* ``ask(message, block=True, timeout=None)``: the reply, as pykka's; ``block=False`` returns a future
  at once (a `Pending`: ``get()`` it or ``await`` it). `timeout` None means the call timeout (never
  forever: a timed-out call raises `CallNotStartedError` or `CallOutcomeUnknownError`). A message
  that meets a stopping actor was not applied and is sent again; no pykka error reaches the caller.
* ``tell(message)``: returns at once (re-activation happens on a system worker thread). A told
  message that cannot be delivered (the context was deleted, capacity refused its activation) or
  that the context refuses (malformed, a version conflict) is a *dead letter*: logged, counted in
  ``system.metrics().dead_letters`` and emitted as a `DeadLetter` event. Tells from one thread keep
  their order while the context stays active; one that meets a passivation is redelivered and may
  land after later ones.

Thread-safe; any number of refs may address one context.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from hoard.actors import DeadLetterSeen, Reply
from hoard.storage import (
    CallNotStartedError,
    CapacityError,
    ContextFailedError,
    ContextNotFoundError,
    HoardError,
    SystemStoppedError,
)

from ._core import SystemCore
from ._tracker import ContextTracker, Pending

__all__ = ["ContextRef"]

log = logging.getLogger(__name__)


class ContextRef:
    """A stable address of one context (see the module docstring)."""

    __slots__ = ("_system", "_tracker")

    def __init__(self, system: SystemCore, tracker: ContextTracker) -> None:
        self._system = system
        self._tracker = tracker

    @property
    def context_id(self) -> str:
        return self._tracker.id

    def __repr__(self) -> str:
        return f"<ContextRef {self._tracker.id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContextRef) and other._system is self._system and other.context_id == self.context_id

    def __hash__(self) -> int:
        return hash(self.context_id)

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        """Send `message` to the context's actor and return its reply (``block=False``: a future, at
        once). Blocks (when `block`) up to `timeout` (default: call_timeout), re-activating the
        context if it was passivated. The reply's error (a `HoardError` for a bad message) is raised."""
        what = f"{type(message).__name__} to {self.context_id!r}"
        if block:
            return self._tracker._call(message, timeout, what)  # noqa: SLF001 - one package
        return self._tracker._submit(message, what, timeout)  # noqa: SLF001

    def tell(self, message: Any) -> None:
        """Send `message` without waiting for a reply. Returns at once; see the module docstring for
        what happens to a message that cannot be delivered. `SystemStoppedError` after stop."""
        if self._system.stopped:
            raise SystemStoppedError()
        what = f"told {type(message).__name__} to {self.context_id!r}"
        pending: Pending = self._tracker._submit(message, what)  # noqa: SLF001
        pending.add_done_callback(lambda reply: self._told(message, reply))

    def _told(self, message: Any, reply: Reply) -> None:
        """Runs in the thread that completed the reply: must not block."""
        try:
            pykka.ThreadingFuture.get(reply, timeout=0)
        except pykka.ActorDeadError:
            if reply.retry is None or self._system.stopped:
                self._dead_letter(message, "the system stopped", undeliverable=True)
                return
            retry = reply.retry
            reply.retry = None  # at most one redelivery round from here (it retries itself inside)

            def redeliver() -> None:
                try:
                    retry()
                except BaseException as exc:  # noqa: BLE001 - reported as a dead letter
                    self._dead_letter(message, repr(exc), undeliverable=_undeliverable(exc))

            try:
                self._system.offload(redeliver)
            except HoardError as exc:
                self._dead_letter(message, repr(exc), undeliverable=True)
        except BaseException as exc:  # noqa: BLE001 - refused, or never delivered
            self._dead_letter(message, repr(exc), undeliverable=_undeliverable(exc))

    def _dead_letter(self, message: Any, reason: str, *, undeliverable: bool) -> None:
        log.warning("dead letter: a told %s for %r %s: %s", type(message).__name__, self.context_id,
                    "could not be delivered" if undeliverable else "was refused", reason)
        self._system.report_dead_letter(DeadLetterSeen(self.context_id, type(message).__name__, reason,
                                                       undeliverable))


def _undeliverable(exc: BaseException) -> bool:
    """Whether `exc` kept the message from reaching an actor at all (not a refusal by the actor)."""
    return isinstance(exc, (ContextNotFoundError, CapacityError, ContextFailedError, CallNotStartedError,
                            SystemStoppedError))
