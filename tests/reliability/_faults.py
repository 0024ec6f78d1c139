"""Fault injection into a real `SQLiteStore` (`Faults`) or `PostgresStore` (`PgFaults`), through the
stores' injection points: a test builds the store with the faults' codec and connection factory
(`codec=`, `connect=` / `connection_class=`), never by patching its private members.

Nothing of the store's own logic is replaced. SQLite: the connection factory wraps each sqlite3
connection in a `FaultyConnection`, which passes every statement to SQLite except the ones a test arms
it to fail (with the error SQLite itself raises for a failing disk); the codec's compressor
(`SwitchableCompressor`) can be made to fail as zstd does. "Disk full" is real: SQLite's
``max_page_count`` is lowered to the database's current size, so the next write that needs a page gets
SQLite's own SQLITE_FULL.

PostgreSQL: the faults happen in the server. Triggers on the store's tables (installed in the test's
schema by `attach`, armed and cleared from a connection of the test's own) make the server itself fail
the statement that writes a row (``disk_full``, SQLSTATE 53100), fail the COMMIT (a deferred constraint
trigger raising ``io_error``, 58030, at commit time: the transaction is aborted), or end the store's
own session at either point (``pg_terminate_backend(pg_backend_pid())``: the connection is lost mid-write
or while COMMIT is in flight, exactly as when a network or the server fails). The store's connection
class (`PgFaults.connection_class`) adds two client-side points: a hook run right after a COMMIT
returned, and failing the outcome lookup (by ``txid_status``, or, for a batch of appends sent with
its COMMIT, by its old session in ``pg_stat_activity`` and its journal row). The store sees what it
would see from a real failure, over its real connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import zstandard

from hoard.storage import Codec, PostgresStore


def _shape(sql: str) -> list[str]:
    words = sql.split()
    if len(words) >= 3 and [w.upper() for w in words[:3]] in (["INSERT", "OR", "REPLACE"], ["INSERT", "OR", "IGNORE"]):
        words = [words[0], *words[3:]]
    return [w.upper() for w in words]


class FaultyConnection:
    """Delegates to a real sqlite3 connection; fails the statements `fail_when` selects."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail_when: Callable[[str], bool] | None = None
        self.error: Exception = sqlite3.OperationalError("disk I/O error")
        self.remaining: int | None = None  # None: fail until cleared
        self.failures = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._check(sql)
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        """The store writes a batch of appends' rows with one executemany per table."""
        self._check(sql)
        return self._db.executemany(sql, rows)

    def _check(self, sql: str) -> None:
        if self.fail_when is not None and self.fail_when(sql) and self.remaining != 0:
            self.failures += 1
            if self.remaining is not None:
                self.remaining -= 1
            raise self.error

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def close(self) -> None:
        self._db.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class SwitchableCompressor:
    """A real zstd compressor that fails like zstd does when it runs out of memory while `fail` is set."""

    def __init__(self) -> None:
        self.fail = False
        self._real = zstandard.ZstdCompressor(level=3)

    def compress(self, data: bytes) -> bytes:
        if self.fail:
            raise zstandard.ZstdError("simulated: cannot allocate compression context")
        return self._real.compress(data)


def switchable_codec() -> tuple[Codec, SwitchableCompressor]:
    """A store's codec (default bounds) whose compression a test can make fail."""
    compressor = SwitchableCompressor()
    return Codec(max_bytes=65 * 2**20, compressor=compressor), compressor


