"""`PersistenceActor`: the only user of the store; commits changes in groups.

Group commit: each `Commit` is queued, and the first one queued sends the actor a `Flush` to itself.
`Flush` lands behind every message already in the mailbox, so when it runs, every change that was
waiting in this turn is in the queue; all of them go to the store in **one transaction with one
sync**. Then, in order, each committed state is published to its cell and each waiting caller is
answered. While a commit runs, new changes pile up and go out together in the next one: the more
concurrent writers, the more changes share each sync.

Changes come by the commit lane of the actor's mailbox (`PersistenceInbox`): one `Flush` (immediate
mode) or `ArmFlush` (deferred mode) per group, not a message per change.

In ``deferred`` mode the `Flush` is sent by a timer `flush_interval` after the first queued change
(`ArmFlush` arms it); a change whose caller waits for its commit (commits failing) is flushed now.
Every other request (loads, snapshots, recovery points, store reads) first commits what is queued,
so it always sees every change accepted before it.

If a commit fails, no change of the batch is applied: each waiting caller gets `PersistenceError`,
and each affected context actor gets `Rollback` with the last durable state. Changes that were
built on a failed one are refused when their turn comes (their version no longer follows the
stored one).

With a store that has ownership leases (PostgreSQL: several processes share the contexts), the rules
of `hoard.actors._leases` apply on top: a `Load` first takes the context's lease (`ContextOwnedElsewhereError`
goes back to the asking supervisor at once, never waited for here); held leases are renewed by a
timer every ``lease_ttl / 3``; passivation releases the lease after the final snapshot. A commit
refused with `FencedOffError` (another owner took the context over) fails its callers with that
error, and the context is dropped here, not rolled back: the supervisor stops its actor without a
snapshot. The rest of the batch is committed again without it. After any other failed commit the
rollback state is re-read from the store, which is the truth when a connection was lost while COMMIT
was in flight (the store resolves or reports that outcome).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any, cast

import pykka

from hoard.storage import (
    Append,
    ContextLockedError,
    ContextState,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    FencedOffError,
    HoardError,
    PersistenceError,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    StateNotSavedError,
    Store,
    context_of,
)

from ._context import Inbox, PersistenceInbox
from ._events import (
    NO_EVENTS,
    ContextCreated,
    CorruptionRecovered,
    Emitter,
    RecoveryPointCreated,
    RecoveryPointDeleted,
)
from ._leases import AttachSupervisor, LeaseKeeper, RenewLeases
from ._messages import (
    Abandon,
    ArmFlush,
    Close,
    Commit,
    CommitsResumed,
    Confirm,
    Flush,
    GetMetrics,
    Load,
    Rebase,
    Rollback,
    SaveRecoveryPoint,
    SaveSnapshot,
    StoreCall,
    StoreWrite,
)
from ._metrics import SIZE_BOUNDS, Histogram, MetricsBoard
from ._settings import PersistenceSettings

__all__ = ["PersistenceActor", "mailbox_empty"]


def mailbox_empty(ref: pykka.ActorRef[Any]) -> bool:
    """Whether nothing waits in a (threading) actor's mailbox right now."""
    inbox = ref.actor_inbox
    return isinstance(inbox, (queue.Queue, queue.SimpleQueue)) and inbox.empty()

log = logging.getLogger(__name__)

_READS = frozenset({"load", "info", "list_ids", "count", "recovery_points", "recovery_point", "verify", "expired",
                    "lease_token", "lease_holder",  # lease_*: only asked of stores with leases
                    "set_consumer", "remove_consumer",  # feed consumers: store writes of no context
                    "set_history"})  # the store's history policy, recorded when a system opens it


