"""The storage engine: snapshot + journal replay, strict and fallback recovery, repair, verify and the
read interface, written once for every row store (SQLite, PostgreSQL, and whatever comes next).

A backend is its SQL and its connection handling. It implements `RowAccess` (the rows of one store,
as seen inside one transaction) and subclasses `RowStore`, providing two callbacks:

* ``_read(what, context_id, fn, transaction=True)``: run ``fn(rows)`` in **one read transaction** (a
  consistent snapshot: REPEATABLE READ on PostgreSQL, a WAL read transaction on SQLite), translating
  the driver's errors into ours. The engine passes ``transaction=False`` only when `fn` makes a single
  statement (`newest`, `summaries`, `recovery_point_rows`), which is consistent on its own: a backend
  may then spare the transaction's round trips.
* ``_repair(what, context_id, expected_version, fn)``: run ``fn(rows)`` in **one write transaction**
  that first locks the context and checks that it is still at `expected_version` and that this store
  may write it (the writer lock, the lease); returns None, writing nothing, when it may not.
* ``_read_transaction(what)``: a context manager holding one read transaction open and yielding its
  `RowAccess`, for `read_view()`. While a view is open the engine sets ``_pinned`` to those rows, and
  the backend's ``_read`` runs ``fn(self._pinned)`` in it (translating errors) instead of starting a
  transaction of its own; no repair runs then (it would write inside a read transaction).

Everything else (load, recovery, repair, verify, the read interface) is here, once. The on-disk model
(see the `SQLiteStore` module docstring): per context a row with the acknowledged version, the newest
two snapshots, the journal after the older one, recovery points, and a quarantine for rows a repair
took out of the way. Damage is handled by the store's `recovery` mode:

* ``"strict"``: `load()` raises `CorruptStateError` naming the context and the row that failed.
* ``"fallback"``: `load()` rebuilds the newest state it can from the newest valid snapshot or recovery
  point plus the contiguous valid journal after it. If that reaches the acknowledged version nothing
  was lost and the damaged rows are repaired (rewritten from the rebuild or quarantined). Otherwise the
  lost changes are named in a `RecoveryReport` and the context continues at a **new** version (one
  past the acknowledged one: versions never go backwards, and a client holding an old version gets a
  conflict instead of overwriting recovered data), written as a fresh snapshot.

Threading: a store is used by one thread at a time (see `Store`); these functions hold no state.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from ._codec import Codec
from ._errors import (
    ConfigError,
    ContextNotFoundError,
    CorruptStateError,
    FeedTruncatedError,
    InvalidValueError,
    VersionNotStoredError,
)
from ._feed import FeedEntry, feed_dict, feed_entries
from ._model import (
    Change,
    ChangeFields,
    ContextState,
    RecoveryPoint,
    apply_change,
    apply_fields,
    change_fields,
)
from ._retention import rebuildable
from ._store import JournalEntry, ReadView, StoredContext, StoreStats, VerifyIssue
from ._values import MAX_STORED_INT, validate_id

__all__ = ["FALLBACK_HINT", "RECOVERY_MODES", "RecoveryReport", "RowAccess", "RowStore", "SkippedItem"]

log = logging.getLogger(__name__)
T = TypeVar("T")

FALLBACK_HINT = "open the store with recovery='fallback' to load what can be recovered, or run verify()"
RECOVERY_MODES = ("strict", "fallback")

#: (version, blob) of a snapshot or journal row
BlobRow = tuple[int, bytes]
#: (rp_id, version, label, created_at, blob) of a recovery point row
RecoveryPointRow = tuple[int, int, str | None, float, bytes]


class RowAccess(Protocol):
    """The rows of one store inside one transaction: all a backend implements for the engine.

    Reads return rows in ascending order of version (recovery points: of id). Writes are called only
    inside `RowStore._repair`'s transaction. Context ids arrive validated.
    """

    # -- reads -------------------------------------------------------------------------------------
    def context_ids(self, prefix: str = "") -> list[str]:
        """Stored context ids starting with `prefix`, in code point order."""

    def summaries(self, prefix: str = "", context_id: str | None = None) -> list[StoredContext]:
        """`StoredContext` of every context starting with `prefix` (or of `context_id` only), by id."""

    def head(self, context_id: str) -> tuple[int, int] | None:
        """``(acknowledged version, next recovery point id)`` of a context, or None if absent."""

    def newest(self, context_id: str) -> tuple[int, BlobRow | None, list[BlobRow]] | None:
        """The acknowledged version, the newest snapshot row and the journal rows after it; None if
        the context is absent. Must be consistent by itself (the strict load's only read)."""

    def snapshot_rows(self, context_id: str) -> list[BlobRow]:
        """Every snapshot row of a context."""

    def snapshot_row(self, context_id: str, version: int) -> bytes | None:
        """The blob of its snapshot at `version`, or None if there is none (one row read)."""

    def snapshot_versions(self, context_id: str) -> list[int]:
        """The versions of its snapshot rows (no blob)."""

    def journal_rows(self, context_id: str, after: int = 0, upto: int | None = None) -> list[BlobRow]:
        """Its journal rows with ``after < version <= upto`` (`upto` None: no upper bound)."""

    def recovery_point_rows(self, context_id: str, rp_id: int | None = None) -> list[RecoveryPointRow]:
        """Its recovery point rows (or the one with `rp_id`)."""

    def orphans(self) -> list[tuple[str, str]]:
        """``(kind, context_id)`` for rows of contexts that do not exist; kind is "snapshot",
        "journal", "recovery_point" or "quarantine"."""

    def integrity_problems(self) -> list[str]:
        """Problems the database itself reports about its files (empty: none, or not checkable)."""

    def totals(self) -> StoreStats:
        """Counts and bytes of the whole store (`location` left empty)."""

    def feed_bounds(self) -> tuple[int, int]:
        """``(floor, head)`` of the change feed: every entry at or below `floor` was pruned, `head` is
        the newest offset given (both 0 for an empty feed, or a store made before the feed)."""

    def feed_rows(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        """At most `limit` feed rows ``(offset, context_id, blob)`` with offset > `after`, by offset."""

    def consumer_rows(self) -> dict[str, int]:
        """Every registered feed consumer and the offset it committed."""

    # -- writes (repair transactions only) ---------------------------------------------------------
    def write_snapshot(self, context_id: str, version: int, blob: bytes) -> None:
        """Insert or replace the snapshot row at `version`."""

    def write_recovery_point_blob(self, context_id: str, rp_id: int, blob: bytes) -> None:
        """Replace the blob of an existing recovery point row."""

    def delete_snapshot(self, context_id: str, version: int) -> None: ...

    def delete_journal(self, context_id: str, version: int) -> None: ...

    def quarantine(self, context_id: str, source: str, version: int | None, problem: str,
                   rp_id: int | None = None) -> None:
        """Move one row (`source`: "snapshot", "journal" or "recovery_point") to the quarantine."""

    def restart(self, context_id: str, state_version: int, updated_at: float, blob: bytes) -> None:
        """Delete every snapshot and journal row of a context, write one snapshot (`blob`) at
        `state_version` and make that the acknowledged version."""

    def set_next_rp_id(self, context_id: str, next_rp_id: int) -> None: ...

    def delete_orphans(self, kind: str, context_id: str) -> None:
        """Delete the `kind` rows of `context_id`, only if that context does not exist."""


# -- recovery reports ------------------------------------------------------------------------------
@attrs.frozen
class SkippedItem:
    """One stored row a fallback load could not use.

    Attributes:
        what: "snapshot", "journal" or "recovery_point".
        version: the context version the row holds (or should hold).
        problem: why it was skipped ("checksum mismatch (damaged data)", "missing", ...).
        rp_id: the recovery point id, for recovery points.
    """

    what: str
    version: int
    problem: str
    rp_id: int | None = None


@attrs.frozen
class RecoveryReport:
    """What a ``recovery="fallback"`` load did to one context whose stored data was damaged.

    Attributes:
        context_id: the context.
        acknowledged_version: the newest version the store had acknowledged.
        recovered_version: the newest version that could be rebuilt.
        version: the version the context continues from: `acknowledged_version` when nothing was
            lost, else ``acknowledged_version + 1`` (a new version holding the recovered data).
        base: what the rebuild started from ("snapshot v120", "recovery point 3 (v90)").
        skipped: every row that could not be used, in version order.
        lost_versions: the acknowledged versions whose change could not be recovered.
        repaired: whether the store was rewritten to match (False for a read-only store, or one that
            may not write the context now).
    """

    context_id: str
    acknowledged_version: int
    recovered_version: int
    version: int
    base: str
    skipped: tuple[SkippedItem, ...]
    lost_versions: tuple[int, ...]
    repaired: bool

    @property
    def lost(self) -> int:
        """How many acknowledged changes could not be recovered."""
        return len(self.lost_versions)

    def describe(self) -> str:
        """One line for a log or a CLI."""
        parts = [f"context {self.context_id!r}: rebuilt v{self.recovered_version} from {self.base}"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} unusable rows ("
                         + "; ".join(_skipped_name(s) for s in self.skipped[:5])
                         + ("; ..." if len(self.skipped) > 5 else "") + ")")
        if self.lost_versions:
            lo, hi = self.lost_versions[0], self.lost_versions[-1]
            span = f"v{lo}" if lo == hi else f"v{lo}..v{hi}"
            parts.append(f"LOST {self.lost} acknowledged changes ({span}); continuing at v{self.version}")
        else:
            parts.append("no acknowledged change lost")
        return ", ".join(parts)


def _skipped_name(s: SkippedItem) -> str:
    if s.what == "recovery_point":
        return f"recovery point {s.rp_id} (v{s.version}): {s.problem}"
    return f"{s.what} v{s.version}: {s.problem}"


# -- decoding rows -----------------------------------------------------------------------------------
def decode_state_row(codec: Codec, blob: bytes, context_id: str, what: str, version: int) -> ContextState:
    """A snapshot or recovery point row (`what` names it) that must hold `context_id` at `version`."""
    kind = "snapshot" if what.startswith("snapshot") else "recovery_point"
    try:
        state = codec.decode_state(blob, what)
    except CorruptStateError as exc:
        exc.context_id = context_id
        exc.what = kind
        raise
    if state.version != version or state.id != context_id:
        raise CorruptStateError(f"{what}: mismatch: holds {state.id!r} v{state.version}", context_id=context_id,
                                what=kind)
    return state


def decode_change_row(codec: Codec, blob: bytes, context_id: str, what: str, version: int) -> Change:
    """A journal row that must hold the change producing `version`."""
    try:
        change = codec.decode_change(blob, what)
    except CorruptStateError as exc:
        exc.context_id = context_id
        exc.what = "journal"
        raise
    if change.version != version:
        raise CorruptStateError(f"{what}: mismatch: holds v{change.version}", context_id=context_id, what="journal")
    return change


def _recovery_point(codec: Codec, context_id: str, row: RecoveryPointRow) -> RecoveryPoint:
    rp_id, version, label, created_at, blob = row
    state = decode_state_row(codec, blob, context_id, f"recovery point {rp_id} of {context_id!r}", version)
    return RecoveryPoint(rp_id, context_id, version, label, created_at, state)


def replay_strict(codec: Codec, context_id: str, stored_version: int, snapshot: BlobRow | None,
                  journal: Iterable[BlobRow]) -> ContextState:
    """The state at `stored_version`: the newest snapshot `(version, blob)` plus the journal rows after
    it, in version order. Any damage, gap or shortfall raises `CorruptStateError`."""
    if snapshot is None:
        raise CorruptStateError(f"context {context_id!r} has no snapshot; {FALLBACK_HINT}",
                                context_id=context_id, what="snapshot")
    snap_version, snap_blob = snapshot
    state = decode_state_row(codec, snap_blob, context_id, f"snapshot v{snap_version} of {context_id!r}", snap_version)
    state = apply_fields(state, _strict_fields(codec, context_id, stored_version, state.version, journal))
    if state.version != stored_version:
        raise CorruptStateError(f"context {context_id!r}: journal ends at v{state.version}, but the store "
                                f"acknowledged v{stored_version}; {FALLBACK_HINT}", context_id=context_id,
                                what="journal")
    return state


def _strict_fields(codec: Codec, context_id: str, stored_version: int, at: int, journal: Iterable[BlobRow]
                   ) -> Iterator[ChangeFields]:
    """The fields of each journal row after version `at`, decoded as `replay_strict` needs them: any
    damage, gap or row beyond `stored_version` raises `CorruptStateError`."""
    for version, blob in journal:
        if version > stored_version or version != at + 1:
            what = f"journal entry v{version} of {context_id!r}"
            if version > stored_version:
                raise CorruptStateError(f"{what}: beyond the acknowledged version v{stored_version}; "
                                        f"{FALLBACK_HINT}", context_id=context_id, what="journal")
            raise CorruptStateError(f"context {context_id!r}: version gap: journal lacks v{at + 1}"
                                    f"..v{version - 1}; {FALLBACK_HINT}", context_id=context_id, what="journal")
        yield codec.change_fields(blob, version) or _fields_of_row(codec, blob, context_id, version)
        at = version


def _fields_of_row(codec: Codec, blob: bytes, context_id: str, version: int) -> ChangeFields:
    """`change_fields` the slow way, for a row its fast path does not take (`CorruptStateError` naming
    the row if it is damaged)."""
    return change_fields(decode_change_row(codec, blob, context_id, f"journal entry v{version} of {context_id!r}",
                                           version))


# -- everything stored for one context, decoded row by row --------------------------------------------
@attrs.define
class _Row:
    """One decoded (or undecodable) blob row."""

    version: int
    state: Any = None  # ContextState for snapshots / recovery points, Change for journal entries
    problem: str | None = None
    rp_id: int | None = None

    def name(self, default: str) -> str:
        return f"recovery point {self.rp_id}" if self.rp_id is not None else f"{default} v{self.version}"


@attrs.define
class _Stored:
    """Everything stored for one context, decoded row by row (damage recorded, not raised)."""

    id: str
    version: int
    next_rp_id: int
    snapshots: list[_Row]
    journal: dict[int, _Row]
    rps: list[_Row]

    def good_journal(self, version: int) -> Change | None:
        row = self.journal.get(version)
        return row.state if row is not None and row.problem is None else None

    def chain(self, lo: int, hi: int) -> bool:
        """Whether valid journal entries lo+1..hi are all there."""
        return all(self.good_journal(v) is not None for v in range(lo + 1, hi + 1))


def _problem(exc: CorruptStateError) -> str:
    """The reason part of a codec error ("checksum mismatch (damaged data)"), without the row name."""
    msg = str(exc)
    head, sep, tail = msg.partition(": ")
    return tail if sep and (" of " in head) else msg


def _read_stored(codec: Codec, rows: RowAccess, cid: str) -> _Stored | None:
    head = rows.head(cid)
    if head is None:
        return None

    def decode(fn: Callable[..., Any], blob: bytes, what: str, version: int) -> tuple[Any, str | None]:
        try:
            return fn(codec, blob, cid, what, version), None
        except CorruptStateError as exc:
            return None, _problem(exc)

    snaps = []
    for version, blob in rows.snapshot_rows(cid):
        st, problem = decode(decode_state_row, blob, f"snapshot v{version} of {cid!r}", version)
        snaps.append(_Row(version, st, problem))
    journal = {}
    for version, blob in rows.journal_rows(cid):
        ch, problem = decode(decode_change_row, blob, f"journal entry v{version} of {cid!r}", version)
        journal[version] = _Row(version, ch, problem)
    rps = []
    for rp_id, version, _label, _created_at, blob in rows.recovery_point_rows(cid):
        st, problem = decode(decode_state_row, blob, f"recovery point {rp_id} of {cid!r}", version)
        rps.append(_Row(version, st, problem, rp_id))
    return _Stored(cid, head[0], head[1], snaps, journal, rps)


def _rebuild(stored: _Stored, wanted: set[int], upto: int | None = None
             ) -> tuple[ContextState | None, str, dict[int, ContextState]]:
    """Replay the contiguous valid journal from every valid base (snapshots, then recovery points),
    newest base first, up to `upto` (default: the acknowledged version). Returns the newest state
    reached (None if no base is valid), what it was built from, and the rebuilt states at the
    `wanted` versions that could be reached."""
    top = stored.version if upto is None else upto
    bases: list[tuple[int, int, str, ContextState]] = []
    for r in stored.snapshots:
        if r.problem is None and r.version <= top:
            bases.append((r.version, 1, f"snapshot v{r.version}", r.state))
    for r in stored.rps:
        if r.problem is None and r.version <= top:
            bases.append((r.version, 0, f"recovery point {r.rp_id} (v{r.version})", r.state))
    bases.sort(key=lambda b: (b[0], b[1]), reverse=True)
    found: dict[int, ContextState] = {}
    best: ContextState | None = None
    best_base = "nothing"
    for _version, _prio, name, base in bases:
        if best is not None and best.version >= top and wanted <= found.keys():
            break
        st = base
        if st.version in wanted:
            found.setdefault(st.version, st)
        while st.version < top:
            change = stored.good_journal(st.version + 1)
            if change is None:
                break
            st = apply_change(st, change)
            if st.version in wanted:
                found.setdefault(st.version, st)
        if best is None or st.version > best.version:
            best, best_base = st, name
    return best, best_base, found


def _skipped_rows(stored: _Stored, recovered: int, lost: tuple[int, ...]) -> list[SkippedItem]:
    """Every row a fallback recovery that reached v`recovered` could not use, in version order."""
    top = stored.version
    skipped = [SkippedItem("snapshot", r.version, r.problem or "") for r in stored.snapshots if r.problem is not None]
    skipped += [SkippedItem("recovery_point", r.version, r.problem or "", r.rp_id) for r in stored.rps
                if r.problem is not None]
    for v in sorted(stored.journal):
        r = stored.journal[v]
        if r.problem is not None and (v <= recovered or v > top):
            skipped.append(SkippedItem("journal", v, r.problem))
        elif v > top:
            skipped.append(SkippedItem("journal", v, f"beyond the acknowledged version v{top}"))
    for v in lost:
        entry = stored.journal.get(v)
        if entry is None:
            skipped.append(SkippedItem("journal", v, "missing"))
        elif entry.problem is not None:
            skipped.append(SkippedItem("journal", v, entry.problem))
        else:
            skipped.append(SkippedItem("journal", v, f"valid, but follows the unrecoverable v{lost[0]}"))
    skipped.sort(key=lambda s: (s.version, s.what))
    return skipped


# -- repairs (inside a repair transaction) -----------------------------------------------------------
def _repair_after_fallback(codec: Codec, rows: RowAccess, stored: _Stored, state: ContextState, *,
                           found: dict[int, ContextState], lost: tuple[int, ...]) -> None:
    cid = stored.id
    for r in stored.rps:
        if r.problem is not None:
            rows.quarantine(cid, "recovery_point", r.version, r.problem, r.rp_id)
    if lost:
        # start over from one snapshot of the new version; unusable rows go to quarantine
        for r in stored.snapshots:
            if r.problem is not None:
                rows.quarantine(cid, "snapshot", r.version, r.problem)
        for v, r in stored.journal.items():
            if r.problem is not None:
                rows.quarantine(cid, "journal", v, r.problem)
            elif v > lost[0]:
                rows.quarantine(cid, "journal", v, f"follows the unrecoverable v{lost[0]}")
        rows.restart(cid, state.version, state.updated_at, codec.encode_state(state))
        return
    # nothing lost: rewrite what the rebuild reproduced, set the rest aside
    for r in stored.snapshots:
        if r.problem is None:
            continue
        rebuilt = found.get(r.version)
        if rebuilt is not None:
            rows.write_snapshot(cid, r.version, codec.encode_state(rebuilt))
        else:
            rows.quarantine(cid, "snapshot", r.version, r.problem)
    _normalize(codec, rows, cid, state)


def _normalize(codec: Codec, rows: RowAccess, cid: str, state: ContextState) -> None:
    """Make the rows of a context loadable by the strict path: its newest snapshot + a contiguous valid
    journal to its acknowledged version (`state`, already rebuilt). Writes a snapshot of `state` if the
    newest one cannot reach it; drops journal entries no kept snapshot needs."""
    stored = _read_stored(codec, rows, cid)
    assert stored is not None  # the caller's transaction holds the context
    good = [r for r in stored.snapshots if r.problem is None and r.version <= stored.version]
    newest = good[-1].version if good else None
    if newest is None or not stored.chain(newest, stored.version):
        rows.write_snapshot(cid, state.version, codec.encode_state(state))
        good.append(_Row(state.version, state))
        newest = state.version
    keep = {newest}
    older = [r.version for r in good if r.version < newest]
    if older and stored.chain(older[-1], newest):
        keep.add(older[-1])
    for r in stored.snapshots:
        if r.version not in keep:
            if r.problem is None and r.version <= stored.version:
                rows.delete_snapshot(cid, r.version)
            else:  # damaged, or beyond the acknowledged version: keep it aside, never silently drop it
                rows.quarantine(cid, "snapshot", r.version, r.problem or f"beyond the acknowledged v{stored.version}")
    low = min(keep)
    for v, r in stored.journal.items():
        if low < v <= stored.version:
            continue
        if r.problem is None and v <= low:
            rows.delete_journal(cid, v)
        else:
            rows.quarantine(cid, "journal", v, r.problem or f"beyond the acknowledged v{stored.version}")


# -- verify -----------------------------------------------------------------------------------------
@attrs.define
class _Check:
    """What `_check` found in one context, and what a fix needs."""

    issues: list[tuple[str, str, bool]]  # (what, problem, fixable)
    best: ContextState | None  # the rebuilt acknowledged state, if reachable
    found: dict[int, ContextState]
    max_rp: int

    @property
    def fixable(self) -> bool:
        return any(f for _w, _p, f in self.issues)


def _check(stored: _Stored) -> _Check:  # noqa: PLR0912 - one check per kind of inconsistency, read top to bottom
    top = stored.version
    issues: list[tuple[str, str, bool]] = []

    def issue(what: str, problem: str, fixable: bool) -> None:
        issues.append((what, problem, fixable))

    bad_snaps = [r for r in stored.snapshots if r.problem is not None]
    bad_rps = [r for r in stored.rps if r.problem is not None]
    wanted = {top} | {r.version for r in bad_snaps} | {r.version for r in bad_rps}
    best, _base, found = _rebuild(stored, wanted)
    reachable = best is not None and best.version == top
    if top < 1 or stored.next_rp_id < 1:
        issue("context", f"invalid context row (version {top}, next recovery point {stored.next_rp_id})", False)
    good_snaps = [r for r in stored.snapshots if r.problem is None and r.version <= top]
    for r in stored.snapshots:
        if r.problem is not None:
            issue("snapshot", f"{r.problem} (snapshot v{r.version})", reachable)
        elif r.version > top:
            issue("snapshot", f"beyond acknowledged version: snapshot v{r.version}, context at v{top}", reachable)
    if not stored.snapshots:
        issue("snapshot", f"no snapshot for v1..v{top}", reachable)
    for v, r in stored.journal.items():
        if r.problem is not None:
            issue("journal", f"{r.problem} (journal entry v{v})", reachable)
        elif v > top:
            issue("journal", f"beyond acknowledged version: journal entry v{v}, context at v{top}", reachable)
    if stored.snapshots:  # contiguity from the oldest snapshot to the acknowledged version
        low = stored.snapshots[0].version
        missing = [v for v in range(low + 1, top + 1) if v not in stored.journal]
        if missing:
            issue("journal", f"version gap: missing journal entries {_ranges(missing)} (after snapshot "
                  f"v{low}, acknowledged v{top})", reachable)
        stale = [v for v in stored.journal if v <= low]
        if stale:
            issue("journal", f"stale entries {_ranges(stale)} already covered by snapshot v{low}", reachable)
    if good_snaps:
        newest = good_snaps[-1].version
        if not stored.chain(newest, top):
            issue("journal", f"unrecoverable: snapshot v{newest} plus the journal cannot rebuild the "
                  f"acknowledged v{top}", reachable)
        for older, newer in itertools.pairwise(good_snaps):  # an older snapshot + journal = the newer one
            if stored.chain(older.version, newer.version):
                st = older.state
                for v in range(older.version + 1, newer.version + 1):
                    st = apply_change(st, stored.journal[v].state)  # chain() checked it is valid
                if st != newer.state:
                    issue("snapshot", f"mismatch: snapshot v{newer.version} differs from snapshot "
                          f"v{older.version} plus the journal", False)
    elif not reachable and stored.snapshots:
        issue("snapshot", f"unrecoverable: no valid snapshot reaches the acknowledged v{top}", False)
    for r in stored.rps:
        if r.problem is not None:
            issue("recovery_point", f"{r.problem} (recovery point {r.rp_id})", r.version in found)
        elif r.version > top:
            issue("recovery_point", f"beyond acknowledged version: recovery point {r.rp_id} holds v{r.version}, "
                  f"context at v{top}", False)
    max_rp = max((r.rp_id or 0 for r in stored.rps), default=0)
    if max_rp >= stored.next_rp_id:
        issue("context", f"recovery point sequence: next id {stored.next_rp_id} but recovery point {max_rp} "
              "exists", True)
    return _Check(issues, best if reachable else None, found, max_rp)


def _fix(codec: Codec, rows: RowAccess, stored: _Stored, check: _Check) -> None:
    """`verify(fix=True)`'s repairs of one context, inside a repair transaction: nothing that would
    lose an acknowledged change is touched."""
    cid = stored.id
    if check.max_rp >= stored.next_rp_id:
        rows.set_next_rp_id(cid, check.max_rp + 1)
    for r in stored.rps:
        rebuilt = check.found.get(r.version) if r.problem is not None else None
        if rebuilt is not None:
            rows.write_recovery_point_blob(cid, r.rp_id or 0, codec.encode_state(rebuilt))
    if check.best is not None:
        for r in stored.snapshots:
            rebuilt = check.found.get(r.version) if r.problem is not None else None
            if rebuilt is not None:
                rows.write_snapshot(cid, r.version, codec.encode_state(rebuilt))
        _normalize(codec, rows, cid, check.best)


def _ranges(versions: Sequence[int]) -> str:
    vs = sorted(versions)
    out: list[str] = []
    start = prev = vs[0]
    for v in [*vs[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"v{start}" if start == prev else f"v{start}..v{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


# -- loading many long-lived objects -------------------------------------------------------------------
#: a load that made at least this many young-generation thresholds' worth of container objects (a
#: context of thousands of keys with nested values) hands them to the oldest generation at once
_BULK_GENERATIONS = 10


def _long_lived(load: Callable[[], T]) -> T:
    """`load()` (decoding rows already read: no I/O, so the pause is CPU time only, never a network
    wait) with the cyclic collector paused, its objects then moved to the oldest generation.

    Everything a load builds lives as long as the context stays active, and none of it forms a cycle
    (frozen JSON values, the map's trie nodes): a young collection during or after the load walks it
    all and frees nothing. The bench's 10k-key activation makes ~13,600 such objects; with the
    collector running they cost 21 young and one middle collection inside the load (2.3-2.5 ms of
    16-17 ms); with it only paused, one young collection of all of them follows the load (the rest of
    the activation grew by 1.6-2.0 ms). So the collector is off while the load decodes (an
    interpreter-wide switch, restored in the `finally`), and a load that made `_BULK_GENERATIONS`
    young thresholds' worth of objects then moves every tracked object to the oldest generation:
    ``gc.freeze()`` + ``gc.unfreeze()`` is two list splices, and resets the young count. Objects
    other threads had in the young generations then wait for the next full collection (which still
    comes: later allocations trigger collections as before). A small load promotes nothing: frequent small
    activations leave the young collections to run as usual. Nothing is done when the collector is
    already off (the application's choice, or another thread's load, which restores it); nothing is
    promoted when the application froze objects itself (``gc.freeze()`` before forking: ``unfreeze``
    would release them), nor after a load that raised (its traceback may hold cycles).
    """
    if not gc.isenabled():
        return load()
    gc.disable()
    try:
        result = load()
        threshold = gc.get_threshold()[0]
        if threshold and gc.get_count()[0] >= _BULK_GENERATIONS * threshold and gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        return result
    finally:
        gc.enable()


# -- the store on top of the engine -------------------------------------------------------------------
class RowStore:
    """The part of a store that is the same on every backend: loading (strict and fallback), recovery
    points, verify and the read interface, over the backend's `RowAccess` (see the module docstring).

    Attributes:
        codec: encodes and verifies every blob (given to the backend's constructor, or its default).
        recovery: "strict" or "fallback" (see the module docstring).
        readonly: the store never writes (no repairs; `commit` refuses).
        location: where the store is, for messages (no password).
        last_recovery_report: the report of the newest `load` that had to skip something, or None.
        last_loaded: ``(context_id, snapshot_version)`` of the newest `load`, when it read the state
            strictly from the newest snapshot plus the journal after it (what `info` would then say of
            the snapshot, without its query); None after a load that found nothing or fell back.
        recovery_reports: every report since the store was made, oldest first (a caller may clear it).
    """

    codec: Codec
    recovery: str
    readonly: bool
    location: str
    #: the rows of the open `read_view()`'s transaction (None: no view open)
    _pinned: RowAccess | None = None

    def __init__(self, codec: Codec, recovery: str, readonly: bool) -> None:
        if recovery not in RECOVERY_MODES:
            raise ConfigError(f"recovery must be one of {', '.join(map(repr, RECOVERY_MODES))}, not {recovery!r}")
        self.codec = codec
        self.recovery = recovery
        self.readonly = readonly
        self.last_recovery_report: RecoveryReport | None = None
        self.recovery_reports: list[RecoveryReport] = []
        self.last_loaded: tuple[str, int] | None = None

    # -- the backend's two transactions ------------------------------------------------------------
    def _read(self, what: str, context_id: str | None, fn: Callable[[RowAccess], T], *,
              transaction: bool = True) -> T:
        raise NotImplementedError  # pragma: no cover

    def _repair(self, what: str, context_id: str | None, expected_version: int | None,
                fn: Callable[[RowAccess], T]) -> T | None:
        raise NotImplementedError  # pragma: no cover

    def _read_transaction(self, what: str) -> contextlib.AbstractContextManager[RowAccess]:
        raise NotImplementedError  # pragma: no cover

    def list_ids(self, prefix: str = "") -> list[str]:
        raise NotImplementedError  # pragma: no cover - each backend's own query

    def count(self) -> int:
        raise NotImplementedError  # pragma: no cover - each backend's own query

    @contextlib.contextmanager
    def read_view(self) -> Iterator[ReadView]:
        """See `Store.read_view`: one read transaction held for the block (REPEATABLE READ READ ONLY
        on PostgreSQL, a WAL read transaction on SQLite), in which every read of this store runs.
        The view is the store itself, pinned to that transaction until the block ends; a fallback
        load inside it repairs nothing (`RecoveryReport.repaired` False). Caller's thread."""
        if self._pinned is not None:  # nested: the outer view's snapshot
            yield self
            return
        with self._read_transaction("read view") as rows:
            self._pinned = rows
            try:
                yield self
            finally:
                self._pinned = None

    # -- loading -----------------------------------------------------------------------------------
    def load(self, context_id: str) -> ContextState | None:
        """The newest state of a context (None if it does not exist).

        Strict: `CorruptStateError` naming the context and the row if anything fails verification.
        Fallback: rebuilds what it can and repairs the store (see the module docstring);
        `last_recovery_report` tells what was skipped (None if nothing was). The strict read sees one
        consistent snapshot of the store, also while another process writes. Runs in the caller's
        thread and blocks for the reads (and, in fallback, the repair transaction). While a strict
        load decodes what it read, the interpreter's cyclic collector is paused (for every thread;
        CPU time only, no I/O), and a large load's objects go to its oldest generation: see
        `_long_lived`.
        """
        validate_id(context_id)
        self.last_recovery_report = None
        self.last_loaded = None
        try:
            return self._read("load", context_id, lambda rows: self._load_strict(rows, context_id), transaction=False)
        except CorruptStateError as exc:
            if exc.what == "store":
                raise
            if self.recovery != "fallback":
                if FALLBACK_HINT in str(exc):
                    raise
                raise CorruptStateError(f"{exc}; {FALLBACK_HINT}", context_id=context_id, what=exc.what) from exc
            return self._load_fallback(context_id, exc)

    def _load_strict(self, rows: RowAccess, context_id: str) -> ContextState | None:
        newest = rows.newest(context_id)
        if newest is None:
            return None
        version, snapshot, journal = newest
        # the rows are read: the collector is paused for the decoding only (never over a network wait)
        state = _long_lived(lambda: replay_strict(self.codec, context_id, version, snapshot, journal))
        if snapshot is not None:  # (replay_strict refuses none)
            self.last_loaded = (context_id, snapshot[0])
        return state

    def _load_fallback(self, context_id: str, first: CorruptStateError) -> ContextState:
        stored = self._read("load", context_id, lambda rows: _read_stored(self.codec, rows, context_id))
        if stored is None:  # deleted by another process meanwhile
            raise first
        top = stored.version
        bad_snaps = [r for r in stored.snapshots if r.problem is not None]
        best, base, found = _rebuild(stored, {top} | {r.version for r in bad_snaps})
        if best is None:
            problems = "; ".join(r.name("snapshot") + ": " + str(r.problem)
                                 for r in stored.snapshots + stored.rps) or "no snapshot or recovery point"
            raise CorruptStateError(f"context {context_id!r} cannot be recovered: no valid snapshot or recovery "
                                    f"point ({problems})", context_id=context_id, what="snapshot") from first
        lost = tuple(range(best.version + 1, top + 1))
        skipped = _skipped_rows(stored, best.version, lost)
        if lost:
            # a new version holding the recovered data: versions never go backwards, and a writer
            # holding any acknowledged version gets a conflict instead of overwriting unseen data
            state = ContextState(context_id, top + 1, best.data, best.metadata, best.created_at, time.time())
        else:
            state = best

        def repair(rows: RowAccess) -> bool:
            _repair_after_fallback(self.codec, rows, stored, state, found=found, lost=lost)
            return True
        repaired = self._pinned is None and bool(self._repair("repair", context_id, top, repair))
        report = RecoveryReport(context_id, top, best.version, state.version, base, tuple(skipped), lost, repaired)
        self.last_recovery_report = report
        self.recovery_reports.append(report)
        log.warning("fallback recovery: %s (first failure: %s)", report.describe(), first)
        return state

    # -- recovery points ---------------------------------------------------------------------------
    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        """The context's recovery points, oldest first, each verified; caller's thread. A damaged one
        raises `CorruptStateError` (strict) or is left out with a WARNING (fallback)."""
        validate_id(context_id)
        rows = self._read("list recovery points", context_id, lambda r: r.recovery_point_rows(context_id),
                          transaction=False)
        out = []
        for row in rows:
            try:
                out.append(_recovery_point(self.codec, context_id, row))
            except CorruptStateError as exc:
                if self.recovery != "fallback":
                    raise
                log.warning("recovery point %d of %r skipped: %s", row[0], context_id, exc)
        return out

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        """One recovery point, verified, or None; caller's thread."""
        validate_id(context_id)
        if isinstance(rp_id, int) and not 0 < rp_id <= MAX_STORED_INT:
            return None
        rows = self._read("read recovery point", context_id, lambda r: r.recovery_point_rows(context_id, rp_id),
                          transaction=False)
        return _recovery_point(self.codec, context_id, rows[0]) if rows else None

    # -- the read interface ------------------------------------------------------------------------
    def info(self, context_id: str) -> StoredContext | None:
        """Stored facts about a context without decoding it; None if absent. Caller's thread."""
        validate_id(context_id)
        found = self._read("info", context_id, lambda r: r.summaries(context_id=context_id), transaction=False)
        return found[0] if found else None

    def contexts(self, prefix: str = "") -> list[StoredContext]:
        """See `Store.contexts`: one read transaction, caller's thread."""
        if not _storable_prefix(prefix):
            return []
        return self._read("list contexts", None, lambda r: r.summaries(prefix), transaction=False)

    def journal(self, context_id: str, after: int = 0, upto: int | None = None) -> list[JournalEntry]:
        """See `Store.journal`: one read transaction, caller's thread."""
        validate_id(context_id)

        def run(rows: RowAccess) -> list[JournalEntry]:
            head = rows.head(context_id)
            if head is None:
                raise ContextNotFoundError(context_id)
            hi = head[0] if upto is None else min(upto, head[0])
            if after >= hi:  # nothing after it (also an `after` past what a store holds)
                return []
            return [JournalEntry.of(context_id, decode_change_row(
                self.codec, blob, context_id, f"journal entry v{v} of {context_id!r}", v))
                for v, blob in rows.journal_rows(context_id, after, hi)]
        return self._read("read journal", context_id, run)

    def snapshot_versions(self, context_id: str) -> list[int]:
        """See `Store.snapshot_versions`: one read transaction, caller's thread."""
        validate_id(context_id)

        def run(rows: RowAccess) -> list[int]:
            if rows.head(context_id) is None:
                raise ContextNotFoundError(context_id)
            return rows.snapshot_versions(context_id)
        return self._read("list snapshots", context_id, run)

    def state_at(self, context_id: str, version: int) -> ContextState:
        """See `Store.state_at`: one read transaction, caller's thread. Damaged rows are skipped (the
        state is rebuilt from another base if one reaches `version`)."""
        validate_id(context_id)
        if isinstance(version, int) and not isinstance(version, bool):
            # the common case reads and decodes only what rebuilds `version`: the newest snapshot at or
            # below it and the journal up to it (history reads many versions back on long policies)
            direct = self._read("read state", context_id,
                                lambda rows: self._state_at_direct(rows, context_id, version))
            if direct is not None:
                return direct
        stored = self._read("read state", context_id, lambda rows: _read_stored(self.codec, rows, context_id))
        if stored is None:
            raise ContextNotFoundError(context_id)
        if isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= stored.version:
            _best, _base, found = _rebuild(stored, {version}, upto=version)
            if version in found:
                return found[version]
        ranges = rebuildable([r.version for r in stored.snapshots + stored.rps if r.problem is None],
                             lambda v: stored.good_journal(v) is not None, stored.version)
        raise VersionNotStoredError(context_id, version, oldest=ranges[-1][0] if ranges else None,
                                    newest=ranges[-1][1] if ranges else None, also=tuple(ranges[:-1]))

    def _state_at_direct(self, rows: RowAccess, context_id: str, version: int) -> ContextState | None:
        """`version` from the newest snapshot at or below it plus the journal; None when that does
        not work (absent, not stored, damaged rows: `state_at`'s full rebuild decides)."""
        head = rows.head(context_id)
        if head is None or not 1 <= version <= head[0]:
            return None
        base = max((v for v in rows.snapshot_versions(context_id) if v <= version), default=None)
        if base is None:
            return None
        try:
            blob = rows.snapshot_row(context_id, base)  # one row: history="all" keeps every snapshot
            if blob is None:
                return None
            state = decode_state_row(self.codec, blob, context_id, f"snapshot v{base} of {context_id!r}", base)
            # a gap or a damaged row raises CorruptStateError: no direct answer (the caller looks further)
            state = apply_fields(state, _strict_fields(self.codec, context_id, version, base,
                                                       rows.journal_rows(context_id, base, version)))
        except CorruptStateError:
            return None
        return state if state.version == version else None

    # -- the change feed ---------------------------------------------------------------------------
    def feed(self, after: int = 0, limit: int = 1000) -> list[FeedEntry]:
        """See `Store.feed`: one read transaction, caller's thread; each entry verified."""
        return self._feed_read(after, limit, feed_entries)

    def feed_dicts(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """`feed` as `FeedEntry.to_dict()` forms, each verified the same way, built without the
        entries (`feed_dict`: for a reader that only re-encodes them, the broker relay). Same
        errors, one read transaction, caller's thread."""
        return self._feed_read(after, limit, _feed_dicts)

    def _feed_read(self, after: int, limit: int, make: Callable[[Codec, list[tuple[int, str, bytes]]], list[T]]
                   ) -> list[T]:
        if type(after) is not int or after < 0 or type(limit) is not int or limit < 1:
            raise InvalidValueError("after", f"the feed is read after an offset >= 0 (got {after!r}) in batches "
                                             f"of at least 1 (got {limit!r})")

        def run(rows: RowAccess) -> list[T]:
            floor, _head = rows.feed_bounds()
            if after < floor:
                raise FeedTruncatedError(after, floor)
            return make(self.codec, rows.feed_rows(min(after, MAX_STORED_INT), min(limit, MAX_STORED_INT)))
        return self._read("read the change feed", None, run)

    def feed_bounds(self) -> tuple[int, int]:
        """See `Store.feed_bounds`: one read transaction, caller's thread."""
        return self._read("read the change feed", None, lambda r: r.feed_bounds())

    def consumers(self) -> dict[str, int]:
        """See `Store.consumers`: one read transaction, caller's thread."""
        return self._read("read feed consumers", None, lambda r: r.consumer_rows())

    def stats(self) -> StoreStats:
        """See `Store.stats`: one read transaction, caller's thread."""
        return attrs.evolve(self._read("stats", None, lambda r: r.totals()), location=self.location)

    # -- verify ------------------------------------------------------------------------------------
    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        """Check the whole store and return every inconsistency found (empty: all is well).

        Checks the database's own integrity where it can, then for each context: every snapshot,
        journal entry and recovery point decodes and verifies (format, checksum, size, id, version);
        there is a snapshot; the journal is contiguous from the older kept snapshot to the acknowledged
        version; the newest snapshot plus the journal rebuilds that version; an older snapshot plus the
        journal reproduces the newer one exactly; recovery point ids are below the context's next id.
        Finally rows of contexts that do not exist (orphans). Every backend reports the same issues for
        the same damage: `what` names the kind of row ("store", "context", "snapshot", "journal",
        "recovery_point", "quarantine") and `problem` starts with what is wrong ("checksum mismatch",
        "version gap", "no snapshot", "unrecoverable", "orphan rows", ...).

        The check reads one consistent snapshot of the store (one read transaction), so a writer in
        another process never makes it report damage that is not there.

        With `fix` (ignored on a read-only store), each damaged context is repaired in a transaction of
        its own, fenced like a commit (a context another process owns, or one that changed since it was
        checked, is left alone and reported unfixed): a damaged snapshot or recovery point is rewritten
        when the journal rebuilds its exact version from another base; superseded or stale rows are
        removed (damaged ones go to the quarantine); a missing or unreachable newest snapshot is written
        from a rebuild that reaches the acknowledged version; an out-of-sequence next recovery point id
        is raised; orphan rows are deleted. Nothing that would lose an acknowledged change is touched:
        those issues stay ``fixed=False`` (open with ``recovery="fallback"`` to recover what can be).
        Runs in the calling thread and blocks for as long as the walk takes (it reads every row).
        """
        fix = fix and not self.readonly and self._pinned is None

        def check_all(rows: RowAccess) -> tuple[list[VerifyIssue], dict[str, tuple[int, _Check]],
                                                 list[tuple[str, str]]]:
            store_issues = [VerifyIssue(None, "store", p) for p in rows.integrity_problems()]
            checks: dict[str, tuple[int, _Check]] = {}
            for cid in rows.context_ids():
                stored = _read_stored(self.codec, rows, cid)
                if stored is not None:
                    checks[cid] = (stored.version, _check(stored))
            return store_issues, checks, rows.orphans()

        issues, checks, orphans = self._read("verify", None, check_all)
        for cid, (version, check) in checks.items():
            fixed: list[VerifyIssue] | None = None
            if fix and check.fixable:
                fixed = self._repair("verify --fix", cid, version, functools.partial(self._fix_context, cid=cid))
            issues += fixed if fixed is not None else [VerifyIssue(cid, w, p) for w, p, _f in check.issues]
        if fix and orphans:
            def drop(rows: RowAccess) -> bool:
                for kind, cid in orphans:
                    rows.delete_orphans(kind, cid)
                return True
            fixed_orphans = bool(self._repair("verify --fix", None, None, drop))
        else:
            fixed_orphans = False
        table = {"snapshot": "snapshots", "journal": "journal", "recovery_point": "recovery_points",
                 "quarantine": "quarantine"}
        issues += [VerifyIssue(cid, kind, f"orphan rows in {table[kind]}: the context does not exist",
                               fixed=fixed_orphans) for kind, cid in orphans]
        return issues

    def _fix_context(self, rows: RowAccess, *, cid: str) -> list[VerifyIssue]:
        """Inside a repair transaction: check the context again (as it is now) and repair it."""
        stored = _read_stored(self.codec, rows, cid)
        if stored is None:  # pragma: no cover - the repair transaction checked that it exists
            return []
        check = _check(stored)
        if check.fixable:
            _fix(self.codec, rows, stored, check)
        return [VerifyIssue(cid, w, p, fixed=f) for w, p, f in check.issues]


def _feed_dicts(codec: Codec, rows: list[tuple[int, str, bytes]]) -> list[dict[str, Any]]:
    return [feed_dict(codec, pos, cid, blob) for pos, cid, blob in rows]


def _storable_prefix(prefix: str) -> bool:
    """Whether any stored id could start with `prefix` (ids never hold NUL or lone surrogates)."""
    if "\x00" in prefix:
        return False
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
