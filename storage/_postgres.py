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
common one) costs two round trips: BEGIN, the fence, the appends and NOTIFY in one pipeline, then
COMMIT once every check held. A blob that cannot be encoded raises `PersistenceError` before anything
is sent.

Damaged data, exactly as `SQLiteStore` (see its module docstring): ``recovery="strict"`` (default)
raises `CorruptStateError` naming the context and the row; ``"fallback"`` rebuilds from the newest
valid snapshot or recovery point plus the journal, repairs the rows (or moves them to `quarantine`),
continues at a new version when acknowledged changes are lost, and reports it in a `RecoveryReport`
(`last_recovery_report`, `recovery_reports`, and a WARNING). A repair is a write, so it is fenced like
a commit: a store that may not write the context (owned elsewhere, or ``require_lease`` without the
lease) returns what it recovered and repairs nothing (``repaired=False``); its owner will. `verify()`
makes SQLite's checks, and ``verify(fix=True)`` SQLite's repairs (fenced the same way), except that a
journal problem that makes the acknowledged version unrecoverable is one issue here (SQLite reports
the "unrecoverable" consequence as a second one).

Single activation (ownership leases with fencing tokens). One `leases` row per context that was
ever written or leased: ``(context_id, owner, token, expires_at)``. Expiry is judged by the database
clock (``now()``) only, so the hosts' clocks do not matter.

- ``acquire_lease(context_id, ttl=None) -> int`` takes the lease if it is free, released or expired
  (or held by an earlier incarnation with the same `owner_id`), and returns its fencing token, which
  grows by one on every acquisition; if this store holds it already, it is renewed and the same token
  returned. If another owner holds a live lease it raises `ContextOwnedElsewhereError` at once (with
  the owner and ``expires_in``): a store never waits, the caller decides whether to retry.
- ``renew_lease(context_id, token, ttl=None)`` extends it (`FencedOffError` if it was taken over);
  ``renew_leases(ttl=None) -> list[str]`` renews every lease this store holds in one statement and
  returns (and forgets) the ids it lost.
- ``release_lease(context_id, token) -> bool`` frees it at once for the next owner (the token stays
  in the row, so the next owner's token is still larger). `close()` releases every lease still held.
- Fencing: the store remembers the token of each lease it holds. Every `commit` first locks the lease
  rows of the contexts it touches and refuses the whole batch with `FencedOffError` when the token in
  the row is not the one held here (someone took over), or when this store holds no lease on a
  context another owner holds a live lease on (or on any context, with ``require_lease=True``). The
  row lock makes the check and the write one atomic step against a takeover: a takeover waits for a
  write in progress, and a write after a takeover is refused. A lease that expired but was not taken
  over fences nobody: its holder may still write (nobody else did meanwhile), and renewing it works.

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
notices off for stores nobody listens to.

Connection faults: the store keeps one connection of a `psycopg_pool.ConnectionPool` (size 1) and
gives it back when it breaks; the pool reconnects in the background. A read on a dead connection is
retried once on a new one, and so is a commit whose connection was found dead before anything of it
was sent. A connection lost in the middle of a commit raises `PersistenceError`: nothing of the batch
is committed. If it is lost while COMMIT itself is in flight, the outcome is looked up by transaction
id (``txid_status``) on a new connection: a committed batch returns normally, an aborted one raises;
so a write is never reported failed while stored, nor reported done while lost. Every statement is
bounded by ``statement_timeout``; a session left idle inside a transaction (a paused process holding a
lease row lock) is ended by the server after ``lease_ttl`` (at least 1 s), so a takeover never waits on
a paused owner for long.

Threading: not thread-safe; one owner thread at a time (see `Store`). While open, the pool runs two
background threads of its own (a scheduler and a worker that reconnects); `close()` ends them. A
`ChangeListener` has its own connection and is used by one (other) thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import orjson

from ._codec import Codec
from ._errors import (
    ConfigError,
    ContextOwnedElsewhereError,
    CorruptStateError,
    FencedOffError,
    HoardError,
    PersistenceError,
)
from ._model import Change, ContextState, RecoveryPoint, apply_change
from ._rows import FALLBACK_HINT, decode_change_row, decode_state_row, replay_strict
from ._sqlite import RecoveryReport, SkippedItem, SQLiteStore, _problem, _ranges, _Row, _row_name, _Stored
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

try:  # the "postgres" extra: the rest of storage must import without it
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]
    psycopg_pool = None  # type: ignore[assignment]

__all__ = ["CHANNEL", "SCHEMA_VERSION", "ChangeListener", "ChangeNotice", "PostgresStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the NOTIFY channel of every hoard store (notices carry their schema; listeners filter on it)
CHANNEL = "hoard_changes"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Migrations, in order; migration n brings a schema from version n-1 to n. Never edit a released one:
# append a new one. "{s}" is the quoted schema name.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: journal + snapshots + recovery points, and ownership leases
        'CREATE TABLE {s}.contexts (id text COLLATE "C" PRIMARY KEY, version bigint NOT NULL, '
        "created_at double precision NOT NULL, updated_at double precision NOT NULL, "
        "next_rp_id bigint NOT NULL DEFAULT 1)",
        'CREATE TABLE {s}.snapshots (context_id text COLLATE "C" NOT NULL, version bigint NOT NULL, '
        "blob bytea NOT NULL, PRIMARY KEY (context_id, version))",
        'CREATE TABLE {s}.journal (context_id text COLLATE "C" NOT NULL, version bigint NOT NULL, '
        "blob bytea NOT NULL, PRIMARY KEY (context_id, version))",
        'CREATE TABLE {s}.recovery_points (context_id text COLLATE "C" NOT NULL, rp_id bigint NOT NULL, '
        "version bigint NOT NULL, label text, created_at double precision NOT NULL, blob bytea NOT NULL, "
        "PRIMARY KEY (context_id, rp_id))",
        'CREATE TABLE {s}.leases (context_id text COLLATE "C" PRIMARY KEY, owner text NOT NULL, '
        "token bigint NOT NULL, expires_at timestamptz NOT NULL)",
        # blobs are zstd-compressed already: keep PostgreSQL from compressing them again
        "ALTER TABLE {s}.snapshots ALTER COLUMN blob SET STORAGE EXTERNAL",
        "ALTER TABLE {s}.journal ALTER COLUMN blob SET STORAGE EXTERNAL",
        "ALTER TABLE {s}.recovery_points ALTER COLUMN blob SET STORAGE EXTERNAL",
    ),
)
#: the table layout this hoard writes; a schema of a higher version is refused
SCHEMA_VERSION = len(_MIGRATIONS)
_TABLES = {"schema_version", "contexts", "snapshots", "journal", "recovery_points", "leases"}

