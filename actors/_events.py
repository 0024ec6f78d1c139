"""Events: what happened to contexts, delivered asynchronously to subscribers.

Every event is a frozen attrs class carrying `context_id` and `at` (seconds since the epoch); those
about a version carry `version`. Each version of a context yields exactly one `StateChanged` (or a
subclass: `MetadataChanged` when only metadata changed, `Restored` for a restore), emitted once the
change is committed (``immediate``) or applied (``deferred``/``none``), by the one thread that
publishes that context's states, so per context they arrive **in version order, with no gaps and
no coalescing**.

Delivery: the `EventBusActor` keeps the subscriptions and publishes them to emitters as one tuple
(`EventGate.routes`); the emitting thread delivers each event itself, with no hop through the bus.
A callable subscriber gets its own `SubscriberActor`: the emitter appends the event to that
subscription's queue and wakes the actor with one message per burst (not one per event), so a slow
subscriber delays only itself, never a context or another subscriber; one that raises is logged and
keeps its subscription (whatever it raises: a SystemExit too, which raised in an actor would stop
every actor). A pykka `ActorRef` subscriber is told the events as messages; if it has died it is
dropped with a log line. A subscriber over its backlog limit is reported to the bus, which
applies its overflow policy. Emitting costs one attribute read when nobody subscribes
(`EventGate.active`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import time
from collections.abc import Callable, Sized
from typing import Any

import attrs
import pykka

from ._messages import DeactivationReason
from ._metrics import MetricsBoard

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
    """Read by emitters: `active` (False while nobody subscribes; checked before building an event)
    and `routes`, the subscriptions to deliver to. Written only by the bus actor, each slot with one
    reference assignment (`routes` is a new tuple every time), so emitters read it without a lock."""

    __slots__ = ("active", "routes")

    def __init__(self) -> None:
        self.active = False
        self.routes: tuple[_Route, ...] = ()


@attrs.frozen
class Publish:
    """To the bus (told): deliver `event` from the bus's thread (emitters deliver themselves)."""

    event: ContextEvent


@attrs.frozen
class Subscribe:
    target: Any  # ActorRef, or a callable (run in its own actor; inline: in the emitting thread)
    context_id: str | None
    kinds: tuple[type, ...] | None
    inline: bool = False  # internal: a quick, thread-safe callable run by whoever emits
    max_backlog: int | None = None  # None: the bus's default
    overflow: str | None = None  # one of OVERFLOW_POLICIES; None: the bus's default
    #: internal: called (quick, no argument, in the bus's thread) when the bus stops while this
    #: subscription runs, i.e. the system stops: so that a wait on it ends then (`wait_for_version`)
    on_stop: Callable[[], Any] | None = None


@attrs.frozen
class Backlogs:
    """Ask the bus: events waiting per subscription, ``{"subscriber:<id>": n}``."""


@attrs.frozen
class Unsubscribe:
    sub_id: int


@attrs.frozen
class _Overflowed:
    """To the bus (told by an emitter): subscription `sub_id` was `backlog` events behind, its limit."""

    sub_id: int
    backlog: int


class _Drain:
    """To a `SubscriberActor` (told): events wait in its route's queue."""


_DRAIN = _Drain()


