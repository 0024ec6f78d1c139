"""The durable stores the reliability tests run on, behind one interface: where a system opens
(`target`: a SQLite path or a ``postgresql://`` URL, as users write them), how a test reopens the store
on its own, and how it builds the store a system opens with injected faults (`faults()` then
`system_store(faults)`: the store of `target`, with the faults' codec and connection factory).

`backend(name, request, tmp_path)` makes one; the PostgreSQL one uses the server fixtures of tests/pg.py
(a schema per test, dropped afterwards; skipped with the reason when no server answers, failed under
``CI=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hoard.storage import PostgresStore, SQLiteStore
from tests.pg import url_for

from ._faults import Faults, PgFaults

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class SQLiteBackend:
    """A SQLite file in the test's temporary directory."""

    name = "sqlite"
    #: the fault kinds `Faults.arm` knows
    kinds = ("write", "sync", "disk_full", "compress")

    def __init__(self, tmp_path: Path, file: str = "f.db") -> None:
        self.path = tmp_path / file

    def target(self) -> Path:
        return self.path

    def open_store(self, **kwargs: Any) -> SQLiteStore:
        store = SQLiteStore(self.path, **kwargs)
        store.open()
        return store

    def faults(self) -> Faults:
        return Faults()

    def system_store(self, faults: Faults) -> SQLiteStore:
        """What ``open_system(self.target())`` opens, built with the faults' codec and connections."""
        return SQLiteStore(self.path, codec=faults.codec, connect=faults.connect)


class PostgresBackend:
    """A schema of its own on the test server."""

    name = "postgres"
    kinds = ("write", "sync", "connection", "connection_at_commit", "compress")

    def __init__(self, dsn: str, schema: str, lease_ttl: float = 10.0) -> None:
        self.dsn = dsn
        self.schema = schema
        self.lease_ttl = lease_ttl

    def target(self) -> str:
        return url_for(self.dsn, self.schema, lease_ttl=self.lease_ttl)

    def open_store(self, **kwargs: Any) -> PostgresStore:
        store = PostgresStore(self.dsn, schema=self.schema, **kwargs)
        store.open()
        return store

    def faults(self) -> PgFaults:
        return PgFaults(self.dsn, self.schema)

    def system_store(self, faults: PgFaults) -> PostgresStore:
        """What ``open_system(self.target())`` opens (leases required), built with the faults' codec
        and connection class."""
        return PostgresStore(self.dsn, schema=self.schema, lease_ttl=self.lease_ttl, require_lease=True,
                             codec=faults.codec, connection_class=faults.connection_class)


Backend = SQLiteBackend | PostgresBackend


def backend(name: str, request: pytest.FixtureRequest, tmp_path: Path, **kwargs: Any) -> Backend:
    if name == "sqlite":
        return SQLiteBackend(tmp_path, **kwargs)
    return PostgresBackend(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"), **kwargs)
