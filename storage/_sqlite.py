"""`SQLiteStore`: the embedded default store, one SQLite file in WAL mode.

Tables: `hoard_meta` (format version), `contexts` (one row per context: the acknowledged version,
times, next recovery point id), `snapshots` (newest two per context), `journal` (changes after the
older kept snapshot), `recovery_points`, and `quarantine` (damaged or unusable rows that a recovery or
a repair took out of the way: kept for inspection, never loaded). Keeping two snapshots and the
journal back to the older one means a damaged newest snapshot can be rebuilt from the older one plus
the journal.

Every blob is verified (format, kind, checksum, size bound, field types) before use; see `Codec`.
Damage is handled by the store's `recovery` mode:

* ``"strict"`` (default): `load()` raises `CorruptStateError` naming the context and the row that
  failed. Nothing is written.
* ``"fallback"``: `load()` rebuilds the newest state it can from the newest valid snapshot or
  recovery point plus the contiguous valid journal after it. If that reaches the acknowledged
  version, nothing was lost and the damaged rows are repaired (rewritten from the rebuilt state or
  moved to `quarantine`). If it does not, the acknowledged changes after it are lost: they are
  counted and named in a `RecoveryReport`, and the context continues at a **new** version (one past
  the acknowledged one, so versions never go backwards and no client holding an old version can
  write over the recovered data unnoticed), written as a fresh snapshot; the unusable rows go to
  `quarantine`. Either way the report is logged at WARNING and kept in `last_recovery_report`.

`verify()` walks every context, snapshot, journal entry and recovery point and returns every
inconsistency as a `VerifyIssue`; ``verify(fix=True)`` repairs what can be repaired without losing an
acknowledged change (and leaves the rest, reported, for ``recovery="fallback"`` to decide).

Writers: one at a time. `open()` takes an exclusive `flock` on ``<path>.lock`` (created 0600), so a
second opener, in this process or another, gets `StoreLockedError` at once. Readers that do not write
(`SQLiteStore(path, readonly=True)`, used by offline tools) take no lock and see committed data only.
`open()` checks that an existing file is a hoard store of this format *before* changing anything in
it (not even its journal mode).

Durability: ``sync="full"`` (default, ``synchronous=FULL``) survives power loss; ``sync="normal"``
survives a process crash but may lose the newest commits on power loss, and commits about 3x faster.
The database file is created with mode 0600; SQLite gives its ``-wal`` and ``-shm`` files the same
mode.

Threading: not thread-safe; one owner thread at a time (see `Store`). The sqlite3 connection is
created with ``check_same_thread=False`` because the owner thread (the persistence actor's) is not the
thread that constructs the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from ._codec import FORMAT_VERSION, Codec
from ._errors import ConfigError, CorruptStateError, HoardError, PersistenceError, StoreLockedError
from ._model import Change, ContextState, RecoveryPoint, apply_change
from ._rows import FALLBACK_HINT, decode_change_row, decode_state_row, replay_strict
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

__all__ = ["RecoveryReport", "SQLiteStore", "SkippedItem"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hoard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contexts (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    next_rp_id INTEGER NOT NULL DEFAULT 1, ttl REAL);
CREATE TABLE IF NOT EXISTS snapshots (
    context_id TEXT NOT NULL, version INTEGER NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (context_id, version));
CREATE TABLE IF NOT EXISTS journal (
    context_id TEXT NOT NULL, version INTEGER NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (context_id, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recovery_points (
    context_id TEXT NOT NULL, rp_id INTEGER NOT NULL, version INTEGER NOT NULL, label TEXT,
    created_at REAL NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (context_id, rp_id));
"""
# not part of _TABLES: stores made before it existed get it on their next writable open
_QUARANTINE = """
CREATE TABLE IF NOT EXISTS quarantine (
    context_id TEXT NOT NULL, source TEXT NOT NULL, version INTEGER, rp_id INTEGER, problem TEXT NOT NULL,
    at REAL NOT NULL, blob BLOB)
"""
_TABLES = {"hoard_meta", "contexts", "snapshots", "journal", "recovery_points"}
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_RECOVERY = ("strict", "fallback")
_FALLBACK_HINT = FALLBACK_HINT


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
        repaired: whether the store was rewritten to match (False for a read-only store).
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


# -- what is stored for one context, decoded ------------------------------------------------------
@attrs.define
class _Row:
    """One decoded (or undecodable) blob row."""

    version: int
    state: Any = None  # ContextState for snapshots / recovery points, Change for journal entries
    problem: str | None = None
    rp_id: int | None = None
    label: str | None = None
    created_at: float = 0.0


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


