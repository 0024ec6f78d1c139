"""`ContextSystem`: starts and stops the actors behind a manager and its adapter.

`open_system()` opens the store in the calling thread (so `StoreLockedError` and `CorruptStateError`
reach the caller at once), then starts the persistence actor, which owns the store from then on, and
the supervisor. `stop()` passivates every context (commit + snapshot), closes the store and stops
every actor. Systems still open at interpreter exit are stopped by an ``atexit`` hook, so a
forgotten `stop()` loses nothing in ``immediate`` or ``deferred`` mode.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pykka

from hoard.actors import (
    ContextEvent,
    ContextSettings,
    PersistenceActor,
    PersistenceSettings,
    SupervisorActor,
    SupervisorSettings,
)
from hoard.actors._events import Emitter, EventBusActor, EventGate
from hoard.actors._leases import AttachSupervisor
from hoard.actors._supervisor import mailbox_depth
from hoard.actors._messages import CollectMetrics, Configure, GetMetrics, Shutdown, Sweep
from hoard.actors._remote import RemoteListener
from hoard.storage import (
    ConfigError,
    ContextTimeoutError,
    HoardError,
    MemoryStore,
    PersistenceError,
    PostgresStore,
    SQLiteStore,
    Store,
    SystemStoppedError,
)

from ._config import ContextAdapterConfig, ContextManagerConfig
from ._events import Subscription, subscribe
from ._metrics import Metrics

if TYPE_CHECKING:
    from ._adapter import ContextAdapter
    from ._manager import ContextManager
    from ._ref import ContextRef

__all__ = ["ContextSystem", "open_system"]

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[ContextSystem] = weakref.WeakSet()


_PG_SCHEMES = ("postgresql://", "postgres://")
_PG_OPTIONS = ("schema", "lease_ttl")  # hoard's own query options; every other one is libpq's


def _postgres_store(url: str, config: ContextManagerConfig) -> Store:
    """A `PostgresStore` for a ``postgresql://`` URL. Two query options are hoard's and are taken out
    before the URL reaches libpq: ``schema`` (the PostgreSQL schema holding the tables, default
    ``hoard``) and ``lease_ttl`` (seconds, default 10). ``require_lease=True``: every write of this
    system is made under the context's ownership lease, so a write that lost its lease can never land.
    Anything else (``owner_id``, timeouts, ``notify``) needs ``store=PostgresStore(...)``."""
    base, _, query = url.partition("?")
    options: dict[str, str] = {}
    rest = []
    for piece in query.split("&") if query else []:
        key, _, value = piece.partition("=")
        if unquote(key) in _PG_OPTIONS:
            options[unquote(key)] = unquote(value)
        else:
            rest.append(piece)
    kwargs: dict[str, Any] = {}
    if "schema" in options:
        kwargs["schema"] = options["schema"]
    if "lease_ttl" in options:
        try:
            kwargs["lease_ttl"] = float(options["lease_ttl"])
        except ValueError:
            raise ConfigError(f"lease_ttl in the store URL must be a number of seconds, not "
                              f"{options['lease_ttl']!r}") from None
    return PostgresStore(base + ("?" + "&".join(rest) if rest else ""), compression_level=config.compression_level,
                         max_state_bytes=config.max_state_bytes, require_lease=True, recovery=config.recovery,
                         **kwargs)


def _resolve_store(config: ContextManagerConfig) -> Store:
    store = config.store
    if store is None:
        return MemoryStore()
    if isinstance(store, str) and store.startswith(_PG_SCHEMES):
        return _postgres_store(store, config)
    if isinstance(store, (str, os.PathLike)):
        if os.fspath(store) in ("", ":memory:"):
            return MemoryStore()
        return SQLiteStore(store, sync=config.sync, compression_level=config.compression_level,
                           max_state_bytes=config.max_state_bytes, recovery=config.recovery)
    return store


class ContextSystem:
    """A running hoard: its store, persistence actor, supervisor, manager and adapter.

    Use it as a context manager, or call `stop()`. Thread-safe: every public call may come from any
    thread. After `stop()`, calls on the system, its manager, adapter and trackers raise
    `SystemStoppedError`.
    """

    def __init__(self, manager_config: ContextManagerConfig, adapter_config: ContextAdapterConfig | None = None) -> None:
        if not isinstance(manager_config, ContextManagerConfig):
            raise ConfigError(f"manager_config must be a ContextManagerConfig, not {type(manager_config).__name__}")
        if adapter_config is not None and not isinstance(adapter_config, ContextAdapterConfig):
            raise ConfigError(f"adapter_config must be a ContextAdapterConfig, not {type(adapter_config).__name__}")
        from ._manager import ContextManager

        self.config = manager_config
        self.store: Store = _resolve_store(manager_config)
        self.call_timeout = manager_config.call_timeout
        self._stopped = False
        self._adapter: ContextAdapter | None = None
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        # worker threads for what *_async calls and ContextRef.tell must not do in the caller's
        # thread (an event loop's): re-activation, store reads, waiting for another owner's lease
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="hoard-async")
        self.store.open()
        cfg = manager_config
        self.context_settings = ContextSettings(durability=cfg.durability, max_value_bytes=cfg.max_value_bytes,
                                                max_state_bytes=cfg.max_state_bytes, clock=cfg.clock,
                                                request_window=cfg.request_window, request_ttl=cfg.request_ttl)
        self._gate = EventGate()
        try:
            self._bus = EventBusActor.start(self._gate)
            self._events = Emitter(self._gate, self._bus, cfg.clock)
            self._persistence = PersistenceActor.start(self.store, PersistenceSettings(
                durability=cfg.durability, snapshot_every=cfg.snapshot_every, flush_interval=cfg.flush_interval,
                max_recovery_points=cfg.max_recovery_points, clock=cfg.clock), self._events)
        except BaseException:
            self.store.close()
            if getattr(self, "_bus", None) is not None:
                self._bus.stop()
            raise
        self._supervisor = SupervisorActor.start(
            self._persistence, self._supervisor_settings(ContextAdapterConfig(auto_activate_default=False)),
            self.context_settings, cfg.max_state_bytes, self._events)
        self._persistence.tell(AttachSupervisor(self._supervisor))  # where lost leases are reported
        self._remote = RemoteListener.start_for(self.store, self._events)  # None unless shared
        _LIVE.add(self)
        self.manager: ContextManager = ContextManager(self)
        if adapter_config is not None:
            try:
                self.attach_adapter(adapter_config)
            except BaseException:
                self.stop()
                raise

    def _supervisor_settings(self, a: ContextAdapterConfig) -> SupervisorSettings:
        return SupervisorSettings(
            default_context_id=a.default_context_id, max_active_contexts=a.max_active_contexts,
            auto_create_contexts=a.auto_create_contexts, auto_activate_default=a.auto_activate_default,
            capacity_policy=a.capacity_policy, idle_timeout=a.idle_timeout, call_timeout=self.call_timeout,
            max_contexts=self.config.max_contexts, max_restarts=a.max_restarts, restart_window=a.restart_window,
            ttl=a.ttl,
            monotonic=self.config.monotonic)

    def attach_adapter(self, config: ContextAdapterConfig) -> ContextAdapter:
        """Create this system's one adapter (a second raises `HoardError`). Blocks until the default
        context is active, when `auto_activate_default` asks for it."""
        from ._adapter import ContextAdapter

        if not isinstance(config, ContextAdapterConfig):
            raise ConfigError(f"adapter config must be a ContextAdapterConfig, not {type(config).__name__}")
        if self._adapter is not None:
            raise HoardError("this manager already has an adapter; a manager has exactly one")
        self.ask(Configure(self._supervisor_settings(config)), None, "configuring the adapter")
        self._adapter = ContextAdapter(self, config)
        timeouts = [t for t in (config.idle_timeout, config.ttl) if t is not None]
        if config.maintenance_interval is not None or timeouts:
            self._start_ticker(config.maintenance_interval or min(30.0, max(0.05, min(timeouts) / 4)))
        return self._adapter

    def ensure_maintenance(self) -> None:
        """Start the maintenance ticker if it is not running (per-context TTLs need it)."""
        if self._ticker is None and not self._stopped:
            interval = self._adapter.config.maintenance_interval if self._adapter is not None else None
            self._start_ticker(interval or 30.0)

    # -- metrics -------------------------------------------------------------------------------------
    def metrics(self, *, timeout: float | None = None) -> Metrics:
        """A frozen `Metrics` record of everything since the system opened: calls by kind, conflicts,
        activations, evictions, passivations, restarts, active contexts, mailbox depths, commits,
        batch sizes, commit and call latency histograms, bytes written, compression ratio.

        Asks the supervisor (which asks each context actor in turn) and the persistence actor; each
        step is bounded by `timeout` (default call_timeout). `to_prometheus()` renders it.
        """
        parts, depths = self.ask(CollectMetrics(), timeout, "collecting metrics")
        persistence = self.ask_persistence(GetMetrics(), timeout, "collecting metrics")
        depths = {**depths, "events": mailbox_depth(self._bus)}
        return Metrics.from_parts(*parts, persistence, mailbox_depths=depths)

    # -- maintenance ---------------------------------------------------------------------------------
    def maintain(self, *, timeout: float | None = None) -> list[str]:
        """Run one maintenance sweep now (idle passivation, TTL expiry); returns the ids passivated or
        deleted.

        The background ticker calls this periodically when ``idle_timeout`` is set; tests with an
        injected clock call it directly. Blocks until the sweep is done.
        """
        result: list[str] = self.ask(Sweep(), timeout, "maintenance sweep")
        return result

    def _start_ticker(self, interval: float) -> None:
        stop = self._ticker_stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval):
                try:
                    self._supervisor.tell(Sweep())
                except pykka.ActorDeadError:
                    return

        self._ticker = threading.Thread(target=tick, name="hoard-maintenance", daemon=True)
        self._ticker.start()

    @property
    def adapter(self) -> ContextAdapter:
        """The system's adapter (`HoardError` if none was attached: see `create_adapter`)."""
        if self._adapter is None:
            raise HoardError("this system has no adapter; call create_adapter(manager) first")
        return self._adapter

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- plumbing ------------------------------------------------------------------------------------
    def ask(self, message: Any, timeout: float | None, what: str) -> Any:
        """Ask the supervisor; translate pykka's errors into ours. Blocks at most `timeout`."""
        return self._ask(self._supervisor, message, timeout, what)

    def ask_persistence(self, message: Any, timeout: float | None, what: str) -> Any:
        """Ask the persistence actor (store reads and writes that need no context actor)."""
        return self._ask(self._persistence, message, timeout, what)

    def ask_bus(self, message: Any, timeout: float | None, what: str) -> Any:
        """Ask the event bus (subscribe, unsubscribe)."""
        return self._ask(self._bus, message, timeout, what)

    def _ask(self, ref: pykka.ActorRef[Any], message: Any, timeout: float | None, what: str) -> Any:
        if self._stopped:
            raise SystemStoppedError()
        t = self.call_timeout if timeout is None else timeout
        try:
            return ref.ask(message, timeout=t)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(what, t) from exc
        except pykka.ActorDeadError as exc:
            raise SystemStoppedError() from exc

    def offload(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on one of the system's worker threads (never the caller's); returns at once.
        `SystemStoppedError` after stop. `fn` must handle its own errors (they are logged)."""
        if self._stopped:
            raise SystemStoppedError()
        try:
            self._workers.submit(_logged, fn)
        except RuntimeError as exc:  # shut down meanwhile
            raise SystemStoppedError() from exc

    def report_dead_letter(self, message: Any) -> None:
        """Tell the supervisor about a dead letter (it counts and emits it). Never raises."""
        try:
            self._supervisor.tell(message)
        except pykka.ActorDeadError:
            pass

    def ref(self, context_id: str, *, timeout: float | None = None) -> ContextRef:
        """Shorthand for ``system.adapter.actor_ref(context_id)``: a stable `ContextRef`."""
        return self.adapter.actor_ref(context_id, timeout=timeout)

    @property
    def persistence_ref(self) -> pykka.ActorRef[Any]:
        return self._persistence

    # -- events --------------------------------------------------------------------------------------
    def subscribe(self, subscriber: Callable[[ContextEvent], Any] | pykka.ActorRef[Any], *,
                  context_id: str | None = None, kinds: Iterable[type[ContextEvent]] | None = None,
                  timeout: float | None = None) -> Subscription:
        """Receive events, asynchronously, in order per context (see `hoard.actors._events`).

        Args:
            subscriber: a callable (run in its own actor thread, one event at a time; an exception
                is logged and the subscription kept) or a pykka `ActorRef` (events arrive as
                messages; dropped with a log line once it is dead).
            context_id: only events of this context (None: all).
            kinds: only events that are instances of these classes (e.g. ``[StateChanged]``).

        Returns a `Subscription`; ``cancel()`` it (or use it as a context manager). Events emitted
        after this call returns are delivered; earlier ones are not. Blocks on one bus message.
        """
        return subscribe(self, subscriber, context_id=context_id, kinds=kinds, timeout=timeout)


    # -- lifecycle -----------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Passivate every context (commit + snapshot), close the store, stop every actor.

        Idempotent. Blocks until done; `timeout` bounds each step (default: call_timeout x 4 for the
        shutdown of all contexts). Afterwards no actor thread of this system is left.
        """
        if self._stopped:
            return
        self._stopped = True
        _LIVE.discard(self)
        if self._ticker is not None:
            self._ticker_stop.set()
            self._ticker.join(5)
        if self._remote is not None:
            self._remote.stop()
        t = self.call_timeout * 4 if timeout is None else timeout
        error: BaseException | None = None
        try:
            self._supervisor.ask(Shutdown(), timeout=t)
        except pykka.Timeout as exc:
            error = ContextTimeoutError("stopping the system", t)
            error.__cause__ = exc
        except pykka.ActorDeadError:
            pass
        except HoardError as exc:
            error = exc
        finally:
            for ref in (self._supervisor, self._persistence, self._bus):  # the bus last: it delivers the rest
                try:
                    ref.stop(block=True, timeout=t)
                except (pykka.Timeout, pykka.ActorDeadError):
                    pass
            try:
                self.store.close()  # normally closed by the persistence actor already
            except PersistenceError:
                pass
            self._workers.shutdown(wait=True)  # their calls fail fast now (SystemStoppedError)
        if error is not None:
            log.error("hoard stopped with an error: %s", error)
            raise error

    def __enter__(self) -> ContextSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ContextSystem {self.store.location!r}{' stopped' if self._stopped else ''}>"


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
    import attrs
    return attrs.asdict(cfg, recurse=False)


def _logged(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a worker's job must handle its errors; a bug is logged, not lost
        log.exception("hoard worker job %r failed", fn)


@atexit.register
def _stop_live_systems() -> None:
    for system in list(_LIVE):
        try:
            system.stop()
        except Exception:  # noqa: BLE001 - at exit, log and go on with the others
            log.exception("stopping %r at exit failed", system)
