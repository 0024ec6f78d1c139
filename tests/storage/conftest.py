"""Storage fixtures: the PostgreSQL server and a throwaway schema per test.

Tests that need the server take `pg_dsn` (or `pg_schema` / `make_pg_store`). When no server answers
at 127.0.0.1:5432 they are skipped with the reason, except under ``CI=true``, where they fail: CI has
the server, and a silently skipped store is not a tested store. ``HOARD_TEST_PG_DSN`` overrides the
connection string.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

PG_DSN = os.environ.get("HOARD_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def _server_problem(dsn: str) -> str | None:
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


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's connection string; skips (fails under CI=true) when it does not answer."""
    problem = _server_problem(PG_DSN)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the PostgreSQL server: {problem}")
        pytest.skip(f"{problem} (these tests run in CI, where the server is required)")
    return PG_DSN


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh, empty schema for this test only, dropped with everything in it afterwards."""
    import psycopg  # noqa: PLC0415 - only after pg_dsn proved it importable

    name = f"hoard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a leftover session must not hang the suite
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def make_pg_store(pg_dsn: str, pg_schema: str) -> Iterator[Callable[..., Any]]:
    """Factory of opened `PostgresStore`s on this test's schema; every one is closed at teardown."""
    from storage import PostgresStore  # noqa: PLC0415 - keeps this conftest importable anywhere

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
