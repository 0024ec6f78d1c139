"""`ContextSystem`: starts and stops the actors behind a manager and its adapter.

`open_system()` opens the store in the calling thread (so `StoreLockedError` and `CorruptStateError`
reach the caller at once), then starts the persistence actor, which owns the store from then on, and
the supervisor. `stop()` passivates every context (commit + snapshot), closes the store and stops
every actor. Systems still open at interpreter exit are stopped by an ``atexit`` hook, so a
forgotten `stop()` loses nothing in ``immediate`` or ``deferred`` mode. The actors are `SystemCore`'s
(`_core`); `ContextSystem` builds on it and is the only module that knows the manager and adapter.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pykka

from hoard.actors import ContextEvent, StoreCall
from hoard.storage import (
    Codec,
    ConfigError,
    HistoryPolicy,
    HoardError,
    MemoryStore,
    PostgresStore,
    Store,
    SystemStoppedError,
    make_store,
    validate_id,
)

from ._adapter import ContextAdapter
from ._config import ContextAdapterConfig, ContextManagerConfig
from ._core import SystemCore
from ._events import Subscription, subscribe
from ._feed import ChangeStream, FeedConsumer, check_offset, check_timeout
from ._forward import (
    Forwarder,
    RegisteredTransaction,
    TransactionRegistry,
    decode_message,
    done_reply,
    encode_error,
    encode_value,
)
from ._manager import ContextManager
from ._ref import ContextRef
from ._tracker import LOCAL, ContextTracker, delete_recovery_point_here

__all__ = ["ContextSystem", "open_system"]

_SERVED_KEPT = 10_000  # trackers kept for contexts served to other processes (cheap once passivated)

def _resolve_store(config: ContextManagerConfig) -> Store:
    """The configured store: None is a `MemoryStore`; a path or URL is made by `make_store` (a
    PostgreSQL store with ``require_lease=True``: every write of this system is made under the
    context's ownership lease, so a write that lost its lease can never land)."""
    store = config.store
    if store is None:
        return MemoryStore(feed=config.feed, feed_retention=config.feed_retention)
    if isinstance(store, (str, os.PathLike)):
        return make_store(store, sync=config.sync, compression_level=config.compression_level,
                          max_state_bytes=config.max_state_bytes, recovery=config.recovery, require_lease=True,
                          feed=config.feed, feed_retention=config.feed_retention)
    if isinstance(store, PostgresStore):
        _adopt(store, config)
    return store


_DEFAULTS = ContextManagerConfig()
_CODEC_SLACK = 2**20  # PostgresStore's codec bound: max_state_bytes plus framing


def _adopt(store: PostgresStore, config: ContextManagerConfig) -> None:
    """A `PostgresStore` object runs like the URL form: every write under the context's lease, and
    the config's `recovery`, `max_state_bytes` and `compression_level` apply to it. A setting left at
    its default in the config keeps the store's own; set in both, differently, is a `ConfigError`
    naming it. (The store's compression level is not readable back: a config level other than the
    default replaces it.)"""
    if store.readonly:
        raise ConfigError(f"{store!r} is read-only; a system writes (open it with readonly=False)")
    store.require_lease = True
    if config.recovery != _DEFAULTS.recovery:
        if store.recovery not in (_DEFAULTS.recovery, config.recovery):
            raise ConfigError(f"recovery: the config says {config.recovery!r}, the store {store.recovery!r}")
        store.recovery = config.recovery
    own_max = store.codec.max_bytes - _CODEC_SLACK
    wanted_max = own_max
    if config.max_state_bytes != _DEFAULTS.max_state_bytes:
        if own_max not in (_DEFAULTS.max_state_bytes, config.max_state_bytes):
            raise ConfigError(f"max_state_bytes: the config says {config.max_state_bytes}, the store {own_max}; "
                              "set it in one place")
        wanted_max = config.max_state_bytes
    if wanted_max != own_max or config.compression_level != _DEFAULTS.compression_level:
        store.codec = Codec(config.compression_level, max_bytes=wanted_max + _CODEC_SLACK)


class ContextSystem(SystemCore):
    """A running hoard: its store, persistence actor, supervisor, manager and adapter.

    Use it as a context manager, or call `stop()`. Thread-safe: every public call may come from any
    thread. After `stop()`, calls on the system, its manager, adapter and trackers raise
    `SystemStoppedError`. The actors and the asking are `SystemCore`'s; this class adds the manager
    (which owns the one adapter) and subscriptions.
    """

    def __init__(self, manager_config: ContextManagerConfig,
                 adapter_config: ContextAdapterConfig | None = None) -> None:
        if not isinstance(manager_config, ContextManagerConfig):
            raise ConfigError(f"manager_config must be a ContextManagerConfig, not {type(manager_config).__name__}")
        if adapter_config is not None and not isinstance(adapter_config, ContextAdapterConfig):
            raise ConfigError(f"adapter_config must be a ContextAdapterConfig, not {type(adapter_config).__name__}")
        super().__init__(manager_config, _resolve_store(manager_config))
        self.manager: ContextManager = ContextManager(self)
        self.transactions = TransactionRegistry()
        self._feed_readers = self.manager.readers
        self._served: collections.OrderedDict[str, ContextTracker] = collections.OrderedDict()
        # how long an answer's sender may assume this process still owns the context
        self._served_lease = self.store.lease_ttl / 2 if isinstance(self.store, PostgresStore) else None
        try:
            if manager_config.history is not None:
                # recorded in the store: compaction here, later openers and `hoard compact` follow it
                self.ask_persistence(StoreCall("set_history", (HistoryPolicy.parse(manager_config.history),)),
                                     None, "recording the history policy")
            if manager_config.forward_via is not None:
                self.forwarder = self._connect_forwarding(manager_config.forward_via)
            if adapter_config is not None:
                self.attach_adapter(adapter_config)
        except BaseException:
            self.stop()
            raise

    # -- forwarding: calls from other processes on contexts owned here ---------------------------------
    def _connect_forwarding(self, url: str) -> Forwarder:
        store = self.store
        if not isinstance(store, PostgresStore):
            raise ConfigError(f"forward_via needs a shared PostgreSQL store (with leases), not {store!r}: "
                              "with one process per store every context is local")
        return Forwarder(url, schema=store.schema, owner_id=store.owner_id, serve=self._serve,
                         transactions=self.transactions,
                         attempt_timeout=max(0.25, store.lease_ttl / 2))

    def _serve(self, request: dict[str, Any], done: Any) -> None:
        """Run one forwarded call here, as the owner (runs on the NATS loop thread: never blocks).
        A message goes to the context's actor (`done` runs from the thread that answers it); a call
        that must read the store first runs on a worker thread. The call is never forwarded on: if
        this process does not own the context it answers `ContextOwnedElsewhereError` (or, for an
        actor that stopped before taking it, "retry"), and the caller re-routes."""
        cid = request["id"]
        tracker = self._served.get(cid) if type(cid) is str else None  # cached: its id was checked
        if tracker is None:
            cid = validate_id(cid)
            tracker = self._served_tracker(cid)
        t = float(request["t"])
        lease = self._served_lease
        if request["k"] == "msg":
            message = decode_message(request["m"], self.transactions, cid, getattr(self.store, "owner_id", "?"))
            pending = tracker._submit(message, f"forwarded {type(message).__name__} to {cid!r}", t)  # noqa: SLF001 - one package
            # the caller's deadline holds here too: not started by then, it never runs, and the caller
            # hears so (CallNotStartedError) just before its own wait ends
            after = done.cancel_unstarted(pending, t)
            pending.add_done_callback(lambda reply: done(done_reply(reply, lease), after))
            return
        work = self._blocking_work(request, tracker, t)

        def run() -> None:
            try:
                value = work()
            except BaseException as exc:  # noqa: BLE001 - every error goes back typed
                done({"error": encode_error(exc)})
            else:
                done({"ok": encode_value(value), "lease": lease})

        self.offload(run)

    def _blocking_work(self, request: dict[str, Any], tracker: ContextTracker, t: float) -> Callable[[], Any]:
        """A served call that reads the store or asks the supervisor first: run on a worker thread,
        in this process only (a context owned elsewhere by now answers ContextOwnedElsewhereError)."""
        cid, args = tracker.id, request.get("a", [])
        if request["k"] == "restore":
            m = request["m"]
            return lambda: tracker.restore(m["rp"], expected_version=m["expected_version"],
                                           request_id=m["request_id"], by=m.get("by"), timeout=t)
        ops: dict[str, Callable[[], Any]] = {
            "delete": lambda: self.manager.delete_here(cid, t, by=args[0] if args else None),
            "set_ttl": lambda: self.manager.set_ttl_here(cid, args[0], t),
            "delete_recovery_point": lambda: delete_recovery_point_here(self, cid, args[0], t),
        }
        if request["k"] != "op" or request.get("op") not in ops:
            raise HoardError(f"not a forwarded call: {request['k']!r} {request.get('op')!r}")
        return ops[request["op"]]

    def _served_tracker(self, context_id: str) -> ContextTracker:
        """A tracker that serves forwarded calls: it never waits for another owner nor forwards."""
        tracker = self._served.get(context_id)
        if tracker is None:
            tracker = self._served[context_id] = ContextTracker(self, None, context_id=context_id, mode=LOCAL)
            while len(self._served) > _SERVED_KEPT:
                self._served.popitem(last=False)
        return tracker

    def register_transaction(self, fn: Callable[..., Any], *, name: str | None = None) -> RegisteredTransaction:
        """Register `fn` as a transaction that `transact` can send to another process by `name`.

        Register the same functions under the same names in every process (at start-up, before the
        first call). ``tracker.transact(registered)`` runs ``fn(draft)``;
        ``tracker.transact(registered.bind(**kwargs))`` runs ``fn(draft, **kwargs)`` with JSON
        arguments (checked and frozen in the caller's thread). On a context active in another
        process (``forward_via``) the call sends the name and arguments, and the owner runs its own
        function of that name, with the same deadline, request id (a retry is never applied twice)
        and typed errors; nothing is unpickled and no received name is imported. `fn` itself also
        works once registered (found by identity), without arguments.

        Args:
            fn: the function, ``fn(draft, **kwargs)``, run in the context's actor as for `transact`.
            name: the name every process knows it by. Default: ``module.qualname`` (a lambda or a
                local function needs a name).

        What `fn` returns must be a JSON value for a forwarded call to carry it back (otherwise the
        caller gets a `HoardError` saying the answer cannot be sent, after the change was applied).

        Returns the `RegisteredTransaction` (callable like `fn`, with ``bind``). Runs in the caller's
        thread, no I/O. Registering the same function again returns the same record; another
        function under a taken name raises `ConfigError`.
        """
        return self.transactions.register(fn, name)

    def attach_adapter(self, config: ContextAdapterConfig) -> ContextAdapter:
        """Create this system's one adapter (see `ContextManager.attach_adapter`)."""
        return self.manager.attach_adapter(config)

    @property
    def adapter(self) -> ContextAdapter:
        """The system's adapter (`HoardError` if none was attached: see `create_adapter`)."""
        return self.manager.adapter

    # -- events --------------------------------------------------------------------------------------
    def subscribe(self, subscriber: Callable[[ContextEvent], Any] | pykka.ActorRef[Any], *,
                  context_id: str | None = None, kinds: Iterable[type[ContextEvent]] | None = None,
                  timeout: float | None = None, max_backlog: int | None = None,
                  overflow: str | None = None) -> Subscription:
        """Receive events, asynchronously, in order per context (see `hoard.actors._events`).

        Args:
            subscriber: a callable (run in its own actor thread, one event at a time; whatever it
                raises, a SystemExit too, is logged and the subscription kept) or a pykka `ActorRef` (events arrive as
                messages; dropped with a log line once it is dead).
            context_id: only events of this context (None: all).
            kinds: only events that are instances of these classes (e.g. ``[StateChanged]``).
            max_backlog: most events that may wait for this subscriber (default: the config's
                ``subscriber_backlog``, 10,000); memory per subscriber is bounded by it.
            overflow: what happens when it is that far behind (default: the config's
                ``subscriber_overflow``): ``"drop_subscriber"`` ends the subscription, discarding
                what is queued; ``"drop_events"`` skips events for it until it catches up. Either
                way a `SubscriberOverflow` event goes to the other subscribers and an error is
                logged. The backlog of each subscriber is in `metrics()` (``mailbox_depths``,
                ``subscriber:<id>``).

        Returns a `Subscription`; ``cancel()`` it (or use it as a context manager). Events emitted
        after this call returns are delivered; earlier ones are not. Blocks on one bus message.
        `stop()` never waits for a subscriber (one blocked in its own code keeps only its own
        daemon thread).
        """
        return subscribe(self, subscriber, context_id=context_id, kinds=kinds, timeout=timeout,
                         max_backlog=max_backlog, overflow=overflow)

    # -- the change feed -----------------------------------------------------------------------------
    def changes(self, after: int = 0, *, timeout: float | None = None) -> ChangeStream:
        """Every committed change of every context after feed offset `after`, in offset order, then
        each new one as it commits: ``for entry in system.changes(after=n, timeout=5): ...`` or
        ``async for`` (the waiting runs on a worker thread, never on the event loop).

        Entries are `FeedEntry` records (offset, context id, version, time, `by`, changed and removed
        keys, new values). Offsets only grow, in commit order across contexts, with no gap (also
        with several processes on one PostgreSQL store). The stream ends when nothing new arrived
        for `timeout` seconds (None: it waits until the system stops, or `close()`).

        Runs in the caller's thread (or a worker thread for ``async for``) on a read-only store of
        its own: no lock on any context, no actor mailbox, never blocks a writer. Sees changes once
        they are committed (``durability="deferred"``: within `flush_interval`; ``"none"``: never,
        changes reach the store only as snapshots). Raises `FeedTruncatedError` when retention
        removed entries after `after`, `InvalidValueError` for a bad `after` or `timeout`, and
        `SystemStoppedError` once the system stopped (a stream made before the stop ends then).
        """
        if self.stopped:
            raise SystemStoppedError()
        return ChangeStream(self, self._feed_readers, check_offset("after", after), check_timeout(timeout))

    def consumer(self, name: str, *, timeout: float | None = None) -> FeedConsumer:
        """The feed consumer `name`, registered in the store if new (at the feed's oldest kept entry).

        Its position (`FeedConsumer.position`) and `commit(offset)` live in the same store, so a
        consumer killed at any moment and started again goes on from its last committed offset:
        at least once, per context in version order, none skipped. Retention keeps every entry a
        registered consumer has not passed (within ``feed_retention``). Blocks on one store write
        (at most `timeout`). `InvalidValueError` for a name that is not a printable str of 1 to 128
        characters.
        """
        return FeedConsumer(self, self._feed_readers, name, timeout)

    def stop(self, timeout: float | None = None, *, discard_unsaved: bool = False) -> None:
        """See `SystemCore.stop`; also closes the change feed's readers (open streams end), unless
        the system keeps running (`StateNotSavedError` without `discard_unsaved`)."""
        try:
            super().stop(timeout, discard_unsaved=discard_unsaved)
        finally:
            if self.stopped:
                self._feed_readers.close()

    def ref(self, context_id: str, *, timeout: float | None = None) -> ContextRef:
        """Shorthand for ``system.adapter.actor_ref(context_id)``: a stable `ContextRef`."""
        return self.adapter.actor_ref(context_id, timeout=timeout)

    def __enter__(self) -> ContextSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ContextSystem {self.store.location!r}{' stopped' if self.stopped else ''}>"


def open_system(store: str | os.PathLike[str] | Store | None = None, *,
                manager_config: ContextManagerConfig | None = None,
                adapter_config: ContextAdapterConfig | None = None, forward_via: str | None = None) -> ContextSystem:
    """Open a store and start a `ContextSystem` with a manager and an adapter.

    Args:
        store: a path (SQLite file, created if missing), a `Store`, or None (the config's store, or
            memory). Overrides ``manager_config.store``.
        manager_config: storage, durability and limits (default `ContextManagerConfig()`).
        adapter_config: activation and capacity (default `ContextAdapterConfig()`).
        forward_via: a NATS URL: on a shared PostgreSQL store, calls on contexts active in another
            process are forwarded there (see ``ContextManagerConfig.forward_via``). Overrides the
            config's. Connecting blocks up to 5 s (`ConfigError` if NATS cannot be reached).

    Blocks until the store is open and (by default) the default context is active and current.
    Raises `StoreLockedError` at once if another system or process has the store open,
    `CorruptStateError` if the file is not a hoard store, `ConfigError` for a bad config.
    """
    cfg = manager_config if manager_config is not None else ContextManagerConfig()
    if not isinstance(cfg, ContextManagerConfig):
        raise ConfigError(f"manager_config must be a ContextManagerConfig, not {type(cfg).__name__}")
    if store is not None:
        cfg = ContextManagerConfig(**{**_fields(cfg), "store": store})
    if forward_via is not None:
        cfg = ContextManagerConfig(**{**_fields(cfg), "forward_via": forward_via})
    return ContextSystem(cfg, adapter_config if adapter_config is not None else ContextAdapterConfig())


def _fields(cfg: ContextManagerConfig) -> dict[str, Any]:
    return attrs.asdict(cfg, recurse=False)
