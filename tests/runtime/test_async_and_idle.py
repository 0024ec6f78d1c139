"""Non-blocking calls (futures, asyncio) and idle passivation with an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pykka
import pytest

from hoard import (
    ContextAdapterConfig,
    ContextDeactivated,
    ContextManagerConfig,
    ContextStatus,
    DeactivationReason,
    VersionConflictError,
    open_system,
)
from tests.helpers import Clock, wait_until


def test_pipelined_futures_all_resolve_in_order(system) -> None:
    t = system.adapter.activate("p")
    futures = [t.set_async("k", i) for i in range(200)]
    assert list(pykka.get_all(futures, timeout=10)) == list(range(2, 202))
    assert t.get("k") == 199
    assert t.update_async({"a": 1}).get(timeout=5) == 202
    assert t.delete_async("a").get(timeout=5) == 203
    assert t.set_metadata_async({"m": 1}).get(timeout=5) == 204
    assert t.transact_async(lambda d: d.get("k")).get(timeout=5) == 199
    rp = t.create_recovery_point_async("x").get(timeout=5)
    assert t.restore_async(rp).get(timeout=5) == 206
    with pytest.raises(VersionConflictError):
        t.set_async("k", 0, expected_version=1).get(timeout=5)


def test_futures_are_awaitable_from_asyncio(system) -> None:
    t = system.adapter.activate("aio")

    async def main() -> list[int]:
        first = await t.set_async("k", 1)
        rest = await asyncio.gather(*(t.set_async("k", i) for i in range(2, 12)))
        with pytest.raises(VersionConflictError):
            await t.set_async("k", 0, expected_version=1)
        return [first, *rest]

    versions = asyncio.run(main())
    assert versions == list(range(2, 13))


def test_async_calls_survive_passivation_of_their_context(store_path: Path) -> None:
    with open_system(store_path) as s:
        t = s.adapter.activate("x")
        futures = []
        for i in range(30):
            futures.append(t.set_async(f"k{i}", i))
            if i % 10 == 0:
                s.adapter.deactivate("x")  # queued calls meet a stopping actor: retried, not lost
        pykka.get_all(futures, timeout=20)
        assert all(t.get(f"k{i}") == i for i in range(30))
        assert t.version == 31


def test_idle_contexts_are_passivated_by_the_injected_clock(store_path: Path) -> None:
    clock = Clock()
    cfg = ContextAdapterConfig(idle_timeout=60.0)
    with open_system(store_path, adapter_config=cfg, manager_config=ContextManagerConfig(monotonic=clock)) as s:
        a = s.adapter
        busy, idle, pinned = a.activate("busy"), a.activate("idle"), a.activate("pinned")
        pinned.pin()
        a.switch("current")
        gone = []
        s.subscribe(lambda e: gone.append((e.context_id, e.reason)), kinds=[ContextDeactivated])
        assert s.maintain() == []  # first sweep: records what it sees
        clock.now += 30
        busy.get("k")
        assert s.maintain() == []
        clock.now += 31  # "idle" untouched for 61 s, "busy" for 31 s
        assert s.maintain() == ["idle"]
        assert a.status("idle") is ContextStatus.INACTIVE
        assert a.status("busy") is ContextStatus.ACTIVE
        clock.now += 100
        assert sorted(s.maintain()) == ["busy"]  # never the current, the default or a pinned one
        assert sorted(a.list_active()) == ["current", "default", "pinned"]
        wait_until(lambda: len(gone) == 2)
        assert gone == [("idle", DeactivationReason.IDLE), ("busy", DeactivationReason.IDLE)]
        assert idle.get("k", "back") == "back"  # a passivated context's tracker re-activates it


def test_the_background_ticker_passivates_without_help(store_path: Path) -> None:
    cfg = ContextAdapterConfig(idle_timeout=0.05)
    with open_system(store_path, adapter_config=cfg) as s:
        s.adapter.activate("x")
        s.adapter.switch("default")
        wait_until(lambda: "x" not in s.adapter.list_active(), timeout=10, what="idle passivation")