# -- SQL (formatted once per store with its schema) -----------------------------------------------------
# Lock the lease row of every context a batch touches (creating a free one if missing, so that a
# concurrent first acquisition waits for this transaction too), in id order (no deadlocks between
# writers), and read what fencing needs plus the transaction id (to resolve a commit lost in flight).
_FENCE = """
INSERT INTO {s}.leases AS l (context_id, owner, token, expires_at)
SELECT id, '', 0, '-infinity' FROM unnest(%(ids)s::text[]) AS id ORDER BY id
ON CONFLICT (context_id) DO UPDATE SET token = l.token
RETURNING l.context_id, l.owner, l.token, l.expires_at > now(), txid_current()"""
_APPEND = """
WITH u AS (UPDATE {s}.contexts SET version = %(v)s, updated_at = %(at)s
           WHERE id = %(id)s AND version = %(prev)s RETURNING id)
INSERT INTO {s}.journal (context_id, version, blob) SELECT id, %(v)s, %(blob)s FROM u RETURNING version"""
# A create also removes leftover rows of its id (a context deleted by hand, or orphans verify() has
# not fixed yet) so that they never mix in: the snapshot rows at other versions, the journal and the
# recovery points (a leftover snapshot at the same version is overwritten).
_CREATE = """
WITH c AS (INSERT INTO {s}.contexts (id, version, created_at, updated_at) VALUES (%(id)s, %(v)s, %(c)s, %(u)s)
           ON CONFLICT (id) DO NOTHING RETURNING id),
     ds AS (DELETE FROM {s}.snapshots WHERE context_id IN (SELECT id FROM c) AND version <> %(v)s),
     dj AS (DELETE FROM {s}.journal WHERE context_id IN (SELECT id FROM c)),
     dr AS (DELETE FROM {s}.recovery_points WHERE context_id IN (SELECT id FROM c))
INSERT INTO {s}.snapshots (context_id, version, blob) SELECT id, %(v)s, %(blob)s FROM c
ON CONFLICT (context_id, version) DO UPDATE SET blob = EXCLUDED.blob RETURNING version"""
_SNAPSHOT_TRIM = """
WITH k AS (SELECT min(version) AS v FROM (SELECT version FROM {s}.snapshots WHERE context_id = %(id)s
                                           ORDER BY version DESC LIMIT 2) AS newest),
     d AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s AND version < (SELECT v FROM k))
DELETE FROM {s}.journal WHERE context_id = %(id)s AND version <= (SELECT v FROM k)"""
_RP_INSERT = """
WITH c AS (UPDATE {s}.contexts SET next_rp_id = %(rp)s + 1 WHERE id = %(id)s AND next_rp_id = %(rp)s RETURNING id)
INSERT INTO {s}.recovery_points (context_id, rp_id, version, label, created_at, blob)
SELECT id, %(rp)s, %(v)s, %(label)s, %(at)s, %(blob)s FROM c RETURNING rp_id"""
_RP_TRIM = """
DELETE FROM {s}.recovery_points WHERE context_id = %(id)s AND rp_id < (
    SELECT min(rp_id) FROM (SELECT rp_id FROM {s}.recovery_points WHERE context_id = %(id)s
                            ORDER BY rp_id DESC LIMIT %(keep)s) AS newest)"""
_DELETE = """
WITH j AS (DELETE FROM {s}.journal WHERE context_id = %(id)s),
     s AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s),
     r AS (DELETE FROM {s}.recovery_points WHERE context_id = %(id)s)
DELETE FROM {s}.contexts WHERE id = %(id)s"""
_NOTIFY = """
SELECT pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', n.id, 'v', c.version,
                                           'ops', string_to_array(n.ops, ','), 'owner', %(owner)s::text)::text)
FROM unnest(%(ids)s::text[], %(ops)s::text[]) AS n(id, ops) LEFT JOIN {s}.contexts c ON c.id = n.id"""
# One statement, so the newest snapshot, the journal after it and the acknowledged version are read
# from one consistent snapshot of the database even while other processes write.
_LOAD = """
SELECT 0, version, NULL::bytea FROM {s}.contexts WHERE id = %(id)s
UNION ALL (SELECT 1, version, blob FROM {s}.snapshots WHERE context_id = %(id)s ORDER BY version DESC LIMIT 1)
UNION ALL SELECT 2, version, blob FROM {s}.journal WHERE context_id = %(id)s
    AND version > (SELECT coalesce(max(version), 0) FROM {s}.snapshots WHERE context_id = %(id)s)"""
# Every row of one context, in one statement (one consistent view), for fallback recovery and verify():
# (kind, version, next recovery point id | recovery point id, label, created_at, blob)
_STORED = """
SELECT 0, version, next_rp_id, NULL::text, NULL::float8, NULL::bytea FROM {s}.contexts WHERE id = %(id)s
UNION ALL SELECT 1, version, NULL, NULL, NULL, blob FROM {s}.snapshots WHERE context_id = %(id)s
UNION ALL SELECT 2, version, NULL, NULL, NULL, blob FROM {s}.journal WHERE context_id = %(id)s
UNION ALL SELECT 3, version, rp_id, label, created_at, blob FROM {s}.recovery_points WHERE context_id = %(id)s"""
# Damaged or unusable rows a fallback recovery or a repair takes out of the way: kept for inspection,
# never loaded. Created by the first repair that needs it (not by a migration: a store nobody repaired
# keeps exactly the tables of schema version 1).
_QUARANTINE_TABLE = (
    'CREATE TABLE IF NOT EXISTS {s}.quarantine (context_id text COLLATE "C" NOT NULL, source text NOT NULL, '
    "version bigint, rp_id bigint, problem text NOT NULL, at double precision NOT NULL, blob bytea)",
    "ALTER TABLE {s}.quarantine ALTER COLUMN blob SET STORAGE EXTERNAL",
)
_QUARANTINE_ROW = """
WITH d AS (DELETE FROM {s}.{table} WHERE context_id = %(id)s AND {key} = %(k)s RETURNING blob)
INSERT INTO {s}.quarantine (context_id, source, version, rp_id, problem, at, blob)
VALUES (%(id)s, %(source)s, %(v)s, %(rp)s, %(problem)s, %(at)s, (SELECT blob FROM d LIMIT 1))"""
_INFO = """
SELECT c.id, c.version, c.created_at, c.updated_at, c.next_rp_id,
 (SELECT max(version) FROM {s}.snapshots s WHERE s.context_id = c.id),
 (SELECT count(*) FROM {s}.journal j WHERE j.context_id = c.id),
 (SELECT count(*) FROM {s}.recovery_points r WHERE r.context_id = c.id),
 (SELECT coalesce(sum(octet_length(blob)), 0) FROM {s}.snapshots s WHERE s.context_id = c.id)::bigint
 + (SELECT coalesce(sum(octet_length(blob)), 0) FROM {s}.journal j WHERE j.context_id = c.id)::bigint
FROM {s}.contexts c WHERE c.id = %(id)s"""
_ACQUIRE = """
WITH a AS (
  INSERT INTO {s}.leases AS l (context_id, owner, token, expires_at)
  VALUES (%(id)s, %(owner)s, 1, now() + make_interval(secs => %(ttl)s))
  ON CONFLICT (context_id) DO UPDATE
    SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner
  RETURNING l.token)
SELECT token, pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', %(id)s::text,
        'ops', ARRAY['lease_acquired'], 'owner', %(owner)s::text, 'token', token)::text) FROM a"""
_RENEW = """
UPDATE {s}.leases SET expires_at = now() + make_interval(secs => %(ttl)s)
WHERE context_id = %(id)s AND token = %(token)s AND owner = %(owner)s RETURNING token"""
_RENEW_ALL = """
UPDATE {s}.leases AS l SET expires_at = now() + make_interval(secs => %(ttl)s)
FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS h(id, token)
WHERE l.context_id = h.id AND l.token = h.token AND l.owner = %(owner)s RETURNING l.context_id"""
_RELEASE = """
WITH r AS (UPDATE {s}.leases SET expires_at = '-infinity'
           WHERE context_id = %(id)s AND token = %(token)s AND owner = %(owner)s RETURNING context_id)
SELECT context_id, pg_notify(%(ch)s, json_build_object('schema', %(schema)s::text, 'id', context_id,
        'ops', ARRAY['lease_released'], 'owner', %(owner)s::text)::text) FROM r"""
_HOLDER = """
SELECT owner, token, expires_at > now(),
       CASE WHEN expires_at > now() THEN extract(epoch FROM expires_at - now())::float8 END
FROM {s}.leases WHERE context_id = %(id)s"""


@attrs.frozen
class ChangeNotice:
    """One cross-process notice, as received by a `ChangeListener`.

    Attributes:
        schema: the store schema it comes from.
        context_id: the context concerned.
        version: its stored version right after the commit (None when it was deleted, or for a lease).
        ops: what happened: "create", "append", "snapshot", "recovery_point", "delete_recovery_point",
            "delete", "lease_acquired", "lease_released".
        owner: the `owner_id` of the store that committed it.
        sender_pid: the server process id of the committing connection.
    """

    schema: str
    context_id: str
    version: int | None
    ops: tuple[str, ...]
    owner: str | None
    sender_pid: int


