"""`MemoryStore`: a store in this process's memory, for tests and ``durability="none"``.

It keeps the newest state of each context (journal entries are applied as they are committed) and its
recovery points. It follows the `Store` contract exactly (version-checked appends, all-or-nothing
batches, recovery point sequence and trimming), so code tested on it behaves the same on SQLite.
Nothing survives the process. Not thread-safe: one owner thread at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import PersistenceError
from ._model import ContextState, RecoveryPoint, apply_change
from ._store import (
    Append,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    Op,
    PutRecoveryPoint,
    PutSnapshot,
    SetTTL,
    StoredContext,
    VerifyIssue,
)
from ._values import validate_id

__all__ = ["MemoryStore"]


class MemoryStore:
    """Contexts kept in a dict. See the module docstring."""

    def __init__(self) -> None:
        self.location = ":memory:"
        self._states: dict[str, ContextState] = {}
        self._next_rp: dict[str, int] = {}
        self._rps: dict[str, dict[int, RecoveryPoint]] = {}
        self._snapshot_version: dict[str, int] = {}
        self._journal: dict[str, int] = {}
        self._ttls: dict[str, float | None] = {}

    def __repr__(self) -> str:
        return "MemoryStore()"

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def commit(self, ops: Sequence[Op]) -> None:  # noqa: PLR0912 - one flat branch per case of the format; split, its rules would scatter
        # stage on copies so that a failing op leaves everything as it was (all or nothing)
        states, next_rp = dict(self._states), dict(self._next_rp)
        rps = {k: dict(v) for k, v in self._rps.items()}
        snaps, journal = dict(self._snapshot_version), dict(self._journal)
        ttls = dict(self._ttls)
        for op in ops:
            if isinstance(op, Append):
                cur = states.get(op.context_id)
                if cur is None or cur.version + 1 != op.change.version:
                    raise PersistenceError(f"journal entry {op.change.version} for {op.context_id!r} does not "
                                           f"follow stored version {cur.version if cur else None}",
                                           context_id=op.context_id)
                states[op.context_id] = apply_change(cur, op.change)
                journal[op.context_id] = journal.get(op.context_id, 0) + 1
            elif isinstance(op, CreateContext):
                validate_id(op.state.id)  # like every store: a malformed id never gets in
                if op.state.id in states:
                    raise PersistenceError(f"context {op.state.id!r} already exists in the store",
                                           context_id=op.state.id)
                states[op.state.id] = op.state
                next_rp[op.state.id] = 1
                snaps[op.state.id] = op.state.version
                journal[op.state.id] = 0
            elif isinstance(op, PutSnapshot):
                cur = states.get(op.state.id)
                if cur is None:
                    raise PersistenceError(f"snapshot of {op.state.id!r}, which is not in the store",
                                           context_id=op.state.id)
                if cur.version < op.state.version:  # checkpoint of unjournaled changes (durability none)
                    states[op.state.id] = cur = op.state
                snaps[op.state.id] = op.state.version
                journal[op.state.id] = cur.version - op.state.version
            elif isinstance(op, PutRecoveryPoint):
                cid = op.rp.context_id
                if cid not in states:
                    raise PersistenceError(f"context {cid!r} is not in the store", context_id=cid)
                if next_rp[cid] != op.rp.id:
                    raise PersistenceError(f"recovery point id {op.rp.id} out of sequence", context_id=cid)
                points = rps.setdefault(cid, {})
                points[op.rp.id] = op.rp
                next_rp[cid] = op.rp.id + 1
                for old in sorted(points)[: max(0, len(points) - max(1, op.keep))]:
                    del points[old]
            elif isinstance(op, DeleteRecoveryPoint):
                rps.get(op.context_id, {}).pop(op.rp_id, None)
            elif isinstance(op, SetTTL):
                if op.context_id not in states:
                    raise PersistenceError(f"context {op.context_id!r} is not in the store", context_id=op.context_id)
                ttls[op.context_id] = op.ttl
            elif isinstance(op, DeleteContext):
                for d in (states, next_rp, rps, snaps, journal, ttls):
                    d.pop(op.context_id, None)
            else:  # pragma: no cover
                raise TypeError(f"unknown store operation {op!r}")
        self._states, self._next_rp, self._rps = states, next_rp, rps
        self._snapshot_version, self._journal = snaps, journal
        self._ttls = ttls

    def load(self, context_id: str) -> ContextState | None:
        return self._states.get(context_id)

    def info(self, context_id: str) -> StoredContext | None:
        st = self._states.get(context_id)
        if st is None:
            return None
        return StoredContext(st.id, st.version, st.created_at, st.updated_at,
                             self._snapshot_version.get(context_id, 0), self._journal.get(context_id, 0),
                             self._next_rp[context_id], len(self._rps.get(context_id, {})), 0)

    def list_ids(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._states if k.startswith(prefix))

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        out = []
        for cid, st in sorted(self._states.items(), key=lambda kv: kv[1].updated_at):
            ttl = self._ttls.get(cid)
            ttl = default_ttl if ttl is None else ttl
            if ttl is not None and st.updated_at + ttl < now:
                out.append(cid)
                if len(out) >= limit:
                    break
        return out

    def count(self) -> int:
        return len(self._states)

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        points = self._rps.get(context_id, {})
        return [points[k] for k in sorted(points)]

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        return self._rps.get(context_id, {}).get(rp_id)

    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        return []
