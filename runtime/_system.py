"""`ContextSystem`: starts and stops the actors behind a manager and its adapter.

`open_system()` opens the store in the calling thread (so `StoreLockedError` and `CorruptStateError`
reach the caller at once), then starts the persistence actor, which owns the store from then on, and
the supervisor. `stop()` passivates every context (commit + snapshot), closes the store and stops
every actor. Systems still open at interpreter exit are stopped by an ``atexit`` hook, so a
forgotten `stop()` loses nothing in ``immediate`` or ``deferred`` mode. The actors are `SystemCore`'s
(`_core`); `ContextSystem` builds on it and is the only module that knows the manager and adapter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pykka

from hoard.actors import ContextEvent, StoreCall
from hoard.storage import ConfigError, HistoryPolicy, MemoryStore, Store, make_store

from ._adapter import ContextAdapter
from ._config import ContextAdapterConfig, ContextManagerConfig
from ._core import SystemCore
from ._events import Subscription, subscribe
from ._feed import ChangeStream, FeedConsumer, check_offset, check_timeout
from ._manager import ContextManager
from ._ref import ContextRef

__all__ = ["ContextSystem", "open_system"]


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
    return store


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
        self._feed_readers = self.manager.readers
        if manager_config.history is not None:
            try:  # recorded in the store: compaction here, later openers and `hoard compact` follow it
                self.ask_persistence(StoreCall("set_history", (HistoryPolicy.parse(manager_config.history),)),
                                     None, "recording the history policy")
            except BaseException:
                self.stop()
                raise
        if adapter_config is not None:
            try:
                self.attach_adapter(adapter_config)
            except BaseException:
                self.stop()
                raise

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
            subscriber: a callable (run in its own actor thread, one event at a time; an exception
                is logged and the subscription kept) or a pykka `ActorRef` (events arrive as
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
        removed entries after `after`, `InvalidValueError` for a bad `after` or `timeout`.
        """
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
        """See `SystemCore.stop`; also closes the change feed's readers (open streams end)."""
        try:
            super().stop(timeout, discard_unsaved=discard_unsaved)
        finally:
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
                adapter_config: ContextAdapterConfig | None = None) -> ContextSystem:
    """Open a store and start a `ContextSystem` with a manager and an adapter.

    Args:
        store: a path (SQLite file, created if missing), a `Store`, or None (the config's store, or
            memory). Overrides ``manager_config.store``.
        manager_config: storage, durability and limits (default `ContextManagerConfig()`).
        adapter_config: activation and capacity (default `ContextAdapterConfig()`).

    Blocks until the store is open and (by default) the default context is active and current.
    Raises `StoreLockedError` at once if another system or process has the store open,
    `CorruptStateError` if the file is not a hoard store, `ConfigError` for a bad config.
    """
    cfg = manager_config if manager_config is not None else ContextManagerConfig()
    if not isinstance(cfg, ContextManagerConfig):
        raise ConfigError(f"manager_config must be a ContextManagerConfig, not {type(cfg).__name__}")
    if store is not None:
        cfg = ContextManagerConfig(**{**_fields(cfg), "store": store})
    return ContextSystem(cfg, adapter_config if adapter_config is not None else ContextAdapterConfig())


def _fields(cfg: ContextManagerConfig) -> dict[str, Any]:
    return attrs.asdict(cfg, recurse=False)
