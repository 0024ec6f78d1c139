"""Shared fixtures. Every test is checked for leaked actor threads: a test that leaves an actor of
ours (or any pykka actor) running fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from hoard import ContextSystem, open_system

# the PostgreSQL server fixtures (`pg_dsn`, `pg_schema`, `make_pg_store`), for every test directory:
# defined once, in tests/pg.py
pytest_plugins = ["tests.pg"]

_OUR_THREADS = ("ContextActor-", "SupervisorActor-", "PersistenceActor-", "EventBusActor-", "SubscriberActor-",
                "hoard-maintenance", "hoard-stopping")


def _actor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(_OUR_THREADS) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_actors() -> Iterator[None]:
    before = set(_actor_threads())
    yield
    # a stopped actor's thread may take a moment to return from its loop: join with a bound
    deadline = time.monotonic() + 5
    for t in _actor_threads():
        if t not in before:
            t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in _actor_threads() if t not in before]
    live_refs = pykka.ActorRegistry.get_all()
    if leaked or live_refs:
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
        pytest.fail(f"test left actors running: threads={leaked} refs={live_refs}")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def system(store_path: Path) -> Iterator[ContextSystem]:
    """A started system on a fresh SQLite file, stopped at teardown."""
    s = open_system(store_path)
    try:
        yield s
    finally:
        s.stop()
