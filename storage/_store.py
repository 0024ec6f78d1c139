"""The `Store` protocol: what the persistence actor needs from a place to keep contexts.

A store is synchronous and single-threaded: one owner (the persistence actor, or the CLI) calls it,
one call at a time. It holds, per context, a chain of snapshots and a journal of the changes after
them, plus recovery points. `commit()` applies a batch of operations in **one transaction** with one
sync (group commit); either all of them are durable afterwards or none is.

Operations are frozen attrs classes (`Put*`, `Append`, `Delete*`) so that batches can be built in one
thread and committed in another; `context_of(op)` names the context an operation touches.

The read interface (every store offers it, a writer or a read-only one): `contexts()` lists what is
stored with versions and sizes, `journal()` reads one context's journal between two versions as
`JournalEntry` records, `snapshot_versions()` lists its snapshots, `state_at()` rebuilds the state at a
stored version, `stats()` counts rows and bytes. Each call reads one consistent snapshot of the store
(one read transaction), so a reader never sees half of a concurrent commit. A reader that makes
several calls and needs them to agree (a listing and its totals, a journal and the snapshots it starts
from) opens a `read_view()`: every read through the view sees the same snapshot, whatever commits
meanwhile (see `Store.read_view` for what that costs each backend).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from ._model import Change, ContextState, RecoveryPoint

if TYPE_CHECKING:
    from ._feed import FeedEntry
    from ._retention import HistoryPolicy

__all__ = [
    "Append",
    "CreateContext",
    "DeleteContext",
    "DeleteRecoveryPoint",
    "JournalEntry",
    "Op",
    "PutRecoveryPoint",
    "PutSnapshot",
    "ReadView",
    "SetTTL",
    "Store",
    "StoreStats",
    "StoredContext",
    "VerifyIssue",
    "context_of",
]


@attrs.frozen
class CreateContext:
    """Create a context at `state` (version 1), made `by` whom (recorded in the change feed). Fails the
    batch if it exists."""

    state: ContextState
    by: str | None = None


@attrs.frozen
class Append:
    """Append one journal entry; `change.version` must be one past the context's stored version."""

    context_id: str
    change: Change


@attrs.frozen
class PutSnapshot:
    """Store a snapshot of `state` and drop the journal entries no snapshot still needs (the store
    keeps the newest two snapshots). A `state` ahead of the stored version is a *checkpoint* of changes
    that were never journaled (durability "none"): it becomes the stored version and replaces every
    older snapshot and journal entry."""

    state: ContextState


@attrs.frozen
class PutRecoveryPoint:
    """Store a recovery point. `rp.id` must be the next id of the context's sequence; afterwards at
    most `keep` points remain (the oldest go first, never this one)."""

    rp: RecoveryPoint
    keep: int


@attrs.frozen
class DeleteRecoveryPoint:
    context_id: str
    rp_id: int


@attrs.frozen
class DeleteContext:
    """Delete a context with its snapshots, journal and recovery points; the change feed records the
    deletion (see `hoard.storage._feed`) made `by` whom, at `at` (seconds since the epoch; default:
    when the op was made), as version ``version + 1`` where `version` is the context's version when
    it was deleted (None: the deleter did not know it; the entry's version is then 0)."""

    context_id: str
    version: int | None = None
    by: str | None = None
    at: float = attrs.field(factory=time.time, eq=False)


@attrs.frozen
class SetTTL:
    """Give a context its own time to live in seconds since its last change (None: use the
    system's default). An expired context is deleted by the system when it is inactive."""

    context_id: str
    ttl: float | None


Op = CreateContext | Append | PutSnapshot | PutRecoveryPoint | DeleteRecoveryPoint | DeleteContext | SetTTL


def context_of(op: Op) -> str:
    """The id of the context a store operation touches (every `Op` touches exactly one)."""
    if isinstance(op, (PutSnapshot, CreateContext)):
        return op.state.id
    if isinstance(op, PutRecoveryPoint):
        return op.rp.context_id
    return op.context_id


