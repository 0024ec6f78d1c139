"""Context expiry: an inactive context whose time to live ran out is deleted, with an event."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoard import (
    ContextAdapterConfig,
    ContextDeleted,
    ContextManagerConfig,
    ContextNotFoundError,
    ContextStatus,
    InvalidValueError,
    open_system,
)
from tests.helpers import Clock, wait_until
from tests.pg import url_for


@pytest.fixture(params=["sqlite", "memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def ttl_store(request: pytest.FixtureRequest, store_path: Path) -> str | Path | None:
    """Where to open: a SQLite file, memory, or (skipped without a server, required under CI=true) a
    PostgreSQL schema of this test."""
    if request.param == "sqlite":
        return store_path
    if request.param == "memory":
        return None
    return url_for(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))


def test_expired_inactive_contexts_are_deleted_active_ones_never(ttl_store: str | Path | None) -> None:
    clock = Clock(1_000_000.0)
    cfg = ContextManagerConfig(clock=clock, durability="immediate")
    with open_system(ttl_store, manager_config=cfg, adapter_config=ContextAdapterConfig(ttl=3600.0)) as s:
        deleted = []
        s.subscribe(lambda e: deleted.append((e.context_id, e.reason)), kinds=[ContextDeleted])
        m, a = s.manager, s.adapter
        m.create("old", {"k": 1})
        m.create("short", {"k": 1})
        m.create("forever", {"k": 1})
        m.set_ttl("short", 60)
        m.set_ttl("forever", 10**9)
        t = a.activate("active-old")
        a.switch("default")
        clock.now += 120  # "short" is past its own ttl; the default ttl (1 h) has not run out
        assert s.maintain() == ["short"]
        assert a.status("short") is ContextStatus.NONEXISTENT
        clock.now += 3600
        assert sorted(s.maintain()) == ["old"]  # "active-old" is active and "forever" has its own ttl
        assert a.status("active-old") is ContextStatus.ACTIVE and m.exists("forever")
        a.deactivate("active-old")
        assert s.maintain() == ["active-old"]  # inactive now, and its last change is old
        with pytest.raises(ContextNotFoundError):
            t.get("k")
        wait_until(lambda: len(deleted) == 3)
        assert deleted == [("short", "expired"), ("old", "expired"), ("active-old", "expired")]
        assert s.metrics().expired == 3


def test_a_change_renews_the_time_to_live(system) -> None:
    system.manager.create("c")
    system.manager.set_ttl("c", 3600)
    assert system.maintain() == []  # just changed
    with pytest.raises(InvalidValueError):
        system.manager.set_ttl("c", -1)
    with pytest.raises(ContextNotFoundError):
        system.manager.set_ttl("nope", 5)


def test_the_ttl_survives_a_reopen(store_path: Path) -> None:
    clock = Clock(2_000_000.0)
    cfg = ContextManagerConfig(clock=clock)
    with open_system(store_path, manager_config=cfg) as s:
        s.manager.create("c")
        s.manager.set_ttl("c", 10)
    clock.now += 11
    with open_system(store_path, manager_config=cfg) as s:
        assert s.maintain() == ["c"]


def test_the_background_sweep_expires_without_help(store_path: Path) -> None:
    with open_system(store_path, adapter_config=ContextAdapterConfig(maintenance_interval=0.05)) as s:
        s.manager.create("gone")
        s.manager.set_ttl("gone", 0.01)
        wait_until(lambda: not s.manager.exists("gone"), timeout=10, what="ttl expiry")
