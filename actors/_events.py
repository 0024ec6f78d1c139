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

import contextlib
import itertools
import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import attrs
import pykka

from ._messages import DeactivationReason

__all__ = [
    "OVERFLOW_POLICIES",
    "Backlogs",
    "ChangesLost",
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
    "SubscriberOverflow",
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


@attrs.frozen(kw_only=True)
class ChangesLost(ContextEvent):
    """``durability="deferred"``: commits failed, so acknowledged versions `first`..`last` never
    reached the store and are gone. The context continues from its last durable data at `version`
    (above every version ever acknowledged, so a write based on a lost version gets
    `VersionConflictError`). Until a commit succeeds again, its writes wait for their commit (and
    fail with `PersistenceError` while commits fail)."""

    first: int
    last: int
    version: int


@attrs.frozen(kw_only=True)
class SubscriberOverflow(ContextEvent):
    """A subscriber fell `backlog` events behind (its limit, ``subscriber_backlog``). With the policy
    ``"drop_subscriber"`` (default) its subscription `subscription` was ended and its queued events
    discarded; with ``"drop_events"`` events are skipped for it while it is that far behind (this
    event is then sent once per overflow, when the first event is skipped). `context_id` is None.
    Delivered to the other subscribers (never to the one it is about)."""

    subscription: int
    subscriber: str
    backlog: int
    policy: str


OVERFLOW_POLICIES = ("drop_subscriber", "drop_events")


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
    max_backlog: int | None = None  # None: the bus's default
    overflow: str | None = None  # one of OVERFLOW_POLICIES; None: the bus's default


@attrs.frozen
class Backlogs:
    """Ask the bus: events waiting per subscription, ``{"subscriber:<id>": n}``."""


@attrs.frozen
class Unsubscribe:
    sub_id: int


@attrs.frozen
class _Deliver:
    event: ContextEvent


class _Cancelled:
    """Set by the bus (its only writer) when a subscription ends: its actor skips what is queued."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class SubscriberActor(pykka.ThreadingActor):
    """Runs one callable subscriber, one event at a time, in event order."""

    use_daemon_thread = True

    def __init__(self, fn: Callable[[ContextEvent], Any], token: _Cancelled | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.token = token if token is not None else _Cancelled()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Deliver):
            if self.token.cancelled:
                return  # cancelled, dropped or stopping: what is still queued is not delivered
            try:
                self.fn(message.event)
            except Exception:
                log.exception("event subscriber %r raised on %r; it stays subscribed", self.fn, message.event)


class EventBusActor(pykka.ThreadingActor):
    """Fans events out to subscriptions. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, gate: EventGate, max_backlog: int = 10_000, overflow: str = "drop_subscriber") -> None:
        super().__init__()
        self.gate = gate
        self.max_backlog = max_backlog
        self.overflow = overflow
        self.subs: dict[int, Subscribe] = {}
        self.owned: dict[int, pykka.ActorRef[Any]] = {}  # subscriber actors this bus started
        self.tokens: dict[int, _Cancelled] = {}
        self.skipping: set[int] = set()  # "drop_events" subscriptions now skipping (reported once)
        self._ids = itertools.count(1)
        self.delivered = 0
        self.dropped_subscribers = 0
        self.skipped_events = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            self._publish(message.event)
            return None
        if isinstance(message, Subscribe):
            sub_id = next(self._ids)
            target = message.target
            if not message.inline and not isinstance(target, pykka.ActorRef):
                token = self.tokens[sub_id] = _Cancelled()
                target = SubscriberActor.start(target, token)
                self.owned[sub_id] = target
            self.subs[sub_id] = attrs.evolve(
                message, target=target,
                max_backlog=self.max_backlog if message.max_backlog is None else message.max_backlog,
                overflow=self.overflow if message.overflow is None else message.overflow)
            self.gate.active = True
            return sub_id
        if isinstance(message, Unsubscribe):
            self._drop(message.sub_id)
            return None
        if isinstance(message, Backlogs):
            return {f"subscriber:{sub_id}": _backlog(sub.target) for sub_id, sub in self.subs.items()
                    if not sub.inline}
        return None

    def _drop(self, sub_id: int) -> None:
        """End a subscription at once: its queued events are discarded, its actor stopped without
        waiting (a subscriber blocked in its own code cannot hold up the bus or a stop)."""
        self.subs.pop(sub_id, None)
        self.skipping.discard(sub_id)
        token = self.tokens.pop(sub_id, None)
        if token is not None:
            token.cancelled = True
        ref = self.owned.pop(sub_id, None)
        if ref is not None:
            _discard_queued(ref)
            ref.stop(block=False)
        self.gate.active = bool(self.subs)

    def _overflowed(self, sub_id: int, sub: Subscribe, backlog: int) -> bool:
        """`sub` is `backlog` events behind, at its limit: apply its policy. Returns True when the
        event at hand is not to be delivered to it."""
        assert sub.overflow is not None
        if sub.overflow == "drop_events":
            self.skipped_events += 1
            if sub_id in self.skipping:
                return True
            self.skipping.add(sub_id)
        else:
            self._drop(sub_id)
            self.dropped_subscribers += 1
        log.error("event subscriber %r (subscription %d) is %d events behind, its limit; policy %r: %s",
                  sub.target, sub_id, backlog, sub.overflow,
                  "its subscription was ended" if sub.overflow == "drop_subscriber" else "events are skipped")
        self._publish(SubscriberOverflow(context_id=None, at=time.time(), subscription=sub_id,
                                         subscriber=repr(sub.target), backlog=backlog, policy=sub.overflow))
        return True

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
            if isinstance(event, SubscriberOverflow) and event.subscription == sub_id:
                continue
            backlog = _backlog(sub.target)
            assert sub.max_backlog is not None
            if backlog >= sub.max_backlog:
                if self._overflowed(sub_id, sub, backlog):
                    continue
            else:
                self.skipping.discard(sub_id)
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
        # never wait for subscribers: one blocked in its own code would hold up stop() for ever
        for sub_id in list(self.subs):
            self._drop(sub_id)
        self.owned.clear()
        self.subs.clear()
        self.gate.active = False


def _backlog(target: Any) -> int:
    """Events waiting in a subscriber actor's mailbox (0 for one whose mailbox cannot be measured)."""
    inbox = getattr(target, "actor_inbox", None)
    return inbox.qsize() if isinstance(inbox, queue.Queue) else 0


def _discard_queued(ref: pykka.ActorRef[Any]) -> None:
    """Empty the mailbox of a subscriber actor this bus owns (only the bus writes to it): the memory
    of its queued events is freed even if it never takes another message."""
    inbox = ref.actor_inbox
    if isinstance(inbox, queue.Queue):
        with contextlib.suppress(queue.Empty):
            while True:
                inbox.get_nowait()


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