@attrs.frozen
class StoredContext:
    """What the store knows of a context without loading it. `stored_bytes` is what its snapshots
    and journal entries take in the store (encoded; 0 in a memory store); recovery points are not
    in it (`StoreStats.recovery_point_bytes` counts theirs). `ttl` is its own time to live (`SetTTL`;
    None: the system's default applies)."""

    id: str
    version: int
    created_at: float
    updated_at: float
    snapshot_version: int
    journal_entries: int
    next_rp_id: int
    recovery_points: int
    stored_bytes: int
    ttl: float | None = None


@attrs.frozen
class JournalEntry:
    """One stored journal entry, decoded and verified: the change that produced `version`.

    Attributes:
        context_id: the context.
        version: the version this change produced.
        at: seconds since the epoch of the change (the state's `updated_at` at `version`).
        changed: data keys set by the change, sorted (for a restore: every key of the restored data).
        removed: data keys removed, sorted (for a restore: none; compare with the state before).
        metadata_changed: whether the change touched metadata.
        replaced: the change replaced data and metadata wholesale (a restore).
        change: the change itself (`apply_change(state_before, change)` gives the state at `version`).
    """

    context_id: str
    version: int
    at: float
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    metadata_changed: bool
    replaced: bool
    change: Change

    @classmethod
    def of(cls, context_id: str, change: Change) -> JournalEntry:
        return cls(context_id, change.version, change.at, tuple(sorted(change.data_set)),
                   tuple(sorted(change.data_del)), bool(change.meta_set or change.meta_del or change.replace),
                   change.replace, change)


@attrs.frozen
class StoreStats:
    """Counts and sizes of what a store holds (`Store.stats()`); bytes are stored (encoded) bytes."""

    location: str
    contexts: int
    snapshots: int
    journal_entries: int
    recovery_points: int
    quarantined: int
    snapshot_bytes: int
    journal_bytes: int
    recovery_point_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.snapshot_bytes + self.journal_bytes + self.recovery_point_bytes


@attrs.frozen
class VerifyIssue:
    """One inconsistency found by `Store.verify()`."""

    context_id: str | None
    what: str  # "snapshot", "journal", "recovery_point", "context", "store"
    problem: str
    fixed: bool = False


@runtime_checkable
class ReadView(Protocol):
    """The reads of a store. A `Store` is one (each call its own consistent snapshot); the view that
    `Store.read_view()` gives is one whose calls all share a single snapshot."""

    #: human-readable location, for messages
    location: str

    def load(self, context_id: str) -> ContextState | None:
        """The newest state: newest valid snapshot plus journal replay; None if the context does not
        exist. Raises `CorruptStateError` if it cannot be rebuilt."""

    def info(self, context_id: str) -> StoredContext | None:
        """Stored facts about a context without decoding it; None if absent."""

    def list_ids(self, prefix: str = "") -> list[str]:
        """Ids of all stored contexts (sorted), optionally only those starting with `prefix`."""

    def count(self) -> int:
        """Number of stored contexts."""

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        """The context's recovery points, oldest first."""

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        """One recovery point, or None."""

    # -- the read interface: each call reads one consistent snapshot of the store --------------------
    def contexts(self, prefix: str = "") -> list[StoredContext]:
        """Every stored context whose id starts with `prefix`, sorted by id, with its stored version,
        snapshot and journal counts and stored bytes. No blob is decoded."""

    def journal(self, context_id: str, after: int = 0, upto: int | None = None) -> list[JournalEntry]:
        """The stored journal entries of a context with ``after < version <= upto`` (`upto` None: the
        acknowledged version), oldest first, each verified. The journal reaches back only to the
        older kept snapshot. Raises `ContextNotFoundError`, or `CorruptStateError` for a damaged entry."""

    def snapshot_versions(self, context_id: str) -> list[int]:
        """The versions of the context's stored snapshots, oldest first (no blob is decoded).
        Raises `ContextNotFoundError`."""

    def state_at(self, context_id: str, version: int) -> ContextState:
        """The context's state at a stored `version`, rebuilt from the newest valid snapshot or
        recovery point at or before it plus the journal. Raises `ContextNotFoundError`, or
        `VersionNotStoredError` when the store keeps nothing that rebuilds `version`."""

    def stats(self) -> StoreStats:
        """Row counts and stored bytes of the whole store."""

    # -- the change feed (see `hoard.storage._feed`) --------------------------------------------------
    def feed(self, after: int = 0, limit: int = 1000) -> list[FeedEntry]:
        """At most `limit` feed entries with offset > `after`, by offset (commit order across every
        context; no gap: an entry below one returned is never committed later). One consistent read.
        Raises `FeedTruncatedError` when retention removed entries after `after`."""

    def feed_bounds(self) -> tuple[int, int]:
        """``(floor, head)``: entries up to `floor` were pruned; `head` is the newest offset."""

    def consumers(self) -> dict[str, int]:
        """Every registered feed consumer and the offset it committed."""

    def read_view(self) -> AbstractContextManager[ReadView]:
        """``with store.read_view() as view:``: every read through `view` sees one snapshot of the
        store, taken when the block starts, whatever is committed meanwhile (by this process or
        another); leave the block to see newer commits. Use `view` only inside the block, in the
        store's owner thread, and write nothing through the store while it is open.

        What it holds: SQLite: one read transaction on the store's connection (WAL: it never blocks a
        writer, nor a writer it; the WAL cannot be checkpointed past the view's snapshot meanwhile,
        so keep views short). PostgreSQL: one ``REPEATABLE READ READ ONLY`` transaction on the store's
        connection (it takes no lock that blocks writers; it keeps VACUUM from removing rows its
        snapshot can see while open). Memory: a copy of the store's index of contexts, O(contexts),
        taken between two commits (retried if one installs meanwhile; the writer never waits). Opening blocks only for
        that (one round trip on PostgreSQL). A view opened inside another one of the same store is the
        same view. An error inside the view ends it with the block (on PostgreSQL the transaction is
        aborted: later reads through the view raise `PersistenceError`). A view's own `read_view()` is
        the view itself: code that takes a `ReadView` may open one whether or not it got a view."""