class PostgresStore:
    """Every context in one PostgreSQL schema, shared by any number of processes. See the module
    docstring for the tables, group commit, leases and fencing, notices and connection faults.

    Args:
        dsn: a libpq connection string or URI (``"postgresql://user@host/db"``).
        schema: the PostgreSQL schema holding the tables (an identifier: letters, digits, ``_``).
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading (bombs are refused).
        owner_id: who this store is in the `leases` table; unique per live process (reuse one only
            for a restart of the same node: it takes its leases back at once). Default:
            ``"<host>:<pid>:<random>"``.
        lease_ttl: seconds a lease runs unless renewed (the default for `acquire_lease` and renewals).
        require_lease: refuse (`FencedOffError`) any write to a context this store holds no lease on.
        notify: send ``NOTIFY hoard_changes`` with each commit.
        connect_timeout: seconds to wait for a connection (at open, and when reconnecting).
        statement_timeout: seconds any one statement may run (lock waits included) before it fails
            with `PersistenceError`.
        recovery: "strict" (default) or "fallback": what `load` does with damaged data, as in
            `SQLiteStore` (see the module docstring).

    Threading: one owner thread at a time; not thread-safe (see `Store`).
    """

    def __init__(self, dsn: str, *, schema: str = "hoard", compression_level: int = 3,
                 max_state_bytes: int = 64 * 2**20, owner_id: str | None = None, lease_ttl: float = 10.0,
                 require_lease: bool = False, notify: bool = True, connect_timeout: float = 5.0,
                 statement_timeout: float = 30.0, recovery: str = "strict") -> None:
        if psycopg is None:  # pragma: no cover - exercised only without the extra
            raise ConfigError("PostgresStore needs psycopg 3 and psycopg-pool: pip install 'hoard[postgres]'")
        if recovery not in _RECOVERY:
            raise ConfigError(f"recovery must be one of {', '.join(map(repr, _RECOVERY))}, not {recovery!r}")
        if not _IDENT.fullmatch(schema):
            raise ConfigError(f"schema must be an identifier (letters, digits, '_', at most 63), not {schema!r}")
        if not lease_ttl > 0 or not connect_timeout > 0 or not statement_timeout > 0:
            raise ConfigError("lease_ttl, connect_timeout and statement_timeout must be positive")
        try:
            params = conninfo_to_dict(dsn)
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
        self.codec = Codec(compression_level, max_bytes=max_state_bytes + 2**20)
        self.recovery = recovery
        #: the report of the newest `load` that had to skip something (None if it did not)
        self.last_recovery_report: RecoveryReport | None = None
        #: every report since the store was made, oldest first (a caller may clear it)
        self.recovery_reports: list[RecoveryReport] = []
        # never show a password: location appears in messages and logs
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        self.location = f"postgresql://{where}#{schema}"
        self._params = params
        self._sql = {name: text.format(s=f'"{schema}"') for name, text in _SQL.items()}
        self._pool: Any = None
        self._db: Any = None  # the connection in use, taken from the pool
        self._leases: dict[str, int] = {}  # context id -> fencing token this store holds
        self._quarantine_seen = False  # the quarantine table exists (it is never dropped once made)
        self._quarantine_pending = False  # it was made by this store's repair transaction, still open

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and create or migrate the schema. Blocks up to `connect_timeout` for the server.

        Raises `PersistenceError` if the server cannot be reached, `CorruptStateError` if the schema
        holds other tables than hoard's or was written by a newer hoard. Idempotent.
        """
        if self._pool is not None:
            return
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": f"hoard {self.owner_id}"[:63]}
        if "connect_timeout" not in self._params:
            kwargs["connect_timeout"] = max(2, round(self.connect_timeout))
        if "tcp_user_timeout" not in self._params and psycopg.pq.version() >= 120000:
            # a dead peer on a half-open connection is noticed after this, not after TCP's ~15 min
            kwargs["tcp_user_timeout"] = round((self.statement_timeout + self.connect_timeout) * 1000)
        first_problem = self._refused(kwargs)
        pool = psycopg_pool.ConnectionPool(
            self.dsn, min_size=1, max_size=1, open=False, kwargs=kwargs, configure=self._configure,
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
        except BaseException:
            self.close()
            raise

    def _refused(self, kwargs: dict[str, Any]) -> str | None:
        """Try one connection first. A server that answers with a refusal that waiting cannot change
        (no such database or role, authentication failed) fails the open at once with the server's own
        words; a server that does not answer (yet), or is starting up, is left to the pool, which
        retries up to `connect_timeout`. Returns that first problem (None if the connection worked)."""
        try:
            psycopg.connect(self.dsn, **kwargs).close()
        except psycopg.Error as exc:
            problem = " ".join(str(exc).split())
            refusal = problem.partition("FATAL:")[2].strip()
            if refusal and not any(word in refusal for word in _TRANSIENT_REFUSALS):
                raise PersistenceError(f"cannot connect to {self.location}: the server refused: {refusal}") from exc
            return problem
        return None

    def _configure(self, conn: Any) -> None:
        """Session settings of every new pooled connection (runs in the pool's thread)."""
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('idle_in_transaction_session_timeout', %s, false)",
                     (f"{round(self.statement_timeout * 1000)}", f"{round(max(self.lease_ttl, 1.0) * 1000)}"))

    def _migrate(self, conn: Any) -> None:
        encoding = conn.execute("SHOW server_encoding").fetchone()[0]
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise PersistenceError(f"{self.location}: database encoding is {encoding}; hoard needs UTF8 "
                                   "(context ids and keys are any Unicode)")
        s = f'"{self.schema}"'
        with conn.transaction():
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
            if current == SCHEMA_VERSION and not tables >= _TABLES:
                raise CorruptStateError(f"{self.location}: hoard store missing tables {sorted(_TABLES - tables)}",
                                        what="store")
            for number in range(current + 1, SCHEMA_VERSION + 1):
                log.info("%s: migrating store schema to version %d", self.location, number)
                for stmt in _MIGRATIONS[number - 1]:
                    conn.execute(stmt.format(s=s))
                conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES (%s)", (number,))  # noqa: S608
            # per-context TTLs (SetTTL) came after schema version 1: the column is added on open, as
            # SQLiteStore adds it, only when missing (ALTER TABLE would lock out the other writers)
            if conn.execute(self._sql["has_ttl"], {"t": f"{s}.contexts"}).fetchone() is None:
                conn.execute(self._sql["add_ttl"])

    def close(self) -> None:
        """Release every lease still held (best effort), return the connection, stop the pool.
        Idempotent; blocks up to a few seconds for the pool's thread."""
        if self._pool is None:
            return
        held, self._leases = self._leases, {}
        try:
            for cid, token in held.items():
                self._release(cid, token)
        except PersistenceError as exc:
            log.warning("%s: could not release leases at close (they expire by themselves): %s", self.location, exc)
        self._drop_connection()
        pool, self._pool = self._pool, None
        with contextlib.suppress(Exception):  # closing must not fail: the pool only holds sockets
            pool.close(timeout=2.0)

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the connection in use (None if none): for diagnostics."""
        return None if self._db is None or self._db.closed else int(self._db.info.backend_pid)

    # -- connections and errors ----------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._pool is None:
            raise PersistenceError(f"store {self.location} is not open")
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
        if not ops:
            return
        touched: dict[str, list[str]] = {}
        for op in ops:
            kinds = touched.setdefault(_context_of(op), [])
            if _KIND[type(op)] not in kinds:
                kinds.append(_KIND[type(op)])
        ids = sorted(touched)
        for cid in ids:
            validate_id(cid)  # as SQLiteStore: and PostgreSQL text cannot hold NUL or lone surrogates
        first = _context_of(ops[0])
        encoded = self._encode_all(ops, first)
        notice = {"ch": CHANNEL, "schema": self.schema, "owner": self.owner_id, "ids": ids,
                  "ops": [",".join(touched[cid]) for cid in ids]} if self.notify else None
        for attempt in (0, 1):
            conn = self._connection()
            stage, xid = "begin", None
            sent: dict[str, Any] = {}
            try:
                xid = self._write(conn, ops, encoded, ids, notice=notice, sent=sent)
                stage = "commit"
                self._finish(conn)
                return
            except psycopg.Error as exc:
                if stage == "begin" and _began(sent.get("begin")):
                    stage = "write"  # lost after the transaction began: something of it may have run
                if not self._lost(conn):
                    self._rollback(conn)
                    raise self._translate(exc, "commit", first) from exc
                self._drop_connection()
                if stage == "begin" and attempt == 0:
                    # dead before anything was sent (killed while idle, server restarted): retry
                    log.warning("%s: connection found dead at commit (%s); retrying on a new one", self.location, exc)
                    continue
                if stage == "commit" and xid is not None and self._committed_anyway(xid, exc, first):
                    return
                raise self._translate(exc, "commit", first) from exc
            except UnicodeError as exc:  # a str psycopg cannot send (a label with a lone surrogate)
                self._rollback(conn)
                raise PersistenceError(f"{self.location}: commit failed: {exc}; nothing was written",
                                       context_id=first) from exc
            except BaseException:
                self._rollback(conn)
                raise

    def _write(self, conn: Any, ops: Sequence[Op], encoded: list[bytes | None], ids: list[str], *,
               notice: dict[str, Any] | None, sent: dict[str, Any]) -> int:
        """Everything of a commit up to COMMIT; returns the transaction id. ``sent["begin"]`` is the
        cursor of its BEGIN (`_began` tells from it whether the transaction started on the server).

        The common batch (appends only) is one pipeline: BEGIN, the fence, the appends and NOTIFY in
        one round trip, all checked before COMMIT, the second; nothing is visible to anyone before
        COMMIT, and a refused check rolls everything back. Other batches check the fence before
        writing anything."""
        only_appends = all(isinstance(op, Append) for op in ops)
        with conn.pipeline():
            sent["begin"] = conn.execute("BEGIN")
            fence = conn.execute(self._sql["fence"], {"ids": ids})
            if only_appends:
                appended = self._send_appends(conn, ops, encoded)  # type: ignore[arg-type]
                if notice is not None:
                    conn.execute(self._sql["notify"], notice)
        xid = self._check_fence(fence.fetchall())
        if only_appends:
            self._check_appends(conn, appended, ops)  # type: ignore[arg-type]
        else:
            self._apply_all(conn, ops, encoded)
            if notice is not None:
                conn.execute(self._sql["notify"], notice)
        return xid

    def _finish(self, conn: Any) -> None:
        """Send COMMIT (a seam of its own: the fault tests break the connection exactly here)."""
        conn.execute("COMMIT")

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

    def _fence(self, conn: Any, ids: list[str]) -> int:
        """Lock and check the lease rows of `ids`; return the transaction id."""
        return self._check_fence(conn.execute(self._sql["fence"], {"ids": ids}).fetchall())

    def _check_fence(self, rows: list[tuple[Any, ...]]) -> int:
        """Check the lease rows the fence statement locked (see `_FENCE`); return the transaction id.
        Raises `FencedOffError` (the caller rolls back) if this store may not write one of them."""
        for cid, owner, token, live, _xid in rows:
            mine = self._leases.get(cid)
            if mine is not None:
                if token != mine:
                    raise FencedOffError(cid, token=mine, current_token=token, owner=owner)
            elif live or self.require_lease:
                raise FencedOffError(cid, token=None, current_token=token, owner=owner or None)
        return int(rows[0][4])

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
        """Consecutive appends in one pipelined round trip, each still version-checked."""
        self._check_appends(conn, self._send_appends(conn, appends, blobs), appends)

    def _send_appends(self, conn: Any, appends: Sequence[Append], blobs: Sequence[bytes | None]) -> Any:
        """Send the appends (pipelined); their results are read by `_check_appends`."""
        cur = conn.cursor()
        cur.executemany(self._sql["append"], [
            {"id": op.context_id, "v": op.change.version, "prev": op.change.version - 1, "at": op.change.at,
             "blob": blob} for op, blob in zip(appends, blobs, strict=True)], returning=True)
        return cur

    def _check_appends(self, conn: Any, cur: Any, appends: Sequence[Append]) -> None:
        """Each append of `cur` must have inserted its journal row: its version check held."""
        for op in appends:
            if cur.fetchone() is None:
                raise PersistenceError(self._version_problem(conn, op.context_id, op.change.version),
                                       context_id=op.context_id)
            cur.nextset()

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
            conn.execute(sql["snapshot_trim"], {"id": st.id})
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

    def _version_problem(self, conn: Any, context_id: str, version: int) -> str:
        row = conn.execute(self._sql["version"], {"id": context_id}).fetchone()
        if row is None:
            return f"journal entry for {context_id!r}, which is not in the store"
        return f"journal entry {version} for {context_id!r} does not follow stored version {row[0]}"

    # -- leases --------------------------------------------------------------------------------------
    def _ttl(self, ttl: float | None) -> float:
        ttl = self.lease_ttl if ttl is None else float(ttl)
        if not ttl > 0:
            raise ConfigError(f"a lease ttl must be positive, not {ttl!r}")
        return ttl

    def _lease_args(self, context_id: str, **extra: Any) -> dict[str, Any]:
        return {"id": context_id, "owner": self.owner_id, "ch": CHANNEL, "schema": self.schema, **extra}

    def acquire_lease(self, context_id: str, ttl: float | None = None) -> int:
        """Take (or renew) ownership of `context_id` for `ttl` seconds (default `lease_ttl`) and
        return the fencing token; from now on this store's writes to it carry that token.

        Runs in the caller's thread, one autocommit statement (two when owned elsewhere); never waits
        for the owner. The lease is taken when it is free, released, expired by the database clock, or
        held by an earlier incarnation of this `owner_id`; each such acquisition increments the token,
        so it is strictly increasing per context. If this store holds the lease already it is renewed
        and the same token returned.

        Raises:
            ContextOwnedElsewhereError: another owner holds a live lease (`owner`, `expires_in`).
            PersistenceError: the server could not be asked.
        """
        validate_id(context_id)
        ttl = self._ttl(ttl)
        mine = self._leases.get(context_id)
        if mine is not None:
            renewed = self._run("renew lease", lambda c: c.execute(
                self._sql["renew"], self._lease_args(context_id, token=mine, ttl=ttl)).fetchone(), context_id)
            if renewed is not None:
                return mine
            del self._leases[context_id]  # taken over meanwhile: try to take it back like anyone else
        for _ in range(3):
            row = self._run("acquire lease", lambda c: c.execute(
                self._sql["acquire"], self._lease_args(context_id, ttl=ttl)).fetchone(), context_id,
                idempotent=False)
            if row is not None:
                self._leases[context_id] = token = int(row[0])
                log.debug("%s: lease on %r acquired, token %d", self.location, context_id, token)
                return token
            holder = self._run("read lease", lambda c: c.execute(
                self._sql["holder"], {"id": context_id}).fetchone(), context_id)
            if holder is not None and holder[2]:
                raise ContextOwnedElsewhereError(context_id, holder[0], expires_in=max(0.0, float(holder[3])))
            # released or expired between the two statements: try again
        raise ContextOwnedElsewhereError(context_id, "another owner (the lease changed hands repeatedly)")

    def renew_lease(self, context_id: str, token: int, ttl: float | None = None) -> None:
        """Extend the lease with `token` on `context_id` to `ttl` seconds from now (database clock).

        Runs in the caller's thread; one statement. A lease that expired but was not taken over is
        renewed too (nobody wrote meanwhile).

        Raises:
            FencedOffError: another owner took it over; this store forgets the token.
            PersistenceError: the server could not be asked.
        """
        ttl = self._ttl(ttl)
        row = self._run("renew lease", lambda c: c.execute(
            self._sql["renew"], self._lease_args(context_id, token=token, ttl=ttl)).fetchone(), context_id)
        if row is not None:
            self._leases[context_id] = token
            return
        if self._leases.get(context_id) == token:
            del self._leases[context_id]
        holder = self._run("read lease", lambda c: c.execute(
            self._sql["holder"], {"id": context_id}).fetchone(), context_id)
        raise FencedOffError(context_id, token=token, current_token=None if holder is None else int(holder[1]),
                             owner=None if holder is None else holder[0])

    def renew_leases(self, ttl: float | None = None) -> list[str]:
        """Renew every lease this store holds, in one statement; return (sorted) the ids of those that
        were taken over meanwhile, which this store forgets: drop those contexts without writing.

        Runs in the caller's thread (meant for a periodic timer, every ``lease_ttl / 3``).
        Raises `PersistenceError` if the server could not be asked (the leases then keep running
        until their expiry).
        """
        ttl = self._ttl(ttl)
        if not self._leases:
            return []
        held = dict(self._leases)
        rows = self._run("renew leases", lambda c: c.execute(self._sql["renew_all"], {
            "ttl": ttl, "owner": self.owner_id, "ids": list(held), "tokens": list(held.values())}).fetchall())
        lost = sorted(set(held) - {r[0] for r in rows})
        for cid in lost:
            if self._leases.get(cid) == held[cid]:
                del self._leases[cid]
        if lost:
            log.warning("%s: leases taken over by other owners: %s", self.location, lost)
        return lost

    def release_lease(self, context_id: str, token: int) -> bool:
        """Give up the lease with `token` on `context_id` now, so that another owner can take it at
        once. Returns False if it had been taken over already (nothing to release).

        Runs in the caller's thread; one statement. Call it after the context's last write (its
        final snapshot): a write after it is no longer fenced by this lease.
        """
        if self._leases.get(context_id) == token:
            del self._leases[context_id]
        return self._release(context_id, token)

    def _release(self, context_id: str, token: int) -> bool:
        def run(conn: Any) -> bool:
            return conn.execute(self._sql["release"], self._lease_args(context_id, token=token)).fetchone() is not None
        return self._run("release lease", run, context_id, idempotent=False)

    def lease_token(self, context_id: str) -> int | None:
        """The fencing token this store holds for `context_id`, or None. No I/O."""
        return self._leases.get(context_id)

    # -- notices -------------------------------------------------------------------------------------
    def listen(self) -> ChangeListener:
        """A `ChangeListener` for this store's schema, on a connection of its own (opened lazily).

        Independent of this store's connection: it may be used by another thread than the store's
        owner. Close it when done (it is a context manager).
        """
        return ChangeListener(self.dsn, self.schema, connect_timeout=self.connect_timeout)

    # -- reads ---------------------------------------------------------------------------------------
    def load(self, context_id: str) -> ContextState | None:
        """The newest state of a context (None if it does not exist), as `SQLiteStore.load`.

        Strict: `CorruptStateError` naming the context and the row if anything fails verification.
        Fallback: rebuilds what it can and repairs the store (see `_load_fallback`);
        `last_recovery_report` tells what was skipped (None if nothing was).

        The strict read is one statement: the snapshot, the journal after it and the acknowledged
        version come from one consistent view even while others write. Runs in the caller's thread;
        retried once on a new connection if the old one was dead.
        """
        validate_id(context_id)
        self.last_recovery_report = None
        try:
            return self._run("load", lambda c: self._load(c, context_id), context_id)
        except CorruptStateError as exc:
            if exc.what == "store":
                raise
            if self.recovery != "fallback":
                if _FALLBACK_HINT in str(exc):
                    raise
                raise CorruptStateError(f"{exc}; {_FALLBACK_HINT}", context_id=context_id, what=exc.what) from exc
            first = exc
        return self._run("load", lambda c: self._load_fallback(c, context_id, first), context_id, idempotent=False)

    def _load(self, conn: Any, context_id: str) -> ContextState | None:
        rows = sorted(conn.execute(self._sql["load"], {"id": context_id}, binary=True).fetchall(),
                      key=lambda r: (r[0], r[1]))
        if not rows or rows[0][0] != 0:
            return None
        snaps = [(r[1], r[2]) for r in rows if r[0] == 1]
        journal = ((version, blob) for kind, version, blob in rows if kind == 2)
        return replay_strict(self.codec, context_id, rows[0][1], snaps[0] if snaps else None, journal)

    def _decode_state(self, blob: bytes, context_id: str, what: str, version: int) -> ContextState:
        return decode_state_row(self.codec, blob, context_id, what, version)

    def _decode_change(self, blob: bytes, context_id: str, what: str, version: int) -> Change:
        return decode_change_row(self.codec, blob, context_id, what, version)

    def info(self, context_id: str) -> StoredContext | None:
        """Stored facts without decoding (see `Store.info`); one statement, caller's thread."""
        validate_id(context_id)
        row = self._run("info", lambda c: c.execute(self._sql["info"], {"id": context_id}).fetchone(), context_id)
        if row is None:
            return None
        cid, ver, created, updated, next_rp, snap_v, jn, rps, size = row
        return StoredContext(cid, ver, created, updated, snap_v or 0, jn, next_rp, rps, size)

    def list_ids(self, prefix: str = "") -> list[str]:
        """Stored ids starting with `prefix` (taken literally), in code point order: the ids are
        ``COLLATE "C"``, which orders UTF-8 as Python orders str. One statement, caller's thread."""
        if "\x00" in prefix:
            return []  # no stored id holds NUL (validate_id refuses it; PostgreSQL text cannot hold it)
        try:
            prefix.encode("utf-8")
        except UnicodeEncodeError:
            return []  # nor a lone surrogate
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

    def recovery_points(self, context_id: str) -> list[RecoveryPoint]:
        """The context's recovery points, oldest first, each verified; caller's thread. A damaged one
        raises `CorruptStateError` (strict) or is left out with a WARNING (fallback)."""
        validate_id(context_id)
        rows = self._run("list recovery points", lambda c: c.execute(
            self._sql["rps"], {"id": context_id}, binary=True).fetchall(), context_id)
        out = []
        for r in rows:
            try:
                out.append(self._rp(context_id, r))
            except CorruptStateError as exc:
                if self.recovery != "fallback":
                    raise
                log.warning("recovery point %d of %r skipped: %s", r[0], context_id, exc)
        return out

    def recovery_point(self, context_id: str, rp_id: int) -> RecoveryPoint | None:
        """One recovery point, verified, or None; caller's thread."""
        validate_id(context_id)
        r = self._run("read recovery point", lambda c: c.execute(
            self._sql["rp"], {"id": context_id, "rp": rp_id}, binary=True).fetchone(), context_id)
        return None if r is None else self._rp(context_id, r)

    def _rp(self, context_id: str, row: tuple[Any, ...]) -> RecoveryPoint:
        """A recovery point from its row ``(rp_id, version, label, created_at, blob)``, verified."""
        rp_id, version, label, created_at, blob = row
        state = self._decode_state(blob, context_id, f"recovery point {rp_id} of {context_id!r}", version)
        return RecoveryPoint(rp_id, context_id, version, label, created_at, state)

    # -- fallback recovery (the same rules as SQLiteStore's; see its module docstring) ---------------------
    def _read_stored(self, conn: Any, context_id: str) -> _Stored | None:
        """Every row of one context, from one statement, each decoded on its own (damage recorded)."""
        rows = conn.execute(self._sql["stored"], {"id": context_id}, binary=True).fetchall()
        head = [r for r in rows if r[0] == 0]
        if not head:
            return None

        def decode(fn: Callable[..., Any], blob: bytes, what: str, version: int) -> tuple[Any, str | None]:
            try:
                return fn(blob, context_id, what, version), None
            except CorruptStateError as exc:
                return None, _problem(exc)

        snaps, journal, rps = [], {}, []
        for kind, version, n, label, created_at, blob in sorted(rows, key=lambda r: (r[0], r[2] or 0, r[1])):
            if kind == 1:
                st, problem = decode(self._decode_state, blob, f"snapshot v{version} of {context_id!r}", version)
                snaps.append(_Row(version, st, problem))
            elif kind == 2:
                ch, problem = decode(self._decode_change, blob, f"journal entry v{version} of {context_id!r}", version)
                journal[version] = _Row(version, ch, problem)
            elif kind == 3:
                st, problem = decode(self._decode_state, blob, f"recovery point {n} of {context_id!r}", version)
                rps.append(_Row(version, st, problem, n, label, created_at))
        return _Stored(context_id, head[0][1], head[0][2], snaps, journal, rps)

    @staticmethod
    def _rebuild(stored: _Stored, wanted: set[int]) -> tuple[ContextState | None, str, dict[int, ContextState]]:
        # the same pure function as SQLite's (no I/O): one rule for both stores
        return SQLiteStore._rebuild(stored, wanted)  # noqa: SLF001 - shared with the sibling store

    def _repair_lease(self, conn: Any, context_id: str) -> bool:
        """Inside a repair transaction: may this store write `context_id` now? Locks its lease row like
        a commit; False (nothing is written) when another owner holds a live lease, or when this store
        requires leases and holds none (a read of an inactive context: its next owner repairs it)."""
        try:
            self._fence(conn, [context_id])
        except FencedOffError as exc:
            log.warning("%s: not repairing %r now: %s", self.location, context_id, exc)
            return False
        return True

    def _load_fallback(self, conn: Any, context_id: str, first: CorruptStateError) -> ContextState:
        """`load` in fallback mode after the strict read failed with `first`. Rebuilds the newest state
        from the newest valid snapshot or recovery point plus the contiguous valid journal after it,
        and repairs the store in one transaction (see `SQLiteStore`): nothing lost -> damaged rows
        rewritten from the rebuild or quarantined; changes lost -> the context continues at a new
        version, one past the acknowledged one, from one fresh snapshot. The repair is fenced like a
        commit and skipped (``repaired=False``) when the lease says this store may not write, or when
        another process changed the context meanwhile."""
        stored = self._read_stored(conn, context_id)
        if stored is None:  # deleted by another process meanwhile
            raise first
        top = stored.version
        bad_snaps = [r for r in stored.snapshots if r.problem is not None]
        best, base, found = self._rebuild(stored, {top} | {r.version for r in bad_snaps})
        if best is None:
            problems = "; ".join(_row_name(r, "snapshot") + ": " + str(r.problem)
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
        try:
            with conn.transaction():
                repaired = self._repair_lease(conn, context_id)
                if repaired:
                    row = conn.execute(self._sql["lock_context"], {"id": context_id}).fetchone()
                    if row is None or row[0] != top:
                        log.warning("%s: %r changed while it was being recovered; not repairing", self.location,
                                    context_id)
                        repaired = False
                    else:
                        self._ensure_quarantine(conn)
                        self._repair_after_fallback(conn, stored, state, found, lost)
        finally:
            self._quarantine_pending = False
        report = RecoveryReport(context_id, top, best.version, state.version, base, tuple(skipped), lost, repaired)
        self.last_recovery_report = report
        self.recovery_reports.append(report)
        log.warning("fallback recovery: %s (first failure: %s)", report.describe(), first)
        return state

    def _has_quarantine(self, conn: Any) -> bool:
        if self._quarantine_seen:
            return True
        found = bool(conn.execute(self._sql["has_quarantine"], {"t": f'"{self.schema}".quarantine'}).fetchone()[0])
        # remember it only once committed: a table this store's open repair made may yet be rolled back
        self._quarantine_seen = found and not self._quarantine_pending
        return found

    def _ensure_quarantine(self, conn: Any) -> None:
        """Inside a repair transaction (which may then write): create the quarantine table if missing.
        Serialized with other openers' migrations by their advisory lock; the caller resets
        `_quarantine_pending` when its transaction ends."""
        if self._has_quarantine(conn):
            return
        self._quarantine_pending = True
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (self._advisory_key(),))
        for stmt in _QUARANTINE_TABLE:
            conn.execute(stmt.format(s=f'"{self.schema}"'))

    def _quarantine(self, conn: Any, context_id: str, source: str, version: int | None,  # noqa: PLR0917 - as SQLiteStore._quarantine
                    problem: str, rp_id: int | None = None) -> None:
        """Move one row to the quarantine table (see `_ensure_quarantine`), in the caller's transaction."""
        conn.execute(self._sql[f"quarantine_{source}"], {
            "id": context_id, "source": source, "v": version, "rp": rp_id, "problem": problem, "at": time.time(),
            "k": rp_id if source == "recovery_point" else version})

    def _advisory_key(self) -> int:
        return 0x686F617264 << 24 | zlib.crc32(self.schema.encode()) & 0xFFFFFF

    def _repair_after_fallback(self, conn: Any, stored: _Stored, state: ContextState,
                               found: dict[int, ContextState], lost: tuple[int, ...]) -> None:
        cid, sql = stored.id, self._sql
        for r in stored.rps:
            if r.problem is not None:
                self._quarantine(conn, cid, "recovery_point", r.version, r.problem, r.rp_id)
        if lost:
            # start over from one snapshot of the new version; unusable rows go to quarantine
            for r in stored.snapshots:
                if r.problem is not None:
                    self._quarantine(conn, cid, "snapshot", r.version, r.problem)
            for v, r in stored.journal.items():
                if r.problem is not None:
                    self._quarantine(conn, cid, "journal", v, r.problem)
                elif v > lost[0]:
                    self._quarantine(conn, cid, "journal", v, f"follows the unrecoverable v{lost[0]}")
            conn.execute(sql["snapshot_delete_all"], {"id": cid})
            conn.execute(sql["journal_delete_all"], {"id": cid})
            conn.execute(sql["snapshot"], {"id": cid, "v": state.version, "blob": self.codec.encode_state(state)})
            conn.execute(sql["set_version"], {"id": cid, "v": state.version, "u": state.updated_at})
            return
        # nothing lost: rewrite what the rebuild reproduced, set the rest aside
        for r in stored.snapshots:
            if r.problem is None:
                continue
            rebuilt = found.get(r.version)
            if rebuilt is not None:
                conn.execute(sql["snapshot_blob"], {"id": cid, "v": r.version,
                                                    "blob": self.codec.encode_state(rebuilt)})
            else:
                self._quarantine(conn, cid, "snapshot", r.version, r.problem)
        self._normalize(conn, cid, state)

    def _normalize(self, conn: Any, cid: str, state: ContextState) -> None:
        """Make the rows of a context loadable by the strict path: its newest snapshot + a contiguous
        valid journal to its acknowledged version (`state`, already rebuilt). Writes a snapshot of
        `state` if the newest one cannot reach it; drops journal entries no kept snapshot needs."""
        sql = self._sql
        stored = self._read_stored(conn, cid)
        assert stored is not None
        good = [r for r in stored.snapshots if r.problem is None and r.version <= stored.version]
        newest = good[-1].version if good else None

        def chain(lo: int, hi: int) -> bool:
            return all(stored.good_journal(v) is not None for v in range(lo + 1, hi + 1))

        if newest is None or not chain(newest, stored.version):
            conn.execute(sql["snapshot"], {"id": cid, "v": state.version, "blob": self.codec.encode_state(state)})
            good.append(_Row(state.version, state))
            newest = state.version
        keep = {newest}
        older = [r.version for r in good if r.version < newest]
        if older and chain(older[-1], newest):
            keep.add(older[-1])
        for r in stored.snapshots:
            if r.version not in keep:
                if r.problem is None and r.version <= stored.version:
                    conn.execute(sql["snapshot_delete"], {"id": cid, "v": r.version})
                else:  # damaged, or beyond the acknowledged version: keep it aside, never silently drop it
                    self._quarantine(conn, cid, "snapshot", r.version,
                                     r.problem or f"beyond the acknowledged v{stored.version}")
        low = min(keep)
        for v, r in stored.journal.items():
            if low < v <= stored.version:
                continue
            if r.problem is None and v <= low:
                conn.execute(sql["journal_delete"], {"id": cid, "v": v})
            else:
                self._quarantine(conn, cid, "journal", v, r.problem or f"beyond the acknowledged v{stored.version}")

    # -- verification --------------------------------------------------------------------------------
    def verify(self, fix: bool = False) -> list[VerifyIssue]:
        """Check the whole store and return every inconsistency found (empty: all is well), with the
        same checks, `what` kinds and problem texts as `SQLiteStore.verify` (less SQLite's own
        integrity check): per context, every snapshot, journal entry and recovery point decodes and
        verifies; there is a snapshot; the journal is contiguous from the older kept snapshot to the
        acknowledged version; the newest snapshot plus the journal rebuilds it; an older snapshot plus
        the journal reproduces the newer one; recovery point ids are below the next id. Finally rows of
        contexts that do not exist (orphans). Lease rows are not orphans: they outlive their context so
        that fencing tokens keep growing.

        With `fix`, each context's repairs are one transaction, fenced like a commit: a context another
        owner holds a live lease on (or, with ``require_lease``, one this store holds no lease on) is
        reported and left alone. The repairs are SQLite's: nothing that would lose an acknowledged
        change is touched. Runs in the caller's thread; reads every row.
        """
        def run(conn: Any) -> list[VerifyIssue]:
            issues: list[VerifyIssue] = []
            for (cid,) in conn.execute(self._sql["list"], {"p": ""}).fetchall():
                issues += self._verify_context(conn, cid, fix)
            tables = ["snapshots", "journal", "recovery_points"]
            if self._has_quarantine(conn):
                tables.append("quarantine")
            for table in tables:
                for (cid,) in conn.execute(self._sql[f"orphans_{table}"]).fetchall():
                    if fix:
                        conn.execute(self._sql[f"fix_{table}"], {"id": cid})
                    issues.append(VerifyIssue(cid, _ROW_KIND[table], f"orphan rows in {table}: the context "
                                              "does not exist", fixed=fix))
            return issues
        return self._run("verify", run, idempotent=not fix)

    def _verify_context(self, conn: Any, cid: str, fix: bool) -> list[VerifyIssue]:  # noqa: PLR0912, PLR0915 - one check per kind of inconsistency, read top to bottom
        stored = self._read_stored(conn, cid)
        if stored is None:  # deleted by another process meanwhile
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
            st: ContextState | None = good_snaps[-1].state
            v = newest
            while v < top and st is not None:
                change = stored.good_journal(v + 1)
                st = apply_change(st, change) if change is not None else None
                v += 1
            if st is None:
                unrecoverable = (f"unrecoverable: snapshot v{newest} plus the journal cannot rebuild the "
                                 f"acknowledged v{top}")
                journal_issues = [i for i, f in enumerate(found_issues) if f[0] == "journal"]
                if journal_issues:
                    # the consequence of a journal problem reported already: said in that issue, so that
                    # one damaged row is one issue (SQLiteStore reports it as an issue of its own)
                    what, problem, fixable = found_issues[journal_issues[-1]]
                    found_issues[journal_issues[-1]] = (what, f"{problem}; {unrecoverable}", fixable)
                else:
                    issue("journal", unrecoverable, reachable)
            for older, newer in itertools.pairwise(good_snaps):  # an older snapshot + journal = the newer one
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
            try:
                with conn.transaction():
                    fixed = self._fix_context(conn, stored, best=best if reachable else None, found=found,
                                              bad_snaps=bad_snaps, bad_rps=bad_rps, max_rp=max_rp)
            finally:
                self._quarantine_pending = False
        return [VerifyIssue(cid, what, problem, fixed=fixed and fixable) for what, problem, fixable in found_issues]

    def _fix_context(self, conn: Any, stored: _Stored, *, best: ContextState | None, found: dict[int, ContextState],
                     bad_snaps: list[_Row], bad_rps: list[_Row], max_rp: int) -> bool:
        """`verify(fix=True)`'s repairs of one context (SQLite's), inside the caller's transaction:
        `best` is the rebuilt acknowledged state (None if it cannot be rebuilt). Returns False, writing
        nothing, when this store may not write the context now or it changed since it was read."""
        cid, sql = stored.id, self._sql
        row = conn.execute(sql["lock_context"], {"id": cid}).fetchone() if self._repair_lease(conn, cid) else None
        if row is None or row[0] != stored.version:
            return False
        self._ensure_quarantine(conn)
        if max_rp >= stored.next_rp_id:
            conn.execute(sql["set_next_rp"], {"id": cid, "n": max_rp + 1})
        for r in bad_rps:
            rebuilt = found.get(r.version)
            if rebuilt is not None:
                conn.execute(sql["rp_blob"], {"id": cid, "rp": r.rp_id, "blob": self.codec.encode_state(rebuilt)})
        if best is not None:
            for r in bad_snaps:
                rebuilt = found.get(r.version)
                if rebuilt is not None:
                    conn.execute(sql["snapshot_blob"], {"id": cid, "v": r.version,
                                                        "blob": self.codec.encode_state(rebuilt)})
            self._normalize(conn, cid, best)
        return True


