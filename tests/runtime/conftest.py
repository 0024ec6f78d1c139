"""Fixtures shared by the runtime tests that run on every kind of store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import url_for

KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, store_path: Path) -> str | Path | None:
    """Where a system opens: memory (None), a SQLite file, or this test's PostgreSQL schema."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return store_path
    return url_for(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))