class Faults:
    """Arms and clears faults on one SQLite store built with `codec` and `connect` (the store is then
    owned by a running system's persistence actor, or by the test)."""

    def __init__(self) -> None:
        self.codec, self.compressor = switchable_codec()
        self.conn: FaultyConnection | None = None
        self.real: sqlite3.Connection | None = None

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        """The store's connection factory: a real sqlite3 connection, wrapped."""
        self.real = sqlite3.connect(*args, **kwargs)
        self.conn = FaultyConnection(self.real)
        return self.conn

    def attach(self, store: Any) -> None:
        """Nothing to install: the store was built with this object's codec and connection factory."""
        assert self.conn is not None, "open the store before arming faults"

    def fail_sql(self, prefix: str, *, times: int | None = None, error: Exception | None = None) -> None:
        """Fail every statement that starts like `prefix` (`times` of them, or until cleared). "INSERT
        INTO t" also matches "INSERT OR REPLACE INTO t" (the statement's verb and table are what count)."""
        assert self.conn is not None
        self.conn.error = error or sqlite3.OperationalError("disk I/O error")
        self.conn.remaining = times
        want = _shape(prefix)
        self.conn.fail_when = lambda sql: _shape(sql)[: len(want)] == want

    def disk_full(self) -> None:
        assert self.real is not None
        pages = self.real.execute("PRAGMA page_count").fetchone()[0]
        self.real.execute(f"PRAGMA max_page_count={pages}")

    def fail_compress(self) -> None:
        self.compressor.fail = True

    def arm(self, kind: str) -> None:
        if kind == "write":  # the journal insert, after the version update in the same transaction
            self.fail_sql("INSERT INTO journal")
        elif kind == "sync":  # the commit itself (where SQLite writes and syncs the WAL)
            self.fail_sql("COMMIT")
        elif kind == "disk_full":
            self.disk_full()
        elif kind == "compress":
            self.fail_compress()
        else:
            raise ValueError(kind)

    def fail_insert(self, table: str) -> None:
        """Fail every statement that inserts into `table`."""
        self.fail_sql(f"INSERT INTO {table}")

    def fail_commits(self, every: int) -> None:
        """Fail every `every`-th COMMIT (after the statements before it succeeded)."""
        assert self.conn is not None
        real_execute = self.conn.execute
        calls = {"n": 0}

        def execute(sql: str, params: Any = ()) -> Any:
            if sql == "COMMIT":
                calls["n"] += 1
                if calls["n"] % every == 0:
                    raise self.conn.error
            return real_execute(sql, params)
        self.conn.execute = execute  # type: ignore[method-assign]
        self._restore_execute: Callable[..., Any] | None = real_execute

    def clear(self) -> None:
        self.compressor.fail = False
        if self.conn is None or self.real is None:
            return
        self.conn.fail_when = None
        restore = getattr(self, "_restore_execute", None)
        if restore is not None:
            self.conn.execute = restore  # type: ignore[method-assign]
            self._restore_execute = None
        with contextlib.suppress(sqlite3.ProgrammingError):  # closed already: nothing to reset
            self.real.execute("PRAGMA max_page_count=1073741823")


# -- PostgreSQL ---------------------------------------------------------------------------------------------
# A fault point is armed by a row of test_faults: the trigger of `point` fires `action` on every
# `every`-th row it sees (counted by a sequence: counts survive the rollback of the failed transaction).
# A commit-time point fires at most once per transaction (a transaction-local setting remembers it).
_PG_SETUP = """
CREATE TABLE IF NOT EXISTS {s}.test_faults (point text PRIMARY KEY, action text NOT NULL, every int NOT NULL);
CREATE SEQUENCE IF NOT EXISTS {s}.test_fault_seen;
CREATE SEQUENCE IF NOT EXISTS {s}.test_fault_fired;
CREATE OR REPLACE FUNCTION {s}.test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    f record;
BEGIN
    SELECT action, every INTO f FROM {s}.test_faults WHERE point = TG_ARGV[0];
    IF NOT FOUND THEN
        RETURN NEW;  -- a BEFORE trigger must return the row (AFTER ones: ignored)
    END IF;
    IF TG_ARGV[0] = 'commit' THEN
        IF current_setting('hoard_test.commit_seen', true) = 'yes' THEN
            RETURN NEW;
        END IF;
        PERFORM set_config('hoard_test.commit_seen', 'yes', true);
    END IF;
    IF nextval('{s}.test_fault_seen') % f.every <> 0 THEN
        RETURN NEW;
    END IF;
    PERFORM nextval('{s}.test_fault_fired');
    IF f.action = 'disconnect' THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(10);  -- ended by the signal before this returns
    ELSIF TG_ARGV[0] = 'commit' THEN
        RAISE EXCEPTION 'simulated: could not fsync file "pg_wal/000000010000000000000001"'
            USING ERRCODE = 'io_error';
    ELSE
        RAISE EXCEPTION 'simulated: could not extend file: No space left on device'
            USING ERRCODE = 'disk_full';
    END IF;
    RETURN NEW;
END $$;
"""
_PG_TABLES = ("journal", "snapshots", "recovery_points", "contexts")
# the autocommit statements that are a batch of appends with its commit: a batch, and a lone append (which
# goes through execute() because this connection class overrides it; see `PostgresStore._append_one`)
_ONE_STATEMENT_COMMITS = ("SELECT pg_temp.hoard_appends(", "SELECT pg_temp.hoard_append(")


