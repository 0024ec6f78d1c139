"""`MemoryStore`: a store in this process's memory, for tests and ``durability="none"``.

It keeps, per context, what a durable store keeps, as objects instead of blobs: the newest state, the
newest two snapshots, the journal after the older one, the recovery points and the TTL. It follows the
`Store` contract exactly (version-checked appends, all-or-nothing batches, recovery point sequence and
trimming) and offers the same read interface, so code tested on it behaves the same on SQLite. Nothing
is encoded, so nothing can be damaged: `verify()` finds nothing. Nothing survives the process.

Each context's rows are persistent maps (`immutables.Map`): a batch stages the contexts it touches
without copying the others, and a failing batch leaves everything as it was. Not thread-safe: one
owner thread at a time. A commit installs its batch between two steps of a sequence counter (odd
while installing); `read_view()` copies the index of contexts and retries until the counter was even
and unchanged around the copy (a seqlock: the writer never waits), so a view from another thread
(`reader()` is the store itself) never sees half a batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import attrs
import immutables

from ._errors import (
    ContextNotFoundError,
    FeedTruncatedError,
    InvalidValueError,
    PersistenceError,
    VersionNotStoredError,
)
from ._feed import (
    DEFAULT_FEED_RETENTION,
    PRUNE_EVERY,
    FeedEntry,
    check_retention,
    consumer_position,
    creation_change,
    deletion_change,
    prune_floor,
)
from ._model import Change, ContextState, RecoveryPoint, apply_change
from ._retention import RECOVERY, HistoryPolicy, history_base, rebuildable
from ._store import (
    Append,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    JournalEntry,
    Op,
    PutRecoveryPoint,
    PutSnapshot,
    ReadView,
    SetTTL,
    StoredContext,
    StoreStats,
    VerifyIssue,
    context_of,
)
from ._values import validate_id

__all__ = ["MemoryStore"]

_EMPTY: immutables.Map[int, object] = immutables.Map()  # immutable: one shared default is safe


@attrs.frozen
class _Context:
    """Everything kept for one context."""

    state: ContextState
    next_rp: int = 1
    ttl: float | None = None
    snapshots: immutables.Map[int, ContextState] = _EMPTY  # type: ignore[assignment]
    journal: immutables.Map[int, Change] = _EMPTY  # type: ignore[assignment]
    rps: immutables.Map[int, RecoveryPoint] = _EMPTY  # type: ignore[assignment]


def _trimmed(ctx: _Context, policy: HistoryPolicy, now: float) -> _Context:
    """`ctx` without the snapshots and journal entries the history policy lets go as of `now`."""
    versions = sorted(ctx.snapshots)
    base = history_base(policy, versions, ctx.state.version, now, lambda v: ctx.snapshots[v].updated_at)
    if base == versions[0]:
        return ctx
    return attrs.evolve(ctx, snapshots=immutables.Map({v: ctx.snapshots[v] for v in versions if v >= base}),
                        journal=immutables.Map({v: c for v, c in ctx.journal.items() if v > base}))



def _appended(cur: _Context, op: Append) -> _Context:
    """`cur` with `op`'s change applied and journaled; `PersistenceError` unless it follows the stored
    version. Built directly, not by ``attrs.evolve`` (which looks the class's fields up on every call:
    a fifth of a durable set's CPU on this store, yappi)."""
    change = op.change
    if cur.state.version + 1 != change.version:
        raise PersistenceError(f"journal entry {change.version} for {op.context_id!r} does not follow stored "
                               f"version {cur.state.version}", context_id=op.context_id)
    return _Context(apply_change(cur.state, change), cur.next_rp, cur.ttl, cur.snapshots,
                    cur.journal.set(change.version, change), cur.rps)

class MemoryStore:
    """Contexts kept in a dict. See the module docstring."""

    def __init__(self, *, feed: bool = True, feed_retention: int = DEFAULT_FEED_RETENTION) -> None:
        self.location = ":memory:"
        self._contexts: dict[str, _Context] = {}
        self.feed_enabled = feed
        self.history_policy: HistoryPolicy = RECOVERY
        self.feed_retention = check_retention(feed_retention)
        # the change feed: (floor, entries after it). The writer only appends to the list (one C call
        # under the GIL) or replaces the whole pair when it prunes, so a reader in another thread
        # takes one consistent pair without a lock; entries at or below the floor were pruned
        self._view: tuple[int, list[FeedEntry]] = (0, [])
        self._head = 0
        self._since_prune = 0
        self._consumers: dict[str, int] = {}
        self._seq = 0  # odd while a commit installs its batch (see the module docstring)

    def __repr__(self) -> str:
        return "MemoryStore()"

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def commit(self, ops: Sequence[Op]) -> None:
        staged: dict[str, _Context | None] = {}  # the touched contexts after the batch (None: deleted)
        for op in ops:
            cid = op.context_id if type(op) is Append else context_of(op)
            cur = staged[cid] if cid in staged else self._contexts.get(cid)
            staged[cid] = self._apply(cur, op, self.history_policy)
        self._seq += 1  # installing: a read_view() copying now retries
        try:
            for cid, ctx in staged.items():  # all or nothing: applied only once every op held
                if ctx is None:
                    self._contexts.pop(cid, None)
                else:
                    self._contexts[cid] = ctx
            if self.feed_enabled:
                self._append_feed(ops)
        finally:
            self._seq += 1

    def _append_feed(self, ops: Sequence[Op]) -> None:
        added = []
        for op in ops:
            if type(op) is Append:  # nearly every op: no isinstance chain, no context_of call
                self._head += 1
                added.append(FeedEntry.of(self._head, op.context_id, op.change))
                continue
            change = creation_change(op) if isinstance(op, CreateContext) \
                else deletion_change(op) if isinstance(op, DeleteContext) else None
            if change is not None:
                self._head += 1
                added.append(FeedEntry.of(self._head, context_of(op), change, deleted=isinstance(op, DeleteContext)))
        if added:
            old_floor, feed = self._view
            feed.extend(added)
            self._since_prune += len(added)
            if self._since_prune >= PRUNE_EVERY:  # as often as the durable stores prune
                self._since_prune = 0
                floor = prune_floor(self._head, old_floor, list(self._consumers.values()), self.feed_retention)
                if floor > old_floor:
                    self._view = (floor, feed[floor - old_floor:])  # offsets are contiguous from old_floor + 1

    @staticmethod
    def _apply(cur: _Context | None, op: Op, policy: HistoryPolicy) -> _Context | None:  # noqa: PLR0911, PLR0912 - one branch per kind of op
        if type(op) is Append and cur is not None:  # nearly every op: before the isinstance chain
            return _appended(cur, op)
        if isinstance(op, CreateContext):
            validate_id(op.state.id)  # like every store: a malformed id never gets in
            if cur is not None:
                raise PersistenceError(f"context {op.state.id!r} already exists in the store", context_id=op.state.id)
            return _Context(op.state, snapshots=immutables.Map({op.state.version: op.state}), journal=immutables.Map())
        if isinstance(op, DeleteContext):
            return None
        cid = context_of(op)
        if isinstance(op, DeleteRecoveryPoint):
            return cur if cur is None else attrs.evolve(cur, rps=cur.rps.delete(op.rp_id) if op.rp_id in cur.rps
                                                        else cur.rps)
        if cur is None:
            what = "journal entry for" if isinstance(op, Append) else "snapshot of" if isinstance(op, PutSnapshot) \
                else "context"
            raise PersistenceError(f"{what} {cid!r}, which is not in the store", context_id=cid)
        if isinstance(op, Append):
            return _appended(cur, op)
        if isinstance(op, PutSnapshot):
            if cur.state.version < op.state.version:  # checkpoint of unjournaled changes (durability none)
                return attrs.evolve(cur, state=op.state, snapshots=immutables.Map({op.state.version: op.state}),
                                    journal=immutables.Map())
            return _trimmed(attrs.evolve(cur, snapshots=cur.snapshots.set(op.state.version, op.state)), policy,
                            op.state.updated_at)
        if isinstance(op, PutRecoveryPoint):
            if cur.next_rp != op.rp.id:
                raise PersistenceError(f"recovery point id {op.rp.id} out of sequence", context_id=cid)
            rps = cur.rps.set(op.rp.id, op.rp)
            for old in sorted(rps)[: max(0, len(rps) - max(1, op.keep))]:
                rps = rps.delete(old)
            return attrs.evolve(cur, rps=rps, next_rp=op.rp.id + 1)
        if isinstance(op, SetTTL):
            return attrs.evolve(cur, ttl=op.ttl)
        raise TypeError(f"unknown store operation {op!r}")  # pragma: no cover - the Op union is closed

    def load(self, context_id: str) -> ContextState | None:
        ctx = self._contexts.get(context_id)
        return None if ctx is None else ctx.state

    def info(self, context_id: str) -> StoredContext | None:
        ctx = self._contexts.get(context_id)
        return None if ctx is None else self._summary(ctx)

    @staticmethod
    def _summary(ctx: _Context) -> StoredContext:
        st = ctx.state
        return StoredContext(st.id, st.version, st.created_at, st.updated_at, max(ctx.snapshots, default=0),
                             len(ctx.journal), ctx.next_rp, len(ctx.rps), 0, ctx.ttl)

    def list_ids(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._contexts if k.startswith(prefix))

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        out = []
        for cid, ctx in sorted(self._contexts.items(), key=lambda kv: kv[1].state.updated_at):
            ttl = default_ttl if ctx.ttl is None else ctx.ttl
            if ttl is not None and ctx.state.updated_at + ttl < now:
                out.append(cid)
                if len(out) >= limit:
                    break
        return out

    def count(self) -> int:
        return len(self._contexts)

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        ctx = self._contexts.get(context_id)
        return [] if ctx is None else [ctx.rps[k] for k in sorted(ctx.rps)]

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        ctx = self._contexts.get(context_id)
        return None if ctx is None else ctx.rps.get(rp_id)

    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        return []

    # -- the read interface ------------------------------------------------------------------------
    def _context(self, context_id: str) -> _Context:
        validate_id(context_id)
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise ContextNotFoundError(context_id)
        return ctx

    def contexts(self, prefix: str = "") -> list[StoredContext]:
        return [self._summary(self._contexts[cid]) for cid in self.list_ids(prefix)]

    def journal(self, context_id: str, after: int = 0, upto: int | None = None) -> list[JournalEntry]:
        ctx = self._context(context_id)
        hi = ctx.state.version if upto is None else upto
        return [JournalEntry.of(context_id, ctx.journal[v]) for v in sorted(ctx.journal) if after < v <= hi]

    def snapshot_versions(self, context_id: str) -> list[int]:
        return sorted(self._context(context_id).snapshots)

    def state_at(self, context_id: str, version: int) -> ContextState:
        ctx = self._context(context_id)
        bases = {**{rp.version: rp.state for rp in ctx.rps.values()}, **dict(ctx.snapshots.items())}
        if isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= ctx.state.version:
            for base in sorted((v for v in bases if v <= version), reverse=True):
                st = bases[base]
                while st.version < version and st.version + 1 in ctx.journal:
                    st = apply_change(st, ctx.journal[st.version + 1])
                if st.version == version:
                    return st
        ranges = rebuildable(bases, ctx.journal.__contains__, ctx.state.version)
        raise VersionNotStoredError(context_id, version, oldest=ranges[-1][0] if ranges else None,
                                    newest=ranges[-1][1] if ranges else None, also=tuple(ranges[:-1]))

    # -- the change feed ---------------------------------------------------------------------------
    def feed(self, after: int = 0, limit: int = 1000) -> list[FeedEntry]:
        if type(after) is not int or after < 0 or type(limit) is not int or limit < 1:
            raise InvalidValueError("after", f"the feed is read after an offset >= 0 (got {after!r}) in batches "
                                             f"of at least 1 (got {limit!r})")
        floor, feed = self._view  # one consistent value (replaced whole by the writer)
        if after < floor:
            raise FeedTruncatedError(after, floor)
        # offsets are contiguous from floor + 1; a view shares the writer's list and stops at its head
        return feed[after - floor:max(0, min(after - floor + limit, self._head - floor))]

    def feed_bounds(self) -> tuple[int, int]:
        return self._view[0], self._head

    def consumers(self) -> dict[str, int]:
        return dict(self._consumers)

    def set_consumer(self, name: str, position: int | None = None) -> int:
        pos = consumer_position(name, self._consumers.get(name), position, self._view[0], self._head)
        self._consumers = {**self._consumers, name: pos}
        return pos

    def remove_consumer(self, name: str) -> None:
        self._consumers = {k: v for k, v in self._consumers.items() if k != name}

    def set_history(self, policy: HistoryPolicy) -> None:
        """Record the history policy (see `hoard.storage._retention`)."""
        self.history_policy = HistoryPolicy.parse(policy)

    def compact_history(self) -> int:
        """Apply the history policy to every context now; returns how many rows went."""
        gone = 0
        for cid, ctx in list(self._contexts.items()):
            new = _trimmed(ctx, self.history_policy, time.time())
            gone += len(ctx.snapshots) - len(new.snapshots) + len(ctx.journal) - len(new.journal)
            self._contexts[cid] = new
        return gone

    def vacuum(self) -> None:
        """Nothing to give back: deleted entries are freed by the garbage collector."""

    @contextlib.contextmanager
    def read_view(self) -> Iterator[ReadView]:
        """See `Store.read_view`: a frozen copy of this store (its index of contexts copied, O(contexts);
        the contexts themselves are immutable and shared), retried while a commit installs a batch,
        so it never holds half of one. Any thread; the writer never waits for it."""
        while True:
            seq = self._seq
            if seq % 2 == 0:
                copied = {**self.__dict__, "_contexts": dict(self._contexts)}
                if self._seq == seq:
                    break
            time.sleep(0)  # a commit is installing (or just did): let its thread finish before retrying
        view = MemoryStore.__new__(MemoryStore)
        view.__dict__.update(copied)
        yield view

    def reader(self) -> MemoryStore:
        """This store itself: its reads take one consistent immutable value, safe from any thread."""
        return self

    def stats(self) -> StoreStats:
        ctxs = self._contexts.values()
        return StoreStats(self.location, len(self._contexts), sum(len(c.snapshots) for c in ctxs),
                          sum(len(c.journal) for c in ctxs), sum(len(c.rps) for c in ctxs), 0, 0, 0, 0)