class _Route:
    """One subscription as emitters see it. The bus creates it and publishes it in `EventGate.routes`;
    emitters (any thread) call `offer`. Flags are single reference assignments, each with the writers
    its subclass names; no lock is needed because a stale read only delays an effect by one event.

    `cancelled` is set when the subscription ends (by the bus; by an emitter that found it over its
    limit with ``"drop_subscriber"``, which then tells the bus): nothing is delivered after it.
    """

    __slots__ = ("cancelled", "context_id", "kinds", "max_backlog", "on_stop", "overflow", "sub_id", "target")

    def __init__(self, sub_id: int, sub: Subscribe, max_backlog: int, overflow: str) -> None:
        self.sub_id = sub_id
        self.target = sub.target
        self.on_stop = sub.on_stop
        self.context_id = sub.context_id
        self.kinds = sub.kinds
        self.max_backlog = max_backlog
        self.overflow = overflow
        self.cancelled = False

    def offer(self, event: ContextEvent, bus: pykka.ActorRef[Any] | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def backlog(self) -> int:
        """Events waiting for this subscriber now (0 when that cannot be measured)."""
        return 0

    def waiting(self) -> Sized:
        """What `MetricsBoard` measures with ``len`` for this subscription's backlog."""
        return ()

    def _over_limit(self, bus: pykka.ActorRef[Any] | None, backlog: int) -> None:
        """Over its limit with ``"drop_subscriber"``: stop delivering at once, have the bus end it
        (once: a second emitter that finds it cancelled does nothing)."""
        if not self.cancelled:
            self.cancelled = True
            _tell_bus(bus, _Overflowed(self.sub_id, backlog))


class _InlineRoute(_Route):
    """An internal, quick, thread-safe callable, run by the emitting thread itself."""

    __slots__ = ()

    def offer(self, event: ContextEvent, bus: pykka.ActorRef[Any] | None) -> None:
        if self.cancelled:
            return
        try:
            self.target(event)
        except BaseException:  # in an actor's thread: see SubscriberActor.on_receive
            log.exception("inline subscriber raised on %r", event)


class _QueuedRoute(_Route):
    """A callable subscriber run by its own `SubscriberActor`: emitters append events to `queue` (a
    deque: ``append``/``popleft`` are atomic) and wake the actor with one `_Drain` only when it is
    not already due to look (`scheduled`), so a burst costs one pykka message, not one per event.

    `scheduled` is set by emitters and cleared by the actor *before* it empties the queue: an event
    appended after the actor's last look finds it cleared and sends a `_Drain`, so none is left
    behind; a race of two emitters only sends an extra `_Drain`, which finds the queue empty.
    `skipping` (``"drop_events"``: over the limit, reported) is written by emitters.
    """

    __slots__ = ("queue", "ref", "scheduled", "skipping")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.queue: collections.deque[ContextEvent] = collections.deque()
        self.scheduled = False
        self.skipping = False
        self.ref: pykka.ActorRef[Any] | None = None

    def offer(self, event: ContextEvent, bus: pykka.ActorRef[Any] | None) -> None:
        if self.cancelled:
            return
        queued = self.queue
        if len(queued) >= self.max_backlog:
            if self.overflow != "drop_events":
                self._over_limit(bus, len(queued))
            elif not self.skipping:
                self.skipping = True
                _tell_bus(bus, _Overflowed(self.sub_id, len(queued)))
            return
        if self.skipping:
            self.skipping = False
        queued.append(event)
        if not self.scheduled and self.ref is not None:
            self.scheduled = True
            try:  # noqa: SIM105 - once per burst: a try costs nothing, suppress() builds an object
                self.ref.tell(_DRAIN)
            except pykka.ActorDeadError:
                pass  # its subscription is ending (the bus stopped it)

    def backlog(self) -> int:
        return len(self.queue)

    def waiting(self) -> Sized:
        return self.queue


class _ActorRoute(_Route):
    """A pykka actor subscriber: events are told to it, its mailbox is its backlog."""

    __slots__ = ("skipping",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.skipping = False

    def offer(self, event: ContextEvent, bus: pykka.ActorRef[Any] | None) -> None:
        if self.cancelled:
            return
        backlog = self.backlog()
        if backlog >= self.max_backlog:
            if self.overflow != "drop_events":
                self._over_limit(bus, backlog)
            elif not self.skipping:
                self.skipping = True
                _tell_bus(bus, _Overflowed(self.sub_id, backlog))
            return
        if self.skipping:
            self.skipping = False
        try:
            self.target.tell(event)
        except pykka.ActorDeadError:
            if not self.cancelled:
                self.cancelled = True
                log.warning("event subscriber %r is dead; dropping its subscription", self.target)
                _tell_bus(bus, Unsubscribe(self.sub_id))

    def backlog(self) -> int:
        inbox = getattr(self.target, "actor_inbox", None)
        return len(inbox.queue) if isinstance(inbox, queue.Queue) else 0

    def waiting(self) -> Sized:
        inbox = getattr(self.target, "actor_inbox", None)
        return inbox.queue if isinstance(inbox, queue.Queue) else ()


def _tell_bus(bus: pykka.ActorRef[Any] | None, message: Any) -> None:
    if bus is not None:
        with contextlib.suppress(pykka.ActorDeadError):  # the system is stopping
            bus.tell(message)


def deliver(routes: tuple[_Route, ...], event: ContextEvent, bus: pykka.ActorRef[Any] | None) -> None:
    """Offer `event` to every route that wants it, in the calling thread (an emitter's)."""
    cid = event.context_id
    for route in routes:
        if route.context_id is not None and route.context_id != cid:
            continue
        if route.kinds is not None and not isinstance(event, route.kinds):
            continue
        route.offer(event, bus)


class SubscriberActor(pykka.ThreadingActor):
    """Runs one callable subscriber, one event at a time, in event order: on each `_Drain` it takes
    the events of its route's queue until it is empty or the subscription ends.

    Whatever the subscriber raises is logged and it stays subscribed: a SystemExit or another
    BaseException too, which must never leave `on_receive` (pykka's actor loop answers one by
    stopping every actor of the process, other systems' too). Nobody waits for a subscriber, so
    there is no caller to hand it to; a subscriber that wants to end its subscription cancels it."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        # a C SimpleQueue, not pykka's queue.Queue (two Conditions in Python): the emitter's tell of
        # `_DRAIN` is one C call, and the subscriber's thread wakes straight into its loop (pykka's
        # loop needs only get, put and empty: tests/actors/test_pykka_hooks.py)
        return queue.SimpleQueue()

    def __init__(self, fn: Callable[[ContextEvent], Any], route: _QueuedRoute) -> None:
        super().__init__()
        self.fn = fn
        self.route = route

    def on_receive(self, message: Any) -> None:
        if message is not _DRAIN:
            return
        route, fn = self.route, self.fn
        route.scheduled = False  # before looking: see _QueuedRoute
        popleft = route.queue.popleft
        while not route.cancelled:  # cancelled, dropped or stopping: what is still queued is not delivered
            try:
                event = popleft()
            except IndexError:
                return
            try:
                fn(event)
            except BaseException:  # see the class docstring
                log.exception("event subscriber %r raised on %r; it stays subscribed", fn, event)


class EventBusActor(pykka.ThreadingActor):
    """Keeps the subscriptions and publishes them to emitters (`EventGate.routes`), which deliver
    each event themselves; it acts on what emitters report (a subscriber over its limit, a dead
    one). See the module docstring."""

    use_daemon_thread = True

    def __init__(self, gate: EventGate, max_backlog: int = 10_000, overflow: str = "drop_subscriber", *,
                 board: MetricsBoard | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.board = board  # where metrics() reads the subscribers' backlogs, without asking
        self.max_backlog = max_backlog
        self.overflow = overflow
        self.subs: dict[int, _Route] = {}
        self.owned: dict[int, pykka.ActorRef[Any]] = {}  # subscriber actors this bus started
        self._ids = itertools.count(1)
        self.dropped_subscribers = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            deliver(self.gate.routes, message.event, self.actor_ref)
            return None
        if isinstance(message, _Overflowed):
            self._overflowed(message.sub_id, message.backlog)
            return None
        if isinstance(message, Subscribe):
            return self._subscribe(message)
        if isinstance(message, Unsubscribe):
            self._drop(message.sub_id)
            return None
        if isinstance(message, Backlogs):
            return {f"subscriber:{sub_id}": route.backlog() for sub_id, route in self.subs.items()
                    if not isinstance(route, _InlineRoute)}
        return None

    def _subscribe(self, m: Subscribe) -> int:
        sub_id = next(self._ids)
        args = (sub_id, m, self.max_backlog if m.max_backlog is None else m.max_backlog,
                self.overflow if m.overflow is None else m.overflow)
        route: _Route
        if m.inline:
            route = _InlineRoute(*args)
        elif isinstance(m.target, pykka.ActorRef):
            route = _ActorRoute(*args)
        else:
            queued = route = _QueuedRoute(*args)
            queued.ref = self.owned[sub_id] = SubscriberActor.start(m.target, queued)
        self.subs[sub_id] = route
        self._publish_routes()
        return sub_id

    def _drop(self, sub_id: int) -> None:
        """End a subscription at once: its queued events are discarded, its actor stopped without
        waiting (a subscriber blocked in its own code cannot hold up the bus or a stop)."""
        route = self.subs.pop(sub_id, None)
        if route is not None:
            route.cancelled = True
            if isinstance(route, _QueuedRoute):
                route.queue.clear()  # the memory of its queued events is freed even if it never looks again
        ref = self.owned.pop(sub_id, None)
        if ref is not None:
            ref.stop(block=False)
        self._publish_routes()

    def _publish_routes(self) -> None:
        routes = tuple(self.subs.values())
        self.gate.routes = routes
        self.gate.active = bool(routes)
        if self.board is not None:  # one reference assignment of a new tuple: readers need no lock
            self.board.subscribers = tuple((r.sub_id, r.waiting()) for r in routes if not isinstance(r, _InlineRoute))

    def _overflowed(self, sub_id: int, backlog: int) -> None:
        """An emitter found `sub_id` `backlog` events behind, at its limit, and stopped delivering to
        it: end the subscription (``"drop_subscriber"``), log, and tell the other subscribers."""
        route = self.subs.get(sub_id)
        if route is None:
            return  # already ended (a second emitter's report)
        if route.overflow == "drop_subscriber":
            self._drop(sub_id)
            self.dropped_subscribers += 1
        log.error("event subscriber %r (subscription %d) is %d events behind, its limit; policy %r: %s",
                  route.target, sub_id, backlog, route.overflow,
                  "its subscription was ended" if route.overflow == "drop_subscriber" else "events are skipped")
        others = tuple(r for r in self.gate.routes if r.sub_id != sub_id)
        deliver(others, SubscriberOverflow(context_id=None, at=time.time(), subscription=sub_id,
                                           subscriber=repr(route.target), backlog=backlog, policy=route.overflow),
                self.actor_ref)

    def on_stop(self) -> None:
        # never wait for subscribers: one blocked in its own code would hold up stop() for ever
        for sub_id in list(self.subs):
            on_stop = self.subs[sub_id].on_stop
            self._drop(sub_id)
            if on_stop is not None:
                try:
                    on_stop()
                except BaseException:  # in an actor's thread: see SubscriberActor.on_receive
                    log.exception("the stop hook %r of subscription %d raised", on_stop, sub_id)
        self.owned.clear()
        self.subs.clear()
        self.gate.active = False
        self.gate.routes = ()


class Emitter:
    """What actors hold to emit events: the gate (checked first) and the bus. Emitting delivers in
    the emitting thread: an append to each matching callable subscriber's queue (plus one wake-up
    message per burst), a tell to each actor subscriber, a call of each inline one."""

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
            deliver(self.gate.routes, event, self.bus)

    def __call__(self, cls: type[ContextEvent], context_id: str | None, **fields: Any) -> None:
        """Build and emit an event, only if anybody subscribes."""
        if self.gate.active and self.bus is not None:
            deliver(self.gate.routes, cls(context_id=context_id, at=self.clock(), **fields), self.bus)


NO_EVENTS = Emitter(EventGate(), None, lambda: 0.0)
