"""Stopping a system: a bad argument changes nothing, a stop that runs out of time still saves every
context and can be waited for, and no call after it hangs or answers as if the system ran."""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import pytest

from hoard import (
    ConfigError,
    ContextAdapterConfig,
    ContextManagerConfig,
    ContextNotFoundError,
    ContextTimeoutError,
    SystemStoppedError,
    open_system,
)
from tests.helpers import wait_for

NO_DEFAULT = ContextAdapterConfig(auto_activate_default=False)


@pytest.mark.parametrize("timeout", ["5", -1, math.nan, math.inf, [1]])
def test_stop_with_a_bad_timeout_changes_nothing(store_path: Path, timeout: object) -> None:
    s = open_system(store_path, manager_config=ContextManagerConfig(durability="none"), adapter_config=NO_DEFAULT)
    try:
        t = s.adapter.activate("a")
        t.set("k", "acknowledged")
        with pytest.raises(ConfigError, match="timeout"):
            s.stop(timeout=timeout)  # type: ignore[arg-type]
        assert not s.stopped
        t.set("k", "still running")  # the system still takes calls
    finally:
        s.stop()
    with open_system(store_path, adapter_config=NO_DEFAULT) as again:  # the proper stop saved it
        assert dict(again.manager.get_state("a").data) == {"k": "still running"}


def test_a_stop_that_runs_out_of_time_still_saves_every_context(store_path: Path) -> None:
    # durability="none": the final snapshots are the only copy. A stop whose timeout ran out used to
    # stop the persistence actor under the supervisor still writing them (37 of 50 kept)
    s = open_system(store_path, manager_config=ContextManagerConfig(durability="none"), adapter_config=NO_DEFAULT)
    try:
        for i in range(200):
            s.adapter.get_or_create(f"c{i}").set("k", i)
        with pytest.raises(ContextTimeoutError, match="continues in the background"):
            s.stop(timeout=0.001)
        assert s.stopped
        with pytest.raises(SystemStoppedError):
            s.adapter.activate("c1")
    finally:
        s.stop(timeout=60)  # waits for the stop under way: nothing of the system is left after it
    with open_system(store_path, adapter_config=NO_DEFAULT) as again:
        assert [again.manager.get_state(f"c{i}").data["k"] for i in range(200)] == list(range(200))


def test_changes_after_stop_raise_system_stopped(store_path: Path) -> None:
    # changes() after stop returned an empty stream, as if the feed held nothing
    s = open_system(store_path)
    s.adapter.activate("a").set("k", 1)
    assert [e.context_id for e in s.changes(timeout=0)] == ["default", "a", "a"]
    s.stop()
    for call in (s.changes, lambda: s.changes(after=0, timeout=0), lambda: s.consumer("c")):
        with pytest.raises(SystemStoppedError):
            call()


def test_concurrent_ensure_maintenance_runs_one_ticker() -> None:
    # check-then-start without a lock: several tickers started, one remembered, the rest outlived stop()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race's window is a few lines
    try:
        for _ in range(20):
            s = open_system(None, adapter_config=NO_DEFAULT)
            try:
                gate = threading.Barrier(8)

                def go(s: object = s, gate: threading.Barrier = gate) -> None:
                    gate.wait(10)
                    s.ensure_maintenance()  # type: ignore[attr-defined]

                threads = [threading.Thread(target=go) for _ in range(8)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join(10)
                tickers = [th for th in threading.enumerate() if th.name == "hoard-maintenance" and th.is_alive()]
                assert len(tickers) == 1
            finally:
                s.stop()
            assert not any(th.is_alive() for th in tickers)
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("field", ["call_timeout", "request_ttl"])
@pytest.mark.parametrize("value", [math.inf, 1e10])
def test_manager_seconds_beyond_any_wait_are_a_config_error(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ContextManagerConfig(**{field: value})


@pytest.mark.parametrize("field", ["maintenance_interval", "idle_timeout", "ttl", "restart_window"])
@pytest.mark.parametrize("value", [math.inf, 1e10])
def test_adapter_seconds_beyond_any_wait_are_a_config_error(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ContextAdapterConfig(**{field: value})


def test_a_timeout_beyond_any_wait_is_a_config_error(system: object) -> None:
    t = system.adapter.activate("a")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="timeout"):
        t.set("k", 1, timeout=1e10)
    assert t.get("k") is None


def test_pinning_a_deleted_context_is_refused_and_pins_nothing(store_path: Path) -> None:
    cfg = ContextAdapterConfig(max_active_contexts=2)
    with open_system(store_path, adapter_config=cfg) as s:
        old = s.adapter.get_or_create("x")
        s.manager.delete("x")
        with pytest.raises(ContextNotFoundError, match="'x'"):
            old.pin()
        s.adapter.get_or_create("x")  # a new context under that id, which nobody pinned
        s.adapter.get_or_create("y")  # default + x active: x is evicted for y
        assert sorted(s.adapter.list_active()) == ["default", "y"]


def test_max_recovery_points_beyond_what_a_store_counts_is_a_config_error() -> None:
    # 10**30 was taken, then every recovery point failed in SQLite (integer overflow)
    with pytest.raises(ConfigError, match="max_recovery_points"):
        ContextManagerConfig(max_recovery_points=2**63)
    assert ContextManagerConfig(max_recovery_points=2**31 - 1).max_recovery_points == 2**31 - 1


def test_a_shorter_maintenance_period_asked_for_later_is_taken_at_once(store_path: Path) -> None:
    with open_system(store_path, adapter_config=NO_DEFAULT) as s:
        s.ensure_maintenance(30)  # the ticker now waits out 30 s
        s.manager.create("x")
        s.manager.set_ttl("x", 0.05)  # inactive, so the next sweep after 50 ms deletes it
        s.ensure_maintenance(0.05)
        wait_for(lambda: not s.manager.exists("x"), 10, "the sweep at the shorter period to expire 'x'")
        assert [th.name for th in threading.enumerate()].count("hoard-maintenance") == 1
