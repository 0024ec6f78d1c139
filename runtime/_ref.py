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
  ``system.metrics().dead_letters`` and emitted as a `DeadLetter` event. Tells through one ref keep
  their order: while the context is passivated (or earlier tells wait to be delivered) they queue in
  the ref and one worker delivers them in turn. A tell already in a mailbox when its actor stops is
  redelivered; it may then land after tells sent later.

Thread-safe; any number of refs may address one context.
"""

from __future__ import annotations

import collections
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

    __slots__ = ("_backlog", "_drainer", "_system", "_tracker")

    def __init__(self, system: SystemCore, tracker: ContextTracker) -> None:
        self._system = system
        self._tracker = tracker
        self._backlog: collections.deque[Any] = collections.deque()  # tells waiting for delivery, in order
        self._drainer = [True]  # one token: the worker that holds it delivers the backlog (list.pop is atomic)

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
        ordering and for what happens to a message that cannot be delivered. `SystemStoppedError`
        after stop."""
        if self._system.stopped:
            raise SystemStoppedError()
        cell = self._tracker._cell  # noqa: SLF001 - one package
        if not self._backlog and not cell.closed:
            what = f"told {type(message).__name__} to {self.context_id!r}"
            pending: Pending = self._tracker._submit(message, what)  # noqa: SLF001 - one message, no thread
            pending.add_done_callback(lambda reply: self._told(message, reply))
            return
        self._backlog.append(message)
        self._kick()

    def _kick(self) -> None:
        """Have a worker deliver the backlog, unless one already does."""
        try:
            self._drainer.pop()
        except IndexError:
            return  # the worker draining now will take the new message too
        try:
            self._system.offload(self._drain)
        except HoardError as exc:
            self._drainer.append(True)
            while self._backlog:
                self._dead_letter(self._backlog.popleft(), repr(exc), undeliverable=True)

    def _drain(self) -> None:
        """On a worker thread: deliver the backlog in order (re-activating the context as needed)."""
        while True:
            while self._backlog:
                message = self._backlog.popleft()
                try:
                    self._tracker._call(message, None, f"told {type(message).__name__} to {self.context_id!r}")  # noqa: SLF001
                except BaseException as exc:  # noqa: BLE001 - reported as a dead letter
                    self._dead_letter(message, repr(exc), undeliverable=_undeliverable(exc))
            self._drainer.append(True)
            if not self._backlog:
                return
            try:  # a message came in after the check above: drain it, unless its sender started a drain
                self._drainer.pop()
            except IndexError:
                return

    def _told(self, message: Any, reply: Reply) -> None:
        """Runs in the thread that completed the reply: must not block."""
        try:
            reply.outcome(0)
        except pykka.ActorDeadError:  # it met a stopping actor, so it was not applied: deliver it again
            if self._system.stopped:
                self._dead_letter(message, "the system stopped", undeliverable=True)
                return
            self._backlog.append(message)
            self._kick()
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
