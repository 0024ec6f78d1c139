"""`SQLiteStore`: the embedded default store, one SQLite file in WAL mode.

Tables: `hoard_meta` (format version), `contexts` (one row per context: the acknowledged version,
times, next recovery point id), `snapshots` (newest two per context), `journal` (changes after the
older kept snapshot), `recovery_points`, and `quarantine` (damaged or unusable rows that a recovery or
a repair took out of the way: kept for inspection, never loaded). Keeping two snapshots and the
journal back to the older one means a damaged newest snapshot can be rebuilt from the older one plus
the journal.

Loading, recovery (``recovery="strict"`` or ``"fallback"``), repair, `verify()` and the read interface
are the shared engine's (`hoard.storage._recovery`): this module is the SQL and the connection. Every
read-only operation runs in one read transaction, so it sees one consistent state of the file while
another process writes (WAL readers never block the writer, nor it them).

Writers: one at a time, per store *file*, however it is named. `open()` takes an exclusive `flock` on
``<path>.lock`` (created 0600; what older versions took) and one on the database file itself, and
registers the file's identity (device, inode) in this process, so a second opener in this process or
another gets `StoreLockedError` at once, also through a symlink, a hard link, a bind mount or another
spelling of the path. (In this process the identity is checked *before* the file is opened: closing a
descriptor of the database file would drop SQLite's own POSIX locks of the open store.)

A writer checks before and after each write (commits, feed consumers, the history policy, compaction,
vacuum, compression dictionaries, repairs) that its path still names the file it opened: once the
file is deleted (or its directory) or replaced, every later write and read raises `PersistenceError`
saying so, and nothing written after that is acknowledged. Readers that do not write
(`SQLiteStore(path, readonly=True)`, used by offline tools) take no lock and see committed data only;
those a writer makes for other threads (`SQLiteStore.reader`) open its absolute path and refuse, as
it does, a file that is no longer the one it opened.
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
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

from ._codec import DICT_ID_BASE, FORMAT_VERSION, KIND_DICTIONARY, Codec, train_dictionary
from ._errors import ConfigError, CorruptStateError, HoardError, PersistenceError, StoreLockedError
from ._feed import DEFAULT_FEED_RETENTION, PRUNE_EVERY, check_retention, consumer_position, feed_rows, prune_floor
from ._recovery import RowAccess, RowStore, _storable_prefix
from ._retention import RECOVERY, HistoryPolicy, history_base
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
    StoreStats,
    context_of,
)
from ._values import validate_id

__all__ = ["SQLiteStore"]

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
# the change feed (not part of _TABLES either): offsets handed out by the writer, head + 1 onwards,
# where the head is the highest offset ever given (`_SQLiteRows.feed_bounds`: the newest row, else the
# pruned-up-to offset, hoard_meta's 'feed_floor'), so never reused, also after every row was pruned.
# Not AUTOINCREMENT (stores made before have it, and keep it): that rewrites the sqlite_sequence
# page in every commit, one WAL page of four a durable write syncs
_FEED = (
    "CREATE TABLE IF NOT EXISTS feed (pos INTEGER PRIMARY KEY, context_id TEXT NOT NULL, "
    "version INTEGER NOT NULL, blob BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS feed_consumers (name TEXT PRIMARY KEY, pos INTEGER NOT NULL)",
)
# zstd dictionaries for small payloads (not part of _TABLES either: stores made before have none);
# each blob is a KIND_DICTIONARY frame (checksummed); version n has zstd dictionary id DICT_ID_BASE + n
_DICTIONARIES = ("CREATE TABLE IF NOT EXISTS dictionaries (version INTEGER PRIMARY KEY, blob BLOB NOT NULL, "
                 "created_at REAL NOT NULL)")
DICTIONARY_AFTER = 2000  # writes without a dictionary after which one is trained from the store's blobs
_TABLES = {"hoard_meta", "contexts", "snapshots", "journal", "recovery_points"}
# an append's version check: the contexts row moves to the change's version only from the one before it
_BUMP = "UPDATE contexts SET version=?, updated_at=? WHERE id=? AND version=?"

#: a blob as bound to a statement: an append's journal blob is a bytearray (see `_encode_all`)
_Blob = bytes | bytearray


class _VersionMismatch(Exception):
    """A batch of appends met a contexts row not at the version before its change (rolled back)."""
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
# (st_dev, st_ino) of every store file open for writing in this process -> its store. setdefault is
# atomic under the GIL: the check and the claim are one step, without a lock of ours.
_WRITERS: dict[tuple[int, int], object] = {}


class SQLiteStore(RowStore):
    """One SQLite file holding every context. See the module docstring.

    Args:
        path: the database file (created if missing, with mode 0600).
        sync: "full" (default) or "normal"; see the module docstring for what each survives.
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading (bombs are refused).
        readonly: open without the writer lock and refuse writes (for offline inspection).
        recovery: "strict" (default) or "fallback": what `load` does with damaged data (see
            `hoard.storage._recovery`).
        codec: the `Codec` that encodes and verifies blobs (default: one made from
            `compression_level` and `max_state_bytes`); a test may hand in one that fails.
        connect: the connection factory, called like `sqlite3.connect` (default); a test may hand in
            one whose connections fail chosen statements.
        feed: record every committed change in the change feed (`hoard.storage._feed`), in the
            commit's transaction (default True; False only to measure what it costs).
        feed_retention: feed entries kept back from the newest, at most (see `Store.feed`).
        dictionary: train a zstd dictionary from the store's own blobs once `DICTIONARY_AFTER` writes
            found none, and compress small payloads with it (default True; see `train_dictionary`).
            Dictionaries already stored are read either way.
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: str = "full", compression_level: int = 3,
                 max_state_bytes: int = 64 * 2**20, readonly: bool = False, recovery: str = "strict",
                 codec: Codec | None = None, connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
                 feed: bool = True, feed_retention: int = DEFAULT_FEED_RETENTION, dictionary: bool = True) -> None:
        if sync not in _SYNC:
            raise ConfigError(f"sync must be one of {sorted(_SYNC)}, not {sync!r}")
        super().__init__(codec or Codec(compression_level, max_bytes=max_state_bytes + 2**20), recovery, readonly)
        self.path = os.fspath(path)
        if not isinstance(self.path, str) or "\x00" in self.path:
            raise ConfigError(f"the store path must be a str path without NUL bytes, not {self.path!r}")
        self.location = self.path
        self.sync = sync
        self._connect_fn = connect
        self.feed_enabled = feed
        self.feed_retention = check_retention(feed_retention)
        # feed entries appended since the last prune; PRUNE_EVERY at each open, so that the first
        # commit after it prunes: a writer that restarts more often than every PRUNE_EVERY entries
        # would otherwise never prune, and the feed would outgrow its retention without bound
        self._since_prune = PRUNE_EVERY
        self.history_policy: HistoryPolicy = RECOVERY  # as recorded in the store (read on open)
        self._snapshot_times: dict[tuple[str, int], float] = {}  # (id, version) -> updated_at, for "seconds"
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._made_lock = False  # this open created STORE.lock (removed again if the open is refused)
        self._file_fd: int | None = None  # the database file, flocked
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened for writing
        # a reader made by `reader()`: the identity of its writer's file, which alone it reads
        self._writer_identity: tuple[int, int] | None = None
        self._abspath = os.path.abspath(self.path)
        self._lost: str | None = None  # why the store can no longer be used (its file was deleted...)
        self._checkpoint_due = False  # a commit failed: truncate the WAL after the next one succeeds
        self.dictionary = dictionary
        self.codec.on_missing_dictionary = self._reload_dictionary
        self._undictionaried = 0  # writes since the last attempt to train a dictionary
        # the highest feed offset handed out (see _FEED), as of this writer's last commit; None: read
        # it from the store in the next commit's transaction (at open, and after a failed commit)
        self._feed_head: int | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        if self._db is not None:
            return
        if not self.readonly:
            self._take_lock()
        self._check_identity()  # a writer's reader: its writer's file or nothing (checked again in use)
        try:
            if not self.readonly:
                self._lock_file()
            self._db = self._connect()
            self._init_schema()
            self.history_policy = self._recorded_history()
        except BaseException:
            if self._made_lock and self._lock_fd is not None:
                # refused (a file that is no hoard store...): leave no lock file behind this open made;
                # removed while still held, so no other opener took it meanwhile
                with contextlib.suppress(OSError):
                    os.unlink(self.path + ".lock")
            self.close()
            raise

    def _check_writable(self) -> None:
        """Refuse at open what could be read but not written (a read-only file, directory or
        filesystem): every write would fail later. Readers open it with ``readonly=True``."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise PersistenceError(f"cannot open store {self.path!r}: its folder {folder!r} does not exist")
        target = self.path if os.path.exists(self.path) else folder
        if _on_readonly_fs(target) or not os.access(target, os.W_OK) or not os.access(folder, os.W_OK):
            where = "is on a read-only filesystem" if _on_readonly_fs(target) else "is not writable"
            raise PersistenceError(f"store {self.path!r} {where}: it cannot be opened for writing (SQLite also "
                                   "needs to create files next to it); open it read-only to read it "
                                   "(SQLiteStore(path, readonly=True), or the hoard CLI)")

    def _take_lock(self) -> None:
        self._check_writable()
        lock_path = self.path + ".lock"
        made = True
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                made = False
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
        self._made_lock = made

    def _lock_file(self) -> None:
        """Claim the database file by identity (this process), then flock it (other processes)."""
        self._abspath = os.path.abspath(self.path)
        try:
            fd = os.open(self._abspath, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise PersistenceError(f"cannot open store {self.path!r}: {exc}") from exc
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if _WRITERS.setdefault(key, self) is not self:
                raise StoreLockedError(self.path)
            self._identity = key
        except BaseException:
            # nothing of this process holds SQLite locks on a file it did not claim: safe to close
            os.close(fd)
            raise
        self._file_fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLockedError(self.path) from None
        except OSError as exc:
            raise PersistenceError(f"cannot lock {self.path!r}: {exc}") from exc

    def _check_identity(self) -> None:
        """Raise `PersistenceError` (and refuse every later call) if the path no longer names the file
        this store opened for writing (or, a reader made by `reader()`, the file its writer opened):
        deleted, its directory deleted, or replaced."""
        expected = self._identity if self._identity is not None else self._writer_identity
        if expected is None:
            return
        try:
            st = os.stat(self._abspath)
        except FileNotFoundError:
            what = "was deleted (the path no longer exists)"
        except OSError as exc:
            what = f"cannot be checked ({exc})"
        else:
            if (st.st_dev, st.st_ino) == expected:
                return
            what = "was replaced by another file"
        if self._identity is None:  # a writer's reader
            self._lost = (f"store {self.path!r} {what} while its writer had it open; this reader does not read "
                          "another file in its place; stop the system and open the store again")
        else:
            self._lost = (f"store {self.path!r} {what} while it was open; nothing written since is acknowledged; "
                          "stop this system and open the store again")
        log.error("%s", self._lost)
        raise PersistenceError(self._lost)

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            if not os.path.exists(self.path):
                raise PersistenceError(f"no store at {self.path!r}")
            uri = "file:" + _quote_uri(os.path.abspath(self.path)) + "?mode=ro"
            if _on_readonly_fs(self.path):
                # SQLite cannot create the WAL index (-shm) there; nobody can write the file either,
                # so it may be read as immutable (no locks, no WAL index)
                uri += "&immutable=1"
            return self._guard(lambda: self._connect_fn(uri, uri=True, isolation_level=None,
                                                        check_same_thread=False), "open")
        if not os.path.exists(self.path):
            # create with owner-only permissions before SQLite does (it would use the umask); SQLite
            # gives the -wal and -shm files the mode of the database file
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise PersistenceError(f"cannot create store {self.path!r}: {exc}") from exc
        # mode=rw: a file that can be read but not written fails here, instead of SQLite falling back
        # to a read-only connection that opens fine and then fails every write
        uri = "file:" + _quote_uri(os.path.abspath(self.path)) + "?mode=rw"
        return self._guard(lambda: self._connect_fn(uri, uri=True, isolation_level=None, check_same_thread=False),
                           "open")

    def _init_schema(self) -> None:
        """Check what the file is before changing anything in it; then set WAL and create the schema."""
        db = self._require()
        # the writer never waits (it holds the lock); a reader waits briefly in the rare moments WAL
        # makes it (the writer restarting the WAL file or checkpointing), instead of failing
        db.execute(f"PRAGMA busy_timeout={5000 if self.readonly else 0}")
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
            if "dictionaries" in tables:
                self._load_dictionaries(db)
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
                if "feed" not in tables:
                    for stmt in _FEED:
                        db.execute(stmt)
                if "dictionaries" not in tables:
                    db.execute(_DICTIONARIES)
                columns = {r[1] for r in db.execute("PRAGMA table_info(contexts)")}
                if "ttl" not in columns:  # a store made before TTLs: add the column, nothing else changes
                    db.execute("ALTER TABLE contexts ADD COLUMN ttl REAL")
        self._guard(setup, "open")
        self._load_dictionaries(db)

    # -- compression dictionaries --------------------------------------------------------------------
    def _load_dictionaries(self, db: sqlite3.Connection) -> None:
        """Hand every stored dictionary to the codec (the newest one for writing). A damaged one is
        `CorruptStateError` naming it: the blobs that need it could not be read."""
        rows = self._guard(lambda: db.execute("SELECT version, blob FROM dictionaries ORDER BY version").fetchall(),
                           "open")
        for i, (version, blob) in enumerate(rows):
            content = self.codec.unframe(KIND_DICTIONARY, blob, f"compression dictionary {version}")
            self.codec.add_dictionary(DICT_ID_BASE + version, content, newest=i == len(rows) - 1)

    def _reload_dictionary(self, dict_id: int) -> bool:
        """A blob needs dictionary `dict_id`, trained since this store loaded its dictionaries (by the
        writer, while this reader stayed open): load it. False if the store does not hold it."""
        db = self._db
        version = dict_id - DICT_ID_BASE
        if db is None or version < 1:
            return False
        try:
            row = db.execute("SELECT blob FROM dictionaries WHERE version = ?", (version,)).fetchone()
        except sqlite3.Error:  # a store without the table (made before dictionaries)
            return False
        if row is None:
            return False
        self.codec.add_dictionary(dict_id, self.codec.unframe(KIND_DICTIONARY, row[0],
                                                              f"compression dictionary {version}"))
        return True

    def train_dictionary(self) -> int | None:
        """Train a new zstd dictionary from small blobs of this store (up to 1,000 snapshots and
        1,000 journal entries), keep it (a new version, checksummed like every blob) and compress small
        payloads with it from now on; blobs written with older ones stay readable. Returns its
        version, or None when the store holds too few small blobs to learn from. Runs in the
        caller's thread (the store's owner): a read of up to 2,000 rows and tens of ms of training;
        one transaction. Called by `commit` once `DICTIONARY_AFTER` writes found no dictionary."""
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()
        self._check_identity()  # a write: not trained from, nor into, a file that is no longer the store
        rows = self._guard(lambda: db.execute(
            "SELECT blob FROM (SELECT blob FROM snapshots LIMIT 1000) UNION ALL "
            "SELECT blob FROM (SELECT blob FROM journal LIMIT 1000)").fetchall(), "train")
        samples = []
        for (blob,) in rows:
            kind = blob[5] if len(blob) > 5 else 0
            with contextlib.suppress(CorruptStateError):  # damaged rows are verify()'s business
                samples.append(self.codec.unframe(kind, blob))
        version = 1 + (self._guard(lambda: db.execute("SELECT max(version) FROM dictionaries").fetchone()[0],
                                   "train") or 0)
        content = train_dictionary(samples, version, self.codec.level)
        if content is None:
            return None
        framed = self.codec.frame(KIND_DICTIONARY, content)

        def run() -> None:
            with self._transaction(db):
                db.execute("INSERT INTO dictionaries (version, blob, created_at) VALUES (?,?,?)",
                           (version, framed, time.time()))
        self._written(run, "store a compression dictionary")
        self.codec.add_dictionary(DICT_ID_BASE + version, content, newest=True)
        log.info("store %r: trained compression dictionary %d from %d payloads", self.path, version, len(samples))
        return version

    def _maybe_train(self, written: int) -> None:
        """After `written` more writes without a dictionary, try to train one (see `train_dictionary`)."""
        self._undictionaried += written
        if self._undictionaried < DICTIONARY_AFTER:
            return
        self._undictionaried = 0
        try:
            self.train_dictionary()
        except HoardError as exc:  # compression is an optimisation: the commit itself succeeded
            log.warning("store %r: training a compression dictionary failed: %s", self.path, exc)

    def close(self) -> None:
        self._feed_head = None
        self._since_prune = PRUNE_EVERY  # a reopen prunes in its first commit (see __init__)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._file_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._file_fd)  # after the connection: no SQLite lock of this store is dropped
            self._file_fd = None
        if self._identity is not None:
            if _WRITERS.get(self._identity) is self:
                del _WRITERS[self._identity]  # only its owner removes an entry
            self._identity = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- helpers -------------------------------------------------------------------------------------
    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise PersistenceError(f"store {self.path!r} is not open")
        if self._lost is not None:
            raise PersistenceError(self._lost)
        if self._writer_identity is not None:
            self._check_identity()  # a writer's reader: a stat per read, never the file that replaced its store
        return self._db

    def _written(self, fn: Callable[[], T], what: str, context_id: str | None = None) -> T:
        """`_guard(fn)` for a write other than `commit` (which does the same inline): refused if the path
        no longer names the file this store opened, and not acknowledged (`PersistenceError`) if it
        stopped naming it meanwhile, as the write then went to an orphan. See `_check_identity`."""
        self._check_identity()
        result = self._guard(fn, what, context_id)
        self._check_identity()
        return result

    def _guard(self, fn: Callable[[], T], what: str, context_id: str | None = None) -> T:
        """Run `fn`, translating sqlite3 and OS errors into ours."""
        try:
            return fn()
        except HoardError:
            raise
        except (sqlite3.Error, OSError, UnicodeDecodeError) as exc:
            raise self._translated(exc, what, context_id) from exc

    def _translated(self, exc: sqlite3.Error | OSError | UnicodeDecodeError, what: str,
                    context_id: str | None) -> HoardError:
        """Our error for a sqlite3 or OS error `exc` raised doing `what` (see `_guard`); also for the
        `UnicodeDecodeError` sqlite3 raises when it turns stored text (a table name in the schema, an
        id, a label) into str: hoard only writes UTF-8, so such bytes are damage."""
        if isinstance(exc, UnicodeDecodeError):
            return CorruptStateError(f"{self.path!r}: text stored in it is not valid UTF-8 ({exc.reason} at byte "
                                     f"{exc.start} of a stored name or value): the file is damaged; restore it "
                                     "from a backup", context_id=context_id, what="store")
        if isinstance(exc, sqlite3.DatabaseError):
            msg = str(exc)
            failing = self._io_error() if ("not a database" in msg or "malformed" in msg) else None
            if failing is not None:
                # the file cannot even be read back (the filesystem was shut down, the disk fails):
                # an I/O error, not damaged data, which was never looked at
                return PersistenceError(f"store {self.path!r}: {what} failed: the file cannot be read ({failing}); "
                                        "the filesystem reports an I/O error (shut down or failing); the stored "
                                        "data was not checked", context_id=context_id)
            if "not a database" in msg or "malformed" in msg:
                return CorruptStateError(f"{self.path!r}: {msg} (not a hoard store, or damaged)",
                                         context_id=context_id, what="store")
            if "locked" in msg or "busy" in msg:
                return StoreLockedError(self.path)
            return PersistenceError(f"store {self.path!r}: {what} failed: {msg}", context_id=context_id)
        return PersistenceError(f"store {self.path!r}: {what} failed: {exc}", context_id=context_id)

    def _io_error(self) -> OSError | None:
        """The OS error that reading the start of the store file gives now (None if it reads)."""
        try:
            if self._file_fd is not None:
                os.pread(self._file_fd, 4096, 0)
            else:
                # an error path: a descriptor of the database opened and closed here may drop this
                # process's SQLite locks on it, which a connection that just failed can spare
                with open(self._abspath, "rb", buffering=0) as f:
                    f.read(4096)
        except OSError as exc:
            return exc
        return None

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
        encoded, rows, bumps = self._encode_all(ops)
        feed: Sequence[tuple[str, int, _Blob]] = []
        if self.feed_enabled:
            # (feed_rows passes each append's blob through untouched, a bytearray as well)
            feed = rows if rows is not None else feed_rows(ops, cast("list[bytes | None]", encoded),
                                                            self.codec.encode_change)
        taken: list[int] = []  # the feed head once this commit is in
        self._check_identity()  # do not write into a file that is no longer the store
        try:
            # `_guard` written out (no closure, no frames around the write, and the context named
            # only when there is an error: this is every durable write's path)
            try:
                self._write(db, ops, encoded, rows, bumps, feed, taken)
            except _VersionMismatch:
                taken.clear()
                self._write(db, ops, encoded, None, bumps, feed, taken)  # raises the error naming the change
        except BaseException as exc:
            # rolled back, or landed although COMMIT raised (a late fsync error): read the head again
            self._feed_head = None
            error = exc
            if isinstance(exc, (sqlite3.Error, OSError, UnicodeDecodeError)) and not isinstance(exc, HoardError):
                error = self._translated(exc, "commit", context_of(ops[0]))
            if isinstance(error, PersistenceError):
                self._checkpoint_due = True
            if error is exc:
                raise
            raise error from exc
        if taken:
            self._feed_head = taken[0]
        self._check_identity()  # deleted or replaced meanwhile: the commit went to an orphan, not the store
        self._since_prune = 0 if self._since_prune + len(feed) >= PRUNE_EVERY else self._since_prune + len(feed)
        if self._checkpoint_due:
            self._truncate_wal(db)
        if self.dictionary and self.codec.dictionary_id is None:
            self._undictionaried += len(ops)
            if self._undictionaried >= DICTIONARY_AFTER:
                self._maybe_train(0)

    def _encode_all(self, ops: Sequence[Op]) -> tuple[list[_Blob | None], list[tuple[str, int, _Blob]] | None,
                                                      list[tuple[int, float, str, int]]]:
        """Every op's blob; and while every op is an append (nearly every batch), the
        ``(context_id, version, blob)`` rows of their journal entries (their feed rows too) and the
        parameters of their contexts rows' version-checked updates (`_BUMP`)."""
        encode_change = self.codec.encode_change
        encoded: list[_Blob | None] = []
        rows: list[tuple[str, int, _Blob]] | None = []
        bumps: list[tuple[int, float, str, int]] = []
        try:
            for op in ops:
                if type(op) is Append:  # encoded without the dispatch of _encode
                    ch = op.change
                    # a bytearray: sqlite3 binds it as the same BLOB, but takes only bytearray (not
                    # bytes) without asking its adapter registry, which makes and drops an
                    # AttributeError per parameter (callgrind: twice per durable set, about 1,600
                    # instructions each)
                    blob = bytearray(encode_change(ch))
                    if rows is not None:
                        rows.append((op.context_id, ch.version, blob))
                        bumps.append((ch.version, ch.at, op.context_id, ch.version - 1))
                    encoded.append(blob)
                else:
                    encoded.append(self._encode(op))
                    rows = None
        except HoardError:
            raise
        except Exception as exc:  # nothing was written; the caller needs our error type, whatever failed
            raise PersistenceError(f"store {self.path!r}: encoding a change failed ({exc!r}); nothing was "
                                   "written", context_id=context_of(ops[0])) from exc
        return encoded, rows, bumps

    def _write(self, db: sqlite3.Connection, ops: Sequence[Op], encoded: Sequence[_Blob | None],  # noqa: PLR0917 - commit's parts
               appends: Sequence[tuple[str, int, _Blob]] | None, bumps: list[tuple[int, float, str, int]],
               feed: Sequence[tuple[str, int, _Blob]], taken: list[int]) -> None:
        """`commit`'s transaction (`_transaction`'s BEGIN, COMMIT and ROLLBACK written out: this is
        every durable write's path). `appends`: the journal rows when every op is an append."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if appends is not None:
                # a batch of appends: one executemany per table instead of two statements per append
                # (a group commit of 16 changes made 32 execute calls, each a cursor and a statement
                # cache lookup). The version check is the same: each row matches at most one contexts
                # row, so a count short of the batch means one did not match
                if db.executemany(_BUMP, bumps).rowcount != len(ops):
                    raise _VersionMismatch  # rolled back below; `commit` writes op by op, which names it
                db.executemany("INSERT OR REPLACE INTO journal VALUES (?,?,?)", appends)
            else:
                for op, blob in zip(ops, encoded, strict=True):
                    self._apply(db, op, blob)
            if feed:
                # one writer (the flock): offsets are handed out in commit order by construction
                head = self._feed_head
                if head is None:
                    head = _SQLiteRows(db).feed_bounds()[1]
                db.executemany("INSERT INTO feed (pos, context_id, version, blob) VALUES (?,?,?,?)",
                               [(head + 1, *feed[0])] if len(feed) == 1  # a lone write: no comprehension
                               else [(head + i, *row) for i, row in enumerate(feed, 1)])
                taken.append(head + len(feed))
                if self._since_prune + len(feed) >= PRUNE_EVERY:
                    self._prune_feed(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # see _transaction
                if db.in_transaction:
                    db.execute("ROLLBACK")
            raise

    def _truncate_wal(self, db: sqlite3.Connection) -> None:
        """After failed commits (disk full) the WAL keeps the size it grew to, and a freed disk fills
        up again at once. Once a commit succeeds again, copy the WAL into the database and truncate
        it, giving that space back. Best effort: busy (a reader) or failing, it is tried after the
        next commit again."""
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("store %r: WAL checkpoint after failed commits failed: %s", self.path, exc)
            return
        if not busy:
            self._checkpoint_due = False

    def _prune_feed(self, db: sqlite3.Connection) -> None:
        """Drop the feed entries retention lets go (see `prune_floor`), inside the commit."""
        rows = _SQLiteRows(db)
        floor, head = rows.feed_bounds()
        new = prune_floor(head, floor, list(rows.consumer_rows().values()), self.feed_retention)
        if new > floor:
            db.execute("DELETE FROM feed WHERE pos <= ?", (new,))
            db.execute("INSERT OR REPLACE INTO hoard_meta VALUES ('feed_floor', ?)", (str(new),))

    # -- feed consumers (writes: the store's owner calls them) ----------------------------------------
    def set_consumer(self, name: str, position: int | None = None) -> int:
        """Register feed consumer `name` (at the feed's floor: every kept entry is still ahead of it)
        if it is new, and with `position` record the offset it has processed. Returns its position.
        One transaction; `InvalidValueError` for a position behind the consumer's or past the head."""
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()

        def run() -> int:
            with self._transaction(db):
                rows = _SQLiteRows(db)
                floor, head = rows.feed_bounds()
                cur = rows.consumer_rows().get(name)
                pos = consumer_position(name, cur, position, floor, head)
                db.execute("INSERT OR REPLACE INTO feed_consumers VALUES (?, ?)", (name, pos))
                return pos
        return self._written(run, "commit a feed consumer")

    def remove_consumer(self, name: str) -> None:
        """Forget feed consumer `name` (retention no longer waits for it). One transaction."""
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()

        def run() -> None:
            with self._transaction(db):
                db.execute("DELETE FROM feed_consumers WHERE name=?", (name,))
        self._written(run, "remove a feed consumer")

    def reader(self) -> SQLiteStore:
        """A new read-only store on the same file, with its own connection and codec (for another
        thread: readers take no lock and never block the writer). Unopened; the caller owns it.

        It is bound to the file this writer opened: it opens the writer's absolute path (not a relative
        one, which a later ``chdir`` would point elsewhere), and while this store is open for writing,
        the reader's open and each of its reads raise `PersistenceError` once that path no longer
        names the writer's file (deleted or replaced), as the writer's own writes do: it never reads
        another store's data in its place."""
        reader = SQLiteStore(self._abspath, readonly=True, recovery=self.recovery,
                             max_state_bytes=self.codec.max_bytes - 2**20, feed_retention=self.feed_retention)
        reader._writer_identity = self._identity
        return reader

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

    def _apply(self, db: sqlite3.Connection, op: Op, blob: _Blob | None) -> None:  # noqa: PLR0912 - one branch per kind of op
        if isinstance(op, Append):
            ch = op.change
            cur = db.execute(_BUMP, (ch.version, ch.at, op.context_id, ch.version - 1))
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
            if self.history_policy.kind == "seconds":
                self._snapshot_times[(st.id, st.version)] = st.updated_at
            self._trim_history(db, st.id, max(row[0], st.version), st.updated_at)
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

    def _trim_history(self, db: sqlite3.Connection, context_id: str, top: int, now: float) -> int:
        """Drop the snapshots and journal entries the history policy lets go (see
        `hoard.storage._retention`) as of `now` (the writer's clock: the snapshot's time); returns
        how many rows went."""
        versions = [r[0] for r in db.execute("SELECT version FROM snapshots WHERE context_id=? ORDER BY version",
                                             (context_id,))]
        if not versions:
            return 0
        base = history_base(self.history_policy, versions, top, now, lambda v: self._snapshot_time(db, context_id, v))
        gone = db.execute("DELETE FROM snapshots WHERE context_id=? AND version<?", (context_id, base)).rowcount
        return gone + db.execute("DELETE FROM journal WHERE context_id=? AND version<=?", (context_id, base)).rowcount

    def _snapshot_time(self, db: sqlite3.Connection, context_id: str, version: int) -> float:
        """When snapshot `version` was made (its state's updated_at): remembered, else decoded once;
        a damaged one counts as new (kept: never dropped on a guess)."""
        key = (context_id, version)
        if key not in self._snapshot_times:
            row = db.execute("SELECT blob FROM snapshots WHERE context_id=? AND version=?", key).fetchone()
            try:
                self._snapshot_times[key] = self.codec.decode_state(row[0]).updated_at
            except CorruptStateError:
                return float("inf")
        return self._snapshot_times[key]

    # -- the history policy --------------------------------------------------------------------------
    def _recorded_history(self) -> HistoryPolicy:
        db = self._require()
        row = self._guard(lambda: db.execute("SELECT value FROM hoard_meta WHERE key='history'").fetchone(), "open")
        return RECOVERY if row is None else HistoryPolicy.parse(str(row[0]))

    def set_history(self, policy: HistoryPolicy) -> None:
        """Record the history policy in the store (compaction follows it from now on, here and in
        every later opener, `hoard compact` included). One transaction."""
        policy = HistoryPolicy.parse(policy)
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()

        def run() -> None:
            with self._transaction(db):
                db.execute("INSERT OR REPLACE INTO hoard_meta VALUES ('history', ?)", (policy.text,))
        self._written(run, "record the history policy")
        self.history_policy = policy

    def compact_history(self) -> int:
        """Apply the recorded history policy to every context now (one transaction); returns how
        many snapshot and journal rows went. What `hoard compact` runs before VACUUM."""
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()

        def run() -> int:
            with self._transaction(db):
                now = time.time()
                return sum(self._trim_history(db, cid, version, now)
                           for cid, version in db.execute("SELECT id, version FROM contexts").fetchall())
        return self._written(run, "compact history")

    def vacuum(self) -> None:
        """``VACUUM`` (the file is rebuilt without free pages) then ``wal_checkpoint(TRUNCATE)`` (the
        WAL is emptied), on the writer's connection: needs the writer lock, so no other process
        writes meanwhile. Readers may go on; SQLite makes the checkpoint wait for them up to
        ``busy_timeout`` (0 here: it then leaves the WAL as it is, which is harmless). Blocks for
        about the time it takes to copy the file. See `Store.vacuum`."""
        if self.readonly:
            raise PersistenceError(f"store {self.path!r} is open read-only")
        db = self._require()

        def run() -> None:
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._written(run, "vacuum")

    @staticmethod
    def _version_problem(db: sqlite3.Connection, context_id: str, version: int) -> str:
        row = db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return f"journal entry for {context_id!r}, which is not in the store"
        return f"journal entry {version} for {context_id!r} does not follow stored version {row[0]}"

    # -- the engine's two transactions ---------------------------------------------------------------
    def _read(self, what: str, context_id: str | None, fn: Callable[[RowAccess], T], *,
              transaction: bool = True) -> T:
        """`fn(rows)` in one read transaction: in WAL mode it sees the store as of its first read,
        whatever a writer commits meanwhile. (SQLite needs it also for `newest`, hence always.)
        Inside a `read_view()`, in the view's transaction."""
        db = self._require()
        pinned = self._pinned
        if pinned is not None:
            return self._guard(lambda: fn(pinned), what, context_id)

        def run() -> T:
            db.execute("BEGIN")
            try:
                return fn(_SQLiteRows(db))
            finally:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")  # it only read
        return self._guard(run, what, context_id)

    @contextlib.contextmanager
    def _read_transaction(self, what: str) -> Iterator[RowAccess]:
        """One read transaction held open for a `read_view()`: a deferred BEGIN plus a first read,
        which is where SQLite takes the snapshot (WAL: no lock that blocks the writer)."""
        db = self._require()

        def begin() -> None:
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM hoard_meta").fetchone()
        try:
            self._guard(begin, what)
            yield _SQLiteRows(db)
        finally:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")  # it only read

    def _repair(self, what: str, context_id: str | None, expected_version: int | None,
                fn: Callable[[RowAccess], T]) -> T | None:
        """`fn(rows)` in one write transaction, if the context is still at `expected_version` (this
        store holds the writer lock: nobody else changes it, but a caller may have read long ago)."""
        if self.readonly:
            return None
        db = self._require()

        def run() -> T | None:
            with self._transaction(db):
                if context_id is not None:
                    row = db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
                    if row is None or row[0] != expected_version:
                        return None
                return fn(_SQLiteRows(db))
        return self._written(run, what, context_id)

    # -- reads the engine does not make ---------------------------------------------------------------
    def list_ids(self, prefix: str = "") -> list[str]:
        """Stored ids starting with `prefix` (taken literally), in code point order; caller's thread."""
        if not _storable_prefix(prefix):
            return []
        return self._read("list", None, lambda rows: rows.context_ids(prefix))

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        """See `Store.expired`. One scan of the contexts table (no blob is read)."""
        db = self._require()
        sql = ("SELECT id FROM contexts WHERE updated_at + coalesce(ttl, ?) < ? ORDER BY updated_at LIMIT ?")
        return self._guard(lambda: [r[0] for r in db.execute(sql, (default_ttl, now, limit))], "expired")

    def count(self) -> int:
        db = self._require()
        return int(self._guard(lambda: db.execute("SELECT count(*) FROM contexts").fetchone()[0], "count"))


_SUMMARY = """
SELECT c.id, c.version, c.created_at, c.updated_at,
 (SELECT max(version) FROM snapshots s WHERE s.context_id=c.id),
 (SELECT count(*) FROM journal j WHERE j.context_id=c.id),
 c.next_rp_id,
 (SELECT count(*) FROM recovery_points r WHERE r.context_id=c.id),
 (SELECT coalesce(sum(length(blob)),0) FROM snapshots s WHERE s.context_id=c.id)
 + (SELECT coalesce(sum(length(blob)),0) FROM journal j WHERE j.context_id=c.id),
 {ttl}
FROM contexts c"""
_TABLE = {"snapshot": "snapshots", "journal": "journal", "recovery_point": "recovery_points",
          "quarantine": "quarantine"}


class _SQLiteRows:
    """`RowAccess` on one SQLite connection, inside the transaction the store opened."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def context_ids(self, prefix: str = "") -> list[str]:
        where, args = _prefix_range(prefix)
        return [r[0] for r in self.db.execute(f"SELECT id FROM contexts {where} ORDER BY id", args)]  # noqa: S608

    def summaries(self, prefix: str = "", context_id: str | None = None) -> list[StoredContext]:
        where, args = ("WHERE c.id=?", (context_id,)) if context_id is not None else _prefix_range(prefix, "c.id")
        # a store made before TTLs, opened read-only, has no ttl column yet (a writer adds it on open)
        ttl_column = any(r[1] == "ttl" for r in self.db.execute("PRAGMA table_info(contexts)"))
        summary = _SUMMARY.format(ttl="c.ttl" if ttl_column else "NULL")
        return [StoredContext(cid, ver, created, updated, snap_v or 0, jn, next_rp, rps, size, ttl)
                for cid, ver, created, updated, snap_v, jn, next_rp, rps, size, ttl
                in self.db.execute(f"{summary} {where} ORDER BY c.id", args)]

    def head(self, context_id: str) -> tuple[int, int] | None:
        row = self.db.execute("SELECT version, next_rp_id FROM contexts WHERE id=?", (context_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def newest(self, context_id: str) -> tuple[int, tuple[int, bytes] | None, list[tuple[int, bytes]]] | None:
        row = self.db.execute("SELECT version FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            return None
        snap = self.db.execute("SELECT version, blob FROM snapshots WHERE context_id=? ORDER BY version DESC LIMIT 1",
                               (context_id,)).fetchone()
        return row[0], snap, self.journal_rows(context_id, snap[0] if snap else 0)

    def snapshot_rows(self, context_id: str) -> list[tuple[int, bytes]]:
        return self.db.execute("SELECT version, blob FROM snapshots WHERE context_id=? ORDER BY version",
                               (context_id,)).fetchall()

    def snapshot_row(self, context_id: str, version: int) -> bytes | None:
        row = self.db.execute("SELECT blob FROM snapshots WHERE context_id=? AND version=?",
                              (context_id, version)).fetchone()
        return None if row is None else bytes(row[0])

    def snapshot_versions(self, context_id: str) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT version FROM snapshots WHERE context_id=? ORDER BY version",
                                              (context_id,))]

    def journal_rows(self, context_id: str, after: int = 0, upto: int | None = None) -> list[tuple[int, bytes]]:
        return self.db.execute("SELECT version, blob FROM journal WHERE context_id=? AND version>? AND version<=? "
                               "ORDER BY version", (context_id, after, 2**62 if upto is None else upto)).fetchall()

    def recovery_point_rows(self, context_id: str, rp_id: int | None = None
                            ) -> list[tuple[int, int, str | None, float, bytes]]:
        sql = "SELECT rp_id, version, label, created_at, blob FROM recovery_points WHERE context_id=?"
        if rp_id is None:
            return self.db.execute(sql + " ORDER BY rp_id", (context_id,)).fetchall()
        return self.db.execute(sql + " AND rp_id=?", (context_id, rp_id)).fetchall()

    def orphans(self) -> list[tuple[str, str]]:
        out = []
        for kind, table in _TABLE.items():
            if table == "quarantine" and not _has_table(self.db, "quarantine"):
                continue
            out += [(kind, r[0]) for r in self.db.execute(
                f"SELECT DISTINCT context_id FROM {table} WHERE context_id NOT IN (SELECT id FROM contexts) "  # noqa: S608
                "ORDER BY context_id")]
        return out

    def integrity_problems(self) -> list[str]:
        problems = [str(r[0]) for r in self.db.execute("PRAGMA quick_check").fetchall()]
        return [] if problems == ["ok"] else [f"sqlite integrity: {p}" for p in problems[:20]]

    def totals(self) -> StoreStats:
        def one(sql: str) -> tuple[int, int]:
            row = self.db.execute(sql).fetchone()
            return int(row[0]), int(row[1] or 0)
        contexts = int(self.db.execute("SELECT count(*) FROM contexts").fetchone()[0])
        snaps, snap_bytes = one("SELECT count(*), sum(length(blob)) FROM snapshots")
        journal, journal_bytes = one("SELECT count(*), sum(length(blob)) FROM journal")
        rps, rp_bytes = one("SELECT count(*), sum(length(blob)) FROM recovery_points")
        quarantined = one("SELECT count(*), 0 FROM quarantine")[0] if _has_table(self.db, "quarantine") else 0
        return StoreStats("", contexts, snaps, journal, rps, quarantined, snap_bytes, journal_bytes, rp_bytes)

    def feed_bounds(self) -> tuple[int, int]:
        if not _has_table(self.db, "feed"):
            return 0, 0
        row = self.db.execute("SELECT (SELECT max(pos) FROM feed), "
                              "(SELECT value FROM hoard_meta WHERE key='feed_floor')").fetchone()
        floor = int(row[1] or 0)
        head = max(int(row[0] or 0), floor)
        if _has_table(self.db, "sqlite_sequence"):  # a store made with AUTOINCREMENT offsets
            seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='feed'").fetchone()
            head = max(head, int(seq[0]) if seq else 0)
        return floor, head

    def feed_rows(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        if not _has_table(self.db, "feed"):
            return []
        return self.db.execute("SELECT pos, context_id, blob FROM feed WHERE pos > ? ORDER BY pos LIMIT ?",
                               (after, limit)).fetchall()

    def consumer_rows(self) -> dict[str, int]:
        if not _has_table(self.db, "feed_consumers"):
            return {}
        return dict(self.db.execute("SELECT name, pos FROM feed_consumers ORDER BY name").fetchall())

    def write_snapshot(self, context_id: str, version: int, blob: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?)", (context_id, version, blob))

    def write_recovery_point_blob(self, context_id: str, rp_id: int, blob: bytes) -> None:
        self.db.execute("UPDATE recovery_points SET blob=? WHERE context_id=? AND rp_id=?", (blob, context_id, rp_id))

    def delete_snapshot(self, context_id: str, version: int) -> None:
        self.db.execute("DELETE FROM snapshots WHERE context_id=? AND version=?", (context_id, version))

    def delete_journal(self, context_id: str, version: int) -> None:
        self.db.execute("DELETE FROM journal WHERE context_id=? AND version=?", (context_id, version))

    def quarantine(self, context_id: str, source: str, version: int | None, problem: str,
                   rp_id: int | None = None) -> None:
        table, key, k = (("recovery_points", "rp_id", rp_id) if source == "recovery_point"
                         else (_TABLE[source], "version", version))
        where = f"FROM {table} WHERE context_id=? AND {key}=?"
        row = self.db.execute(f"SELECT blob {where}", (context_id, k)).fetchone()
        self.db.execute("INSERT INTO quarantine (context_id, source, version, rp_id, problem, at, blob) "
                        "VALUES (?,?,?,?,?,?,?)", (context_id, source, version, rp_id, problem, time.time(),
                                                   row[0] if row else None))
        self.db.execute(f"DELETE {where}", (context_id, k))

    def restart(self, context_id: str, state_version: int, updated_at: float, blob: bytes) -> None:
        self.db.execute("DELETE FROM snapshots WHERE context_id=?", (context_id,))
        self.db.execute("DELETE FROM journal WHERE context_id=?", (context_id,))
        self.db.execute("INSERT INTO snapshots VALUES (?,?,?)", (context_id, state_version, blob))
        self.db.execute("UPDATE contexts SET version=?, updated_at=? WHERE id=?",
                        (state_version, updated_at, context_id))

    def set_next_rp_id(self, context_id: str, next_rp_id: int) -> None:
        self.db.execute("UPDATE contexts SET next_rp_id=? WHERE id=?", (next_rp_id, context_id))

    def delete_orphans(self, kind: str, context_id: str) -> None:
        self.db.execute(f"DELETE FROM {_TABLE[kind]} WHERE context_id=? "  # noqa: S608 - fixed names
                        "AND NOT EXISTS (SELECT 1 FROM contexts WHERE id=?)", (context_id, context_id))


def _prefix_range(prefix: str, column: str = "id") -> tuple[str, tuple[str, ...]]:
    """A WHERE clause selecting ids that start with `prefix`: a range scan on the primary key (no
    LIKE, so '%' and '_' in ids need no escaping)."""
    if not prefix:
        return "", ()
    last = ord(prefix[-1])
    nxt = last + 1 if last + 1 != 0xD800 else 0xE000  # skip the surrogate block
    if last >= 0x10FFFF:
        return f"WHERE {column}>=?", (prefix,)
    return f"WHERE {column}>=? AND {column}<?", (prefix, prefix[:-1] + chr(nxt))


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _on_readonly_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _quote_uri(path: str) -> str:
    return urllib.parse.quote(path)