# the rest of the statements; every "{s}" is the quoted schema
_SQL: dict[str, str] = {
    "fence": _FENCE, "append": _APPEND, "create": _CREATE, "snapshot_trim": _SNAPSHOT_TRIM,
    "rp_insert": _RP_INSERT, "rp_trim": _RP_TRIM, "delete": _DELETE, "notify": _NOTIFY, "load": _LOAD,
    "info": _INFO, "acquire": _ACQUIRE, "renew": _RENEW, "renew_all": _RENEW_ALL, "release": _RELEASE,
    "holder": _HOLDER,
    "lock_context": "SELECT version FROM {s}.contexts WHERE id = %(id)s FOR UPDATE",
    "version": "SELECT version FROM {s}.contexts WHERE id = %(id)s",
    "next_rp": "SELECT next_rp_id FROM {s}.contexts WHERE id = %(id)s",
    "checkpoint": "WITH v AS (UPDATE {s}.contexts SET version = %(v)s, updated_at = %(u)s WHERE id = %(id)s), "
                  "d AS (DELETE FROM {s}.snapshots WHERE context_id = %(id)s) "
                  "DELETE FROM {s}.journal WHERE context_id = %(id)s",
    "snapshot": "INSERT INTO {s}.snapshots (context_id, version, blob) VALUES (%(id)s, %(v)s, %(blob)s) "
                "ON CONFLICT (context_id, version) DO UPDATE SET blob = EXCLUDED.blob",
    "rp_delete": "DELETE FROM {s}.recovery_points WHERE context_id = %(id)s AND rp_id = %(rp)s",
    # starts_with keeps '%' and '_' in ids literal; the range condition lets the primary key help
    "list": "SELECT id FROM {s}.contexts WHERE id >= %(p)s AND starts_with(id, %(p)s) ORDER BY id",
    "count": "SELECT count(*) FROM {s}.contexts",
    "rps": "SELECT rp_id, version, label, created_at, blob FROM {s}.recovery_points WHERE context_id = %(id)s "
           "ORDER BY rp_id",
    "rp": "SELECT rp_id, version, label, created_at, blob FROM {s}.recovery_points "
          "WHERE context_id = %(id)s AND rp_id = %(rp)s",
    "rp_blobs": "SELECT rp_id, version, blob FROM {s}.recovery_points WHERE context_id = %(id)s ORDER BY rp_id",
    **{f"orphans_{t}": f"SELECT DISTINCT context_id FROM {{s}}.{t} t "  # noqa: S608 - fixed names
                       "WHERE NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = t.context_id)"
       for t in ("snapshots", "journal", "recovery_points")},
    **{f"fix_{t}": f"DELETE FROM {{s}}.{t} WHERE context_id = %(id)s "  # noqa: S608 - fixed names
                   "AND NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = %(id)s)"
       for t in ("snapshots", "journal", "recovery_points", "quarantine")},
    "orphans_quarantine": "SELECT DISTINCT context_id FROM {s}.quarantine t "
                          "WHERE NOT EXISTS (SELECT 1 FROM {s}.contexts c WHERE c.id = t.context_id)",
    "stored": _STORED,
    "set_ttl": "UPDATE {s}.contexts SET ttl = %(ttl)s WHERE id = %(id)s RETURNING id",
    "expired": "SELECT id FROM {s}.contexts WHERE updated_at + coalesce(ttl, %(d)s::float8) < %(now)s::float8 "
               "ORDER BY updated_at LIMIT %(limit)s",
    "has_ttl": "SELECT 1 FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attname = 'ttl' AND NOT attisdropped",
    "add_ttl": "ALTER TABLE {s}.contexts ADD COLUMN IF NOT EXISTS ttl double precision",
    "has_quarantine": "SELECT to_regclass(%(t)s) IS NOT NULL",
    "quarantine_delete": "DELETE FROM {s}.quarantine WHERE context_id = %(id)s",
    "quarantine_snapshot": _QUARANTINE_ROW.replace("{table}", "snapshots").replace("{key}", "version"),
    "quarantine_journal": _QUARANTINE_ROW.replace("{table}", "journal").replace("{key}", "version"),
    "quarantine_recovery_point": _QUARANTINE_ROW.replace("{table}", "recovery_points").replace("{key}", "rp_id"),
    "snapshot_delete": "DELETE FROM {s}.snapshots WHERE context_id = %(id)s AND version = %(v)s",
    "snapshot_delete_all": "DELETE FROM {s}.snapshots WHERE context_id = %(id)s",
    "journal_delete": "DELETE FROM {s}.journal WHERE context_id = %(id)s AND version = %(v)s",
    "journal_delete_all": "DELETE FROM {s}.journal WHERE context_id = %(id)s",
    "snapshot_blob": "UPDATE {s}.snapshots SET blob = %(blob)s WHERE context_id = %(id)s AND version = %(v)s",
    "rp_blob": "UPDATE {s}.recovery_points SET blob = %(blob)s WHERE context_id = %(id)s AND rp_id = %(rp)s",
    "set_version": "UPDATE {s}.contexts SET version = %(v)s, updated_at = %(u)s WHERE id = %(id)s",
    "set_next_rp": "UPDATE {s}.contexts SET next_rp_id = %(n)s WHERE id = %(id)s",
}