class PgFaults:
    """Arms and clears server-side faults on the schema of one `PostgresStore` built with `codec` and
    `connection_class` (see the module docstring). `attach(store)` installs the triggers once the store
    has made its tables; `clear()` disarms everything."""

    def __init__(self, dsn: str, schema: str) -> None:
        import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

        self.dsn = dsn
        self.schema = f'"{schema}"'
        self.codec, self.compressor = switchable_codec()
        #: called with the connection right after a COMMIT returned (None: nothing)
        self.after_commit: Callable[[Any], None] | None = None
        #: fail the outcome lookup of a commit whose connection broke (either kind)
        self.fail_lookup = False
        self._admin: Any = None
        faults = self

        class FaultyPgConnection(psycopg.Connection):  # type: ignore[type-arg]
            """psycopg's connection with the two client-side fault points."""

            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                if faults.fail_lookup and isinstance(query, str) and (
                        "txid_status" in query or "pg_stat_activity" in query):
                    raise psycopg.OperationalError("simulated: the server cannot be reached for the lookup")
                cur = super().execute(query, params, **kwargs)
                # a COMMIT, or the one autocommit statement that is a batch of appends with its commit
                if faults.after_commit is not None and (
                        query == "COMMIT" or str(query).startswith(_ONE_STATEMENT_COMMITS)):
                    if self._pipeline is not None:
                        # queued in a pipeline (the store sends the feed rows with COMMIT): have the
                        # server run it before the fault, as a COMMIT outside a pipeline would have
                        self._pipeline.sync()
                    faults.after_commit(self)
                return cur

        self.connection_class = FaultyPgConnection

    def attach(self, store: PostgresStore) -> None:
        """Install the fault triggers on the tables `store` made (it is open)."""
        import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

        s = self.schema
        self._admin = psycopg.connect(self.dsn, autocommit=True)
        with self._admin.transaction():
            self._admin.execute(_PG_SETUP.format(s=s))
            for table in _PG_TABLES:
                if table != "contexts":
                    self._admin.execute(f"CREATE OR REPLACE TRIGGER test_fault_insert BEFORE INSERT ON {s}.{table} "
                                        f"FOR EACH ROW EXECUTE FUNCTION {s}.test_fault('insert_{table}')")
                self._admin.execute(f"DROP TRIGGER IF EXISTS test_fault_commit ON {s}.{table}")
                self._admin.execute(f"CREATE CONSTRAINT TRIGGER test_fault_commit AFTER INSERT OR UPDATE OR DELETE "
                                    f"ON {s}.{table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                                    f"EXECUTE FUNCTION {s}.test_fault('commit')")

    def end_session(self, conn: Any) -> None:
        """End the server session of `conn` (from the admin connection), as a failing network would."""
        self._admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    def _arm(self, point: str, action: str, every: int = 1) -> None:
        with self._admin.transaction():
            self._admin.execute(f"ALTER SEQUENCE {self.schema}.test_fault_seen RESTART")
            self._admin.execute(f"ALTER SEQUENCE {self.schema}.test_fault_fired RESTART")
            self._admin.execute(f"INSERT INTO {self.schema}.test_faults VALUES (%s, %s, %s) "  # noqa: S608 - our schema
                                "ON CONFLICT (point) DO UPDATE SET action = EXCLUDED.action, every = EXCLUDED.every",
                                (point, action, every))

    def fail_insert(self, table: str, *, disconnect: bool = False) -> None:
        """The server fails (or, with `disconnect`, ends the session at) every insert into `table`."""
        self._arm(f"insert_{table}", "disconnect" if disconnect else "error")

    def fail_commits(self, every: int = 1, *, disconnect: bool = False) -> None:
        """Every `every`-th COMMIT of a transaction that wrote a store table fails (or, with
        `disconnect`, loses its connection while COMMIT is in flight); the transaction is aborted."""
        self._arm("commit", "disconnect" if disconnect else "error", every)

    def fail_compress(self) -> None:
        self.compressor.fail = True

    @property
    def fired(self) -> int:
        """How many faults fired since the last arming."""
        row = self._admin.execute(
            f"SELECT last_value, is_called FROM {self.schema}.test_fault_fired").fetchone()  # noqa: S608 - our schema
        assert row is not None
        last, called = row
        return int(last) if called else 0

    def arm(self, kind: str) -> None:
        if kind == "write":  # the journal insert, after the version update in the same statement
            self.fail_insert("journal")
        elif kind == "sync":  # the COMMIT itself
            self.fail_commits()
        elif kind == "connection":  # the session ends in the middle of the transaction
            self.fail_insert("journal", disconnect=True)
        elif kind == "connection_at_commit":  # the session ends while COMMIT is in flight
            self.fail_commits(disconnect=True)
        elif kind == "compress":
            self.fail_compress()
        else:
            raise ValueError(kind)

    def clear(self) -> None:
        self.compressor.fail = False
        self.after_commit = None
        self.fail_lookup = False
        if self._admin is not None and not self._admin.closed:
            self._admin.execute(f"DELETE FROM {self.schema}.test_faults")  # noqa: S608 - our schema

    def close(self) -> None:
        """Clear the faults and close the admin connection (the triggers go with the schema)."""
        try:
            self.clear()
        finally:
            if self._admin is not None:
                self._admin.close()
