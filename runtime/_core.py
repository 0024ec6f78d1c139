"""`SystemCore`: the running actors of one system and the one way to reach them.

It owns the store (handed to the persistence actor), the persistence actor, the supervisor, the event
bus, the remote-change listener and the maintenance ticker; it asks them (translating pykka's errors
into ours) and stops them. Trackers, the adapter, the manager and subscriptions hold a `SystemCore`
and nothing above it, so the runtime modules import one way: `_core` <- `_events` <- `_tracker` <-
`_adapter` <- `_manager` <- `_system` (`ContextSystem` is a `SystemCore` that also builds the manager
and its adapter). Systems still open at interpreter exit are stopped by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import pykka

from hoard.actors import (
    AttachSupervisor,
    ContextSettings,
    Emitter,
    EventBusActor,
    EventGate,
    MetricsBoard,
    PersistenceActor,
    PersistenceSettings,
    RemoteListener,
    Shutdown,
    SupervisorActor,
    SupervisorSettings,
    Sweep,
    mailbox_depth,
)
from hoard.storage import (
    FIRST_TIME,
    LAST_TIME,
    ConfigError,
    ContextTimeoutError,
    HoardError,
    PersistenceError,
    StateNotSavedError,
    Store,
    SystemStoppedError,
    check_timeout,
)

from ._config import ContextAdapterConfig, ContextManagerConfig
from ._forward import Forwarder
from ._metrics import Metrics

__all__ = ["SystemCore", "check_timeout"]

_ABORT_GRACE = 2.0  # seconds a persistence actor gets to leave the store once its connection is cut


def checked_clock(clock: Callable[[], float]) -> Callable[[], float]:
    """`clock`, with each time it returns checked: a `ConfigError` naming it for anything but a
    number of seconds since the epoch in years 1-9999. Called by the actors before a change is
    made, so a bad time refuses the change (nothing changes) instead of being stored as ``null``
    (JSON has no ``inf`` or ``nan``) under an acknowledged change that could never be read back."""
    def now() -> float:
        t = clock()
        if t.__class__ is float and FIRST_TIME < t < LAST_TIME:  # (nan fails both comparisons)
            return t
        if isinstance(t, int) and not isinstance(t, bool) and FIRST_TIME < t < LAST_TIME:
            return float(t)
        raise ConfigError(f"the clock of ContextManagerConfig returned {t!r}: it must return seconds since the "
                          "epoch, a finite number (years 1 to 9999)")
    return now


log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[SystemCore] = weakref.WeakSet()


class SystemCore:
    """The actors of one running system, how to ask them, and how to stop them.

    Thread-safe: every public call may come from any thread. After `stop()`, every ask raises
    `SystemStoppedError`.

    Attributes:
        config: the `ContextManagerConfig` it runs with.
        store: the store (owned by the persistence actor once started).
        call_timeout: the default bound of every ask, in seconds.
        maintenance_interval: the ticker's period once one is needed (set from the adapter's config).
    """

    def __init__(self, config: ContextManagerConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.call_timeout = config.call_timeout
        self.maintenance_interval: float | None = None
        #: the NATS connection calls on contexts owned elsewhere go through (None: no forwarding)
        self.forwarder: Forwarder | None = None
        self._stopped = False
        # broker bridges (hoard._bridges' Relay / CommandApplier) started on this system: stopped first
        # by stop(), their lag in metrics(); list.append/remove are atomic, no lock needed
        self._bridges: list[Any] = []
        # the maintenance ticker: one thread, started by the one ensure_maintenance() call that pops
        # the claim (list.pop is atomic: racing calls start one ticker, never one stop() misses), at
        # the shortest period asked for (each in `_periods`: a dict insertion is atomic too)
        self._ticker: threading.Thread | None = None
        self._ticker_claim: list[None] = [None]
        self._periods: dict[float, None] = {}
        self._ticker_stop = threading.Event()
        self._ticker_wake = threading.Event()  # set when a shorter period is asked for, or at stop
        # a stop whose timeout ran out goes on in this thread; a later stop() waits for it
        self._stopping: threading.Thread | None = None
        self._stop_error: BaseException | None = None
        # worker threads for what *_async calls and ContextRef.tell must not do in the caller's
        # thread (an event loop's): re-activation, store reads, waiting for another owner's lease
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="hoard-async")
        _warm(self._workers)
        self.store.open()
        cfg = config
        clock = checked_clock(cfg.clock)
        self.context_settings = ContextSettings(durability=cfg.durability, flush_interval=cfg.flush_interval,
                                                max_value_bytes=cfg.max_value_bytes,
                                                max_state_bytes=cfg.max_state_bytes, clock=clock,
                                                request_window=cfg.request_window, request_ttl=cfg.request_ttl)
        self._gate = EventGate()
        self._board = MetricsBoard()  # the actors publish their numbers here; metrics() reads it
        try:
            self._bus = EventBusActor.start(self._gate, cfg.subscriber_backlog, cfg.subscriber_overflow,
                                            board=self._board)
            self._events = Emitter(self._gate, self._bus, clock)
            self._persistence = PersistenceActor.start(self.store, PersistenceSettings(
                durability=cfg.durability, snapshot_every=cfg.snapshot_every, flush_interval=cfg.flush_interval,
                max_recovery_points=cfg.max_recovery_points, clock=clock), self._events, board=self._board)
        except BaseException:
            self.store.close()
            if getattr(self, "_bus", None) is not None:
                self._bus.stop()
            raise
        self._supervisor = SupervisorActor.start(
            self._persistence, self.supervisor_settings(ContextAdapterConfig(auto_activate_default=False)),
            self.context_settings, cfg.max_state_bytes, self._events, board=self._board)
        self._persistence.tell(AttachSupervisor(self._supervisor))  # where lost leases are reported
        self._remote = RemoteListener.start_for(self.store, self._events)  # None unless shared
        _LIVE.add(self)

    def supervisor_settings(self, a: ContextAdapterConfig) -> SupervisorSettings:
        """The supervisor's settings for adapter config `a` under this system's config."""
        return SupervisorSettings(
            default_context_id=a.default_context_id, max_active_contexts=a.max_active_contexts,
            auto_create_contexts=a.auto_create_contexts, auto_activate_default=a.auto_activate_default,
            capacity_policy=a.capacity_policy, idle_timeout=a.idle_timeout, call_timeout=self.call_timeout,
            max_contexts=self.config.max_contexts, max_restarts=a.max_restarts, restart_window=a.restart_window,
            ttl=a.ttl,
            monotonic=self.config.monotonic)

    def ensure_maintenance(self, interval: float | None = None) -> None:
        """Make sure the maintenance ticker runs (idle timeouts and TTLs need it), at least every
        `interval` seconds (default: `maintenance_interval`, else 30 s): a running ticker with a
        longer period takes the shorter one at once. Called by the manager and adapter, from any
        thread (racing calls start one ticker); returns at once."""
        wanted = interval or self.maintenance_interval or 30.0
        if self._stopped:
            return
        if wanted < min(self._periods, default=math.inf):
            self._periods[wanted] = None
            self._ticker_wake.set()  # a ticker waiting out a longer period starts over with this one
        try:
            self._ticker_claim.pop()
        except IndexError:
            return  # running (or being started by a racing call)
        self._start_ticker()
        if self._stopped:  # stop() came meanwhile, before there was a ticker to halt
            self._halt_ticker()

    def _halt_ticker(self) -> None:
        """Stop the ticker and wait for it (at most 5 s)."""
        self._ticker_stop.set()
        self._ticker_wake.set()
        if self._ticker is not None:
            self._ticker.join(5)

    # -- metrics -------------------------------------------------------------------------------------
    def metrics(self, *, timeout: float | None = None) -> Metrics:
        """A frozen `Metrics` record of everything since the system opened: calls by kind, conflicts,
        activations, evictions, passivations, restarts, active contexts, mailbox depths, commits,
        batch sizes, commit and call latency histograms, bytes written, compression ratio.

        Runs in the caller's thread and sends no message: every actor publishes its counters where
        this reads them (`hoard.actors.MetricsBoard`), so it never waits for a busy actor and a
        reading is not itself counted as a call (a Prometheus scrape changes no counter). It costs
        a few copies per active context (about 2 µs each). Each counter is read atomically and
        never goes backwards between readings; counters of different actors are not one instant's
        (a change being committed may show in the calls before it shows in the commits).
        `timeout` is accepted for compatibility and checked, but nothing waits. After `stop()`:
        `SystemStoppedError`. `to_prometheus()` renders it.
        """
        if timeout is not None:
            check_timeout(timeout)
        if self._stopped:
            raise SystemStoppedError()
        parts, depths = self._board.read()
        depths = {"supervisor": mailbox_depth(self._supervisor), "persistence": mailbox_depth(self._persistence),
                  "events": mailbox_depth(self._bus), **depths}
        lags = [bridge.lag() for bridge in list(self._bridges) if hasattr(bridge, "lag")]
        return attrs.evolve(Metrics.from_parts(*parts, mailbox_depths=depths),
                            relay_lag_entries={lag.name: lag.entries for lag in lags},
                            relay_lag_seconds={lag.name: lag.seconds for lag in lags})

    # -- broker bridges ------------------------------------------------------------------------------
    def attach_bridge(self, bridge: Any) -> None:
        """Called by a starting `Relay` / `CommandApplier`: `stop()` stops it first, `metrics()` shows
        its lag. `SystemStoppedError` after stop."""
        if self._stopped:
            raise SystemStoppedError()
        self._bridges.append(bridge)

    def detach_bridge(self, bridge: Any) -> None:
        """Called by a stopping bridge (idempotent)."""
        with contextlib.suppress(ValueError):
            self._bridges.remove(bridge)

    # -- maintenance ---------------------------------------------------------------------------------
    def maintain(self, *, timeout: float | None = None) -> list[str]:
        """Run one maintenance sweep now (idle passivation, TTL expiry); returns the ids passivated or
        deleted.

        The background ticker calls this periodically when ``idle_timeout`` is set; tests with an
        injected clock call it directly. Blocks until the sweep is done.
        """
        result: list[str] = self.ask(Sweep(), timeout, "maintenance sweep")
        return result

    def _start_ticker(self) -> None:
        stop, wake, periods = self._ticker_stop, self._ticker_wake, self._periods

        def tick() -> None:
            while not stop.is_set():
                if wake.wait(min(periods)):  # a shorter period, or stop: look again
                    wake.clear()
                    continue
                try:
                    self._supervisor.tell(Sweep())
                except pykka.ActorDeadError:
                    return

        self._ticker = threading.Thread(target=tick, name="hoard-maintenance", daemon=True)
        self._ticker.start()

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
        t = self.call_timeout if timeout is None else check_timeout(timeout)
        try:
            return ref.ask(message, timeout=t)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(what, t) from exc
        except pykka.ActorDeadError as exc:
            raise SystemStoppedError() from exc

    def offload(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` on one of the system's worker threads (never the caller's); returns at once.
        `SystemStoppedError` after stop. `fn` must handle its own errors (a bug is logged)."""
        if self._stopped:
            raise SystemStoppedError()
        try:
            self._workers.submit(_logged, fn)
        except RuntimeError as exc:  # shut down meanwhile
            raise SystemStoppedError() from exc

    def report_dead_letter(self, message: Any) -> None:
        """Tell the supervisor about a dead letter (it counts and emits it). Never raises."""
        with contextlib.suppress(pykka.ActorDeadError):
            self._supervisor.tell(message)

    @property
    def persistence_ref(self) -> pykka.ActorRef[Any]:
        return self._persistence

    # -- lifecycle -----------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None, *, discard_unsaved: bool = False) -> None:
        """Passivate every context (commit + snapshot), close the store, stop every actor.

        Idempotent. Blocks until done; `timeout` bounds each step (default: call_timeout x 4 for the
        shutdown of all contexts). Afterwards no actor thread of this system is left.

        One exception: with ``durability="none"`` the final snapshot is the only copy of a context's
        changes; if it cannot be written (disk full), this raises `StateNotSavedError`, the system
        keeps running with those contexts active, and a later `stop()` saves them.
        ``stop(discard_unsaved=True)`` stops all the same (those changes are then gone) and raises
        the `StateNotSavedError` afterwards.

        When `timeout` runs out while the contexts are still being saved, this raises
        `ContextTimeoutError` and the stop goes on in a background thread until every context is
        saved (the system takes no more calls meanwhile). `stop()` again waits for it (at most its
        own `timeout`) and raises what it ended with. A bad `timeout` is a `ConfigError`, and the
        system then goes on running.
        """
        t = self.call_timeout * 4 if timeout is None else check_timeout(timeout)  # before anything changes
        if self._stopped:
            self._wait_stopping(t)
            return
        self._stopping = self._stop_error = None  # (a background stop taken back: this one saves again)
        ticking = self._halt_inbound()
        deadline = time.monotonic() + t
        error: BaseException | None = None
        try:
            shutdown = self._supervisor.ask(Shutdown(discard_unsaved), block=False)
            shutdown.get(timeout=t)
        except StateNotSavedError:
            if discard_unsaved:  # everything was stopped all the same; say what was not saved
                self._stop_actors(deadline)
                raise
            self._resume(ticking)
            raise
        except pykka.Timeout as exc:
            # the supervisor is still passivating (with durability="none" the final snapshots are the
            # only copy): stopping the store under it would lose what it has not saved yet
            self._stopping = threading.Thread(target=self._finish_stop, args=(shutdown, ticking),
                                              name="hoard-stopping", daemon=True)
            self._stopping.start()
            _LIVE.add(self)  # at exit, stop() waits for it
            error = ContextTimeoutError("stopping the system (it continues in the background; stop() again "
                                        "waits for it)", t)
            log.error("hoard stop: %s", error)
            raise error from exc
        except pykka.ActorDeadError:
            pass
        except HoardError as exc:
            error = exc
        except BaseException:
            self._stop_actors(deadline)
            raise
        if not self._stop_actors(deadline) and error is None:
            error = ContextTimeoutError("stopping the system (the store did not answer)", t)
        if error is not None:
            log.error("hoard stopped with an error: %s", error)
            raise error

    def _resume(self, ticking: bool) -> None:
        """Take a stop back: durability="none" contexts whose only copy could not be written were
        not stopped, so that a retried stop() can save them once the cause is fixed."""
        self._stopped = False
        _LIVE.add(self)
        self._remote = RemoteListener.start_for(self.store, self._events)
        if ticking:
            self._ticker_stop, self._ticker_wake = threading.Event(), threading.Event()
            self._ticker, self._ticker_claim = None, [None]
            self.ensure_maintenance(min(self._periods))

    def _finish_stop(self, shutdown: pykka.Future[Any], ticking: bool) -> None:
        """The rest of a stop whose timeout ran out, on the "hoard-stopping" thread: wait for the
        supervisor's shutdown however long it takes, then stop the actors. Its error (or the taking
        back of the stop, `StateNotSavedError`) is what the next `stop()` raises."""
        try:
            shutdown.get()
        except StateNotSavedError as exc:
            self._stop_error = exc
            self._resume(ticking)
            return
        except pykka.ActorDeadError:
            pass
        except BaseException as exc:  # noqa: BLE001 - kept for the next stop() to raise
            self._stop_error = exc
        if not self._stop_actors(time.monotonic() + self.call_timeout * 4) and self._stop_error is None:
            self._stop_error = ContextTimeoutError("stopping the system (the store did not answer)",
                                                   self.call_timeout * 4)
        _LIVE.discard(self)

    def _wait_stopping(self, timeout: float) -> None:
        """`stop()` again while a stop goes on in the background: wait for it (at most `timeout`)
        and raise what it ended with."""
        stopping = self._stopping
        if stopping is None:
            return
        stopping.join(timeout)
        if stopping.is_alive():
            raise ContextTimeoutError("stopping the system (it continues in the background)", timeout)
        self._stopping = None
        error, self._stop_error = self._stop_error, None
        if error is not None:
            raise error

    def _halt_inbound(self) -> bool:
        """The first step of `stop`: end what brings work in (bridges, the maintenance ticker, calls
        forwarded from other processes, remote change notices) and mark the system stopped. Returns
        whether the ticker ran, for a stop that is taken back."""
        for bridge in list(self._bridges):  # first: a relay commits its last confirmed offset while the store is open
            bridge.stop()
        self._stopped = True
        _LIVE.discard(self)
        ticking = self._ticker is not None
        self._halt_ticker()
        if self.forwarder is not None:
            self.forwarder.close()  # no more calls from other processes; they re-route to the next owner
        if self._remote is not None:
            self._remote.stop()
        return ticking

    def _stop_actors(self, deadline: float) -> bool:
        """Stop the actors by `deadline` (a monotonic time). A persistence actor still inside the
        store then (a stalled connection) is not waited for: the store's connection is cut
        (`abort`, when the store has it), which ends the blocked call at once, and the store is
        closed only once that actor let go of it, never from this thread while it is in use.
        Returns whether everything stopped in time."""
        for ref in (self._supervisor, self._persistence, self._bus):  # the bus last: it delivers the rest
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                ref.stop(block=True, timeout=max(0.01, deadline - time.monotonic()))
        self._workers.shutdown(wait=True)  # their calls fail fast now (SystemStoppedError)
        clean = True
        if self._persistence.is_alive():
            clean = False
            abort = getattr(self.store, "abort", None)
            log.error("the persistence actor is still inside the store after the stop timeout; %s",
                      "cutting the store's connection" if abort is not None else "leaving it behind")
            if abort is not None:
                abort()
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                self._persistence.stop(block=True, timeout=_ABORT_GRACE)
        if self._persistence.is_alive():
            log.error("the persistence actor did not stop; the store is left to it (a daemon thread)")
            return False
        with contextlib.suppress(PersistenceError):
            self.store.close()  # normally closed by the persistence actor already
        return clean


_WORKERS = 4


def _warm(pool: concurrent.futures.ThreadPoolExecutor) -> None:
    """Start every worker thread now: the pool starts one lazily inside `submit`, and a thread start
    waits for the new thread (milliseconds under load), which an event loop calling an ``*_async``
    method must never pay (tests/runtime/test_async_loop.py)."""
    gate = threading.Barrier(_WORKERS + 1)
    for _ in range(_WORKERS):
        pool.submit(gate.wait, 10)
    gate.wait(10)


def _logged(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # a worker's job handles its errors; a bug is logged, not lost
        log.exception("hoard worker job %r failed", fn)


@atexit.register
def _stop_live_systems() -> None:
    for system in list(_LIVE):
        try:
            system.stop()
        except Exception:
            log.exception("stopping %r at exit failed", system)