_KIND: dict[type, str] = {
    CreateContext: "create", Append: "append", PutSnapshot: "snapshot", PutRecoveryPoint: "recovery_point",
    DeleteRecoveryPoint: "delete_recovery_point", DeleteContext: "delete", SetTTL: "ttl",
}
_RECOVERY = ("strict", "fallback")
_FALLBACK_HINT = FALLBACK_HINT
#: refusals of a server that is busy or changing state, not saying "no": worth waiting for
_TRANSIENT_REFUSALS = ("starting up", "shutting down", "recovery mode", "too many clients", "connection slots")

_ROW_KIND = {"snapshots": "snapshot", "journal": "journal", "recovery_points": "recovery_point",
             "quarantine": "quarantine"}


def _row_kind(what: str) -> str:
    """`VerifyIssue.what` for a `CorruptStateError` whose `what` may be a row label ("journal entry v3 of 'c'")."""
    for prefix, kind in (("snapshot", "snapshot"), ("journal", "journal"), ("recovery", "recovery_point")):
        if what.startswith(prefix):
            return kind
    return "context"


def _began(begin: Any) -> bool:
    """Whether the BEGIN of a pipelined commit completed on the server (None: never sent). A session
    found dead at the first result never began: its commit is safe to retry on a new connection."""
    result = None if begin is None else begin.pgresult
    return result is not None and result.status == psycopg.pq.ExecStatus.COMMAND_OK


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


