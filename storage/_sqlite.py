"""`SQLiteStore`: the embedded default store, one SQLite file in WAL mode.

Tables: `hoard_meta` (format version), `contexts` (one row per context: version, times, next recovery
point id), `snapshots` (newest two per context), `journal` (changes after the older kept snapshot),
`recovery_points`. Keeping two snapshots and the journal back to the older one means a damaged newest
snapshot can be rebuilt from the older one plus the journal (``recovery="fallback"``).

Writers: one at a time. `open()` takes an exclusive `flock` on ``<path>.lock`` (created 0600), so a
second opener, in this process or another, gets `StoreLockedError` at once. Readers that do not write
(`SQLiteStore(path, readonly=True)`, used by offline tools) take no lock and see committed data only.

Durability: ``sync="full"`` (default, ``synchronous=FULL``) survives power loss; ``sync="normal"``
survives a process crash but may lose the newest commits on power loss, and commits about 3x faster.

Threading: not thread-safe; one owner thread at a time (see `Store`). The sqlite3 connection is
created with ``check_same_thread=False`` because the owner thread (the persistence actor's) is not the
thread that constructs the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ._codec import FORMAT_VERSION, Codec
from ._errors import CorruptStateError, PersistenceError, StoreLockedError
from ._model import ContextState, RecoveryPoint, apply_change
from ._store import (
    Append,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    Op,
    PutRecoveryPoint,
    PutSnapshot,
    StoredContext,
    VerifyIssue,
)

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hoard_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contexts (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    next_rp_id INTEGER NOT NULL DEFAULT 1);
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
_TABLES = {"hoard_meta", "contexts", "snapshots", "journal", "recovery_points"}
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class SQLiteStore:
    """One SQLite file holding every context. See the module docstring.

    Args:
        path: the database file (created if missing, with mode 0600).
        sync: "full" (default) or "normal"; see the module docstring for what each survives.
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading (bombs are refused).
        readonly: open without the writer lock and refuse writes (for offline inspection).
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "full", compression_level: int = 3,
                 max_state_bytes: int = 64 * 2**20, readonly: bool = False) -> None:
        if sync not in _SYNC:
            from ._errors import ConfigError
            raise ConfigError(f"sync must be one of {sorted(_SYNC)}, not {sync!r}")
        self.path = os.fspath(path)
        self.location = self.path
        self.sync = sync
        self.readonly = readonly
        self.codec = Codec(compression_level, max_bytes=max_state_bytes + 2**20)
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
            # create with owner-only permissions before SQLite does (it would use the umask)
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise PersistenceError(f"cannot create store {self.path!r}: {exc}") from exc
        db = self._guard(lambda: sqlite3.connect(self.path, isolation_level=None, check_same_thread=False),
                         "open")
        try:
            self._guard(lambda: db.execute("PRAGMA journal_mode=WAL").fetchone(), "open")
            db.execute(f"PRAGMA synchronous={_SYNC[self.sync]}")
            db.execute("PRAGMA busy_timeout=0")
        except BaseException:
            db.close()
            raise
        return db

    def _init_schema(self) -> None:
        db = self._require()
        tables = {r[0] for r in self._guard(
            lambda: db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall(), "open")}
        if tables and "hoard_meta" not in tables:
            raise CorruptStateError(f"{self.path!r} is an SQLite database but not a hoard store "
                                    f"(tables: {', '.join(sorted(tables)[:5])})", what="store")
        if "hoard_meta" in tables:
            row = db.execute("SELECT value FROM hoard_meta WHERE key='format'").fetchone()
            fmt = int(row[0]) if row and str(row[0]).isdigit() else None
            if fmt is None:
                raise CorruptStateError(f"{self.path!r}: hoard store without a format version", what="store")
            if fmt != FORMAT_VERSION:
                newer = "a newer" if fmt > FORMAT_VERSION else "an older"
                raise CorruptStateError(f"{self.path!r} uses store format {fmt}, written by {newer} hoard; "
                                        f"this one reads format {FORMAT_VERSION}", what="store")
            missing = _TABLES - tables
            if missing and not self.readonly:
                raise CorruptStateError(f"{self.path!r}: hoard store missing tables {sorted(missing)}", what="store")
            return
        if self.readonly:
            raise CorruptStateError(f"{self.path!r} is not a hoard store (empty database)", what="store")

        def create() -> None:
            with self._transaction(db):
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute("INSERT OR REPLACE INTO hoard_meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
        self._guard(create, "create schema")

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
        except (CorruptStateError, PersistenceError):
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
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- writes --------------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        if not ops:
            return
        db = self._require()
        # encode before the transaction: the write lock is held only for the SQL itself
        encoded = [self._encode(op) for op in ops]

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
            return codec.encode_state(op.state)
        if isinstance(op, PutRecoveryPoint):
            return codec.encode_state(op.rp.state)
        return None

    def _apply(self, db: sqlite3.Connection, op: Op, blob: bytes | None) -> None:
        if isinstance(op, Append):
            ch = op.change
            cur = db.execute("UPDATE contexts SET version=?, updated_at=? WHERE id=? AND version=?",
                             (ch.version, ch.at, op.context_id, ch.version - 1))
            if cur.rowcount != 1:
                raise PersistenceError(self._version_problem(db, op.context_id, ch.version),
                                       context_id=op.context_id)
            db.execute("INSERT INTO journal VALUES (?,?,?)", (op.context_id, ch.version, blob))
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
        elif isinstance(op, DeleteContext):
            for table, col in (("journal", "context_id"), ("snapshots", "context_id"),
                               ("recovery_points", "context_id"), ("contexts", "id")):
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
        db = self._require()
        return self._guard(lambda: self._load(db, context_id), "load", context_id)

    def _load(self, db: sqlite3.Connection, context_id: str) -> ContextState | None:
        row = db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return None
        stored_version = row[0]
        snap = db.execute("SELECT version, blob FROM snapshots WHERE context_id=? ORDER BY version DESC LIMIT 1",
                          (context_id,)).fetchone()
        if snap is None:
            raise CorruptStateError(f"context {context_id!r} has no snapshot", context_id=context_id,
                                    what="snapshot")
        state = self._decode_state(snap[1], context_id, f"snapshot v{snap[0]} of {context_id!r}")
        if state.version != snap[0] or state.id != context_id:
            raise CorruptStateError(f"snapshot v{snap[0]} of {context_id!r} holds {state.id!r} v{state.version}",
                                    context_id=context_id, what="snapshot")
        for version, blob in db.execute("SELECT version, blob FROM journal WHERE context_id=? AND version>? "
                                        "ORDER BY version", (context_id, state.version)):
            what = f"journal entry v{version} of {context_id!r}"
            change = self._decode_change(blob, context_id, what)
            if change.version != version or version != state.version + 1:
                raise CorruptStateError(f"{what}: expected version {state.version + 1}, found {change.version}",
                                        context_id=context_id, what="journal")
            state = apply_change(state, change)
        if state.version != stored_version:
            raise CorruptStateError(f"context {context_id!r}: journal ends at v{state.version}, but the store "
                                    f"acknowledged v{stored_version}", context_id=context_id, what="journal")
        return state

    def _decode_state(self, blob: bytes, context_id: str, what: str) -> ContextState:
        try:
            return self.codec.decode_state(blob, what)
        except CorruptStateError as exc:
            exc.context_id = context_id
            raise

    def _decode_change(self, blob: bytes, context_id: str, what: str) -> Any:
        try:
            return self.codec.decode_change(blob, what)
        except CorruptStateError as exc:
            exc.context_id = context_id
            raise

    def info(self, context_id: str) -> StoredContext | None:
        db = self._require()

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
            # range scan on the primary key; no LIKE, so '%' and '_' in ids need no escaping
            hi = prefix[:-1] + chr(ord(prefix[-1]) + 1) if ord(prefix[-1]) < 0x10FFFF else None
            sql, args = ("SELECT id FROM contexts WHERE id>=? AND id<? ORDER BY id", (prefix, hi)) if hi else \
                ("SELECT id FROM contexts WHERE id>=? ORDER BY id", (prefix,))
            return self._guard(lambda: [r[0] for r in db.execute(sql, args)], "list")
        return self._guard(lambda: [r[0] for r in db.execute("SELECT id FROM contexts ORDER BY id")], "list")

    def count(self) -> int:
        db = self._require()
        return self._guard(lambda: db.execute("SELECT count(*) FROM contexts").fetchone()[0], "count")

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        db = self._require()

        def run() -> list[RecoveryPoint]:
            rows = db.execute("SELECT rp_id, version, label, created_at, blob FROM recovery_points "
                              "WHERE context_id=? ORDER BY rp_id", (context_id,)).fetchall()
            return [self._rp(context_id, *r) for r in rows]
        return self._guard(run, "list recovery points", context_id)

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        db = self._require()

        def run() -> RecoveryPoint | None:
            r = db.execute("SELECT rp_id, version, label, created_at, blob FROM recovery_points "
                           "WHERE context_id=? AND rp_id=?", (context_id, rp_id)).fetchone()
            return None if r is None else self._rp(context_id, *r)
        return self._guard(run, "read recovery point", context_id)

    def _rp(self, context_id: str, rp_id: int, version: int, label: str | None, created_at: float,
            blob: bytes) -> RecoveryPoint:
        state = self._decode_state(blob, context_id, f"recovery point {rp_id} of {context_id!r}")
        if state.version != version or state.id != context_id:
            raise CorruptStateError(f"recovery point {rp_id} of {context_id!r} holds {state.id!r} "
                                    f"v{state.version}, not v{version}", context_id=context_id,
                                    what="recovery_point")
        return RecoveryPoint(rp_id, context_id, version, label, created_at, state)

    # -- verification --------------------------------------------------------------------------------
    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        """Check every context: its snapshots, journal and recovery points decode and line up, and no
        row belongs to a context that does not exist. With `fix`, orphan rows are deleted (they hold
        no acknowledged data of any existing context)."""
        db = self._require()

        def run() -> list[VerifyIssue]:
            issues: list[VerifyIssue] = []
            for (cid,) in db.execute("SELECT id FROM contexts ORDER BY id").fetchall():
                try:
                    self._load(db, cid)
                except CorruptStateError as exc:
                    issues.append(VerifyIssue(cid, exc.what or "context", str(exc)))
                for (rp_id, version, blob) in db.execute(
                        "SELECT rp_id, version, blob FROM recovery_points WHERE context_id=?", (cid,)).fetchall():
                    try:
                        self._rp(cid, rp_id, version, None, 0.0, blob)
                    except CorruptStateError as exc:
                        issues.append(VerifyIssue(cid, "recovery_point", str(exc)))
            for table in ("snapshots", "journal", "recovery_points"):
                orphans = [r[0] for r in db.execute(
                    f"SELECT DISTINCT context_id FROM {table} WHERE context_id NOT IN (SELECT id FROM contexts)")]  # noqa: S608
                for cid in orphans:
                    if fix and not self.readonly:
                        with self._transaction(db):
                            db.execute(f"DELETE FROM {table} WHERE context_id=?", (cid,))  # noqa: S608
                    issues.append(VerifyIssue(cid, table, f"rows in {table} for a context that does not exist",
                                              fixed=fix and not self.readonly))
            return issues
        return self._guard(run, "verify")


def _first_context(ops: Sequence[Op]) -> str | None:
    op = ops[0]
    if isinstance(op, (PutSnapshot, CreateContext)):
        return op.state.id
    if isinstance(op, PutRecoveryPoint):
        return op.rp.context_id
    return op.context_id


def _quote_uri(path: str) -> str:
    from urllib.parse import quote
    return quote(path)
