"""`PostgresStore`: the shared store for several processes or hosts, on PostgreSQL (psycopg 3).

Same model as `SQLiteStore`, in tables of one PostgreSQL schema (default ``hoard``; any other name
keeps several stores, or throwaway test stores, apart in one database): `contexts` (version, times,
next recovery point id, own TTL), `snapshots` (newest two per context), `journal` (changes after the
older kept snapshot), `recovery_points`, `leases` (ownership, see below) and `schema_version` (one row
per applied migration); `quarantine` (rows a recovery set aside) is created by the first repair that
needs it. `open()` creates the schema and tables, or migrates older ones, under an advisory lock, and
refuses (`CorruptStateError`) a schema written by a newer hoard or one that is not hoard's. The `ttl`
column (per-context TTLs, `SetTTL`) came after schema version 1: `open()` adds it when missing, as
SQLiteStore does. Blobs are encoded by the same `Codec` as SQLite's (zstd, header, checksum), stored
uncompressed by PostgreSQL (``STORAGE EXTERNAL``: they are compressed already). Context ids are
checked by `validate_id` on every read and write, as by the other stores.

Writes: `commit(ops)` is **one transaction** (group commit), and every write is checked in SQL, so
two writers can never both succeed on the same version: an append is
``UPDATE contexts SET version=v WHERE id=... AND version=v-1`` and counts the rows it changed; a
recovery point advances ``next_rp_id`` the same way; a create is an insert that must not conflict.
A refused check raises `PersistenceError` and rolls the whole batch back. A batch of appends (the
common one) costs one round trip: ONE statement in autocommit (its own transaction), a call of a
function of the session that makes the fence, the appends, NOTIFY and the feed rows in the server.
A lone append (a durable set with one writer) calls a function of its own with scalar parameters and
one plain statement per step, prepared by the session and sent through libpq with its parameters in
binary form (see `PostgresStore._append_one`); a batch of several appends is sent the same way, its
arrays packed by the store (`PostgresStore._appends_direct`).
The server makes
every check itself (the fence and each append's version check fail
their statement when refused, so the COMMIT behind them never runs); other batches check the fence
first, then write, then send the feed rows with COMMIT. A blob that cannot be encoded raises
`PersistenceError` before anything is sent.

Loading, recovery (``recovery="strict"`` or ``"fallback"``), repair, `verify()` and the read interface
are the shared engine's (`hoard.storage._recovery`); this module is the connection handling and the
`RowAccess` over the SQL of `_postgres_sql`. Every read-only operation runs in one REPEATABLE READ,
READ ONLY transaction (the strict load is one statement), so it sees one consistent snapshot while
other processes write. A repair is a write, so it is fenced like a commit: a store that may not write
the context (owned elsewhere, or ``require_lease`` without the lease) returns what it recovered and
repairs nothing (``repaired=False``); its owner will. `verify(fix=True)` is fenced the same way.

Single activation: ownership leases with fencing tokens (`_postgres_leases`). Every `commit` first
locks the lease rows of the contexts it touches and refuses the whole batch with `FencedOffError` when
another owner holds them. Cross-process notices: ``NOTIFY hoard_changes`` with each commit, received by
a `ChangeListener` (`_postgres_listen`); ``notify=False`` turns them off.

How the persistence actor is meant to use it (phase 2): on activation ``token =
store.acquire_lease(cid)``; on `ContextOwnedElsewhereError`, retry from a timer message (never a
sleep in the actor) until the activation timeout, using ``exc.expires_in`` as the next delay; renew
every held lease from a timer every ``lease_ttl / 3`` with ``renew_leases()``, and drop the contexts
it returns without writing; on `FencedOffError` from a commit, fail the waiting callers with it and
passivate that context without a snapshot; on deactivation, after the final snapshot,
``release_lease(cid, token)``. A lease is only as good as its renewal: an owner paused for longer than
its ttl (GC, SIGSTOP, a partition) has lost the context, and every write it attempts afterwards is
refused by the token, but it may still *serve reads* of its stale in-memory state until it learns so.

Cross-process events: each commit sends, inside its transaction (so only if it commits), one
``NOTIFY hoard_changes`` per context touched, with a small JSON payload (schema, context id, version
after the commit, the kinds of operation, the committing owner); leases send ``lease_acquired`` and
``lease_released``. `listen()` returns a `ChangeListener` on its own connection; subscribers read what
they need from the store. Notices are hints: those sent while a listener is disconnected are lost.
PostgreSQL serializes the commits of notifying transactions in a database; ``notify=False`` turns
notices off for stores nobody listens to. A batch of appends sends its notices only while someone
else listens on the schema: listeners announce themselves with a shared advisory lock on it (see
`_postgres_sql.LISTENING`; a `ChangeListener` after its LISTEN, and every pooled session of a
notifying writing store on behalf of its own process's listener, opened with
``listen(others_only=True)``), and the batch notifies only when it cannot take that lock exclusively
for its transaction. A process alone on its schema so never wakes its own listener with its own
appends. A raw ``LISTEN hoard_changes`` session must take the lock too
(``SELECT pg_advisory_lock_shared(1752129907, hashtext('<schema>'))``) to be sent them.

Connection faults: the store keeps one connection of a `psycopg_pool.ConnectionPool` (size 1) and
gives it back when it breaks; the pool reconnects in the background. A read on a dead connection is
retried once on a new one, and so is a commit whose connection was found dead before anything of it
was sent. A connection lost in the middle of a commit raises `PersistenceError`: nothing of the batch
is committed. If it is lost while COMMIT itself is in flight, the outcome is looked up on a new
connection: by transaction id (``txid_status``), or, for a batch of appends sent with its COMMIT in
one round trip (no transaction id came back), by whether the first append's journal row holds this
batch's blob once the old session has left its transaction; a committed batch returns normally, an
aborted one raises (and one that never reached the server is sent again); so a write is never
reported failed while stored, nor reported done while lost. Every statement is
bounded by ``statement_timeout``; a session left idle inside a transaction (a paused process holding a
lease row lock) is ended by the server after ``lease_ttl`` (at least 1 s), so a takeover never waits on
a paused owner for long.

Threading: not thread-safe; one owner thread at a time (see `Store`). While open, the pool runs two
background threads of its own (a scheduler and a worker that reconnects); `close()` ends them. A
`ChangeListener` has its own connection and is used by one (other) thread.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._codec import Codec
from ._errors import ConfigError, ContextLockedError, CorruptStateError, FencedOffError, HoardError, PersistenceError
from ._feed import DEFAULT_FEED_RETENTION, PRUNE_EVERY, check_retention, consumer_position, feed_rows
from ._lazy import LazyModule, installed
from ._postgres_leases import LeaseHolder, refusal
from ._postgres_listen import CHANNEL, ChangeListener
from ._postgres_sql import (
    APPEND_ONE_STATEMENT,
    APPEND_ONE_TYPES,
    APPENDS_STATEMENT,
    APPENDS_TYPES,
    IDENT,
    LISTENING,
    MIGRATIONS,
    QUARANTINE_TABLE,
    REFUSE,
    SCHEMA_VERSION,
    SQL,
    TABLES,
)
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

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool
else:  # the "postgres" extra, imported by the first PostgresStore (see `_lazy`)
    psycopg = LazyModule("psycopg")
    psycopg_pool = LazyModule("psycopg_pool")

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class PostgresStore(LeaseHolder, RowStore):
    """Every context in one PostgreSQL schema, shared by any number of processes. See the module
    docstring for the tables, group commit, leases and fencing, notices and connection faults.

    Args:
        dsn: a libpq connection string or URI (``"postgresql://user@host/db"``).
        schema: the PostgreSQL schema holding the tables (an identifier: letters, digits, ``_``; not
            ``pg_...``, which PostgreSQL keeps for itself).
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading (bombs are refused).
        owner_id: who this store is in the `leases` table; unique per live process, enforced: a
            second live process with the same id on the schema is refused (`OwnerIdInUseError`).
            Reuse one only for a restart of the same node: it takes its leases back at once. Default:
            ``"<host>:<pid>:<random>"``.
        lease_ttl: seconds a lease runs unless renewed (the default for `acquire_lease` and renewals).
        require_lease: refuse (`FencedOffError`) any write to a context this store holds no lease on.
        notify: send ``NOTIFY hoard_changes`` with each commit (a batch of appends: while another
            store or a listener is on the schema; see the module docstring).
        connect_timeout: seconds to wait for a connection (at open, and when reconnecting).
        statement_timeout: seconds any one statement may run (lock waits included) before it fails
            with `PersistenceError`.
        lock_timeout: seconds a statement waits for a row lock another session holds (a lease row
            locked by someone else) before the commit fails with `ContextLockedError` naming those
            contexts; the persistence actor then commits the rest of the batch without them, so one
            locked context delays the others by at most this long.
        recovery: "strict" (default) or "fallback": what `load` does with damaged data (see
            `hoard.storage._recovery`).
        readonly: never write: `open()` only checks the schema (creates and migrates nothing), every
            session is ``default_transaction_read_only``, `commit` and repairs are refused. For tools.
        codec: the `Codec` that encodes and verifies blobs (default: one made from
            `compression_level` and `max_state_bytes`); a test may hand in one that fails.
        connection_class: the connection factory: a `psycopg.Connection` subclass whose ``connect``
            the pool calls (default `psycopg.Connection`); a test may hand in one that fails. A lone
            append goes to libpq directly, not through ``execute()``, unless the class overrides
            ``execute()``: then every statement goes through it.
        feed: record every committed change in the change feed, in the commit's transaction
            (default True; every process writing to one schema must agree); False only to measure.
        feed_retention: feed entries kept back from the newest, at most (see `Store.feed`).

    Threading: one owner thread at a time; not thread-safe (see `Store`).
    """

    def __init__(self, dsn: str, *, schema: str = "hoard", compression_level: int = 3,
                 max_state_bytes: int = 64 * 2**20, owner_id: str | None = None, lease_ttl: float = 10.0,
                 require_lease: bool = False, notify: bool = True, connect_timeout: float = 5.0,
                 statement_timeout: float = 30.0, recovery: str = "strict", readonly: bool = False,
                 codec: Codec | None = None, connection_class: type[Any] | None = None, feed: bool = True,
                 feed_retention: int = DEFAULT_FEED_RETENTION, lock_timeout: float = 1.0) -> None:
        if not installed("psycopg", "psycopg_pool"):  # pragma: no cover - exercised only without the extra
            raise ConfigError("PostgresStore needs psycopg 3 and psycopg-pool: pip install 'hoard-contexts[postgres]'")
        super().__init__(codec or Codec(compression_level, max_bytes=max_state_bytes + 2**20), recovery, readonly)
        if not IDENT.fullmatch(schema):
            raise ConfigError(f"schema must be an identifier (letters, digits, '_', at most 63), not {schema!r}")
        if schema.startswith("pg_"):
            raise ConfigError(f"schema {schema!r} starts with 'pg_', which PostgreSQL keeps for its own schemas")
        if not lease_ttl > 0 or not connect_timeout > 0 or not statement_timeout > 0 or not lock_timeout > 0:
            raise ConfigError("lease_ttl, connect_timeout, statement_timeout and lock_timeout must be positive")
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid PostgreSQL connection string: {exc}") from exc
        self.dsn = dsn
        self.schema = schema
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl = float(lease_ttl)
        self.require_lease = require_lease
        self.notify = notify
        self.connect_timeout = float(connect_timeout)
        self.statement_timeout = float(statement_timeout)
        self.lock_timeout = float(lock_timeout)
        self.connection_class = connection_class or psycopg.Connection
        # a lone append goes to libpq directly (`_append_one`), unless the connection class wants to see
        # every statement: then it goes through its execute(), as every other statement does
        self._direct = getattr(self.connection_class, "execute", None) is psycopg.Connection.execute
        self.feed_enabled = feed
        self.feed_retention = check_retention(feed_retention)
        # feed entries this process appended since it last pruned; PRUNE_EVERY at each open, so that
        # its first commit prunes: processes that restart more often than every PRUNE_EVERY entries
        # would otherwise never prune, and the feed would outgrow its retention without bound
        self._since_prune = PRUNE_EVERY
        self._max_state_bytes = max_state_bytes
        self.history_policy: HistoryPolicy = RECOVERY  # as recorded in the schema (read on open)
        self._snapshot_times: dict[tuple[str, int], float] = {}
        # never show a password: location appears in messages and logs
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        self.location = f"postgresql://{where}#{schema}"
        self._params = params
        self._sql = {name: text.format(s=f'"{schema}"') for name, text in SQL.items()}
        self._append_one_call = self._sql["append_one_call"].encode()
        self._appends_call = self._sql["appends_call"].encode()
        self._pool: Any = None
        self._db: Any = None  # the connection in use, taken from the pool
        self._aborted = False  # abort() cut the connection: no call reconnects
        self._leases: dict[str, int] = {}  # context id -> fencing token this store holds
        self._quarantine_seen = False  # the quarantine table exists (it is never dropped once made)
        self._quarantine_pending = False  # it was made by this store's repair transaction, still open

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and create or migrate the schema. Blocks up to `connect_timeout` for the server.

        Raises `PersistenceError` if the server cannot be reached, `CorruptStateError` if the schema
        holds other tables than hoard's or was written by a newer hoard, `OwnerIdInUseError` if
        another live process uses this `owner_id` on this schema (waits up to 2 s for a dead one's
        session to end; see `_postgres_leases`). Idempotent.
        """
        if self._pool is not None:
            return
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": f"hoard {self.owner_id}"[:63]}
        if "connect_timeout" not in self._params:
            kwargs["connect_timeout"] = max(2, round(self.connect_timeout))
        if "tcp_user_timeout" not in self._params and psycopg.pq.version() >= 120000:
            # a dead peer on a half-open connection is noticed after this, not after TCP's ~15 min
            kwargs["tcp_user_timeout"] = round((self.statement_timeout + self.connect_timeout) * 1000)
        if "keepalives" not in self._params:
            # a server that vanished while this side waits for an answer (nothing unacknowledged, so the
            # user timeout above never fires) is noticed within about lease_ttl, not never
            kwargs.update(keepalives=1, keepalives_idle=max(1, round(self.lease_ttl / 3)), keepalives_interval=1,
                          keepalives_count=2)
        first_problem = self._refused(kwargs)
        pool = psycopg_pool.ConnectionPool(
            self.dsn, min_size=1, max_size=1, open=False, kwargs=kwargs, configure=self._configure_pooled,
            connection_class=self.connection_class,
            timeout=self.connect_timeout, num_workers=1, name=f"hoard-{self.schema}")
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
        except psycopg_pool.PoolTimeout as exc:
            pool.close(timeout=1.0)
            raise PersistenceError(f"cannot connect to {self.location} within {self.connect_timeout} s "
                                   f"({first_problem or 'is the server up, and the connection string right?'})"
                                   ) from exc
        self._pool = pool
        try:
            self._run("open", self._migrate, idempotent=False)
            self.history_policy = self._run("open", self._recorded_history)
            if not self.readonly:
                self._claim_owner_id(kwargs)  # OwnerIdInUseError: another live process has this owner id
        except BaseException:
            self.close()
            raise

    def _refused(self, kwargs: dict[str, Any]) -> str | None:
        """Try one connection first. A server that answers with a refusal that waiting cannot change
        (no such database or role, authentication failed) fails the open at once with the server's own
        words; a server that does not answer (yet), or is starting up, is left to the pool, which
        retries up to `connect_timeout`. Returns that first problem (None if the connection worked).
        A writing store also checks that its role may make the session function every writing
        connection makes (`REFUSE`; it needs the TEMP privilege, which every role has by default)."""
        try:
            conn = self.connection_class.connect(self.dsn, **kwargs)
        except psycopg.Error as exc:
            problem = " ".join(str(exc).split())
            refusal = problem.partition("FATAL:")[2].strip()
            if refusal and not any(word in refusal for word in _TRANSIENT_REFUSALS):
                raise PersistenceError(f"cannot connect to {self.location}: the server refused: {refusal}") from exc
            return problem
        with conn:
            try:
                if not self.readonly:
                    conn.execute(REFUSE)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PersistenceError(
                    f"{self.location}: a writing store needs the TEMP privilege on the database (for a function "
                    f"of its sessions): GRANT TEMP ON DATABASE ... TO the store's role ({exc})") from exc
            except psycopg.Error:
                pass  # anything else (a read-only server) is the migration's to report, in its words
        return None

    def _configure(self, conn: Any) -> None:
        """Session settings of every new pooled connection (runs in the pool's thread).

        The server's side of the connection notices a vanished client within about `lease_ttl`
        (keepalives and a TCP user timeout): a host cut off in the middle of a write transaction
        holds lease row locks, and until its session ends no other owner can take its contexts over,
        not even after the lease expired (tests/distributed/test_hosts.py)."""
        idle = max(1, round(self.lease_ttl / 3))
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('idle_in_transaction_session_timeout', %s, false), "
                     "set_config('default_transaction_read_only', %s, false), "
                     "set_config('lock_timeout', %s, false), "
                     "set_config('tcp_keepalives_idle', %s, false), "
                     "set_config('tcp_keepalives_interval', '1', false), "
                     "set_config('tcp_keepalives_count', '2', false), "
                     "set_config('tcp_user_timeout', %s, false)",
                     (f"{round(self.statement_timeout * 1000)}", f"{round(max(self.lease_ttl, 1.0) * 1000)}",
                      "on" if self.readonly else "off",
                      f"{max(1, round(min(self.lock_timeout, self.statement_timeout) * 1000))}",
                      f"{idle}", f"{round(max(self.lease_ttl, 1.0) * 500)}"))
        if not self.readonly:
            conn.execute(REFUSE)  # the refusal of the fence and append checks (a function of this session)
            conn.execute(self._sql["appends_fn"])  # a batch of appends as one statement (`_write_appends`)
            conn.execute(self._sql["append_one_fn"])  # the same for one append (`_append_one`)

    def _configure_pooled(self, conn: Any) -> None:
        """`_configure`, and for a notifying writing store, the announcement of its own process's
        listener (see `_postgres_sql.LISTENING`), held by the session its commits run in: so they
        notify only when a session of another store or listener holds it too."""
        self._configure(conn)
        if self.notify and not self.readonly:
            conn.execute(LISTENING, {"schema": self.schema})

    def _migrate(self, conn: Any) -> None:
        encoding = conn.execute("SHOW server_encoding").fetchone()[0]
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise PersistenceError(f"{self.location}: database encoding is {encoding}; hoard needs UTF8 "
                                   "(context ids and keys are any Unicode)")
        s = f'"{self.schema}"'
        if self.readonly:  # check, change nothing
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                                 (self.schema,))}
            if not tables >= TABLES:
                raise CorruptStateError(f"{self.location}: no hoard store in schema {self.schema!r}"
                                        + (f" (tables: {', '.join(sorted(tables)[:5])})" if tables else ""),
                                        what="store")
            current = int(conn.execute(f"SELECT max(version) FROM {s}.schema_version").fetchone()[0] or 0)  # noqa: S608
            if current > SCHEMA_VERSION:
                raise CorruptStateError(f"{self.location} uses store schema version {current}, written by a "
                                        f"newer hoard; this one knows up to {SCHEMA_VERSION}", what="store")
            return
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = 0")  # waiting for another opener's migration is fine
            # serialize concurrent openers of the same schema (CREATE ... IF NOT EXISTS still races)
            conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (self._advisory_key(),))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                                 (self.schema,))}
            if tables and "schema_version" not in tables:
                raise CorruptStateError(f"{self.location}: schema {self.schema!r} holds tables that are not a "
                                        f"hoard store ({', '.join(sorted(tables)[:5])}); choose another schema",
                                        what="store")
            if "schema_version" in tables:
                row = conn.execute(f"SELECT max(version) FROM {s}.schema_version").fetchone()  # noqa: S608
                current = int(row[0] or 0)
            else:
                conn.execute(f"CREATE TABLE {s}.schema_version (version integer PRIMARY KEY, "
                             "applied_at timestamptz NOT NULL DEFAULT now())")
                current = 0
            if current > SCHEMA_VERSION:
                raise CorruptStateError(f"{self.location} uses store schema version {current}, written by a "
                                        f"newer hoard; this one knows up to {SCHEMA_VERSION}", what="store")
            if current == SCHEMA_VERSION and not tables >= TABLES:
                raise CorruptStateError(f"{self.location}: hoard store missing tables {sorted(TABLES - tables)}",
                                        what="store")
            for number in range(current + 1, SCHEMA_VERSION + 1):
                log.info("%s: migrating store schema to version %d", self.location, number)
                for stmt in MIGRATIONS[number - 1]:
                    conn.execute(stmt.format(s=s))
                conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES (%s)", (number,))  # noqa: S608
            # per-context TTLs (SetTTL) came after schema version 1: the column is added on open, as
            # SQLiteStore adds it, only when missing (ALTER TABLE would lock out the other writers)
            if conn.execute(self._sql["has_ttl"], {"t": f"{s}.contexts"}).fetchone() is None:
                conn.execute(self._sql["add_ttl"])

    def close(self) -> None:
        """Release every lease still held (best effort), return the connection, stop the pool.
        Idempotent; blocks up to a few seconds for the pool's thread. After `abort()` it releases
        nothing (the leases expire by themselves) and waits at most half a second."""
        if self._pool is None:
            return
        self._since_prune = PRUNE_EVERY  # a reopen prunes in its first commit (see __init__)
        held, self._leases = self._leases, {}
        try:
            for cid, token in held.items():
                if not self._aborted:
                    self._release(cid, token)
        except PersistenceError as exc:
            log.warning("%s: could not release leases at close (they expire by themselves): %s", self.location, exc)
        self._release_owner_id()  # after the leases: nothing is taken under this id any more
        if self._aborted:
            self._db = None  # cut: the pool discards it
        self._drop_connection()
        pool, self._pool = self._pool, None
        with contextlib.suppress(Exception):  # closing must not fail: the pool only holds sockets
            pool.close(timeout=0.5 if self._aborted else 2.0)

    def abort(self) -> None:
        """Cut the connection in use, from any thread, without waiting for it: a thread blocked in a
        call on it (a server that stopped answering, a stalled network) gets a connection error at
        once, and every later call fails with `PersistenceError` instead of reconnecting. For a
        shutdown that may not wait for the owner thread; `close()` afterwards releases nothing."""
        self._aborted = True
        conn = self._db
        if conn is None:
            return
        try:
            fd = conn.pgconn.socket
            cut = socket.socket(fileno=os.dup(fd))
        except Exception:  # noqa: BLE001 - already closed: nothing is blocked in it
            return
        with contextlib.suppress(OSError):
            cut.shutdown(socket.SHUT_RDWR)  # the shared socket, not just this descriptor
        cut.close()

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the connection in use (None if none): for diagnostics."""
        return None if self._db is None or self._db.closed else int(self._db.info.backend_pid)

    # -- connections and errors ----------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._pool is None:
            raise PersistenceError(f"store {self.location} is not open")
        if self._aborted:
            raise PersistenceError(f"store {self.location} was aborted (its connection cut while stopping)")
        if self._db is None:
            try:
                self._db = self._pool.getconn(timeout=self.connect_timeout)
            except psycopg_pool.PoolTimeout as exc:
                raise PersistenceError(f"cannot reach {self.location} within {self.connect_timeout} s; "
                                       "the pool keeps reconnecting") from exc
            except psycopg_pool.PoolClosed as exc:
                raise PersistenceError(f"store {self.location} is closed") from exc
        return self._db

    def _drop_connection(self) -> None:
        """Give the connection back; the pool discards a broken one and connects anew."""
        conn, self._db = self._db, None
        if conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):  # the pool closes it if it cannot reset it
                self._pool.putconn(conn)

    @staticmethod
    def _lost(conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _rollback(self, conn: Any) -> None:
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop_connection()

    def _translate(self, exc: Exception, what: str, context_id: str | None) -> PersistenceError:
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
            return PersistenceError(f"{self.location}: {what} failed: the store's tables are gone ({exc}); "
                                    "was the schema dropped while open?", context_id=context_id)
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return PersistenceError(f"{self.location}: {what} took longer than statement_timeout="
                                    f"{self.statement_timeout} s ({exc})", context_id=context_id)
        if isinstance(exc, psycopg.OperationalError):
            return PersistenceError(f"{self.location}: {what} failed, connection lost ({exc}); nothing of it "
                                    "was committed, and the store reconnects on the next call",
                                    context_id=context_id)
        return PersistenceError(f"{self.location}: {what} failed: {exc}", context_id=context_id)

    def _run(self, what: str, fn: Callable[[Any], T], context_id: str | None = None, *,
             idempotent: bool = True) -> T:
        """Run `fn(connection)`, translating psycopg errors into ours; an idempotent `fn` whose
        connection was dead is retried once on a new one."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.Error as exc:
                if not self._lost(conn):
                    self._rollback(conn)
                    raise self._translate(exc, what, context_id) from exc
                self._drop_connection()
                if idempotent and attempt == 0:
                    log.warning("%s: connection lost during %s (%s); retrying on a new one", self.location, what, exc)
                    continue
                raise self._translate(exc, what, context_id) from exc
            except BaseException:
                self._rollback(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes --------------------------------------------------------------------------------------
    def commit(self, ops: Sequence[Op]) -> None:
        """Apply `ops` in order in one transaction (see `Store.commit`), fenced by the leases.

        Runs in the caller's thread; blocks for the round trips (bounded by `statement_timeout`).
        Raises `InvalidContextIdError` for an op on an id no context may have, `FencedOffError` if a
        touched context is owned elsewhere, `PersistenceError` if encoding a blob fails, a version
        check fails or the connection is lost; then nothing of the batch is committed.
        """
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")
        if not ops:
            return
        first = context_of(ops[0])
        ids, encoded, n_feed, prune, sent_feed, only_appends, notice = self._batch(ops, first)
        for attempt in (0, 1):
            conn = self._connection()
            stage, xid, pid = "begin", None, 0
            sent: dict[str, Any] = {}
            try:
                pid = conn.info.backend_pid  # its old session is looked for if the connection breaks
                if only_appends:
                    if attempt == 0 and not _quiet(conn):
                        # the server spoke on an idle connection: it ended the session (killed while
                        # idle, restarted). Nothing of this commit was sent: take a new connection (closed
                        # first: the pool cannot tell, and would hand the dead one back)
                        with contextlib.suppress(Exception):
                            conn.close()
                        self._drop_connection()
                        continue
                    stage, sent["began"] = "one trip", True
                    self._write_appends(conn, ops, encoded, ids, notice=notice, feed=sent_feed)  # type: ignore[arg-type]
                else:
                    xid = self._write(conn, ops, encoded, ids, notice=notice, sent=sent)
                    stage = "commit"
                    self._finish(conn, sent_feed)
                self._since_prune = 0 if prune else self._since_prune + n_feed
                return
            except psycopg.Error as exc:
                if not self._lost(conn):
                    self._rollback(conn)
                    raise self._commit_error(exc, ids, first) from exc
                self._drop_connection()
                outcome = self._resolve_lost(stage, exc, first, xid=xid, pid=pid, op=ops[0], blob=encoded[0],
                                             began=bool(sent.get("began")) or _began(sent.get("begin")))
                if outcome == "committed":
                    return
                if outcome == "retry" and attempt == 0:
                    # dead before anything ran (killed while idle, server restarted): send it again
                    log.warning("%s: connection found dead at commit (%s); retrying on a new one", self.location, exc)
                    continue
                raise self._translate(exc, "commit", first) from exc
            except UnicodeError as exc:  # a str psycopg cannot send (a label with a lone surrogate)
                self._rollback(conn)
                raise PersistenceError(f"{self.location}: commit failed: {exc}; nothing was written",
                                       context_id=first) from exc
            except BaseException:
                self._rollback(conn)
                raise

    def _batch(self, ops: Sequence[Op], first: str) -> tuple[list[str], list[bytes | None], int, bool,
                                                            dict[str, Any] | None, bool, dict[str, Any] | None]:
        """What `commit` sends of `ops`, made before anything is sent: the ids touched (each
        validated, sorted), the encoded blobs, the number of feed rows, whether the feed is pruned
        now, the feed rows' parameters, whether the batch is appends only, and the notices'
        parameters (None: no notices)."""
        if len(ops) == 1 and type(ops[0]) is Append and self._direct:
            # the commonest batch, one append (`_append_one`): only what its call needs (a third of
            # the client's instructions per commit went to the general case's lists and dicts)
            ids = [validate_id(first)]
            encoded = self._encode_all(ops, first)
            n_feed = 1 if self.feed_enabled else 0
            prune = bool(n_feed) and self._since_prune + 1 >= PRUNE_EVERY
            sent_feed: dict[str, Any] | None = {"keep": self.feed_retention, "prune": prune} if n_feed else None
            notice: dict[str, Any] | None = {} if self.notify else None  # `_append_one` makes its own
            return ids, encoded, n_feed, prune, sent_feed, True, notice
        touched = _touched(ops)
        ids = sorted(touched)
        encoded = self._encode_all(ops, first)
        feed = feed_rows(ops, encoded, self.codec.encode_change) if self.feed_enabled else []
        prune = bool(feed) and self._since_prune + len(feed) >= PRUNE_EVERY
        sent_feed = {"n": len(feed), "ids": [r[0] for r in feed], "vs": [r[1] for r in feed],
                     "blobs": [r[2] for r in feed], "keep": self.feed_retention, "prune": prune} if feed else None
        only_appends = all(isinstance(op, Append) for op in ops)
        notice = self._notice(ops, touched, ids, only_appends) if self.notify else None
        return ids, encoded, len(feed), prune, sent_feed, only_appends, notice

    def _notice(self, ops: Sequence[Op], touched: dict[str, list[str]], ids: list[str],
                only_appends: bool) -> dict[str, Any]:
        """The parameters of a commit's notices (one per context touched)."""
        notice: dict[str, Any] = {"ch": CHANNEL, "schema": self.schema, "owner": self.owner_id, "ids": ids,
                                  "ops": [",".join(touched[cid]) for cid in ids]}
        if only_appends:
            last = {op.context_id: op.change.version for op in ops}  # type: ignore[union-attr]
            notice["vs"] = [last[cid] for cid in ids]  # the notices need no read of contexts
        return notice

    def _commit_error(self, exc: Exception, ids: list[str], context_id: str) -> HoardError:
        """Our error for a commit the server refused (its connection still up, rolled back)."""
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return self._locked(ids, exc)
        return refusal(exc) or self._translate(exc, "commit", context_id)

    def _resolve_lost(self, stage: str, exc: Exception, context_id: str, *, xid: int | None, pid: int, op: Op,
                      blob: bytes | None, began: bool) -> str:
        """What became of a commit whose connection was lost at `stage`: "committed" (return as done),
        "retry" (nothing of it ran: send it again) or "failed". Asks a new connection when the
        COMMIT may have run (see `_appended_anyway`, `_committed_anyway`)."""
        if stage == "one trip":
            if self._appended_anyway(pid, op, blob, exc):  # type: ignore[arg-type]
                return "committed"
            return "failed" if began else "retry"
        if stage == "begin":  # lost after the transaction began: something of it may have run
            return "failed" if began else "retry"
        if stage == "commit" and xid is not None and self._committed_anyway(xid, exc, context_id):
            return "committed"
        return "failed"

    def _locked(self, ids: list[str], exc: Exception) -> PersistenceError:
        """A commit waited `lock_timeout` for a row lock: which of `ids` are locked by another session
        (their lease rows, skipped when locked; autocommit, so nothing stays locked here)?"""
        try:
            rows = self._run("find locked rows", lambda c: c.execute(self._sql["lockable"], {"ids": ids}).fetchall())
        except PersistenceError:
            rows = None
        if rows is not None:
            locked = tuple(cid for cid, free in rows if not free)
            if locked:
                return ContextLockedError(
                    f"{self.location}: another session has held the lease rows of {', '.join(map(repr, locked))} "
                    f"for over lock_timeout={self.lock_timeout} s; their changes were not committed ({exc})",
                    context_ids=locked)
        return PersistenceError(f"{self.location}: commit waited over lock_timeout={self.lock_timeout} s for a "
                                f"lock another session holds ({exc}); nothing was committed")

    def _write_appends(self, conn: Any, ops: Sequence[Append], encoded: list[bytes | None], ids: list[str], *,
                       notice: dict[str, Any] | None, feed: dict[str, Any] | None) -> None:
        """The common batch (appends only) as ONE statement in autocommit, so its own transaction: a
        call of the session's function that makes the fence, the appends, the notices and the feed rows
        in the server (`SQL["appends_fn"]`). The fence and each append's version check fail the call
        when refused, and with it the transaction: nothing of the batch commits. The feed_head row lock
        is taken last, so it is held only while the server ends the call and commits. One statement
        costs the client a third of BEGIN + call + COMMIT in a pipeline (psycopg's per-statement and
        pipeline work). It goes through libpq as a statement the session prepared (`_append_one`,
        `_appends_direct`), unless the connection class overrides ``execute()``: then through it,
        its arrays in psycopg's binary form."""
        if self._direct and len(ops) == 1:
            self._append_one(conn, ops[0], encoded[0], notify=notice is not None, feed=feed)  # type: ignore[arg-type]
            return
        args: dict[str, Any] = {"strict": self.require_lease, "ch": None, "schema": None, "owner": None,
                                "feed": feed is not None,
                                "keep": feed["keep"] if feed is not None and feed["prune"] else None}
        if notice is not None:
            args.update(ch=notice["ch"], schema=notice["schema"], owner=notice["owner"])
        if len(ops) == 1:
            op = ops[0]
            call = self._sql["append_one"]
            args.update(id=op.context_id, token=self._leases.get(op.context_id), v=op.change.version, at=op.change.at,
                        blob=encoded[0])
        elif self._direct:
            self._appends_direct(conn, ops, encoded, ids, notice=notice, feed=feed)
            return
        else:
            call = self._sql["appends"]
            args.update(self._fence_args(ids), aids=[op.context_id for op in ops], vs=[op.change.version for op in ops],
                        ats=[op.change.at for op in ops], blobs=encoded, ops=None, last=None)
            if notice is not None:
                args.update(ops=notice["ops"], last=notice["vs"])
        conn.execute(call, args)

    def _append_one(self, conn: Any, op: Append, blob: bytes, *, notify: bool, feed: dict[str, Any] | None) -> None:
        """One append, the commonest batch: the session's prepared call of ``pg_temp.hoard_append``
        (`SQL["append_one_fn"]`) executed through libpq itself, its parameters packed here in binary
        form. Same statement, same transaction and the same errors as through ``conn.execute``, without
        psycopg's per-statement work (its cursor, the dumping of eleven parameters, its prepared-statement
        cache, its wait loop in Python): client instructions per commit 286k -> 171k (callgrind, store
        level). libpq waits for the answer with the GIL released, bounded like any statement
        (``statement_timeout``, the TCP timeouts of the session); `abort()` cuts it as it cuts psycopg's
        wait.

        The statement is prepared when the session does not have it: at its first lone append, and
        again after psycopg dropped every prepared statement of the session (it sends ``DEALLOCATE
        ALL`` after a ROLLBACK once it has prepared its own; test_a_batch_with_one_bad_op_applies_nothing).
        The server refuses an unknown statement before running anything, so sending it again is safe."""
        change, token = op.change, self._leases.get(op.context_id)
        keep = feed["keep"] if feed is not None and feed["prune"] else None
        params = (op.context_id.encode(), None if token is None else _INT8(token),
                  _TRUE if self.require_lease else _FALSE, _INT8(change.version), _FLOAT8(change.at), blob,
                  *((CHANNEL.encode(), self.schema.encode(), self.owner_id.encode()) if notify else (None, None, None)),
                  _FALSE if feed is None else _TRUE, None if keep is None else _INT8(keep))
        _exec_prepared(conn, _APPEND_ONE_NAME, self._append_one_call, APPEND_ONE_TYPES, params)

    def _appends_direct(self, conn: Any, ops: Sequence[Append], encoded: list[bytes | None], ids: list[str], *,
                        notice: dict[str, Any] | None, feed: dict[str, Any] | None) -> None:
        """A batch of appends as `_write_appends` sends it, but through libpq as `_append_one` does: the
        session's prepared call of ``pg_temp.hoard_appends`` (`SQL["appends_call"]`) with every parameter,
        the arrays included, packed here in PostgreSQL's binary form (`_array`, `_int8_array`). psycopg's
        list dumpers (text or binary) look at and dump every element in Python; this packs each array
        with one `struct` call or one join. Same statement, transaction, errors and timeouts as
        `_append_one`."""
        keep = feed["keep"] if feed is not None and feed["prune"] else None
        leases = self._leases
        tokens = [leases.get(cid) for cid in ids]
        aids = [op.context_id.encode() for op in ops]
        changes = [op.change for op in ops]
        params = (_array(_TEXT_OID, [cid.encode() for cid in ids]),
                  _packed(_INT8_OID, "q", tokens) if None not in tokens  # type: ignore[arg-type]
                  else _array(_INT8_OID, [None if t is None else _INT8(t) for t in tokens]),
                  _TRUE if self.require_lease else _FALSE, _array(_TEXT_OID, aids),
                  _packed(_INT8_OID, "q", [c.version for c in changes]),
                  _packed(_FLOAT8_OID, "d", [c.at for c in changes]), _array(_BYTEA_OID, encoded),
                  *((CHANNEL.encode(), self.schema.encode(), self.owner_id.encode(),
                     _array(_TEXT_OID, [o.encode() for o in notice["ops"]]), _packed(_INT8_OID, "q", notice["vs"]))
                    if notice is not None else (None,) * 5),
                  _FALSE if feed is None else _TRUE, None if keep is None else _INT8(keep))
        _exec_prepared(conn, _APPENDS_NAME, self._appends_call, APPENDS_TYPES, params)

    def _write(self, conn: Any, ops: Sequence[Op], encoded: list[bytes | None], ids: list[str], *,
               notice: dict[str, Any] | None, sent: dict[str, Any]) -> int:
        """Everything of a batch that is not only appends, before its feed rows and COMMIT
        (`_finish`); returns the transaction id. ``sent["begin"]`` is the cursor of its BEGIN
        (`_began` tells from it whether the transaction started on the server). BEGIN and the fence
        go in one round trip; the fence holds before anything is written, and a refused check rolls
        everything back."""
        with conn.pipeline():
            sent["begin"] = conn.execute("BEGIN", prepare=False)  # never prepared: see `_finish`
            fence = conn.execute(self._sql["fence"], self._fence_args(ids))
        xid = int(fence.fetchone()[0])
        self._apply_all(conn, ops, encoded)
        if notice is not None:
            conn.execute(self._sql["notify"], notice)
        return xid

    def _send_feed(self, conn: Any, feed: dict[str, Any] | None) -> None:
        """Queue the feed rows (`_FEED_INSERT`), and the pruning when due, in the open pipeline."""
        if feed is not None:
            conn.execute(self._sql["feed_insert"], feed)
            if feed["prune"]:
                conn.execute(self._sql["feed_prune"], feed)

    def _finish(self, conn: Any, feed: dict[str, Any] | None) -> None:
        """The feed rows and COMMIT, in one round trip: the feed_head row lock the rows take is held
        only while the server runs them and the commit, never while this client reads answers or
        checks them (the commits of every process take turns on that lock). If the feed rows fail,
        the server skips the COMMIT behind them and the caller rolls back.

        COMMIT is never prepared: psycopg marks a statement prepared as it sends the PREPARE (at its
        sixth execution), and a PREPARE the server skipped behind failed feed rows would leave it
        believing in a statement the server never made ("prepared statement does not exist" at the
        next COMMIT, as a ROLLBACK psycopg has counted before does not clear its cache)."""
        with conn.pipeline():
            self._send_feed(conn, feed)
            conn.execute("COMMIT", prepare=False)

    def _appended_anyway(self, pid: int, first: Append, blob: bytes, exc: Exception) -> bool:
        """After the connection of a one-round-trip batch of appends broke: did it commit? Asked on a
        new connection once its old session has left its transaction (waits, bounded, while it is
        still in it): it did if the first append's journal row holds this batch's blob. Raises
        `PersistenceError` when that cannot be told (the lookup fails, the old session stays, or the
        row is gone while the stored version passed it)."""
        cid, version = first.context_id, first.change.version
        args = {"pid": pid, "id": cid, "v": version, "blob": blob}
        deadline = time.monotonic() + self.statement_timeout
        while True:
            try:
                busy, mine, stored = self._run("commit status",
                                               lambda c: c.execute(self._sql["appended"], args).fetchone())
            except PersistenceError as lookup:
                raise PersistenceError(f"{self.location}: the connection broke during COMMIT ({exc}) and the outcome "
                                       f"cannot be looked up ({lookup}); reload the context before writing again",
                                       context_id=cid) from exc
            if not busy and mine:
                log.warning("%s: the connection broke during COMMIT (%s), but the transaction committed",
                            self.location, exc)
                return True
            if not busy and (mine is not None or stored is None or stored < version):
                return False
            if not busy or time.monotonic() > deadline:
                raise PersistenceError(f"{self.location}: the connection broke during COMMIT ({exc}) and the "
                                       f"outcome is unknown; reload the context before writing again",
                                       context_id=cid) from exc
            time.sleep(0.01)  # the old session is still ending: it will commit or abort shortly

    def _committed_anyway(self, xid: int, exc: Exception, context_id: str | None) -> bool:
        """After the connection broke during COMMIT: did the transaction commit? Asked on a new
        connection by transaction id; waits (bounded) while the old session is still finishing."""
        deadline = time.monotonic() + self.statement_timeout
        while True:
            try:
                status = self._run("commit status", lambda c: c.execute("SELECT txid_status(%s)", (xid,)).fetchone()[0])
            except PersistenceError as lookup:
                raise PersistenceError(f"{self.location}: the connection broke during COMMIT ({exc}) and the outcome "
                                       f"cannot be looked up ({lookup}); reload the context before writing again",
                                       context_id=context_id) from exc
            if status == "committed":
                log.warning("%s: the connection broke during COMMIT (%s), but the transaction committed",
                            self.location, exc)
                return True
            if status == "aborted":
                return False
            if status != "in progress" or time.monotonic() > deadline:
                raise PersistenceError(f"{self.location}: the connection broke during COMMIT ({exc}) and the "
                                       f"outcome is unknown (status {status!r}); reload the context before writing "
                                       "again", context_id=context_id) from exc
            time.sleep(0.01)  # the old session is still ending: it will commit or abort shortly

    def _encode_all(self, ops: Sequence[Op], first: str) -> list[bytes | None]:
        """Every op's blob, made before the transaction (row locks are then held briefly)."""
        try:
            return [self._encode(op) for op in ops]
        except HoardError:
            raise
        except Exception as exc:  # nothing was sent; the caller needs our error type, whatever failed
            raise PersistenceError(f"{self.location}: encoding a change failed ({exc!r}); nothing was written",
                                   context_id=first) from exc

    def _encode(self, op: Op) -> bytes | None:
        codec = self.codec
        if isinstance(op, Append):
            return codec.encode_change(op.change)
        if isinstance(op, (PutSnapshot, CreateContext)):
            return codec.encode_state(op.state)
        if isinstance(op, PutRecoveryPoint):
            return codec.encode_state(op.rp.state)
        return None

    def _apply_all(self, conn: Any, ops: Sequence[Op], encoded: list[bytes | None]) -> None:
        i = 0
        while i < len(ops):
            if isinstance(ops[i], Append):
                j = i
                while j < len(ops) and isinstance(ops[j], Append):
                    j += 1
                self._append_many(conn, ops[i:j], encoded[i:j])  # type: ignore[arg-type]
                i = j
            else:
                self._apply(conn, ops[i], encoded[i])
                i += 1

    def _append_many(self, conn: Any, appends: Sequence[Append], blobs: Sequence[bytes | None]) -> None:
        """Consecutive appends in one pipelined round trip, each version-checked by the server."""
        self._send_appends(conn, appends, blobs)

    def _send_appends(self, conn: Any, appends: Sequence[Append], blobs: Sequence[bytes | None]) -> None:
        """Send the appends (pipelined); one that does not follow its stored version fails with
        "hoard: version" (`SQL["append"]`, `refusal`)."""
        conn.cursor().executemany(self._sql["append"], [
            {"id": op.context_id, "v": op.change.version, "prev": op.change.version - 1, "at": op.change.at,
             "blob": blob} for op, blob in zip(appends, blobs, strict=True)])

    def _apply(self, conn: Any, op: Op, blob: bytes | None) -> None:  # noqa: PLR0912 - one branch per kind of op
        sql = self._sql
        if isinstance(op, PutSnapshot):
            st = op.state
            row = conn.execute(sql["lock_context"], {"id": st.id}).fetchone()
            if row is None:
                raise PersistenceError(f"snapshot of {st.id!r}, which is not in the store", context_id=st.id)
            if row[0] < st.version:
                # a checkpoint of changes that were never journaled (durability "none"): it becomes
                # the stored version, and nothing older can rebuild it any more
                conn.execute(sql["checkpoint"], {"id": st.id, "v": st.version, "u": st.updated_at})
            conn.execute(sql["snapshot"], {"id": st.id, "v": st.version, "blob": blob})
            if self.history_policy.kind == "recovery":
                conn.execute(sql["snapshot_trim"], {"id": st.id})  # one statement: the common case
            else:
                if self.history_policy.kind == "seconds":
                    self._snapshot_times[(st.id, st.version)] = st.updated_at
                self._trim_history(conn, st.id, max(row[0], st.version), st.updated_at)
        elif isinstance(op, CreateContext):
            st = op.state
            if conn.execute(sql["create"], {"id": st.id, "v": st.version, "c": st.created_at, "u": st.updated_at,
                                            "blob": blob}).fetchone() is None:
                raise PersistenceError(f"context {st.id!r} already exists in the store", context_id=st.id)
        elif isinstance(op, PutRecoveryPoint):
            rp = op.rp
            if conn.execute(sql["rp_insert"], {"id": rp.context_id, "rp": rp.id, "v": rp.version, "label": rp.label,
                                               "at": rp.created_at, "blob": blob}).fetchone() is None:
                row = conn.execute(sql["next_rp"], {"id": rp.context_id}).fetchone()
                if row is None:
                    raise PersistenceError(f"context {rp.context_id!r} is not in the store", context_id=rp.context_id)
                raise PersistenceError(f"recovery point id {rp.id} out of sequence (next is {row[0]})",
                                       context_id=rp.context_id)
            conn.execute(sql["rp_trim"], {"id": rp.context_id, "keep": max(1, op.keep)})
        elif isinstance(op, DeleteRecoveryPoint):
            conn.execute(sql["rp_delete"], {"id": op.context_id, "rp": op.rp_id})
        elif isinstance(op, SetTTL):
            if conn.execute(sql["set_ttl"], {"id": op.context_id, "ttl": op.ttl}).fetchone() is None:
                raise PersistenceError(f"context {op.context_id!r} is not in the store", context_id=op.context_id)
        elif isinstance(op, DeleteContext):
            conn.execute(sql["delete"], {"id": op.context_id})
            if self._has_quarantine(conn):
                conn.execute(sql["quarantine_delete"], {"id": op.context_id})
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown store operation {op!r}")

    # -- the history policy --------------------------------------------------------------------------
    def _trim_history(self, conn: Any, context_id: str, top: int, now: float) -> int:
        """Drop what the history policy lets go (see `hoard.storage._retention`); rows gone."""
        versions = [r[0] for r in conn.execute(self._sql["snapshot_versions"], {"id": context_id})]
        if not versions:
            return 0
        base = history_base(self.history_policy, versions, top, now, lambda v: self._snapshot_time(conn, context_id, v))
        gone = conn.execute(self._sql["trim_snapshots"], {"id": context_id, "v": base}).rowcount
        return int(gone + conn.execute(self._sql["trim_journal"], {"id": context_id, "v": base}).rowcount)

    def _snapshot_time(self, conn: Any, context_id: str, version: int) -> float:
        key = (context_id, version)
        if key not in self._snapshot_times:
            rows = [b for (b,) in conn.execute(self._sql["snapshot_row"], {"id": context_id, "v": version})]
            try:
                self._snapshot_times[key] = self.codec.decode_state(bytes(rows[0])).updated_at
            except (CorruptStateError, IndexError):
                return float("inf")  # damaged or gone: never dropped on a guess
        return self._snapshot_times[key]

    def _recorded_history(self, conn: Any) -> HistoryPolicy:
        if conn.execute(self._sql["has_feed"], {"t": f'"{self.schema}".settings'}).fetchone()[0] is not True:
            return RECOVERY
        row = conn.execute(self._sql["get_setting"], {"k": "history"}).fetchone()
        return RECOVERY if row is None else HistoryPolicy.parse(str(row[0]))

    def set_history(self, policy: HistoryPolicy) -> None:
        """Record the history policy in the schema (every process's compaction follows it after its
        next open; this one's at once). One transaction."""
        policy = HistoryPolicy.parse(policy)
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")

        def run(conn: Any) -> None:
            with conn.transaction():
                conn.execute(self._sql["set_setting"], {"k": "history", "v": policy.text})
        self._run("record the history policy", run)
        self.history_policy = policy

    def compact_history(self) -> int:
        """Apply the recorded history policy to every context now (one transaction); returns how many
        rows went. It only deletes rows the policy lets go, as each writer's own compaction does, so
        it may run while other processes write."""
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")

        def run(conn: Any) -> int:
            with conn.transaction():
                now = time.time()
                return sum(self._trim_history(conn, cid, int(v), now)
                           for cid, v in conn.execute(self._sql["all_versions"]).fetchall())
        return self._run("compact history", run, idempotent=False)

    def vacuum(self) -> None:
        """``VACUUM (ANALYZE)`` of every table of the store's schema (see `Store.vacuum`): dead rows
        become reusable and the planner's statistics are fresh; other processes keep reading and
        writing meanwhile (it takes no exclusive lock). The files do not shrink: that needs
        ``VACUUM FULL``, which would block every writer of the schema, so hoard leaves it to the
        operator. Runs outside a transaction (PostgreSQL requires it) in the caller's thread; blocks
        for as long as the server takes (not bounded by ``statement_timeout``)."""
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")

        def run(conn: Any) -> None:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (self.schema,))]
            conn.execute("SET statement_timeout = 0")
            try:
                for table in tables:
                    conn.execute(f'VACUUM (ANALYZE) "{self.schema}"."{table.replace(chr(34), chr(34) * 2)}"')
            finally:
                conn.execute(f"SET statement_timeout = {round(self.statement_timeout * 1000)}")
        self._run("vacuum", run)

    # -- feed consumers ------------------------------------------------------------------------------
    def set_consumer(self, name: str, position: int | None = None) -> int:
        """See `Store.set_consumer`: one transaction (the consumer's row locked: two processes
        committing one consumer take turns), caller's thread."""
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")

        def run(conn: Any) -> int:
            with conn.transaction():
                floor, head = conn.execute(self._sql["feed_bounds"]).fetchone()
                row = conn.execute(self._sql["consumer_lock"], {"name": name}).fetchone()
                pos = consumer_position(name, None if row is None else int(row[0]), position, int(floor), int(head))
                conn.execute(self._sql["consumer_set"], {"name": name, "pos": pos})
                return pos
        return self._run("commit a feed consumer", run, idempotent=False)

    def remove_consumer(self, name: str) -> None:
        """See `Store.remove_consumer`."""
        if self.readonly:
            raise PersistenceError(f"store {self.location} is open read-only")

        def run(conn: Any) -> None:
            with conn.transaction():
                conn.execute(self._sql["consumer_delete"], {"name": name})
        self._run("remove a feed consumer", run)

    def reader(self) -> PostgresStore:
        """A new read-only store on the same schema, with its own connection and codec (for another
        thread). Unopened; the caller owns it."""
        return PostgresStore(self.dsn, schema=self.schema, readonly=True, recovery=self.recovery, notify=False,
                             max_state_bytes=self._max_state_bytes, connect_timeout=self.connect_timeout,
                             statement_timeout=self.statement_timeout, feed_retention=self.feed_retention)

    # -- notices -------------------------------------------------------------------------------------
    def listen(self, *, others_only: bool = False) -> ChangeListener:
        """A `ChangeListener` for this store's schema, on a connection of its own (opened lazily).

        Independent of this store's connection: it may be used by another thread than the store's
        owner. Close it when done (it is a context manager). With `others_only` (the system's own
        listener, which ignores this store's notices anyway), this store's commits skip their
        notices while no other store or listener is on the schema, so they never wake it; other
        stores' notices still arrive (this store's sessions announce it, see `ChangeListener`).
        """
        return ChangeListener(self.dsn, self.schema, connect_timeout=self.connect_timeout,
                              announce=not (others_only and self.notify and not self.readonly))

    # -- the engine's two transactions ---------------------------------------------------------------
    def _read(self, what: str, context_id: str | None, fn: Callable[[RowAccess], T], *,
              transaction: bool = True) -> T:
        """`fn(rows)` in one REPEATABLE READ, READ ONLY transaction (one snapshot of the database for
        all its statements), or, for the strict load's single statement, in none. Retried once on a
        new connection if the old one was dead. Inside a `read_view()`, in the view's transaction
        (never retried: a new connection would be another snapshot)."""
        pinned = self._pinned
        if pinned is not None:
            try:
                return fn(pinned)
            except psycopg.Error as exc:
                raise self._translate(exc, what, context_id) from exc
        def run(conn: Any) -> T:
            if not transaction:
                return fn(_PgRows(self, conn))
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            result = fn(_PgRows(self, conn))
            conn.execute("COMMIT")
            return result
        return self._run(what, run, context_id)

    @contextlib.contextmanager
    def _read_transaction(self, what: str) -> Iterator[RowAccess]:
        """One REPEATABLE READ, READ ONLY transaction held open for a `read_view()`; the snapshot is
        taken by its first statement, made here. Ended with the block (its connection given back
        if it broke)."""
        def begin(conn: Any) -> Any:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute("SELECT 1").fetchone()
            return conn
        conn = self._run(what, begin)
        try:
            yield _PgRows(self, conn)
        finally:
            if self._lost(conn):
                self._drop_connection()
            else:
                self._rollback(conn)  # it only read

    def _repair(self, what: str, context_id: str | None, expected_version: int | None,
                fn: Callable[[RowAccess], T]) -> T | None:
        """`fn(rows)` in one write transaction, fenced like a commit: None (nothing written) when this
        store is read-only, when another owner holds a live lease on the context (or, with
        ``require_lease``, this store holds none: its owner repairs it), or when the context is no
        longer at `expected_version` (another process changed it meanwhile)."""
        if self.readonly:
            return None

        def run(conn: Any) -> T | None:
            try:
                with conn.transaction():  # a refused fence aborts it: it is rolled back, not committed
                    if context_id is not None:
                        self._fence(conn, [context_id])
                        row = conn.execute(self._sql["lock_context"], {"id": context_id}).fetchone()
                        if row is None or row[0] != expected_version:
                            log.warning("%s: %r changed while it was being checked; not repairing", self.location,
                                        context_id)
                            return None
                    self._ensure_quarantine(conn)
                    return fn(_PgRows(self, conn))
            except FencedOffError as exc:
                log.warning("%s: not repairing %r now: %s", self.location, context_id, exc)
                return None
        try:
            return self._run(what, run, context_id, idempotent=False)
        finally:
            self._quarantine_pending = False

    # -- reads the engine does not make ---------------------------------------------------------------
    def list_ids(self, prefix: str = "") -> list[str]:
        """Stored ids starting with `prefix` (taken literally), in code point order: the ids are
        ``COLLATE "C"``, which orders UTF-8 as Python orders str. One statement, caller's thread."""
        if not _storable_prefix(prefix):
            return []
        return self._run("list", lambda c: [r[0] for r in c.execute(self._sql["list"], {"p": prefix})])

    def count(self) -> int:
        """Number of stored contexts; one statement, caller's thread."""
        return self._run("count", lambda c: int(c.execute(self._sql["count"]).fetchone()[0]))

    def expired(self, now: float, default_ttl: float | None, limit: int = 1000) -> list[str]:
        """See `Store.expired`: ids whose ``updated_at`` plus their own TTL (else `default_ttl`) is
        before `now` (seconds since the epoch, the caller's clock, as `updated_at` is), oldest change
        first, at most `limit`. One statement (a scan of the contexts table), caller's thread."""
        return self._run("expired", lambda c: [r[0] for r in c.execute(
            self._sql["expired"], {"d": default_ttl, "now": now, "limit": limit})])

    # -- the quarantine table (made by the first repair that needs it) ------------------------------
    def _has_quarantine(self, conn: Any) -> bool:
        if self._quarantine_seen:
            return True
        found = bool(conn.execute(self._sql["has_quarantine"], {"t": f'"{self.schema}".quarantine'}).fetchone()[0])
        # remember it only once committed: a table this store's open repair made may yet be rolled back
        self._quarantine_seen = found and not self._quarantine_pending
        return found

    def _ensure_quarantine(self, conn: Any) -> None:
        """Inside a repair transaction (which may then write): create the quarantine table if missing.
        Serialized with other openers' migrations by their advisory lock; `_repair` resets
        `_quarantine_pending` when its transaction ends."""
        if self._has_quarantine(conn):
            return
        self._quarantine_pending = True
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (self._advisory_key(),))
        for stmt in QUARANTINE_TABLE:
            conn.execute(stmt.format(s=f'"{self.schema}"'))

    def _advisory_key(self) -> int:
        return 0x686F617264 << 24 | zlib.crc32(self.schema.encode()) & 0xFFFFFF


