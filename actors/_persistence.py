"""`PersistenceActor`: the only user of the store; commits changes in groups.

Group commit: each `Commit` is queued, and the first one queued sends the actor a `Flush` to itself.
`Flush` lands behind every message already in the mailbox, so when it runs, every change that was
waiting in this turn is in the queue; all of them go to the store in **one transaction with one
sync**. Then, in order, each committed state is published to its cell and each waiting caller is
answered. While a commit runs, new changes pile up and go out together in the next one: the more
concurrent writers, the more changes share each sync.

In ``deferred`` mode the `Flush` is sent by a timer `flush_interval` after the first queued change.
Every other request (loads, snapshots, recovery points, store reads) first commits what is queued,
so it always sees every change accepted before it.

If a commit fails, no change of the batch is applied: each waiting caller gets `PersistenceError`,
and each affected context actor gets `Rollback` with the last durable state. Changes that were
built on a failed one are refused when their turn comes (their version no longer follows the
stored one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pykka

from storage import (
    Append,
    ContextState,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    HoardError,
    PersistenceError,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    Store,
)

from ._events import NO_EVENTS, ContextCreated, Emitter, RecoveryPointCreated, RecoveryPointDeleted
from ._messages import (
    Close,
    Commit,
    Flush,
    Load,
    Rollback,
    SaveRecoveryPoint,
    SaveSnapshot,
    StoreCall,
    StoreWrite,
)
from ._settings import PersistenceSettings

__all__ = ["PersistenceActor"]

log = logging.getLogger(__name__)

_READS = frozenset({"load", "info", "list_ids", "count", "recovery_points", "recovery_point", "verify"})


class PersistenceActor(pykka.ThreadingActor):
    """Owns the store connection. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, store: Store, settings: PersistenceSettings, events: Emitter = NO_EVENTS) -> None:
        super().__init__()
        self.events = events
        self.store = store
        self.settings = settings
        self._pending: list[Commit] = []
        self._flush_queued = False
        self._timer: threading.Timer | None = None
        self._durable: dict[str, ContextState] = {}  # last committed state of each active context
        self._since_snapshot: dict[str, int] = {}
        self._closed = False
        self.stats = {"commits": 0, "changes": 0, "failed_commits": 0, "snapshots": 0, "max_batch": 0}
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Commit: self._on_commit,
            Flush: lambda _m: self._flush(),
            Load: self._on_load,
            SaveSnapshot: self._on_save_snapshot,
            SaveRecoveryPoint: self._on_save_recovery_point,
            StoreCall: self._on_store_call,
            StoreWrite: self._on_store_write,
            Close: self._on_close,
        }

    def on_receive(self, message: Any) -> Any:
        if self._closed and not isinstance(message, (Close, Flush)):
            error = PersistenceError(f"store {self.store.location!r} is closed")
            if isinstance(message, Commit | SaveSnapshot | SaveRecoveryPoint) and message.reply is not None:
                message.reply.fail(error)
                return None
            raise error
        return self._handlers[type(message)](message)

    def on_stop(self) -> None:
        self._cancel_timer()

    # -- group commit --------------------------------------------------------------------------------
    def _on_commit(self, m: Commit) -> None:
        self._pending.append(m)
        if not self._flush_queued:
            self._flush_queued = True
            if self.settings.durability == "deferred" and m.reply is None:
                self._timer = threading.Timer(self.settings.flush_interval, self._timer_fired)
                self._timer.daemon = True
                self._timer.start()
            else:
                self.actor_ref.tell(Flush())

    def _timer_fired(self) -> None:
        try:
            self.actor_ref.tell(Flush())
        except pykka.ActorDeadError:
            pass  # stopped meanwhile; Close already committed everything

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tip(self, context_id: str) -> int:
        durable = self._durable.get(context_id)
        if durable is not None:
            return durable.version
        info = self.store.info(context_id)
        return 0 if info is None else info.version

    def _flush(self) -> None:
        self._flush_queued = False
        self._cancel_timer()
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self._commit_batch(batch)
        except Exception as exc:  # noqa: BLE001 - a told message: nothing may escape, no caller may hang
            log.exception("group commit failed unexpectedly")
            error = PersistenceError(f"commit to {self.store.location!r} failed: {exc!r}")
            for m in batch:
                self._fail(m, error)  # those already answered keep their answer
            for cell in {id(m.cell): m.cell for m in batch}.values():
                try:
                    self._rollback(cell)
                except Exception:  # noqa: BLE001
                    log.exception("rollback of %r failed", cell.id)

    def _commit_batch(self, batch: list[Commit]) -> None:
        ops: list[Any] = []
        accepted: list[Commit] = []
        tips: dict[str, int] = {}
        counts = dict(self._since_snapshot)
        for m in batch:
            cid = m.cell.id
            tip = tips.get(cid)
            if tip is None:
                tip = self._tip(cid)
            if m.change.version != tip + 1:
                # built on a change that failed to commit (and was rolled back): refuse it
                self._fail(m, PersistenceError(
                    f"change v{m.change.version} of {cid!r} was built on a change that failed to commit; "
                    f"the context is back at v{tip}; retry", context_id=cid))
                continue
            tips[cid] = m.change.version
            ops.append(Append(cid, m.change))
            accepted.append(m)
            n = counts.get(cid, 0) + 1
            if n >= self.settings.snapshot_every:
                ops.append(PutSnapshot(m.state))
                n = 0
            counts[cid] = n
        if not ops:
            return
        try:
            self.store.commit(ops)
        except Exception as exc:
            self.stats["failed_commits"] += 1
            error = exc if isinstance(exc, PersistenceError) else PersistenceError(
                f"commit to {self.store.location!r} failed: {exc!r}")
            log.error("group commit of %d changes failed: %s", len(accepted), error)
            for m in accepted:
                self._fail(m, PersistenceError(str(error), context_id=m.cell.id))
            for cell in {id(m.cell): m.cell for m in accepted}.values():
                self._rollback(cell)
            return
        self.stats["commits"] += 1
        self.stats["changes"] += len(accepted)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(accepted))
        self._since_snapshot = counts
        for m in accepted:
            if m.cell.id in self._durable or m.cell.closed is False:
                self._durable[m.cell.id] = m.state
            if m.publish:
                m.cell.state = m.state  # publish before answering: the caller then reads its own write
            if m.event is not None:
                self.events.emit(m.event)
            if m.reply is not None:
                m.reply.resolve(m.result)

    @staticmethod
    def _fail(m: Commit, error: HoardError) -> None:
        if m.reply is not None:
            m.reply.fail(error)

    def _rollback(self, cell: Any) -> None:
        durable = self._durable.get(cell.id)
        if durable is None:
            durable = self.store.load(cell.id)
        if durable is None or cell.actor_ref is None:
            return
        try:
            cell.actor_ref.tell(Rollback(durable))
        except pykka.ActorDeadError:
            pass  # passivated meanwhile: the next activation loads the durable state anyway

    # -- requests that see every change accepted before them -----------------------------------------
    def _on_load(self, m: Load) -> ContextState | None:
        self._flush()
        state = self.store.load(m.context_id)
        if state is None and m.create is not None:
            self.store.commit([CreateContext(m.create)])
            state = m.create
            self.events(ContextCreated, state.id)
        if state is not None:
            self._durable[m.context_id] = state
            info = self.store.info(m.context_id)
            self._since_snapshot[m.context_id] = 0 if info is None else state.version - info.snapshot_version
        return state

    def _on_save_snapshot(self, m: SaveSnapshot) -> None:
        """Snapshot on passivation. Afterwards the context is no longer tracked here."""
        self._flush()
        cid = m.state.id
        try:
            if self.settings.durability == "none":
                target: ContextState | None = m.state  # a checkpoint of changes never journaled
            else:
                # never snapshot what was not committed: the last durable state is what is stored
                target = self._durable.get(cid)
            if target is not None and self.store.info(cid) is not None:
                self.store.commit([PutSnapshot(target)])
                self.stats["snapshots"] += 1
        except HoardError as exc:
            if m.reply is not None:
                m.reply.fail(exc)
                return
            raise
        finally:
            self._durable.pop(cid, None)
            self._since_snapshot.pop(cid, None)
        if m.reply is not None:
            m.reply.resolve(None)

    def _on_save_recovery_point(self, m: SaveRecoveryPoint) -> None:
        self._flush()
        st = m.state
        try:
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
            if m.reply is not None:
                m.reply.fail(exc)
            return
        self.events(RecoveryPointCreated, st.id, version=st.version, rp_id=rp.id, label=rp.label)
        if m.reply is not None:
            m.reply.resolve(rp)

    def _on_store_call(self, m: StoreCall) -> Any:
        if m.method not in _READS:
            raise PersistenceError(f"not a store read: {m.method!r}")
        self._flush()
        return getattr(self.store, m.method)(*m.args)

    def _on_store_write(self, m: StoreWrite) -> None:
        self._flush()
        self.store.commit(list(m.ops))
        for op in m.ops:
            if isinstance(op, DeleteContext):
                self._durable.pop(op.context_id, None)
                self._since_snapshot.pop(op.context_id, None)
            elif isinstance(op, CreateContext):
                self.events(ContextCreated, op.state.id)
            elif isinstance(op, DeleteRecoveryPoint):
                self.events(RecoveryPointDeleted, op.context_id, rp_id=op.rp_id)

    def _on_close(self, _m: Close) -> None:
        if self._closed:
            return
        try:
            self._flush()
        finally:
            self._closed = True
            self._cancel_timer()
            self.store.close()
