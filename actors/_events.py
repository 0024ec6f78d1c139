"""Events: what happened to contexts, delivered asynchronously to subscribers.

Every event is a frozen attrs class carrying `context_id` and `at` (seconds since the epoch); those
about a version carry `version`. Each version of a context yields exactly one `StateChanged` (or a
subclass: `MetadataChanged` when only metadata changed, `Restored` for a restore), emitted once the
change is committed (``immediate``) or applied (``deferred``/``none``), by the one thread that
publishes that context's states, so per context they arrive **in version order, with no gaps and
no coalescing**.

Delivery: emitters tell the `EventBusActor`, which tells each matching subscription. A callable
subscriber gets its own `SubscriberActor`, so a slow one delays only itself, never a context or
another subscriber; one that raises is logged and keeps its subscription. A pykka `ActorRef`
subscriber receives the events as messages; if it has died it is dropped with a log line. Emitting
costs one attribute read when nobody subscribes (`EventGate.active`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import attrs
import pykka

from ._messages import DeactivationReason

__all__ = [
    "ContextActivated",
    "ContextCreated",
    "ContextDeactivated",
    "ContextDeleted",
    "ContextEvent",
    "ContextFailed",
    "ContextRestarted",
    "CorruptionRecovered",
    "DeadLetter",
    "EventBusActor",
    "EventGate",
    "MetadataChanged",
    "RecoveryPointCreated",
    "RecoveryPointDeleted",
    "Restored",
    "StateChanged",
    "Switched",
]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class ContextEvent:
    """Base class of every event."""

    context_id: str | None
    at: float


@attrs.frozen(kw_only=True)
class ContextCreated(ContextEvent):
    version: int = 1
    by: str | None = None


@attrs.frozen(kw_only=True)
class ContextActivated(ContextEvent):
    version: int


@attrs.frozen(kw_only=True)
class ContextDeactivated(ContextEvent):
    version: int
    reason: DeactivationReason


@attrs.frozen(kw_only=True)
class StateChanged(ContextEvent):
    """A new version: which data keys were set or removed (and metadata keys, if any), and `by` whom
    (the change's ``by=``, None if nobody said)."""

    version: int
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    metadata_changed: tuple[str, ...] = ()
    metadata_removed: tuple[str, ...] = ()
    by: str | None = None


@attrs.frozen(kw_only=True)
class MetadataChanged(StateChanged):
    """A new version that changed metadata only."""


@attrs.frozen(kw_only=True)
class Restored(StateChanged):
    """A new version equal to recovery point `rp_id`."""

    rp_id: int


@attrs.frozen(kw_only=True)
class RecoveryPointCreated(ContextEvent):
    version: int
    rp_id: int
    label: str | None


@attrs.frozen(kw_only=True)
class RecoveryPointDeleted(ContextEvent):
    rp_id: int


@attrs.frozen(kw_only=True)
class ContextDeleted(ContextEvent):
    reason: str = "explicit"  # or "expired"


@attrs.frozen(kw_only=True)
class DeadLetter(ContextEvent):
    """A told message (``tell``) that nobody could answer came to nothing: it could not be delivered
    (`undeliverable`: the context was deleted, or capacity refused its activation) or its context
    refused it (malformed, a version conflict, a bad value). `message` is its type's name."""

    message: str
    reason: str
    undeliverable: bool


@attrs.frozen(kw_only=True)
class Switched(ContextEvent):
    """The current context changed: `context_id` is the new current (None: none), `previous` the old."""

    previous: str | None


@attrs.frozen(kw_only=True)
class ContextFailed(ContextEvent):
    reason: str


@attrs.frozen(kw_only=True)
class ContextRestarted(ContextEvent):
    version: int
    restarts: int


@attrs.frozen(kw_only=True)
class CorruptionRecovered(ContextEvent):
    """Loading found damaged data and recovered what it could (``recovery="fallback"``)."""

    version: int
    skipped: tuple[str, ...]
    lost_versions: tuple[int, ...] = ()


class EventGate:
    """Read by emitters before building an event: False while nobody subscribes. Written only by the
    bus actor (one reference assignment)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = False


@attrs.frozen
class Publish:
    event: ContextEvent


@attrs.frozen
class Subscribe:
    target: Any  # ActorRef, or a callable run inline by the bus (internal, must be quick)
    context_id: str | None
    kinds: tuple[type, ...] | None
    inline: bool = False


@attrs.frozen
class Unsubscribe:
    sub_id: int


@attrs.frozen
class _Deliver:
    event: ContextEvent


class SubscriberActor(pykka.ThreadingActor):
    """Runs one callable subscriber, one event at a time, in event order."""

    use_daemon_thread = True

    def __init__(self, fn: Callable[[ContextEvent], Any]) -> None:
        super().__init__()
        self.fn = fn

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Deliver):
            try:
                self.fn(message.event)
            except Exception:
                log.exception("event subscriber %r raised on %r; it stays subscribed", self.fn, message.event)


class EventBusActor(pykka.ThreadingActor):
    """Fans events out to subscriptions. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, gate: EventGate) -> None:
        super().__init__()
        self.gate = gate
        self.subs: dict[int, Subscribe] = {}
        self.owned: dict[int, pykka.ActorRef[Any]] = {}  # subscriber actors this bus started
        self._ids = itertools.count(1)
        self.delivered = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            self._publish(message.event)
            return None
        if isinstance(message, Subscribe):
            sub_id = next(self._ids)
            target = message.target
            if not message.inline and not isinstance(target, pykka.ActorRef):
                target = SubscriberActor.start(target)
                self.owned[sub_id] = target
            self.subs[sub_id] = attrs.evolve(message, target=target)
            self.gate.active = True
            return sub_id
        if isinstance(message, Unsubscribe):
            self._drop(message.sub_id)
            return None
        return None

    def _drop(self, sub_id: int) -> None:
        self.subs.pop(sub_id, None)
        ref = self.owned.pop(sub_id, None)
        if ref is not None:
            ref.stop(block=False)
        self.gate.active = bool(self.subs)

    def _publish(self, event: ContextEvent) -> None:
        for sub_id, sub in list(self.subs.items()):
            if sub.context_id is not None and sub.context_id != event.context_id:
                continue
            if sub.kinds is not None and not isinstance(event, sub.kinds):
                continue
            if sub.inline:
                try:
                    sub.target(event)
                except Exception:
                    log.exception("inline subscriber raised on %r", event)
                continue
            try:
                if sub_id in self.owned:
                    sub.target.tell(_Deliver(event))
                else:
                    sub.target.tell(event)
                self.delivered += 1
            except pykka.ActorDeadError:
                log.warning("event subscriber %r is dead; dropping its subscription", sub.target)
                self._drop(sub_id)

    def on_stop(self) -> None:
        for ref in self.owned.values():
            try:
                ref.stop(block=True, timeout=5)
            except pykka.Timeout:
                log.error("event subscriber %r did not stop within 5 s", ref)
        self.owned.clear()
        self.subs.clear()
        self.gate.active = False


class Emitter:
    """What actors hold to emit events: the gate (checked first) and the bus."""

    __slots__ = ("bus", "clock", "gate")

    def __init__(self, gate: EventGate, bus: pykka.ActorRef[Any] | None, clock: Callable[[], float]) -> None:
        self.gate = gate
        self.bus = bus
        self.clock = clock

    @property
    def active(self) -> bool:
        return self.gate.active

    def emit(self, event: ContextEvent) -> None:
        if self.gate.active and self.bus is not None:
            try:  # noqa: SIM105 - on every write: a try costs nothing, suppress() builds an object per call
                self.bus.tell(Publish(event))
            except pykka.ActorDeadError:
                pass  # the system is stopping

    def __call__(self, cls: type[ContextEvent], context_id: str | None, **fields: Any) -> None:
        """Build and emit an event, only if anybody subscribes."""
        if self.gate.active and self.bus is not None:
            self.emit(cls(context_id=context_id, at=self.clock(), **fields))


NO_EVENTS = Emitter(EventGate(), None, lambda: 0.0)