def _context_of(op: Op) -> str:
    if isinstance(op, (PutSnapshot, CreateContext)):
        return op.state.id
    if isinstance(op, PutRecoveryPoint):
        return op.rp.context_id
    return op.context_id


class ChangeListener:
    """Receives the notices (``NOTIFY hoard_changes``) of one store schema, from every process.

    Has a connection of its own, opened on first use; a lost connection raises `PersistenceError`
    once (notices sent while disconnected are lost: re-read what you need) and is reopened on the
    next call. Notices are hints for subscribers, who read the store for the facts.

    Threading: one thread at a time (any thread, also not the store's owner); `wait` blocks up to its
    timeout, never longer. A context manager; `close()` is idempotent.
    """

    def __init__(self, dsn: str, schema: str, *, connect_timeout: float = 5.0) -> None:
        if psycopg is None:  # pragma: no cover - exercised only without the extra
            raise ConfigError("ChangeListener needs psycopg 3: pip install 'hoard[postgres]'")
        self.dsn = dsn
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._conn: Any = None

    def __enter__(self) -> ChangeListener:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect and LISTEN now (otherwise the first `wait` does). Notices committed after this
        returns are received. Raises `PersistenceError` if the server cannot be reached."""
        if self._conn is not None:
            return
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(2, round(self.connect_timeout)))
        except psycopg.Error as exc:
            raise PersistenceError(f"cannot connect to listen for {CHANNEL}: {exc}") from exc
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            conn.close()
            raise PersistenceError(f"cannot LISTEN {CHANNEL}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def wait(self, timeout: float) -> list[ChangeNotice]:
        """Block until at least one notice of this schema arrives or `timeout` seconds pass; return
        every notice received by then, in commit order (empty on timeout)."""
        self.open()
        conn = self._conn
        deadline = time.monotonic() + max(0.0, timeout)
        found: list[ChangeNotice] = []
        try:
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                for n in conn.notifies(timeout=remaining, stop_after=1):
                    found.extend(self._parse(n.payload, n.pid))
                if found:  # take whatever else has arrived, without waiting
                    for n in conn.notifies(timeout=0):
                        found.extend(self._parse(n.payload, n.pid))
                    return found
                if remaining <= 0:
                    return found
        except psycopg.Error as exc:
            self.close()
            raise PersistenceError(f"listening for {CHANNEL} failed, connection lost ({exc}); notices sent "
                                   "meanwhile are lost: re-read what you need") from exc

    def dispatch(self, callback: Callable[[ChangeNotice], object], timeout: float) -> int:
        """`wait` up to `timeout`, then call `callback` with each notice in order; return how many.
        A callback that raises stops the dispatch (the rest of the batch is dropped)."""
        notices = self.wait(timeout)
        for notice in notices:
            callback(notice)
        return len(notices)

    def _parse(self, payload: str, pid: int) -> Iterable[ChangeNotice]:
        try:
            obj = orjson.loads(payload)
            if obj.get("schema") != self.schema:
                return ()
            return (ChangeNotice(self.schema, str(obj["id"]), obj.get("v"), tuple(obj.get("ops") or ()),
                                 obj.get("owner"), int(pid)),)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            log.debug("ignoring a foreign notice on %s: %r (%s)", CHANNEL, payload[:80], exc)
            return ()