class SQLiteStore:
    """One SQLite file holding every context. See the module docstring.

    Args:
        path: the database file (created if missing, with mode 0600).
        sync: "full" (default) or "normal"; see the module docstring for what each survives.
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading (bombs are refused).
        readonly: open without the writer lock and refuse writes (for offline inspection).
        recovery: "strict" (default) or "fallback": what `load` does with damaged data (see the
            module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "full", compression_level: int = 3,
                 max_state_bytes: int = 64 * 2**20, readonly: bool = False, recovery: str = "strict") -> None:
        if sync not in _SYNC:
            raise ConfigError(f"sync must be one of {sorted(_SYNC)}, not {sync!r}")
        if recovery not in _RECOVERY:
            raise ConfigError(f"recovery must be one of {', '.join(map(repr, _RECOVERY))}, not {recovery!r}")
        self.path = os.fspath(path)
        self.location = self.path
        self.sync = sync
        self.readonly = readonly
        self.recovery = recovery
        self.codec = Codec(compression_level, max_bytes=max_state_bytes + 2**20)
        #: the report of the newest `load` that had to skip something (None if it did not)
        self.last_recovery_report: RecoveryReport | None = None
        #: every report since `open`, oldest first (a caller may clear it)
        self.recovery_reports: list[RecoveryReport] = []
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        if self._db is not None:
            return
        if not self.readonly:
            self._take_lock()
        try:
            self._db = self._connect()
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PersistenceError(f"cannot create lock file {lock_path!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(self.path) from None
        except OSError as exc:
            os.close(fd)
            raise PersistenceError(f"cannot lock {lock_path!r}: {exc}") from exc
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            if not os.path.exists(self.path):
                raise PersistenceError(f"no store at {self.path!r}")
            uri = "file:" + _quote_uri(os.path.abspath(self.path)) + "?mode=ro"
            return self._guard(lambda: sqlite3.connect(uri, uri=True, isolation_level=None,
                                                      check_same_thread=False), "open")
        if not os.path.exists(self.path):
            # create with owner-only permissions before SQLite does (it would use the umask); SQLite
            # gives the -wal and -shm files the mode of the database file
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise PersistenceError(f"cannot create store {self.path!r}: {exc}") from exc
        return self._guard(lambda: sqlite3.connect(self.path, isolation_level=None, check_same_thread=False),
                           "open")

    def _init_schema(self) -> None:
        """Check what the file is before changing anything in it; then set WAL and create the schema."""
        db = self._require()
        db.execute("PRAGMA busy_timeout=0")
        tables = {r[0] for r in self._guard(
            lambda: db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall(), "open")}
        if tables and "hoard_meta" not in tables:
            raise CorruptStateError(f"{self.path!r} is an SQLite database but not a hoard store "
                                    f"(tables: {', '.join(sorted(tables)[:5])}); nothing was changed",
                                    what="store")
        if "hoard_meta" in tables:
            row = self._guard(lambda: db.execute("SELECT value FROM hoard_meta WHERE key='format'").fetchone(),
                              "open")
            text = str(row[0]) if row else ""
            fmt = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None
            if fmt is None:
                raise CorruptStateError(f"{self.path!r}: hoard store without a valid format version", what="store")
            if fmt != FORMAT_VERSION:
                newer = "a newer" if fmt > FORMAT_VERSION else "an older"
                raise CorruptStateError(f"{self.path!r} uses store format {fmt}, written by {newer} hoard; "
                                        f"this one reads format {FORMAT_VERSION}; nothing was changed",
                                        what="store")
            missing = _TABLES - tables
            if missing and not self.readonly:
                raise CorruptStateError(f"{self.path!r}: hoard store missing tables {sorted(missing)}", what="store")
        elif self.readonly:
            raise CorruptStateError(f"{self.path!r} is not a hoard store (empty database)", what="store")
        if self.readonly:
            return

        def setup() -> None:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            db.execute(f"PRAGMA synchronous={_SYNC[self.sync]}")
            with self._transaction(db):
                if "hoard_meta" not in tables:
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        db.execute(stmt)
                    db.execute("INSERT OR REPLACE INTO hoard_meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
                if "quarantine" not in tables:
                    db.execute(_QUARANTINE)
                columns = {r[1] for r in db.execute("PRAGMA table_info(contexts)")}
                if "ttl" not in columns:  # a store made before TTLs: add the column, nothing else changes
                    db.execute("ALTER TABLE contexts ADD COLUMN ttl REAL")
        self._guard(setup, "open")

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- helpers -------------------------------------------------------------------------------------
    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise PersistenceError(f"store {self.path!r} is not open")
        return self._db

    def _guard(self, fn: Callable[[], T], what: str, context_id: str | None = None) -> T:
        """Run `fn`, translating sqlite3 and OS errors into ours."""
        try:
            return fn()
        except HoardError:
            raise
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if "not a database" in msg or "malformed" in msg:
                raise CorruptStateError(f"{self.path!r}: {msg} (not a hoard store, or damaged)",
                                        context_id=context_id, what="store") from exc
            if "locked" in msg or "busy" in msg:
                raise StoreLockedError(self.path) from exc
            raise PersistenceError(f"store {self.path!r}: {what} failed: {msg}", context_id=context_id) from exc
        except sqlite3.Error as exc:
            raise PersistenceError(f"store {self.path!r}: {what} failed: {exc}", context_id=context_id) from exc
        except OSError as exc:
            raise PersistenceError(f"store {self.path!r}: {what} failed: {exc}", context_id=context_id) from exc

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # a failed COMMIT (I/O error, disk full) leaves the transaction open in some cases:
            # roll back so that nothing of it is applied and the connection is usable again
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            raise

    @staticmethod
    def _check_id(context_id: object) -> str:
        return validate_id(context_id)

    # -- writes --------------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        if not ops:
            return
        db = self._require()
        # encode before the transaction: the write lock is held only for the SQL itself
        try:
            encoded = [self._encode(op) for op in ops]
        except HoardError:
            raise
        except Exception as exc:  # nothing was written; the caller needs our error type, whatever failed
            raise PersistenceError(f"store {self.path!r}: encoding a change failed ({exc!r}); nothing was "
                                   "written", context_id=_first_context(ops)) from exc

        def run() -> None:
            with self._transaction(db):
                for op, blob in zip(ops, encoded, strict=True):
                    self._apply(db, op, blob)
        self._guard(run, "commit", _first_context(ops))

    def _encode(self, op: Op) -> bytes | None:
        codec = self.codec
        if isinstance(op, Append):
            return codec.encode_change(op.change)
        if isinstance(op, (PutSnapshot, CreateContext)):
            if isinstance(op, CreateContext):
                self._check_id(op.state.id)
            return codec.encode_state(op.state)
        if isinstance(op, PutRecoveryPoint):
            return codec.encode_state(op.rp.state)
        return None

    def _apply(self, db: sqlite3.Connection, op: Op, blob: bytes | None) -> None:  # noqa: PLR0912 - one flat branch per case of the format; split, its rules would scatter
        if isinstance(op, Append):
            ch = op.change
            cur = db.execute("UPDATE contexts SET version=?, updated_at=? WHERE id=? AND version=?",
                             (ch.version, ch.at, op.context_id, ch.version - 1))
            if cur.rowcount != 1:
                raise PersistenceError(self._version_problem(db, op.context_id, ch.version),
                                       context_id=op.context_id)
            # OR REPLACE: a row left at this version can only be an unacknowledged leftover (the
            # contexts row said the version was free)
            db.execute("INSERT OR REPLACE INTO journal VALUES (?,?,?)", (op.context_id, ch.version, blob))
        elif isinstance(op, PutSnapshot):
            st = op.state
            row = db.execute("SELECT version FROM contexts WHERE id=?", (st.id,)).fetchone()
            if row is None:
                raise PersistenceError(f"snapshot of {st.id!r}, which is not in the store", context_id=st.id)
            if row[0] < st.version:
                # a checkpoint of changes that were never journaled (durability "none"): it becomes
                # the stored version, and nothing older can rebuild it any more
                db.execute("UPDATE contexts SET version=?, updated_at=? WHERE id=?",
                           (st.version, st.updated_at, st.id))
                db.execute("DELETE FROM snapshots WHERE context_id=?", (st.id,))
                db.execute("DELETE FROM journal WHERE context_id=?", (st.id,))
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?)", (st.id, st.version, blob))
            kept = db.execute("SELECT version FROM snapshots WHERE context_id=? ORDER BY version DESC LIMIT 2",
                              (st.id,)).fetchall()
            oldest_kept = kept[-1][0]
            db.execute("DELETE FROM snapshots WHERE context_id=? AND version<?", (st.id, oldest_kept))
            db.execute("DELETE FROM journal WHERE context_id=? AND version<=?", (st.id, oldest_kept))
        elif isinstance(op, CreateContext):
            st = op.state
            try:
                db.execute("INSERT INTO contexts (id, version, created_at, updated_at) VALUES (?,?,?,?)",
                           (st.id, st.version, st.created_at, st.updated_at))
            except sqlite3.IntegrityError as exc:
                raise PersistenceError(f"context {st.id!r} already exists in the store",
                                       context_id=st.id) from exc
            # leftovers of a context deleted by an older hoard (or quarantined rows) must not mix in
            for table in ("snapshots", "journal", "recovery_points"):
                db.execute(f"DELETE FROM {table} WHERE context_id=?", (st.id,))  # noqa: S608 - fixed names
            db.execute("INSERT INTO snapshots VALUES (?,?,?)", (st.id, st.version, blob))
        elif isinstance(op, PutRecoveryPoint):
            rp = op.rp
            row = db.execute("SELECT next_rp_id FROM contexts WHERE id=?", (rp.context_id,)).fetchone()
            if row is None:
                raise PersistenceError(f"context {rp.context_id!r} is not in the store", context_id=rp.context_id)
            if row[0] != rp.id:
                raise PersistenceError(f"recovery point id {rp.id} out of sequence (next is {row[0]})",
                                       context_id=rp.context_id)
            db.execute("INSERT INTO recovery_points VALUES (?,?,?,?,?,?)",
                       (rp.context_id, rp.id, rp.version, rp.label, rp.created_at, blob))
            db.execute("UPDATE contexts SET next_rp_id=? WHERE id=?", (rp.id + 1, rp.context_id))
            db.execute("DELETE FROM recovery_points WHERE context_id=? AND rp_id NOT IN (SELECT rp_id FROM "
                       "recovery_points WHERE context_id=? ORDER BY rp_id DESC LIMIT ?)",
                       (rp.context_id, rp.context_id, max(1, op.keep)))
        elif isinstance(op, DeleteRecoveryPoint):
            db.execute("DELETE FROM recovery_points WHERE context_id=? AND rp_id=?", (op.context_id, op.rp_id))
        elif isinstance(op, SetTTL):
            if db.execute("UPDATE contexts SET ttl=? WHERE id=?", (op.ttl, op.context_id)).rowcount != 1:
                raise PersistenceError(f"context {op.context_id!r} is not in the store", context_id=op.context_id)
        elif isinstance(op, DeleteContext):
            for table, col in (("journal", "context_id"), ("snapshots", "context_id"),
                               ("recovery_points", "context_id"), ("quarantine", "context_id"),
                               ("contexts", "id")):
                db.execute(f"DELETE FROM {table} WHERE {col}=?", (op.context_id,))  # noqa: S608 - fixed names
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown store operation {op!r}")

    @staticmethod
    def _version_problem(db: sqlite3.Connection, context_id: str, version: int) -> str:
        row = db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return f"journal entry for {context_id!r}, which is not in the store"
        return f"journal entry {version} for {context_id!r} does not follow stored version {row[0]}"

    # -- reads ---------------------------------------------------------------------------------------
    def load(self, context_id: str) -> ContextState | None:
        """The newest state of a context (None if it does not exist).

        Strict: `CorruptStateError` naming the context and the row if anything fails verification.
        Fallback: see the module docstring; `last_recovery_report` tells what was skipped (None if
        nothing was).
        """
        db = self._require()
        self._check_id(context_id)
        self.last_recovery_report = None
        try:
            return self._guard(lambda: self._load(db, context_id), "load", context_id)
        except CorruptStateError as exc:
            if exc.what == "store":
                raise
            if self.recovery != "fallback":
                if _FALLBACK_HINT in str(exc):
                    raise
                raise CorruptStateError(f"{exc}; {_FALLBACK_HINT}", context_id=context_id, what=exc.what) from exc
            first = exc
        return self._guard(lambda: self._load_fallback(db, context_id, first), "load", context_id)

    def _load(self, db: sqlite3.Connection, context_id: str) -> ContextState | None:
        row = db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return None
        snap = db.execute("SELECT version, blob FROM snapshots WHERE context_id=? ORDER BY version DESC LIMIT 1",
                          (context_id,)).fetchone()
        journal = db.execute("SELECT version, blob FROM journal WHERE context_id=? AND version>? ORDER BY version",
                             (context_id, snap[0] if snap else 0))
        return replay_strict(self.codec, context_id, row[0], snap, journal)

    def _decode_state(self, blob: bytes, context_id: str, what: str, version: int) -> ContextState:
        return decode_state_row(self.codec, blob, context_id, what, version)

    def _decode_change(self, blob: bytes, context_id: str, what: str, version: int) -> Change:
        return decode_change_row(self.codec, blob, context_id, what, version)

    # -- fallback recovery ---------------------------------------------------------------------------
    def _read_stored(self, db: sqlite3.Connection, context_id: str) -> _Stored | None:
        """Every row of one context, each decoded on its own (damage recorded, not raised)."""
        row = db.execute("SELECT version, next_rp_id FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return None

        def decode(fn: Callable[..., Any], blob: bytes, what: str, version: int) -> tuple[Any, str | None]:
            try:
                return fn(blob, context_id, what, version), None
            except CorruptStateError as exc:
                return None, _problem(exc)

        snaps = []
        for version, blob in db.execute("SELECT version, blob FROM snapshots WHERE context_id=? ORDER BY version",
                                        (context_id,)):
            st, problem = decode(self._decode_state, blob, f"snapshot v{version} of {context_id!r}", version)
            snaps.append(_Row(version, st, problem))
        journal = {}
        for version, blob in db.execute("SELECT version, blob FROM journal WHERE context_id=? ORDER BY version",
                                        (context_id,)):
            ch, problem = decode(self._decode_change, blob, f"journal entry v{version} of {context_id!r}", version)
            journal[version] = _Row(version, ch, problem)
        rps = []
        for rp_id, version, label, created_at, blob in db.execute(
                "SELECT rp_id, version, label, created_at, blob FROM recovery_points WHERE context_id=? "
                "ORDER BY rp_id", (context_id,)):
            st, problem = decode(self._decode_state, blob, f"recovery point {rp_id} of {context_id!r}", version)
            rps.append(_Row(version, st, problem, rp_id, label, created_at))
        return _Stored(context_id, row[0], row[1], snaps, journal, rps)

    @staticmethod
    def _rebuild(stored: _Stored, wanted: set[int]) -> tuple[ContextState | None, str, dict[int, ContextState]]:
        """Replay the contiguous valid journal from every valid base (snapshots, then recovery points),
        newest base first. Returns the newest state reached (None if no base is valid), what it was
        built from, and the rebuilt states at the `wanted` versions that could be reached."""
        top = stored.version
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

    def _load_fallback(self, db: sqlite3.Connection, context_id: str, first: CorruptStateError) -> ContextState:
        stored = self._read_stored(db, context_id)
        if stored is None:  # pragma: no cover - it existed a moment ago, in this thread
            raise first
        top = stored.version
        bad_snaps = [r for r in stored.snapshots if r.problem is not None]
        best, base, found = self._rebuild(stored, {top} | {r.version for r in bad_snaps})
        if best is None:
            problems = "; ".join(_row_name(r, "snapshot") + ": " + str(r.problem)
                                 for r in stored.snapshots + stored.rps) or "no snapshot or recovery point"
            raise CorruptStateError(f"context {context_id!r} cannot be recovered: no valid snapshot or recovery "
                                    f"point ({problems})", context_id=context_id, what="snapshot") from first
        skipped: list[SkippedItem] = [SkippedItem("snapshot", r.version, r.problem or "") for r in bad_snaps]
        skipped += [SkippedItem("recovery_point", r.version, r.problem or "", r.rp_id)
                    for r in stored.rps if r.problem is not None]
        lost = tuple(range(best.version + 1, top + 1))
        for v in sorted(stored.journal):
            r = stored.journal[v]
            if r.problem is not None and (v <= best.version or v > top):
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
        if lost:
            # a new version holding the recovered data: versions never go backwards, and a writer
            # holding any acknowledged version gets a conflict instead of overwriting unseen data
            state = ContextState(context_id, top + 1, best.data, best.metadata, best.created_at, time.time())
        else:
            state = best
        repaired = False
        if not self.readonly:
            with self._transaction(db):
                self._repair_after_fallback(db, stored, state, found, lost)
            repaired = True
        report = RecoveryReport(context_id, top, best.version, state.version, base, tuple(skipped), lost, repaired)
        self.last_recovery_report = report
        self.recovery_reports.append(report)
        log.warning("fallback recovery: %s (first failure: %s)", report.describe(), first)
        return state

    def _quarantine(self, db: sqlite3.Connection, context_id: str, source: str, version: int | None,  # noqa: PLR0917 - a row's columns, in the table's order
                    problem: str, rp_id: int | None = None) -> None:
        if source == "recovery_point":
            sel = ("SELECT blob FROM recovery_points WHERE context_id=? AND rp_id=?", (context_id, rp_id))
        else:
            sel = (f"SELECT blob FROM {'snapshots' if source == 'snapshot' else 'journal'} "  # noqa: S608
                   "WHERE context_id=? AND version=?", (context_id, version))
        row = db.execute(*sel).fetchone()
        db.execute("INSERT INTO quarantine (context_id, source, version, rp_id, problem, at, blob) "
                   "VALUES (?,?,?,?,?,?,?)", (context_id, source, version, rp_id, problem, time.time(),
                                              row[0] if row else None))
        if source == "recovery_point":
            db.execute("DELETE FROM recovery_points WHERE context_id=? AND rp_id=?", (context_id, rp_id))
        else:
            db.execute(f"DELETE FROM {'snapshots' if source == 'snapshot' else 'journal'} "  # noqa: S608
                       "WHERE context_id=? AND version=?", (context_id, version))

    def _repair_after_fallback(self, db: sqlite3.Connection, stored: _Stored, state: ContextState,
                               found: dict[int, ContextState], lost: tuple[int, ...]) -> None:
        cid = stored.id
        for r in stored.rps:
            if r.problem is not None:
                self._quarantine(db, cid, "recovery_point", r.version, r.problem, r.rp_id)
        if lost:
            # start over from one snapshot of the new version; unusable rows go to quarantine
            for r in stored.snapshots:
                if r.problem is not None:
                    self._quarantine(db, cid, "snapshot", r.version, r.problem)
            for v, r in stored.journal.items():
                if r.problem is not None:
                    self._quarantine(db, cid, "journal", v, r.problem)
                elif v > lost[0]:
                    self._quarantine(db, cid, "journal", v, f"follows the unrecoverable v{lost[0]}")
            db.execute("DELETE FROM snapshots WHERE context_id=?", (cid,))
            db.execute("DELETE FROM journal WHERE context_id=?", (cid,))
            db.execute("INSERT INTO snapshots VALUES (?,?,?)", (cid, state.version, self.codec.encode_state(state)))
            db.execute("UPDATE contexts SET version=?, updated_at=? WHERE id=?",
                       (state.version, state.updated_at, cid))
            return
        # nothing lost: rewrite what the rebuild reproduced, set the rest aside
        for r in stored.snapshots:
            if r.problem is None:
                continue
            rebuilt = found.get(r.version)
            if rebuilt is not None:
                db.execute("UPDATE snapshots SET blob=? WHERE context_id=? AND version=?",
                           (self.codec.encode_state(rebuilt), cid, r.version))
            else:
                self._quarantine(db, cid, "snapshot", r.version, r.problem)
        self._normalize(db, cid, state)

    def _normalize(self, db: sqlite3.Connection, cid: str, state: ContextState) -> None:
        """Make the rows of a context loadable by the strict path: its newest snapshot + a contiguous
        valid journal to its acknowledged version (`state`, already rebuilt). Writes a snapshot of
        `state` if the newest one cannot reach it; drops journal entries no kept snapshot needs."""
        stored = self._read_stored(db, cid)
        assert stored is not None
        good = [r for r in stored.snapshots if r.problem is None and r.version <= stored.version]
        newest = good[-1].version if good else None

        def chain(lo: int, hi: int) -> bool:
            return all(stored.good_journal(v) is not None for v in range(lo + 1, hi + 1))

        if newest is None or not chain(newest, stored.version):
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?)",
                       (cid, state.version, self.codec.encode_state(state)))
            good.append(_Row(state.version, state))
            newest = state.version
        keep = {newest}
        older = [r.version for r in good if r.version < newest]
        if older and chain(older[-1], newest):
            keep.add(older[-1])
        for r in stored.snapshots:
            if r.version not in keep:
                if r.problem is None and r.version <= stored.version:
                    db.execute("DELETE FROM snapshots WHERE context_id=? AND version=?", (cid, r.version))
                else:  # damaged, or beyond the acknowledged version: keep it aside, never silently drop it
                    self._quarantine(db, cid, "snapshot", r.version,
                                     r.problem or f"beyond the acknowledged v{stored.version}")
        low = min(keep)
        for v, r in stored.journal.items():
            if low < v <= stored.version:
                continue
            if r.problem is None and v <= low:
                db.execute("DELETE FROM journal WHERE context_id=? AND version=?", (cid, v))
            else:
                self._quarantine(db, cid, "journal", v, r.problem or f"beyond the acknowledged v{stored.version}")

    # -- other reads ---------------------------------------------------------------------------------
    def info(self, context_id: str) -> StoredContext | None:
        db = self._require()
        self._check_id(context_id)

        def run() -> StoredContext | None:
            row = db.execute(
                "SELECT c.id, c.version, c.created_at, c.updated_at, c.next_rp_id,"
                " (SELECT max(version) FROM snapshots s WHERE s.context_id=c.id),"
                " (SELECT count(*) FROM journal j WHERE j.context_id=c.id),"
                " (SELECT count(*) FROM recovery_points r WHERE r.context_id=c.id),"
                " (SELECT coalesce(sum(length(blob)),0) FROM snapshots s WHERE s.context_id=c.id)"
                " + (SELECT coalesce(sum(length(blob)),0) FROM journal j WHERE j.context_id=c.id)"
                " FROM contexts c WHERE c.id=?", (context_id,)).fetchone()
            if row is None:
                return None
            cid, ver, created, updated, next_rp, snap_v, jn, rps, size = row
            return StoredContext(cid, ver, created, updated, snap_v or 0, jn, next_rp, rps, size)
        return self._guard(run, "info", context_id)

    def list_ids(self, prefix: str = "") -> list[str]:
        db = self._require()
        if prefix:
            try:
                prefix.encode("utf-8")
            except UnicodeEncodeError:
                return []  # no stored id holds a lone surrogate (validate_id refuses them)
            # range scan on the primary key; no LIKE, so '%' and '_' in ids need no escaping
            last = ord(prefix[-1])
            nxt = last + 1 if last + 1 != 0xD800 else 0xE000  # skip the surrogate block
            hi = prefix[:-1] + chr(nxt) if last < 0x10FFFF else None
            sql, args = ("SELECT id FROM contexts WHERE id>=? AND id<? ORDER BY id", (prefix, hi)) if hi else \
                ("SELECT id FROM contexts WHERE id>=? ORDER BY id", (prefix,))
            return self._guard(lambda: [r[0] for r in db.execute(sql, args)], "list")
        return self._guard(lambda: [r[0] for r in db.execute("SELECT id FROM contexts ORDER BY id")], "list")

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        """See `Store.expired`. One indexed-free scan of the contexts table (no blob is read)."""
        db = self._require()
        sql = ("SELECT id FROM contexts WHERE updated_at + coalesce(ttl, ?) < ? ORDER BY updated_at LIMIT ?")
        return self._guard(lambda: [r[0] for r in db.execute(sql, (default_ttl, now, limit))], "expired")

    def count(self) -> int:
        db = self._require()
        return int(self._guard(lambda: db.execute("SELECT count(*) FROM contexts").fetchone()[0], "count"))

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        """The context's recovery points, oldest first. A damaged one raises `CorruptStateError`
        (strict) or is left out with a WARNING (fallback)."""
        db = self._require()
        self._check_id(context_id)

        def run() -> list[RecoveryPoint]:
            rows = db.execute("SELECT rp_id, version, label, created_at, blob FROM recovery_points "
                              "WHERE context_id=? ORDER BY rp_id", (context_id,)).fetchall()
            out = []
            for r in rows:
                try:
                    out.append(self._rp(context_id, *r))
                except CorruptStateError as exc:
                    if self.recovery != "fallback":
                        raise
                    log.warning("recovery point %d of %r skipped: %s", r[0], context_id, exc)
            return out
        return self._guard(run, "list recovery points", context_id)

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        db = self._require()
        self._check_id(context_id)

        def run() -> RecoveryPoint | None:
            r = db.execute("SELECT rp_id, version, label, created_at, blob FROM recovery_points "
                           "WHERE context_id=? AND rp_id=?", (context_id, rp_id)).fetchone()
            return None if r is None else self._rp(context_id, *r)
        return self._guard(run, "read recovery point", context_id)

    def _rp(self, context_id: str, rp_id: int, version: int, label: str | None, created_at: float,  # noqa: PLR0917 - a row's columns, in the table's order
            blob: bytes) -> RecoveryPoint:
        state = self._decode_state(blob, context_id, f"recovery point {rp_id} of {context_id!r}", version)
        return RecoveryPoint(rp_id, context_id, version, label, created_at, state)

    # -- verification --------------------------------------------------------------------------------
    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        """Check the whole store and return every inconsistency found (empty: all is well).

        Checks SQLite's own integrity, then for each context: every snapshot, journal entry and
        recovery point decodes and verifies (format, checksum, size, id, version); there is a
        snapshot; the journal is contiguous from the older kept snapshot to the acknowledged
        version; the newest snapshot plus the journal rebuilds that version; an older snapshot plus
        the journal reproduces the newer one exactly; recovery point ids are below the context's
        next id. Finally rows of contexts that do not exist (orphans).

        Each issue's `what` names the kind of row ("store", "context", "snapshot", "journal",
        "recovery_point") and `problem` starts with what is wrong ("checksum mismatch", "unreadable",
        "version gap", "no snapshot", "orphan", ...).

        With `fix` (not on a read-only store), in one transaction: a damaged snapshot or recovery
        point is rewritten when the journal rebuilds its exact version from another base; a
        snapshot that cannot be rebuilt but is superseded, stale journal entries and journal entries
        no kept snapshot needs are removed (damaged rows go to `quarantine`); a missing or
        unreachable newest snapshot is written from a rebuild that reaches the acknowledged version;
        an out-of-sequence next recovery point id is raised; orphan rows are deleted. Nothing that
        would lose an acknowledged change is touched: those issues stay ``fixed=False`` (open with
        ``recovery="fallback"`` to recover what can be). Runs in the calling thread and blocks for
        as long as the walk takes (it reads every row).
        """
        db = self._require()
        fix = fix and not self.readonly

        def run() -> list[VerifyIssue]:
            issues: list[VerifyIssue] = []
            problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                issues += [VerifyIssue(None, "store", f"sqlite integrity: {p}") for p in problems[:20]]
            for (cid,) in db.execute("SELECT id FROM contexts ORDER BY id").fetchall():
                issues += self._verify_context(db, cid, fix)
            for table in ("snapshots", "journal", "recovery_points", "quarantine"):
                if table == "quarantine" and not _has_table(db, "quarantine"):
                    continue
                orphans = [r[0] for r in db.execute(
                    f"SELECT DISTINCT context_id FROM {table} WHERE context_id NOT IN (SELECT id FROM contexts)")]  # noqa: S608
                for cid in orphans:
                    if fix:
                        with self._transaction(db):
                            db.execute(f"DELETE FROM {table} WHERE context_id=?", (cid,))  # noqa: S608
                    issues.append(VerifyIssue(cid, _ROW_KIND[table], f"orphan rows in {table}: the context "
                                              "does not exist", fixed=fix))
            return issues
        return self._guard(run, "verify")

    def _verify_context(self, db: sqlite3.Connection, cid: str, fix: bool) -> list[VerifyIssue]:  # noqa: PLR0912, PLR0915 - one check per kind of inconsistency, read top to bottom
        stored = self._read_stored(db, cid)
        if stored is None:  # pragma: no cover - deleted meanwhile; we are the only writer
            return []
        top = stored.version
        found_issues: list[tuple[str, str, bool]] = []  # (what, problem, fixable)

        def issue(what: str, problem: str, fixable: bool) -> None:
            found_issues.append((what, problem, fixable))

        bad_snaps = [r for r in stored.snapshots if r.problem is not None]
        bad_rps = [r for r in stored.rps if r.problem is not None]
        wanted = {top} | {r.version for r in bad_snaps} | {r.version for r in bad_rps}
        best, _base, found = self._rebuild(stored, wanted)
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
        # contiguity from the oldest snapshot to the acknowledged version
        if stored.snapshots:
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
            st: ContextState | None = good_snaps[-1].state
            v = newest
            while v < top and st is not None:
                change = stored.good_journal(v + 1)
                st = apply_change(st, change) if change is not None else None
                v += 1
            if st is None:
                issue("journal", f"unrecoverable: snapshot v{newest} plus the journal cannot rebuild the "
                      f"acknowledged v{top}", reachable)
            # an older snapshot plus the journal must reproduce the newer one exactly
            for older, newer in itertools.pairwise(good_snaps):
                s2: ContextState | None = older.state
                for v2 in range(older.version + 1, newer.version + 1):
                    ch = stored.good_journal(v2)
                    if ch is None or s2 is None:
                        s2 = None
                        break
                    s2 = apply_change(s2, ch)
                if s2 is not None and s2 != newer.state:
                    issue("snapshot", f"mismatch: snapshot v{newer.version} differs from snapshot v{older.version} "
                          "plus the journal", False)
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

        fixed = False
        if fix and any(fixable for _w, _p, fixable in found_issues):
            with self._transaction(db):
                if max_rp >= stored.next_rp_id:
                    db.execute("UPDATE contexts SET next_rp_id=? WHERE id=?", (max_rp + 1, cid))
                for r in bad_rps:
                    rebuilt = found.get(r.version)
                    if rebuilt is not None:
                        db.execute("UPDATE recovery_points SET blob=? WHERE context_id=? AND rp_id=?",
                                   (self.codec.encode_state(rebuilt), cid, r.rp_id))
                if reachable:
                    assert best is not None
                    for r in bad_snaps:
                        rebuilt = found.get(r.version)
                        if rebuilt is not None:
                            db.execute("UPDATE snapshots SET blob=? WHERE context_id=? AND version=?",
                                       (self.codec.encode_state(rebuilt), cid, r.version))
                    self._normalize(db, cid, best)
            fixed = True
        return [VerifyIssue(cid, what, problem, fixed=fixed and fixable) for what, problem, fixable in found_issues]


_ROW_KIND = {"snapshots": "snapshot", "journal": "journal", "recovery_points": "recovery_point",
             "quarantine": "quarantine"}


def _problem(exc: CorruptStateError) -> str:
    """The reason part of a codec error ("checksum mismatch (damaged data)"), without the row name."""
    msg = str(exc)
    head, sep, tail = msg.partition(": ")
    return tail if sep and (" of " in head) else msg


def _row_name(r: _Row, default: str) -> str:
    return f"recovery point {r.rp_id}" if r.rp_id is not None else f"{default} v{r.version}"


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


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _first_context(ops: Sequence[Op]) -> str | None:
    op = ops[0]
    if isinstance(op, (PutSnapshot, CreateContext)):
        return op.state.id
    if isinstance(op, PutRecoveryPoint):
        return op.rp.context_id
    return op.context_id


def _quote_uri(path: str) -> str:
    return urllib.parse.quote(path)
