"""The PostgreSQL test server, shared by every test directory that needs it (tests/storage,
tests/distributed, tests/reliability): their conftests import these fixtures from here.

Tests that need the server take `pg_dsn` (or `pg_schema` / `make_pg_store` / `pg_url`). When no server
answers at 127.0.0.1:5432 they are skipped with the reason, except under ``CI=true``, where they fail:
CI has the server, and a silently skipped store is not a tested store. ``HOARD_TEST_PG_DSN`` overrides
the connection string. Each test gets a schema of its own, dropped with everything in it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

PG_DSN = os.environ.get("HOARD_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def server_problem(dsn: str) -> str | None:
    """Why the server cannot be used, or None if it answers."""
    try:
        import psycopg  # noqa: PLC0415 - optional: its absence is reported, not an import error
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install -e '.[test,postgres]'"
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL server answers at {dsn!r}: {str(exc).strip()}"
    return None


def require_server(dsn: str = PG_DSN) -> str:
    """`dsn` if its server answers; otherwise skip the test (fail it under ``CI=true``)."""
    problem = server_problem(dsn)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the PostgreSQL server: {problem}")
        pytest.skip(f"{problem} (these tests run in CI, where the server is required)")
    return dsn


def new_schema_name() -> str:
    return f"hoard_test_{uuid.uuid4().hex[:12]}"


def create_schema(dsn: str, name: str) -> None:
    import psycopg  # noqa: PLC0415 - only after require_server proved it importable

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')


def drop_schema(dsn: str, name: str) -> None:
    """Drop schema `name` with everything in it. A session of a killed test process may still hold a
    lock on one of its tables for a moment (until the server notices the process is gone): the drop
    waits up to 10 s per attempt and, after a timeout, ends the sessions holding locks in the schema."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a leftover session must not hang the suite
        for attempt in range(3):
            try:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                return
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    raise
                conn.execute("SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                             "JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname = %s AND l.pid <> pg_backend_pid()", (name,))


def url_for(dsn: str, schema: str, **options: Any) -> str:
    """The ``postgresql://`` URL of `schema` on the server of `dsn`, as users write it; `options`
    (``lease_ttl=1.0``) go into its query."""
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    params = conninfo_to_dict(dsn)
    user = quote(str(params.get("user", "postgres")), safe="")
    password = f":{quote(str(params['password']), safe='')}" if params.get("password") else ""
    where = f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{params.get('dbname', 'test')}"
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in {"schema": schema, **options}.items())
    return f"postgresql://{user}{password}@{where}?{query}"


def wait_for_sessions_to_end(dsn: str, application_name: str, timeout: float = 30.0) -> None:
    """Wait until the server has no session named `application_name` left (those of a killed process
    end once the server notices it is gone, finishing or rolling back what they were doing)."""
    import psycopg  # noqa: PLC0415

    from tests.helpers import wait_for  # noqa: PLC0415 - keeps this module free of hoard imports

    with psycopg.connect(dsn, autocommit=True) as conn:
        def gone() -> bool:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (application_name,)).fetchone()
            return left is not None and left[0] == 0
        wait_for(gone, timeout, f"the sessions of {application_name!r} to end")


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's connection string; skips (fails under CI=true) when it does not answer."""
    return require_server(PG_DSN)


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh, empty schema for this test only, dropped with everything in it afterwards."""
    name = new_schema_name()
    create_schema(pg_dsn, name)
    yield name
    drop_schema(pg_dsn, name)


@pytest.fixture
def make_pg_store(pg_dsn: str, pg_schema: str) -> Iterator[Callable[..., Any]]:
    """Factory of opened `PostgresStore`s on this test's schema; every one is closed at teardown."""
    from hoard.storage import PostgresStore  # noqa: PLC0415 - keeps this module importable anywhere

    stores: list[PostgresStore] = []

    def make(*, opened: bool = True, **kwargs: Any) -> PostgresStore:
        kwargs.setdefault("schema", pg_schema)
        store = PostgresStore(pg_dsn, **kwargs)
        stores.append(store)
        if opened:
            store.open()
        return store

    yield make
    for store in stores:
        store.close()