@runtime_checkable
class Store(ReadView, Protocol):
    """A durable (or memory) home for contexts. See the module docstring for the threading rule."""

    #: the history policy recorded in the store (read on open; see `hoard.storage._retention`)
    history_policy: HistoryPolicy

    def open(self) -> None:
        """Open for writing. Raises `StoreLockedError` at once if another writer has it open,
        `CorruptStateError` if it is not a hoard store or of a newer format."""

    def close(self) -> None:
        """Release everything. Idempotent."""

    def commit(self, ops: Sequence[Op]) -> None:
        """Apply `ops` in order, in one transaction. Raises `PersistenceError` (nothing applied)."""

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        """Ids of contexts whose last change (`updated_at`) is older than their TTL at `now` (seconds
        since the epoch): their own TTL, else `default_ttl` (None: no default). At most `limit`."""

    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        """Every inconsistency found; with `fix`, repaired where no acknowledged data is lost."""

    # -- the change feed, writes (see `hoard.storage._feed`) -------------------------------------------
    def set_consumer(self, name: str, position: int | None = None) -> int:
        """A write: register consumer `name` (new: at the floor) and, with `position`, record the
        offset it processed (never backwards, never past the head: `InvalidValueError`). Returns
        its position. Retention keeps every entry a registered consumer has not passed."""

    def remove_consumer(self, name: str) -> None:
        """A write: forget consumer `name`."""

    # -- the history policy (see `hoard.storage._retention`) ------------------------------------------
    def set_history(self, policy: HistoryPolicy) -> None:
        """A write: record the history policy in the store; compaction follows it from now on."""

    def compact_history(self) -> int:
        """A write: apply the recorded history policy to every context now; rows removed."""

    def vacuum(self) -> None:
        """A write (maintenance): give the space of deleted rows back. SQLite: ``VACUUM`` and a WAL
        checkpoint that truncates the WAL, under the writer lock (the file shrinks). PostgreSQL:
        ``VACUUM (ANALYZE)`` of the store's tables, which marks dead rows reusable and refreshes the
        planner's statistics without blocking other writers (not ``VACUUM FULL``, whose exclusive
        table locks would stop every running system: the files keep their size). Memory: nothing.
        Runs in the caller's thread and blocks until done; changes no context."""

    def reader(self) -> Store:
        """A read-only store on the same data for another thread (its own connection), unopened
        (the memory store returns itself: its reads are safe from any thread)."""