class _PgRows:
    """`RowAccess` on one PostgreSQL connection, inside the transaction the store opened."""

    def __init__(self, store: PostgresStore, conn: Any) -> None:
        self.store = store
        self.conn = conn
        self.sql = store._sql  # noqa: SLF001 - the store's own helper

    def _all(self, name: str, **args: Any) -> list[Any]:
        return self.conn.execute(self.sql[name], args, binary=True).fetchall()  # type: ignore[no-any-return]

    def context_ids(self, prefix: str = "") -> list[str]:
        return [r[0] for r in self.conn.execute(self.sql["list"], {"p": prefix})]

    def summaries(self, prefix: str = "", context_id: str | None = None) -> list[StoredContext]:
        rows = (self.conn.execute(self.sql["summary"], {"id": context_id}) if context_id is not None
                else self.conn.execute(self.sql["summaries"], {"p": prefix}))
        return [StoredContext(cid, ver, created, updated, snap_v or 0, jn, next_rp, rps, size, ttl)
                for cid, ver, created, updated, snap_v, jn, next_rp, rps, size, ttl in rows]

    def head(self, context_id: str) -> tuple[int, int] | None:
        row = self.conn.execute(self.sql["head"], {"id": context_id}).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def newest(self, context_id: str) -> tuple[int, tuple[int, bytes] | None, list[tuple[int, bytes]]] | None:
        # one statement: the acknowledged version, the newest snapshot and the journal after it
        rows = sorted(self._all("load", id=context_id), key=lambda r: (r[0], r[1]))
        if not rows or rows[0][0] != 0:
            return None
        snaps = [(r[1], r[2]) for r in rows if r[0] == 1]
        return rows[0][1], snaps[0] if snaps else None, [(r[1], r[2]) for r in rows if r[0] == 2]

    def snapshot_rows(self, context_id: str) -> list[tuple[int, bytes]]:
        return [(v, b) for v, b in self._all("snapshot_rows", id=context_id)]

    def snapshot_row(self, context_id: str, version: int) -> bytes | None:
        found = self._all("snapshot_row", id=context_id, v=version)
        return bytes(found[0][0]) if found else None

    def snapshot_versions(self, context_id: str) -> list[int]:
        return [r[0] for r in self.conn.execute(self.sql["snapshot_versions"], {"id": context_id})]

    def journal_rows(self, context_id: str, after: int = 0, upto: int | None = None) -> list[tuple[int, bytes]]:
        return [(v, b) for v, b in self._all("journal_rows", id=context_id, after=after,
                                             upto=2**62 if upto is None else upto)]

    def recovery_point_rows(self, context_id: str, rp_id: int | None = None
                            ) -> list[tuple[int, int, str | None, float, bytes]]:
        rows = self._all("rps", id=context_id) if rp_id is None else self._all("rp", id=context_id, rp=rp_id)
        return [tuple(r) for r in rows]

    def orphans(self) -> list[tuple[str, str]]:
        kinds = {"snapshot": "snapshots", "journal": "journal", "recovery_point": "recovery_points"}
        if self.store._has_quarantine(self.conn):  # noqa: SLF001
            kinds["quarantine"] = "quarantine"
        return [(kind, r[0]) for kind, table in kinds.items()
                for r in self.conn.execute(self.sql[f"orphans_{table}"] + " ORDER BY 1")]

    def _has_feed(self) -> bool:
        return bool(self.conn.execute(self.sql["has_feed"], {"t": f'"{self.store.schema}".feed_head'}).fetchone()[0])

    def feed_bounds(self) -> tuple[int, int]:
        if not self._has_feed():
            return 0, 0  # a schema no writer of this version has opened yet
        row = self.conn.execute(self.sql["feed_bounds"]).fetchone()
        return int(row[0]), int(row[1])

    def feed_rows(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        if not self._has_feed():
            return []
        return [(int(p), c, b) for p, c, b in self._all("feed_rows", after=after, limit=limit)]

    def consumer_rows(self) -> dict[str, int]:
        if not self._has_feed():
            return {}
        return {n: int(p) for n, p in self.conn.execute(self.sql["consumers"])}

    def integrity_problems(self) -> list[str]:
        return []  # the server checks its own pages (checksums, if enabled, fail the reads themselves)

    def totals(self) -> StoreStats:
        row = self.conn.execute(self.sql["totals"]).fetchone()
        contexts, snaps, snap_bytes, journal, journal_bytes, rps, rp_bytes = (int(x) for x in row)
        quarantined = (int(self.conn.execute(self.sql["quarantined"]).fetchone()[0])
                       if self.store._has_quarantine(self.conn) else 0)  # noqa: SLF001
        return StoreStats("", contexts, snaps, journal, rps, quarantined, snap_bytes, journal_bytes, rp_bytes)

    def write_snapshot(self, context_id: str, version: int, blob: bytes) -> None:
        self.conn.execute(self.sql["snapshot"], {"id": context_id, "v": version, "blob": blob})

    def write_recovery_point_blob(self, context_id: str, rp_id: int, blob: bytes) -> None:
        self.conn.execute(self.sql["rp_blob"], {"id": context_id, "rp": rp_id, "blob": blob})

    def delete_snapshot(self, context_id: str, version: int) -> None:
        self.conn.execute(self.sql["snapshot_delete"], {"id": context_id, "v": version})

    def delete_journal(self, context_id: str, version: int) -> None:
        self.conn.execute(self.sql["journal_delete"], {"id": context_id, "v": version})

    def quarantine(self, context_id: str, source: str, version: int | None, problem: str,
                   rp_id: int | None = None) -> None:
        self.conn.execute(self.sql[f"quarantine_{source}"], {
            "id": context_id, "source": source, "v": version, "rp": rp_id, "problem": problem, "at": time.time(),
            "k": rp_id if source == "recovery_point" else version})

    def restart(self, context_id: str, state_version: int, updated_at: float, blob: bytes) -> None:
        self.conn.execute(self.sql["snapshot_delete_all"], {"id": context_id})
        self.conn.execute(self.sql["journal_delete_all"], {"id": context_id})
        self.write_snapshot(context_id, state_version, blob)
        self.conn.execute(self.sql["set_version"], {"id": context_id, "v": state_version, "u": updated_at})

    def set_next_rp_id(self, context_id: str, next_rp_id: int) -> None:
        self.conn.execute(self.sql["set_next_rp"], {"id": context_id, "n": next_rp_id})

    def delete_orphans(self, kind: str, context_id: str) -> None:
        table = {"snapshot": "snapshots", "journal": "journal", "recovery_point": "recovery_points",
                 "quarantine": "quarantine"}[kind]
        self.conn.execute(self.sql[f"fix_{table}"], {"id": context_id})


_KIND: dict[type, str] = {
    CreateContext: "create", Append: "append", PutSnapshot: "snapshot", PutRecoveryPoint: "recovery_point",
    DeleteRecoveryPoint: "delete_recovery_point", DeleteContext: "delete", SetTTL: "ttl",
}


# `_append_one`'s parameters in binary form (PostgreSQL's: big-endian int8 and float8, one byte a boolean;
# text and bytea as their bytes)
_APPEND_ONE_NAME = APPEND_ONE_STATEMENT.encode()
_INT8 = struct.Struct("!q").pack
_FLOAT8 = struct.Struct("!d").pack
_TRUE, _FALSE = b"\x01", b"\x00"
_UNKNOWN_STATEMENT = b"26000"  # invalid_sql_statement_name: no prepared statement of that name
# libpq's own numbers (PGRES_TUPLES_OK, PGRES_COMMAND_OK, PG_DIAG_SQLSTATE), which psycopg's
# ExecStatus and DiagnosticField enums equal: written out so that this module imports without psycopg
_TUPLES_OK, _COMMAND_OK, _SQLSTATE = 2, 1, ord("C")

# `_appends_direct`'s arrays in PostgreSQL's binary form: a header (dimensions, whether any element is
# NULL, the element type; then the length and lower bound of the one dimension), then every element as
# its length (-1: NULL) and its bytes
_APPENDS_NAME = APPENDS_STATEMENT.encode()
_ARRAY_HEAD = struct.Struct("!iiiii")
_INT4 = struct.Struct("!i").pack
_NULL = _INT4(-1)
_TEXT_OID, _BYTEA_OID, _INT8_OID, _FLOAT8_OID = 25, 17, 20, 701
_struct = functools.lru_cache(maxsize=256)(struct.Struct)


def _array(oid: int, items: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array (not empty) of `items` (each an element's binary form, None for NULL)
    of type `oid`."""
    nulls = None in items
    return b"".join([_ARRAY_HEAD.pack(1, int(nulls), oid, len(items), 1),
                     *[x for item in items for x in ((_NULL,) if item is None else (_INT4(len(item)), item))]])


def _packed(oid: int, code: str, values: Sequence[float]) -> bytes:
    """An array (not empty, no NULL) of 8-byte `values` of type `oid` (bigint: `code` "q", float8: "d"),
    packed by one `struct` call."""
    n = len(values)
    return _ARRAY_HEAD.pack(1, 0, oid, n, 1) + _struct("!" + ("i" + code) * n).pack(
        *[x for v in values for x in (8, v)])


def _exec_prepared(conn: Any, name: bytes, call: bytes, types: Sequence[int], params: Sequence[bytes | None]) -> None:
    """Run the session's prepared statement `name` (`call`, parameters of the oids `types`) with
    `params` in binary form through libpq, preparing it first when the session does not have it (the
    server refuses an unknown statement before running anything, so sending it again is safe).
    Raises psycopg's error for a refusal, `psycopg.OperationalError` for a lost connection. Blocks
    in libpq, the GIL released, bounded by ``statement_timeout``."""
    pgconn = conn.pgconn
    formats = (1,) * len(params)
    result = pgconn.exec_prepared(name, params, formats, 1)  # raises if it cannot send
    if result.status != _TUPLES_OK and result.error_field(_SQLSTATE) == _UNKNOWN_STATEMENT:
        made = pgconn.prepare(name, call, types)
        if made.status != _COMMAND_OK:
            raise psycopg.errors.error_from_result(made, encoding=conn.info.encoding)
        result = pgconn.exec_prepared(name, params, formats, 1)
    if result.status != _TUPLES_OK:
        if pgconn.status == psycopg.pq.ConnStatus.BAD:
            raise psycopg.OperationalError(f"the connection was lost: {pgconn.get_error_message()}")
        raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


#: refusals of a server that is busy or changing state, not saying "no": worth waiting for
_TRANSIENT_REFUSALS = ("starting up", "shutting down", "recovery mode", "too many clients", "connection slots")


def _touched(ops: Sequence[Op]) -> dict[str, list[str]]:
    """Context id -> the kinds of operation (for the notice) of every context `ops` touch; each id
    validated (as SQLiteStore does; PostgreSQL text cannot hold NUL or lone surrogates)."""
    touched: dict[str, list[str]] = {}
    for op in ops:
        kinds = touched.setdefault(validate_id(context_of(op)), [])
        if _KIND[type(op)] not in kinds:
            kinds.append(_KIND[type(op)])
    return touched


def _quiet(conn: Any) -> bool:
    """Whether an idle connection has nothing to read: a server that ended the session (terminated
    while idle, shut down) has sent its farewell or closed the socket, which makes it readable. One
    non-blocking poll of the socket."""
    try:
        return not select.select([conn.pgconn.socket], [], [], 0)[0]
    except (OSError, ValueError, psycopg.Error):
        return False


def _began(begin: Any) -> bool:
    """Whether the BEGIN of a pipelined commit completed on the server (None: never sent). A session
    found dead at the first result never began: its commit is safe to retry on a new connection."""
    result = None if begin is None else begin.pgresult
    return result is not None and result.status == psycopg.pq.ExecStatus.COMMAND_OK
