"""metrics() reads what the actors publish, without asking them (issue 14): reading is not a call,
never waits for a busy actor, keeps what stopped or crashed actors counted, and its counters never go
backwards while contexts come and go."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system, register_prometheus


def _calls_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("hoard_calls_total"))


def test_reading_metrics_and_scraping_them_count_no_calls(system) -> None:
    t = system.adapter.activate("a")
    t.set("k", 1)
    t.update({"j": 2})
    before = system.metrics()
    for _ in range(5):
        system.metrics()
        system.metrics().to_prometheus()
    after = system.metrics()
    assert after.calls == before.calls
    assert "get_metrics" not in after.calls
    assert after.calls["set"] == 1 and after.calls["update"] == 1
    assert _calls_lines(after.to_prometheus()) == _calls_lines(before.to_prometheus())


def test_a_prometheus_scrape_is_not_counted_as_calls(system) -> None:
    prometheus_client = pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
    registry = prometheus_client.CollectorRegistry()
    register_prometheus(system.metrics, registry)
    system.adapter.activate("p").set("k", 1)
    first = prometheus_client.generate_latest(registry).decode()
    for _ in range(3):
        prometheus_client.generate_latest(registry)
    last = prometheus_client.generate_latest(registry).decode()
    assert _calls_lines(last) == _calls_lines(first)
    assert 'hoard_calls_total{kind="set"} 1.0' in last
    assert "get_metrics" not in last


def test_metrics_does_not_wait_for_a_context_that_is_busy(system) -> None:
    t = system.adapter.activate("busy")
    entered, release = threading.Event(), threading.Event()

    def slow(data):
        entered.set()
        release.wait(30)
        data["k"] = 1

    done: list[object] = []
    caller = threading.Thread(target=lambda: done.append(t.transact(slow, timeout=30)))
    caller.start()
    try:
        assert entered.wait(10)
        # the actor is inside the transaction: asking it would wait; reading its meter does not
        m = system.metrics(timeout=0.5)
        assert m.calls["transact"] == 1
        assert m.active_contexts == 2  # the default context and "busy"
    finally:
        release.set()
        caller.join(30)
    assert done == [None] and t["k"] == 1


def test_counters_never_go_backwards_while_contexts_come_and_go(store_path: Path) -> None:
    writes, contexts = 300, 12
    config = ContextManagerConfig(durability="none")
    with open_system(store_path, manager_config=config,
                     adapter_config=ContextAdapterConfig(max_active_contexts=3)) as s:
        stop = threading.Event()
        readings: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                # a monitor polling every millisecond: a loop without a pause holds the GIL so that
                # each of the writes' thread hand-offs waits out the 5 ms switch interval (38 ms a
                # write instead of 3: the test took 12-24 s for the same interleavings)
                while not stop.wait(0.001):
                    m = s.metrics()
                    readings.append((m.calls.get("set", 0), m.evictions))
            except BaseException as exc:  # noqa: BLE001 - re-raised by the assertion below
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(writes):  # round robin over more contexts than fit: an eviction per write
                s.adapter.activate(f"c{i % contexts}").set("k", i)
        finally:
            stop.set()
            reader.join(30)
        assert not errors
        final = s.metrics()
        assert final.calls["set"] == writes
        assert final.evictions >= writes - 3
        readings.append((final.calls["set"], final.evictions))
        assert len(readings) > 2
        for (sets_a, ev_a), (sets_b, ev_b) in itertools.pairwise(readings):
            assert sets_b >= sets_a and ev_b >= ev_a
