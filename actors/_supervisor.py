"""`SupervisorActor`: decides which contexts are active and which one is current.

Only this actor starts and stops context actors, so activation, eviction, switching and deletion are
each one message handled alone: concurrent ``activate("x")`` calls yield one actor, and current
never names an inactive context.

* Activation loads the context through the persistence actor (creating it when asked), starts its
  `ContextActor` and returns its `ContextCell`. At ``max_active_contexts`` it passivates the least
  recently used context first (``capacity_policy="evict_lru"``), never the current, the default, a
  pinned one or the one being activated; with ``"reject"`` it raises `CapacityError`.
* Passivation (deactivate, eviction, shutdown) closes the cell, has the actor commit and snapshot,
  then stops it. A tracker holding a closed cell re-activates the context on its next call.
* While this actor waits for the persistence actor it handles nothing else; every wait is bounded
  by ``call_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pykka

from hoard.storage import (
    CapacityError,
    ContextExistsError,
    ContextFailedError,
    ContextNotFoundError,
    ContextOwnedElsewhereError,
    ContextState,
    ContextTimeoutError,
    CreateContext,
    DeleteContext,
    HoardError,
    InvalidValueError,
    PersistenceError,
    StateNotSavedError,
    SystemStoppedError,
    freeze_mapping,
    new_state,
    read_marker,
)

from ._cell import EPOCH, ContextCell, advance_epoch
from ._context import ContextActor, ContextInbox, check_reserved
from ._events import (
    NO_EVENTS,
    ContextActivated,
    ContextDeactivated,
    ContextDeleted,
    ContextFailed,
    ContextRestarted,
    DeadLetter,
    Emitter,
    Switched,
)
from ._leases import LeasesLost
from ._messages import (
    Abandon,
    Activate,
    ActivateDefault,
    AddContext,
    BindSchema,
    Close,
    CollectMetrics,
    Configure,
    ContextCrashed,
    ContextStatus,
    CurrentId,
    Deactivate,
    DeactivationReason,
    DeadLetterSeen,
    Exists,
    ListActive,
    ListIds,
    Load,
    Passivate,
    RemoveContext,
    Reset,
    Resume,
    SaveSnapshot,
    SetPinned,
    Shutdown,
    StateOf,
    StatusOf,
    StoreCall,
    StoreWrite,
    Sweep,
)
from ._metrics import Census, Counters, Histogram, MetricsBoard
from ._settings import ContextSettings, SupervisorSettings

__all__ = ["SupervisorActor"]

log = logging.getLogger(__name__)


class SupervisorActor(pykka.ThreadingActor):
    """Decides activation, passivation, capacity and the current context. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, persistence: pykka.ActorRef[Any], settings: SupervisorSettings,
                 context_settings: ContextSettings, max_state_bytes: int = 64 * 2**20,
                 events: Emitter = NO_EVENTS, *, board: MetricsBoard | None = None) -> None:
        super().__init__()
        self.events = events
        self.persistence = persistence
        self.board = board if board is not None else MetricsBoard()  # where metrics() reads us
        self._census_key: tuple[int, ...] = ()
        self.settings = settings
        self.context_settings = context_settings
        self.max_state_bytes = max_state_bytes
        self.cells: dict[str, ContextCell] = {}
        self.current: str | None = None
        self.pinned: set[str] = set()
        self.stopped = False
        self.failed: dict[str, str] = {}  # context id -> why it is FAILED
        self.restarts: dict[str, list[float]] = {}  # context id -> monotonic times of recent restarts
        self.seen: dict[str, tuple[int, float]] = {}  # context id -> (LRU tick, when a sweep first saw it)
        self.schemas: dict[str, Any] = {}  # schema name -> hoard.storage.Schema, for later activations
        self.stats = {"activations": 0, "evictions": 0, "deactivations": 0, "restarts": 0, "passivations": 0,
                      "expired": 0, "dead_letters": 0}
        self._store_cls: type | None = None
        # what passivated context actors counted, so that metrics survive their actors
        self.retired_calls = Counters()
        self.retired_latency = Histogram()
        self.retired_conflicts = 0
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Activate: self._on_activate,
            Deactivate: lambda m: self._deactivate(m.context_id, DeactivationReason.EXPLICIT),
            StatusOf: self._on_status,
            CurrentId: lambda _m: self.current,
            ListActive: lambda _m: list(self.cells),
            StateOf: self._on_state_of,
            AddContext: self._on_create,
            RemoveContext: self._on_delete,
            Exists: lambda m: m.context_id in self.cells or self._store("info", m.context_id) is not None,
            ListIds: lambda m: self._store("list_ids", m.prefix),
            SetPinned: self._on_set_pinned,
            Configure: self._on_configure,
            Shutdown: self._on_shutdown,
            ContextCrashed: self._on_crashed,
            Reset: self._on_reset,
            Sweep: self._on_sweep,
            CollectMetrics: self._on_collect_metrics,
            LeasesLost: self._on_leases_lost,
            DeadLetterSeen: self._on_dead_letter,
            ActivateDefault: self._on_activate_default,
        }
        self._default_timer: threading.Timer | None = None

    def on_receive(self, message: Any) -> Any:
        if self.stopped:
            if isinstance(message, (ContextCrashed, LeasesLost, DeadLetterSeen, ActivateDefault)):
                return None  # reports that arrive after shutdown have nothing left to act on
            raise SystemStoppedError()
        try:
            return self._handlers[type(message)](message)
        finally:
            self._publish_census()

    # -- talking to the persistence actor ------------------------------------------------------------
    def _ask_persistence(self, message: Any, what: str, context_id: str | None = None,
                         timeout: float | None = None) -> Any:
        timeout = self.settings.call_timeout if timeout is None else timeout
        try:
            return self.persistence.ask(message, timeout=timeout)
        except pykka.Timeout as exc:
            if isinstance(message, Load):
                # the load still runs, later: have the persistence actor let go of it then (lease
                # released), so that no lease is ever held for a context that is not active here
                self.persistence.tell(Abandon(message.context_id))
            raise ContextTimeoutError(what, timeout, context_id) from exc
        except pykka.ActorDeadError as exc:
            raise PersistenceError(f"{what}: the persistence actor is gone", context_id=context_id) from exc

    def _store(self, method: str, *args: Any) -> Any:
        return self._ask_persistence(StoreCall(method, args), f"store {method}")

    # -- activation ----------------------------------------------------------------------------------
    def _on_activate(self, m: Activate) -> ContextCell:
        cid = m.context_id
        cell = self.cells.get(cid)
        if cell is not None and m.must_create:
            raise ContextExistsError(cid)
        if cell is not None and not cell.actor_ref.is_alive():
            # it crashed and its ContextCrashed message is still behind this one in the mailbox
            self._on_crashed(ContextCrashed(cell, "found dead"))
            cell = self.cells.get(cid)
        advance_epoch()  # every use before this activation is now older than what follows it
        started = False
        if cell is None:
            if cid in self.failed:
                raise ContextFailedError(cid, self.failed[cid])
            cell = self._start(cid, m)
            started = True
        if m.schema is not None:
            self.schemas[m.schema.name] = m.schema
        self._bind_schema(cell, m.schema, started)
        if m.make_current:
            self._set_current(cid)
        cell.touched = EPOCH[0]
        return cell

    def _bind_schema(self, cell: ContextCell, schema: Any, started: bool) -> None:
        """Bind the context to `schema`, or to the registered schema its stored marker names."""
        if schema is None and cell.schema is None:
            try:
                marker = read_marker(cell.state.metadata, cell.id)
            except HoardError:
                marker = None
            schema = self.schemas.get(marker[0]) if marker is not None else None
        if schema is None or (cell.schema is not None and cell.schema == schema):
            return
        try:
            cell.actor_ref.ask(BindSchema(schema), timeout=self.settings.call_timeout)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(f"binding {cell.id!r} to its schema", self.settings.call_timeout,
                                      cell.id) from exc
        except BaseException:
            if started:  # do not leave an unbound actor behind a failed activation
                del self.cells[cell.id]
                cell.closed = True
                try:
                    cell.actor_ref.stop(block=True, timeout=self.settings.call_timeout)
                finally:
                    self._retire(cell)
            raise

    def _set_current(self, cid: str | None) -> None:
        if cid != self.current:
            previous, self.current = self.current, cid
            self.events(Switched, cid, previous=previous)

    def _start(self, cid: str, m: Activate, resume: ContextState | None = None) -> ContextCell:
        create = self.settings.auto_create_contexts if m.create is None else m.create
        absent = False  # known not to be stored (asked once, not again for max_contexts)
        if m.must_create:
            if self._store("info", cid) is not None:
                raise ContextExistsError(cid)
            create = absent = True
        self._check_room(cid, m.make_current)  # refuse before loading; evict only once it loaded
        template = None
        if create:
            template = self._new_state(cid, m.data, m.metadata)
            if self.settings.max_contexts is not None and (absent or self._store("info", cid) is None) \
                    and self._store("count") >= self.settings.max_contexts:
                raise CapacityError(f"cannot create {cid!r}: the store holds max_contexts="
                                    f"{self.settings.max_contexts} contexts", limit=self.settings.max_contexts,
                                    context_id=cid)
        # as long as the caller waits, and never less than call_timeout: a load that completes after a
        # short caller timeout becomes an active context (served, evictable); one this actor gives up
        # on is abandoned (see _ask_persistence): never a lease without an active context
        wait = None if m.timeout is None else max(m.timeout, self.settings.call_timeout)
        state = self._ask_persistence(Load(cid, template, m.by), f"loading context {cid!r}", cid, wait)
        if state is None:
            raise ContextNotFoundError(cid)
        if resume is not None and resume.version > state.version:
            state = resume  # see _on_crashed
        self._make_room(cid, m.make_current)
        cell = ContextCell(cid, state)
        cell.pinned = cid in self.pinned
        cell.actor_ref = ContextActor.start(cell, self.persistence, self.context_settings, self.actor_ref,
                                            self.events)
        self.cells[cid] = cell
        self.stats["activations"] += 1
        self.events(ContextActivated, cid, version=state.version)
        return cell

    def _new_state(self, cid: str, data: Any, metadata: Any) -> ContextState:
        """The first state of a new context, held to the limits every later change is held to:
        `InvalidValueError` (nothing stored) for a bad value, a state over ``max_state_bytes`` (it could
        never be read back) or a reserved ``hoard:`` metadata key."""
        limit = self.context_settings.max_value_bytes
        frozen_data = freeze_mapping(data if data is not None else {}, limit, cid)
        frozen_meta = freeze_mapping(metadata if metadata is not None else {}, limit, cid)
        check_reserved(list(frozen_meta), cid)
        size = len(orjson.dumps(frozen_data)) + len(orjson.dumps(frozen_meta))
        if size > self.context_settings.max_state_bytes:
            raise InvalidValueError(None, f"the initial state would be {size} bytes, over max_state_bytes="
                                    f"{self.context_settings.max_state_bytes}", context_id=cid)
        return new_state(cid, frozen_data, frozen_meta, self.context_settings.clock())

    def _candidates(self, incoming: str, becomes_current: bool) -> list[ContextCell]:
        """Contexts that may be evicted for `incoming`: never the default, a pinned context, the
        incoming one, or the current one unless `incoming` is about to replace it as current."""
        protected = {self.settings.default_context_id, incoming}
        if not becomes_current and self.current is not None:
            protected.add(self.current)
        return [c for c in self.cells.values() if c.id not in protected and not c.pinned]

    def _check_room(self, incoming: str, becomes_current: bool) -> None:
        """Raise `CapacityError` if `incoming` could not get a place; evicts nothing."""
        limit = self.settings.max_active_contexts
        if len(self.cells) < limit:
            return
        if self.settings.capacity_policy == "reject":
            raise CapacityError(f"cannot activate {incoming!r}: max_active_contexts={limit} are active "
                                "(capacity_policy='reject'); deactivate one first", limit=limit, context_id=incoming)
        if not self._candidates(incoming, becomes_current):
            raise CapacityError(f"cannot activate {incoming!r}: all {limit} active contexts are the default, "
                                "pinned or current; unpin or deactivate one", limit=limit, context_id=incoming)

    def _make_room(self, incoming: str, becomes_current: bool) -> None:
        """Evict least recently used contexts until there is room for `incoming`."""
        while len(self.cells) >= self.settings.max_active_contexts:
            self._check_room(incoming, becomes_current)
            victim = min(self._candidates(incoming, becomes_current), key=lambda c: c.touched)
            self._deactivate(victim.id, DeactivationReason.EVICTED)
            self.stats["evictions"] += 1

    # -- passivation ---------------------------------------------------------------------------------
    def _passivate(self, cell: ContextCell) -> None:
        """Close the cell, have the actor commit and snapshot, stop it. Bounded by call_timeout."""
        cell.closed = True
        timeout = self.settings.call_timeout
        try:
            cell.actor_ref.ask(Passivate(), timeout=timeout)
        except pykka.ActorDeadError:
            pass
        except pykka.Timeout as exc:
            log.error("context %r did not passivate within %s s; stopping it anyway", cell.id, timeout)
            cell.actor_ref.stop(block=False)
            self._retire(cell)
            raise ContextTimeoutError(f"passivating {cell.id!r}", timeout, cell.id) from exc
        except StateNotSavedError:
            # durability="none": the snapshot was the only copy of its changes. Keep it active: Resume
            # lands in its mailbox before any call a tracker may send once the cell is open again
            cell.actor_ref.tell(Resume())
            cell.closed = False
            raise
        except HoardError as exc:
            log.error("context %r: final snapshot failed (%s); its journal is intact", cell.id, exc)
        try:
            cell.actor_ref.stop(block=True, timeout=timeout)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(f"stopping {cell.id!r}", timeout, cell.id) from exc
        finally:
            self._retire(cell)  # read once it stopped: nothing it counts is lost

    def _deactivate(self, cid: str, reason: DeactivationReason) -> bool:
        cell = self.cells.get(cid)
        if cell is None:
            if self._store("info", cid) is None:
                raise ContextNotFoundError(cid)
            return False
        del self.cells[cid]
        try:
            self._passivate(cell)
        except StateNotSavedError:
            self.cells[cid] = cell  # still active, every change kept; a later deactivation may save it
            raise
        except BaseException:
            self._deactivated(cid, cell, reason)
            raise
        self._deactivated(cid, cell, reason)
        log.debug("deactivated %r (%s)", cid, reason.value)
        return True

    def _deactivated(self, cid: str, cell: ContextCell, reason: DeactivationReason) -> None:
        self.stats["deactivations"] += 1
        self.events(ContextDeactivated, cid, version=cell.state.version, reason=reason)
        if self.current == cid:
            self._fall_back_to_default()

    def _fall_back_to_default(self) -> None:
        default = self.settings.default_context_id
        self._set_current(default if default in self.cells else None)

    # -- status, reads, create, delete ---------------------------------------------------------------
    # -- supervision -----------------------------------------------------------------------------
    def _on_crashed(self, m: ContextCrashed) -> None:
        """One-for-one restart from the durable state, at most max_restarts within restart_window;
        past that the context is FAILED until reset."""
        cid = m.cell.id
        if self.cells.get(cid) is not m.cell:
            return  # already handled (found dead by an activation), or passivated meanwhile
        del self.cells[cid]
        m.cell.closed = True
        self._retire(m.cell)  # what it counted before the crash stays counted
        now = self.settings.monotonic()
        recent = [t for t in self.restarts.get(cid, []) if now - t <= self.settings.restart_window]
        if len(recent) >= self.settings.max_restarts:
            self.failed[cid] = f"crashed {len(recent) + 1} times within {self.settings.restart_window} s: {m.reason}"
            self.restarts.pop(cid, None)
            log.error("context %r FAILED: %s", cid, self.failed[cid])
            self.events(ContextFailed, cid, reason=self.failed[cid])
            # let go of it in the store as passivation would (final snapshot of its durable state,
            # lease released on a shared store): another process may take it while it is FAILED here
            self.persistence.tell(SaveSnapshot(m.cell.state, None))
            if self.current == cid:
                self._fall_back_to_default()
            return
        recent.append(now)
        self.restarts[cid] = recent
        self.stats["restarts"] += 1
        log.warning("context %r crashed (%s); restart %d of %d within %s s", cid, m.reason, len(recent),
                    self.settings.max_restarts, self.settings.restart_window)
        # durability="none": the store holds only the last checkpoint; the acknowledged changes since
        # are in the last published state, which a crash (a bug in the write path) never touches
        resume = m.cell.state if self.context_settings.durability == "none" else None
        try:
            cell = self._start(cid, Activate(cid, create=False, make_current=False), resume=resume)
        except HoardError as exc:
            self.failed[cid] = f"restart failed: {exc}"
            log.error("context %r FAILED: could not restart: %s", cid, exc)
            self.events(ContextFailed, cid, reason=self.failed[cid])
            if self.current == cid:
                self._fall_back_to_default()
            return
        cell.touched = m.cell.touched
        self.events(ContextRestarted, cid, version=cell.state.version, restarts=len(recent))

    def _on_sweep(self, _m: Sweep) -> list[str]:
        """Idle passivation. A context is idle once its LRU mark has not moved for idle_timeout (as
        seen by successive sweeps, so the precision is one sweep interval). Never the current, the
        default or a pinned one."""
        timeout = self.settings.idle_timeout
        if timeout is None:
            return self._expire()
        now = self.settings.monotonic()
        protected = {self.current, self.settings.default_context_id}
        idle = []
        advance_epoch()  # a use after this sweep shows up as a changed mark at the next one
        for cid, cell in list(self.cells.items()):
            tick, since = self.seen.get(cid, (-1, now))
            if cell.touched != tick:
                self.seen[cid] = (cell.touched, now)
            elif now - since >= timeout and cid not in protected and not cell.pinned:
                idle.append(cid)
        for cid in list(idle):
            try:
                self._deactivate(cid, DeactivationReason.IDLE)
            except StateNotSavedError as exc:  # kept active with its changes; tried again next sweep
                log.error("idle context %r not passivated: %s", cid, exc)
                idle.remove(cid)
                continue
            self.stats["passivations"] += 1
        for cid in [c for c in self.seen if c not in self.cells]:
            del self.seen[cid]
        return idle + self._expire()

    def _expire(self) -> list[str]:
        """Delete inactive contexts whose TTL ran out (their own, else the default): an active,
        failed or pinned context never expires. Stores without TTL support are skipped."""
        if not hasattr(self._store_type(), "expired"):
            return []
        now = self.context_settings.clock()
        expired = []
        for cid in self._store("expired", now, self.settings.ttl, 500):
            if cid in self.cells or cid in self.failed or cid in self.pinned:
                continue
            try:
                info = self._store("info", cid)  # the version the feed's deletion entry follows
                self._ask_persistence(StoreWrite((DeleteContext(cid, None if info is None else info.version),)),
                                      f"expiring {cid!r}", cid)
            except HoardError as exc:  # another process may own it (shared store): try next sweep
                log.warning("could not expire %r: %s", cid, exc)
                continue
            self.stats["expired"] += 1
            self.events(ContextDeleted, cid, reason="expired")
            expired.append(cid)
        return expired

    def _store_type(self) -> type:
        if self._store_cls is None:
            self._store_cls = self._store("store_type")
        return self._store_cls

    # -- metrics -------------------------------------------------------------------------------------
    def _retire(self, cell: ContextCell) -> None:
        """Fold a context actor that stopped (or is stopping) into the retired totals, once."""
        meter, cell.meter = cell.meter, None
        if meter is None:
            return
        part = meter.part()
        self.retired_calls.add(part["calls"])
        self.retired_latency.add(part["call_latency"])
        self.retired_conflicts += part["conflicts"]

    def _publish_census(self) -> None:
        """Publish the live meters, the retired totals and this actor's counts as one new `Census`
        (one reference assignment) when they changed. Every change of the active set changes a
        count (an activation, a deactivation of any kind, a restart, a failure), so the counts and
        the sizes are the key; runs after every message, so it must be cheap when nothing changed."""
        key = (len(self.cells), len(self.failed), *self.stats.values())
        if key == self._census_key:
            return
        self._census_key = key
        self.board.census = Census(
            stats={**self.stats, "active_contexts": len(self.cells), "failed_contexts": len(self.failed)},
            meters=tuple(c.meter for c in self.cells.values() if c.meter is not None),
            mailboxes=tuple(c.actor_ref.actor_inbox for c in self.cells.values()
                            if isinstance(c.actor_ref.actor_inbox, ContextInbox)),
            retired={"calls": self.retired_calls.snapshot(), "conflicts": self.retired_conflicts,
                     "call_latency": self.retired_latency.snapshot()})

    def _on_collect_metrics(self, _m: CollectMetrics) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """This actor's counts and the context actors' (live ones summed, retired ones), read from
        the published census without asking any actor, and the mailbox depths."""
        self._publish_census()
        parts, depths = self.board.read()
        depths = {"supervisor": _depth(self.actor_ref), "persistence": _depth(self.persistence), **depths}
        return parts[:2], depths

    def _on_leases_lost(self, m: LeasesLost) -> None:
        """Another process took these contexts over (shared store): stop their actors *without* a
        snapshot (nothing may be written any more; their queued calls fail and their trackers
        re-activate, which waits for the new owner). A context re-activated under a new lease since
        the loss was reported is left alone (the persistence actor holds a lease on it again)."""
        for cid in m.context_ids:
            cell = self.cells.get(cid)
            if cell is None:
                continue
            try:
                if self._store("lease_token", cid) is not None:
                    continue
            except HoardError:  # cannot ask: drop it anyway (a told message must not raise)
                pass
            self._drop(cid)
            log.warning("context %r: taken over by another owner; dropped here without a snapshot", cid)
            self.events(ContextDeactivated, cid, version=cell.state.version, reason=DeactivationReason.TAKEN_OVER)

    def _on_dead_letter(self, m: DeadLetterSeen) -> None:
        """Count a dead letter (reported by a context actor or a `ContextRef`, which logged it) and
        emit it as a `DeadLetter` event."""
        self.stats["dead_letters"] += 1
        self.events(DeadLetter, m.context_id, message=m.message, reason=m.reason, undeliverable=m.undeliverable)

    def _on_reset(self, m: Reset) -> bool:
        self.restarts.pop(m.context_id, None)
        return self.failed.pop(m.context_id, None) is not None

    def _on_status(self, m: StatusOf) -> ContextStatus:
        if m.context_id in self.cells:
            return ContextStatus.ACTIVE
        if m.context_id in self.failed:
            return ContextStatus.FAILED
        return ContextStatus.INACTIVE if self._store("info", m.context_id) is not None else ContextStatus.NONEXISTENT

    def _on_state_of(self, m: StateOf) -> ContextState:
        cell = self.cells.get(m.context_id)
        if cell is not None:
            cell.touched = EPOCH[0]
            return cell.state
        state = self._store("load", m.context_id)
        if state is None:
            raise ContextNotFoundError(m.context_id)
        return state  # type: ignore[no-any-return]

    def _on_create(self, m: AddContext) -> ContextState:
        cid = m.context_id
        state = self._new_state(cid, m.data, m.metadata)
        if cid in self.cells or self._store("info", cid) is not None:
            raise ContextExistsError(cid)
        if self.settings.max_contexts is not None and self._store("count") >= self.settings.max_contexts:
            raise CapacityError(f"cannot create {cid!r}: the store holds max_contexts={self.settings.max_contexts} "
                                "contexts", limit=self.settings.max_contexts, context_id=cid)
        self._ask_persistence(StoreWrite((CreateContext(state, m.by),)), f"creating {cid!r}", cid)
        return state

    def _on_delete(self, m: RemoveContext) -> None:
        cid = m.context_id
        self.failed.pop(cid, None)
        self.restarts.pop(cid, None)
        info = None if cid in self.cells else self._store("info", cid)
        if cid not in self.cells and info is None:
            raise ContextNotFoundError(cid)
        cell = self._drop(cid)
        if cell is not None:  # its activation ends here: subscribers see every activation end
            self.events(ContextDeactivated, cid, version=cell.state.version, reason=DeactivationReason.DELETED)
        self.pinned.discard(cid)
        version = cell.state.version if cell is not None else info.version if info is not None else None
        self._ask_persistence(StoreWrite((DeleteContext(cid, version, m.by),)), f"deleting {cid!r}", cid)
        self.events(ContextDeleted, cid)

    def _drop(self, cid: str) -> ContextCell | None:
        """Stop an active context's actor *without* a snapshot (deleted, or owned elsewhere now);
        current falls back to the default. Returns its cell (None if it was not active)."""
        cell = self.cells.pop(cid, None)
        if cell is None:
            return None
        cell.closed = True
        try:
            cell.actor_ref.stop(block=True, timeout=self.settings.call_timeout)
        except pykka.Timeout:
            log.error("context %r did not stop within %s s", cid, self.settings.call_timeout)
        self._retire(cell)
        if self.current == cid:
            self._fall_back_to_default()
        return cell

    def _on_set_pinned(self, m: SetPinned) -> None:
        if m.pinned and m.context_id not in self.cells and self._store("info", m.context_id) is None:
            # deleted (or never made): a pin kept by id would pin whatever is made under it later
            raise ContextNotFoundError(m.context_id)
        (self.pinned.add if m.pinned else self.pinned.discard)(m.context_id)
        cell = self.cells.get(m.context_id)
        if cell is not None:
            cell.pinned = m.pinned

    def _on_configure(self, m: Configure) -> None:
        self.settings = m.settings
        if m.settings.auto_activate_default:
            cid = m.settings.default_context_id
            try:
                self._on_activate(Activate(cid, create=True, make_current=self.current is None))
            except ContextOwnedElsewhereError as exc:
                # a shared store where another process holds the default (say, this program's previous
                # incarnation under another owner id): open with no current context, and take the
                # default in the background as soon as that lease ends
                log.warning("default context %r is owned by another process; no current context until its "
                            "lease ends: %s", cid, exc)
                self._retry_default(exc.expires_in)
            except (PersistenceError, ContextTimeoutError) as exc:
                # a damaged default must not keep the system from opening: no current context then
                self.failed[cid] = f"could not load: {exc}"
                log.error("default context %r could not be loaded; opening with no current context: %s", cid, exc)
                self.events(ContextFailed, cid, reason=self.failed[cid])

    def _retry_default(self, expires_in: float | None) -> None:
        """Send `ActivateDefault` to this actor once the lease that refused the default should be over
        (a timer thread; the actor never waits)."""
        ref = self.actor_ref

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(ActivateDefault())

        timer = threading.Timer(max(0.02, (expires_in if expires_in is not None else 1.0) + 0.02), fire)
        timer.daemon = True
        timer.name = "hoard-default-retry"
        self._default_timer = timer
        timer.start()

    def _on_activate_default(self, _m: ActivateDefault) -> None:
        cid = self.settings.default_context_id
        if not self.settings.auto_activate_default or cid in self.cells:
            return
        try:
            self._on_activate(Activate(cid, create=True, make_current=self.current is None))
            log.info("default context %r activated here after the other owner's lease ended", cid)
        except ContextOwnedElsewhereError as exc:
            self._retry_default(exc.expires_in)
        except (PersistenceError, ContextTimeoutError) as exc:
            log.error("default context %r could not be activated: %s", cid, exc)

    def _on_shutdown(self, m: Shutdown) -> None:
        if self._default_timer is not None:
            self._default_timer.cancel()
        errors: list[BaseException] = []
        kept: dict[str, ContextCell] = {}
        discarded: list[str] = []
        for cid in list(self.cells):
            cell = self.cells.pop(cid)
            try:
                self._passivate(cell)
                self.events(ContextDeactivated, cid, version=cell.state.version, reason=DeactivationReason.SHUTDOWN)
            except StateNotSavedError as exc:
                errors.append(exc)
                if not m.discard_unsaved:
                    kept[cid] = cell
                    continue
                log.error("context %r: stopped without saving (discard_unsaved): %s", cid, exc)
                discarded.append(cid)
                cell.closed = True
                with contextlib.suppress(pykka.Timeout):
                    cell.actor_ref.stop(block=True, timeout=self.settings.call_timeout)
                self._retire(cell)
            except HoardError as exc:  # keep going: every other context still gets its snapshot
                errors.append(exc)
        if kept:
            # durability="none" contexts whose only copy could not be saved: the system keeps running
            # (store open, those contexts active) so that a retried stop() can save them
            self.cells.update(kept)
            if self.current not in self.cells:
                self._fall_back_to_default()
            raise StateNotSavedError(
                f"could not save {len(kept)} context(s) (durability='none'): {', '.join(map(repr, kept))}; "
                f"the system keeps running with them; fix the cause and stop again (first error: {errors[0]})",
                context_id=next(iter(kept)))
        self.current = None
        try:
            self._ask_persistence(Close(), "closing the store")
        finally:
            self.stopped = True
        if discarded:
            raise StateNotSavedError(
                f"stopped without saving {len(discarded)} context(s) (durability='none', discard_unsaved): "
                f"{', '.join(map(repr, discarded))}; their changes since their last save are gone "
                f"(first error: {errors[0]})", context_id=discarded[0])
        if errors:
            raise errors[0]


def mailbox_depth(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in a (threading) actor's mailbox now."""
    inbox = ref.actor_inbox
    return inbox.qsize() if isinstance(inbox, (queue.Queue, queue.SimpleQueue)) else 0


_depth = mailbox_depth