class PersistenceActor(pykka.ThreadingActor):
    """Owns the store connection. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, store: Store, settings: PersistenceSettings, events: Emitter = NO_EVENTS, *,
                 board: MetricsBoard | None = None) -> None:
        super().__init__()
        self.events = events
        self.store = store
        self.settings = settings
        self._pending: list[Commit] = []
        self._lane = cast(PersistenceInbox, self.actor_inbox)  # context actors' commits (see PersistenceInbox)
        self._flush_queued = False
        self._timer: threading.Timer | None = None
        self._durable: dict[str, ContextState] = {}  # last committed state of each active context
        # deferred mode, after a failed commit lost acknowledged changes: the state (durable data at a
        # version above every acknowledged one) to write before the context's next change
        self._gaps: dict[str, ContextState] = {}
        self._failing: set[str] = set()  # deferred contexts whose last commit failed
        self._since_snapshot: dict[str, int] = {}
        self._closed = False
        self.leases = LeaseKeeper(store)  # no-op unless the store has ownership leases
        self.stats = {"commits": 0, "changes": 0, "failed_commits": 0, "snapshots": 0, "recovery_points": 0}
        self.batch_sizes = Histogram(SIZE_BOUNDS)
        self.commit_latency = Histogram()
        self.call_latency = Histogram()  # immediate-mode calls: from the context actor to the answer
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Commit: self._on_commit,
            Confirm: self._on_confirm,
            Flush: self._flush,  # (its message unused: a bound method, not a lambda around it, on every flush)
            ArmFlush: self._on_arm_flush,
            Rebase: self._on_rebase,
            Abandon: self._on_abandon,
            Load: self._on_load,
            SaveSnapshot: self._on_save_snapshot,
            SaveRecoveryPoint: self._on_save_recovery_point,
            StoreCall: self._on_store_call,
            StoreWrite: self._on_store_write,
            Close: self._on_close,
            GetMetrics: self._on_get_metrics,
            RenewLeases: self._on_renew_leases,
            AttachSupervisor: lambda m: setattr(self.leases, "supervisor", m.supervisor),
        }
        if board is not None:  # metrics() reads this actor's numbers there, without asking it
            board.persistence = self.metrics_part

    def on_receive(self, message: Any) -> Any:
        if self._closed and not isinstance(message, (Close, Flush, ArmFlush)):
            if isinstance(message, (RenewLeases, AttachSupervisor, Rebase, Abandon)):
                return None  # told, late: nothing to do once closed
            error = PersistenceError(f"store {self.store.location!r} is closed")
            if isinstance(message, Commit | SaveSnapshot | SaveRecoveryPoint | Confirm) and message.reply is not None:
                message.reply.fail(error)
                return None
            raise error
        try:
            return self._handlers[type(message)](message)
        except Exception as exc:
            envelope = cast(Inbox, self.actor_inbox).current
            if envelope is not None and envelope.reply_to is not None:
                # an ask: pykka hands the error to the asker and this actor goes on
                if isinstance(exc, HoardError):
                    raise
                raise PersistenceError(f"store {self.store.location!r}: {type(message).__name__} failed: "
                                       f"{exc!r}") from exc
            # a tell: nothing may escape (pykka would stop this actor, and every write with it)
            log.exception("persistence actor: %s failed", type(message).__name__)
            reply = getattr(message, "reply", None)
            if reply is not None:
                reply.fail(exc if isinstance(exc, HoardError) else PersistenceError(
                    f"store {self.store.location!r}: {type(message).__name__} failed: {exc!r}"))
            return None

    @staticmethod
    def _create_actor_inbox() -> Any:
        # remembers the envelope being handled (asked and told messages fail differently), and has
        # the lane immediate-mode context actors post their commits to
        return PersistenceInbox()

    def on_stop(self) -> None:
        self._cancel_timer()
        self.leases.cancel()
        # commits posted to the lane that no Flush will take now: their callers are answered
        self._lane.closed = True
        error = PersistenceError(f"store {self.store.location!r}: the persistence actor stopped before "
                                 "committing this change")
        for m in self._lane.take():
            if type(m) is Commit:  # a Rebase: nothing to answer
                self._fail(m, error)

    # -- group commit --------------------------------------------------------------------------------
    def _on_confirm(self, m: Confirm) -> None:
        """A duplicate request whose original change was still being committed: commit what is
        pending, then answer with `m.result` if the context is durable at `m.version`."""
        self._flush()
        durable = self._durable.get(m.context_id)
        if m.reply is None:
            return
        if durable is not None and durable.version >= m.version:
            m.reply.resolve(m.result)
        else:
            m.reply.fail(PersistenceError(f"the change v{m.version} this request made on {m.context_id!r} failed to "
                                          "commit; retry the request", context_id=m.context_id))

    def _on_commit(self, m: Commit) -> None:
        self._pending.append(m)
        if not self._flush_queued:
            if self.settings.durability == "deferred" and m.reply is None:
                self._arm_timer()
                return
            self._flush_queued = True
            if mailbox_empty(self.actor_ref):
                self._flush()  # nothing else waiting to share the sync with: commit now (one hop less)
            else:
                self.actor_ref.tell(Flush())  # lands behind every queued message: they go together

    def _on_arm_flush(self, _m: ArmFlush) -> None:
        """A deferred context actor posted the first commit since a take: flush within flush_interval
        (now, once closed: the posted commits fail)."""
        if self._closed:
            self._flush()
        elif not self._flush_queued:
            self._arm_timer()

    def _arm_timer(self) -> None:
        self._flush_queued = True
        self._timer = threading.Timer(self.settings.flush_interval, self._timer_fired)
        self._timer.daemon = True
        self._timer.start()

    def _timer_fired(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # stopped meanwhile; Close already committed everything
            self.actor_ref.tell(Flush())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_abandon(self, m: Abandon) -> None:
        """The supervisor gave up on the `Load` before this one: the context is not active, so
        nothing of it is kept here and its lease is released (the next owner may take it at once)."""
        if m.context_id in self._durable:
            self._forget([m.context_id])
            self.leases.release([m.context_id])
            log.warning("context %r: its activation timed out; loaded too late, let go of (lease released)",
                        m.context_id)

    def _on_rebase(self, m: Rebase) -> None:
        """A deferred context lost acknowledged changes and continues at `m.state`; the store gets it
        (as a snapshot ahead of the stored version) with the context's next commit, or its final
        snapshot. Until then the gap is where the context's versions continue."""
        self._gaps[m.state.id] = m.state

    def _tip(self, context_id: str) -> int:
        gap = self._gaps.get(context_id)
        if gap is not None:
            return gap.version
        durable = self._durable.get(context_id)
        if durable is not None:
            return durable.version
        info = self.store.info(context_id)
        return 0 if info is None else info.version

    def _flush(self, _flush: Flush | None = None) -> None:
        self._flush_queued = False
        if self._timer is not None:
            self._cancel_timer()
        posted = self._lane.take()  # the context actors' commits (see PersistenceInbox)
        if posted:
            pending = self._pending
            for m in posted:
                if type(m) is Commit:
                    pending.append(m)
                else:  # a deferred context's Rebase: ahead of its commits posted after it
                    self._on_rebase(m)
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self._closed:  # posted after Close: answered as a Commit told then is
            for m in batch:
                self._fail(m, PersistenceError(f"store {self.store.location!r} is closed"))
            return
        try:
            self._commit_batch(batch)
        except Exception as exc:
            log.exception("group commit failed unexpectedly")
            error = exc if isinstance(exc, PersistenceError) else PersistenceError(
                f"commit to {self.store.location!r} failed: {exc!r}")
            for m in batch:
                self._fail(m, error)  # those already answered keep their answer
            for cell in {id(m.cell): m.cell for m in batch}.values():
                try:
                    self._rollback(cell)
                except Exception:
                    log.exception("rollback of %r failed", cell.id)

    def _commit_batch(self, batch: list[Commit]) -> None:
        while True:
            ops, accepted, counts = self._prepare(batch)
            if not ops:
                return
            try:
                self._commit_ops(ops, accepted, counts)
                return
            except ContextLockedError as exc:
                # another session holds these contexts' rows locked: fail (and roll back) only their
                # changes; the rest of the batch goes again without them (never waits behind them)
                self.stats["failed_commits"] += 1
                locked = set(exc.context_ids)
                self._commit_failed([m for m in accepted if m.cell.id in locked], exc)
                batch = [m for m in accepted if m.cell.id not in locked]
                if not batch or len(batch) == len(accepted):
                    self._commit_failed(batch, exc)
                    return
            except FencedOffError as exc:
                # another owner took a context over: its callers get this error and it is dropped here
                # (no rollback: it may not be written any more); the rest goes again without it
                self.stats["failed_commits"] += 1
                cid = self._lease_lost(exc)
                if cid is None or all(m.cell.id != cid for m in accepted):
                    self._commit_failed(accepted, exc)
                    return
                batch = accepted

    def _prepare(self, batch: list[Commit]) -> tuple[list[Any], list[Commit], dict[str, int]]:
        """The store operations of `batch`; refuses (fails) the changes that may not be written."""
        ops: list[Any] = []
        accepted: list[Commit] = []
        tips: dict[str, int] = {}
        # changes since the last snapshot, of the batch's contexts only: a copy of every active
        # context's count cost 13 us a batch at 1,000 active contexts (0.55 us at 32)
        counts: dict[str, int] = {}
        check = self.leases.check if self.leases.enabled else None  # a store without leases: nothing to check
        durable, gaps, since, every = self._durable, self._gaps, self._since_snapshot, self.settings.snapshot_every
        for m in batch:
            cid = m.cell.id
            if check is not None:
                fenced = check(cid)
                if fenced is not None:
                    self._fail(m, fenced)  # its lease was lost: nothing of it may be written any more
                    continue
            tip = tips.get(cid)
            if tip is None:
                last = durable.get(cid)
                tip = last.version if last is not None and cid not in gaps else self._tip(cid)
            version = m.change.version
            if version != tip + 1:
                # built on a change that failed to commit (and was rolled back): refuse it
                self._fail(m, PersistenceError(
                    f"change v{version} of {cid!r} was built on a change that failed to commit; "
                    f"the context is back at v{tip}; retry", context_id=cid))
                continue
            if cid not in tips and cid in gaps:
                ops.append(PutSnapshot(gaps[cid]))  # the version the context continues from
            tips[cid] = version
            ops.append(Append(cid, m.change))
            accepted.append(m)
            n = counts.get(cid)
            n = (since.get(cid, 0) if n is None else n) + 1
            if n >= every:
                ops.append(PutSnapshot(m.state))
                n = 0
            counts[cid] = n
        return ops, accepted, counts

    def _commit_ops(self, ops: list[Any], accepted: list[Commit], counts: dict[str, int]) -> None:
        """Commit, then publish and answer; a failure (but `FencedOffError`) fails and rolls back."""
        started = perf_counter()
        try:
            self.store.commit(ops)
        except (FencedOffError, ContextLockedError):
            raise
        except Exception as exc:  # noqa: BLE001 - every caller is answered with a PersistenceError
            if not self._landed(accepted):
                self.stats["failed_commits"] += 1
                self._commit_failed(accepted, exc)
                return
            # the commit reported failure after it reached the store (a late fsync error, a lost
            # connection during COMMIT): the store holds the batch, so it is committed
            log.warning("a commit reported %r, but the store holds all %d changes: treated as committed",
                        exc, len(accepted))
        done = perf_counter()
        # publish (and emit) first: a subscriber woken by an event runs its wake-up while this thread
        # does the bookkeeping below, instead of after it
        self._publish(accepted)
        self._since_snapshot.update(counts)
        self.commit_latency.observe(done - started)
        self.batch_sizes.observe(len(accepted))
        stats = self.stats
        stats["commits"] += 1
        stats["changes"] += len(accepted)
        stats["snapshots"] += len(ops) - len(accepted)  # the rest are PutSnapshot (see _prepare)
        # the answers last, together: each wakes a caller, which then waits for the GIL this thread
        # holds until the bookkeeping above is done
        observe = self.call_latency.observe
        for m in accepted:
            if m.reply is not None:
                m.reply.resolve(m.result)
                if m.started:
                    observe(done - m.started)
            elif m.landed is not None:
                m.landed.resolve(None)

    def _publish(self, accepted: list[Commit]) -> None:
        """After the commit of `accepted`: record each durable state, publish it, emit its event."""
        gaps, failing, durable, emit = self._gaps, self._failing, self._durable, self.events.emit
        for m in accepted:
            cell = m.cell
            cid = cell.id
            if gaps:
                gaps.pop(cid, None)  # written with this batch (see _prepare)
            if failing and cid in failing:
                failing.discard(cid)
                with contextlib.suppress(pykka.ActorDeadError):
                    if cell.actor_ref is not None:
                        cell.actor_ref.tell(CommitsResumed())
            if cid in durable or cell.closed is False:
                durable[cid] = m.state
            if m.publish:
                cell.state = m.state  # publish before answering: the caller then reads its own write
            if m.event is not None:
                emit(m.event)

    def _landed(self, accepted: list[Commit]) -> bool:
        """Whether the store holds every context of a batch at the batch's last version, although
        its commit raised. One transaction: all of it landed or none did."""
        last: dict[str, int] = {}
        for m in accepted:
            last[m.cell.id] = m.change.version
        try:
            for cid, version in last.items():
                info = self.store.info(cid)
                if info is None or info.version != version:
                    return False
        except Exception:  # noqa: BLE001 - the store cannot even answer: the commit failed
            return False
        return True

    def _commit_failed(self, accepted: list[Commit], exc: Exception) -> None:
        error = exc if isinstance(exc, PersistenceError) else PersistenceError(
            f"commit to {self.store.location!r} failed: {exc!r}")
        log.error("group commit of %d changes failed: %s", len(accepted), error)
        # roll back before answering: a caller's next call then reaches its actor after the Rollback
        if self.settings.durability == "deferred":
            self._failing.update(m.cell.id for m in accepted)
        for cell in {id(m.cell): m.cell for m in accepted}.values():
            try:
                self._rollback(cell)
            except Exception:
                log.exception("rollback of %r failed", cell.id)
        for m in accepted:
            # a plain PersistenceError is re-made per context; a subclass keeps its type and fields
            self._fail(m, PersistenceError(str(error), context_id=m.cell.id)
                       if type(error) is PersistenceError else error)

    def _lease_lost(self, exc: FencedOffError) -> str | None:
        """`exc` refused a write: the context it names is lost here. Forget it and have the supervisor
        stop its actor without a snapshot. Returns its id."""
        cid = self.leases.fenced(exc)
        if cid is not None:
            self._forget([cid])
            self.leases.tell_lost([cid])
        return cid

    def _forget(self, context_ids: list[str]) -> None:
        for cid in context_ids:
            self._durable.pop(cid, None)
            self._since_snapshot.pop(cid, None)

    def _on_renew_leases(self, _m: RenewLeases) -> None:
        """Timer: renew every held lease; drop the contexts whose lease was taken over. Never raises
        (a told message that raised would stop this actor)."""
        try:
            lost = self.leases.renew()
            self._forget(lost)
            self.leases.tell_lost(lost)
        except Exception:  # see the docstring
            log.exception("lease renewal failed unexpectedly")
        finally:
            self.leases.rearm(self.actor_ref)

    @staticmethod
    def _fail(m: Commit, error: HoardError) -> None:
        if m.reply is not None:
            m.reply.fail(error)
        if m.landed is not None:
            m.landed.resolve(None)  # settled (refused): the context actor's Rollback tells the rest

    def _rollback(self, cell: Any) -> None:
        durable = self._durable.get(cell.id)
        gap = self._gaps.get(cell.id)
        if gap is not None:
            durable = gap  # not stored yet, but the versions before it were handed out: never reuse them
        elif durable is None or self.leases.enabled:
            # a shared store is the truth: a connection lost while COMMIT was in flight leaves the
            # outcome to the store (it resolves it, or reports it unknown), so re-read what it holds
            try:
                stored = self.store.load(cell.id)
            except PersistenceError as exc:
                if durable is None:
                    raise
                log.warning("context %r: re-reading after a failed commit failed (%s); rolling back to "
                            "v%d as known here", cell.id, exc, durable.version)
            else:
                if stored is not None and cell.id in self._durable:
                    self._durable[cell.id] = stored
                durable = stored
        if durable is None or cell.actor_ref is None:
            return
        # passivated meanwhile: the next activation loads the durable state anyway
        with contextlib.suppress(pykka.ActorDeadError):
            cell.actor_ref.tell(Rollback(durable))

    # -- requests that see every change accepted before them -----------------------------------------
    def _on_load(self, m: Load) -> ContextState | None:
        """Activation: take the lease (if the store has leases; `ContextOwnedElsewhereError` at once
        when another owner holds it), then read the context, creating it if asked."""
        self._flush()
        self.leases.acquire(m.context_id, self.actor_ref)
        try:
            state = self.store.load(m.context_id)
            if state is None and m.create is not None:
                self.store.commit([CreateContext(m.create, m.by)])
                state = m.create
                self.events(ContextCreated, state.id, by=m.by)
        except BaseException:
            self.leases.release([m.context_id])  # not activated: do not keep others out
            raise
        gap = self._gaps.get(m.context_id)
        if state is not None and gap is not None and gap.version > state.version:
            state = gap  # restarted after losing changes: continue where the versions are, never below
        if state is None:
            self.leases.release([m.context_id])
        else:
            self._report_recovery(m.context_id)
            self._durable[m.context_id] = state
            # the snapshot the load read, when the store tells (a row store's strict load): no `info` query
            loaded = getattr(self.store, "last_loaded", None)
            if loaded is not None and loaded[0] == m.context_id:
                self._since_snapshot[m.context_id] = state.version - loaded[1]
            else:
                info = self.store.info(m.context_id)
                self._since_snapshot[m.context_id] = 0 if info is None else state.version - info.snapshot_version
        return state

    def _report_recovery(self, context_id: str) -> None:
        """After a ``recovery="fallback"`` load that skipped damaged rows: emit what was skipped and
        which acknowledged versions were lost (the store has logged it too)."""
        report = getattr(self.store, "last_recovery_report", None)
        if report is None or report.context_id != context_id:
            return
        skipped = tuple(f"{item.what} v{item.version}: {item.problem}" for item in report.skipped)
        self.events(CorruptionRecovered, context_id, version=report.version, skipped=skipped,
                    lost_versions=tuple(report.lost_versions))

    def _on_save_snapshot(self, m: SaveSnapshot) -> None:
        """Snapshot on passivation. Afterwards the context is no longer tracked here, except when it
        is ``durability="none"`` and the snapshot failed: that snapshot is the only copy of its
        changes, so the caller gets `StateNotSavedError`, and the context (and its lease) stays here,
        to be kept active by the supervisor and saved by a later passivation."""
        self._flush()
        cid = m.state.id
        only_copy = self.settings.durability == "none"  # the snapshot is the only copy of its changes
        kept = False
        try:
            fenced = self.leases.check(cid)
            if fenced is not None:
                raise fenced  # taken over by another owner: nothing more may be written
            if only_copy:
                target: ContextState | None = m.state  # a checkpoint of changes never journaled
            else:
                # never snapshot what was not committed: the last durable state is what is stored
                # (or, after lost changes, that data at the version the context continued from)
                target = self._gaps.get(cid) or self._durable.get(cid)
            if target is not None and self.store.info(cid) is not None:
                self.store.commit([PutSnapshot(target)])
                self.stats["snapshots"] += 1
                if self._gaps.get(cid) is target:
                    del self._gaps[cid]
        except HoardError as exc:
            if only_copy and m.reply is not None and not isinstance(exc, FencedOffError):
                # the changes exist nowhere else: keep the context (and its lease) here; the
                # supervisor keeps it active, and the caller may retry once the cause is fixed
                kept = True
                cause, exc = exc, StateNotSavedError(
                    f"context {cid!r} v{m.state.version} (durability='none') could not be saved: {exc}; "
                    "it stays active with every change; free space (or fix the store) and retry",
                    context_id=cid)
                exc.__cause__ = cause
            if m.reply is not None:
                m.reply.fail(exc)
                return
            raise
        finally:
            if not kept:
                self._durable.pop(cid, None)
                self._since_snapshot.pop(cid, None)
                self.leases.release([cid])  # after the last write: the next owner may take it at once
        if m.reply is not None:
            m.reply.resolve(None)

    def _on_save_recovery_point(self, m: SaveRecoveryPoint) -> None:
        self._flush()
        st = m.state
        try:
            fenced = self.leases.check(st.id)
            if fenced is not None:
                raise fenced
            if self.settings.durability != "none":
                durable = self._durable.get(st.id)
                if durable is not None and durable.version < st.version:
                    raise PersistenceError(f"context {st.id!r} v{st.version} was not committed; no recovery "
                                           "point made", context_id=st.id)
            info = self.store.info(st.id)
            if info is None:
                raise PersistenceError(f"context {st.id!r} is not in the store", context_id=st.id)
            rp = RecoveryPoint(info.next_rp_id, st.id, st.version, m.label, self.settings.clock(), st)
            self.store.commit([PutRecoveryPoint(rp, self.settings.max_recovery_points)])
        except HoardError as exc:
            if isinstance(exc, FencedOffError) and exc is not self.leases.check(st.id):
                self._lease_lost(exc)
            if m.reply is not None:
                m.reply.fail(exc)
            return
        self.stats["recovery_points"] += 1
        self.events(RecoveryPointCreated, st.id, version=st.version, rp_id=rp.id, label=rp.label)
        if m.reply is not None:
            m.reply.resolve(rp)

    def _on_store_call(self, m: StoreCall) -> Any:
        if m.method == "store_type":
            return type(self.store)
        if m.method not in _READS:
            raise PersistenceError(f"not a store read: {m.method!r}")
        self._flush()
        return getattr(self.store, m.method)(*m.args)

    def _on_store_write(self, m: StoreWrite) -> None:
        """Writes that need no context actor (create, delete, delete a recovery point). With leases, a
        context not active here is leased for the write only (`ContextOwnedElsewhereError` if another
        owner holds it), and a deleted context's lease is released."""
        self._flush()
        taken = self.leases.acquire_for_write((context_of(op) for op in m.ops), self.actor_ref)
        try:
            self.store.commit(list(m.ops))
        except FencedOffError as exc:
            self._lease_lost(exc)
            raise
        finally:
            self.leases.release(taken + [op.context_id for op in m.ops if isinstance(op, DeleteContext)])
        for op in m.ops:
            if isinstance(op, DeleteContext):
                self._durable.pop(op.context_id, None)
                self._gaps.pop(op.context_id, None)
                self._since_snapshot.pop(op.context_id, None)
            elif isinstance(op, CreateContext):
                self.events(ContextCreated, op.state.id, by=op.by)
            elif isinstance(op, DeleteRecoveryPoint):
                self.events(RecoveryPointDeleted, op.context_id, rp_id=op.rp_id)

    def _on_get_metrics(self, _m: GetMetrics) -> dict[str, Any]:
        return self.metrics_part()

    def metrics_part(self) -> dict[str, Any]:
        """This actor's numbers as a `Metrics.from_parts` part. Safe from any thread, without a
        message: every copy is atomic under the GIL (see `hoard.actors._metrics`). Never blocks."""
        part: dict[str, Any] = dict(self.stats)
        part["batch_sizes"] = self.batch_sizes.snapshot()
        part["commit_latency"] = self.commit_latency.snapshot()
        part["call_latency"] = self.call_latency.snapshot()
        sizes = getattr(self.store, "codec", None)
        if sizes is not None:  # stores that encode through a Codec report what they wrote
            part["bytes_written"] = sizes.bytes_out
            part["payload_bytes"] = sizes.bytes_in
        return part

    def _on_close(self, _m: Close) -> None:
        if self._closed:
            return
        try:
            self._flush()
        finally:
            self._closed = True
            self._cancel_timer()
            self.leases.cancel()
            self.store.close()  # releases every lease still held
