"""system.metrics() changes as the system works, and its Prometheus exposition can be scraped."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from hoard import ContextAdapterConfig, VersionConflictError, open_system, register_prometheus


def test_metrics_follow_what_happened(store_path: Path) -> None:
    with open_system(store_path, adapter_config=ContextAdapterConfig(max_active_contexts=3)) as s:
        m0 = s.metrics()
        assert m0.active_contexts == 1 and m0.activations == 1  # the default context
        t = s.adapter.activate("a")
        for i in range(10):
            t.set("k", i)
        t.update({"x": "y" * 1000})
        with pytest.raises(VersionConflictError):
            t.set("k", 0, expected_version=1)
        t.transact(lambda d: None)
        t.create_recovery_point()
        s.adapter.activate("b")
        s.adapter.activate("c")  # evicts "a": its counts must survive its actor
        m = s.metrics()
        assert m.calls["set"] == 11 and m.calls["update"] == 1 and m.calls["transact"] == 1
        assert m.calls["create_recovery_point"] == 1
        assert m.conflicts == 1
        assert m.activations == 4 and m.evictions == 1 and m.active_contexts == 3
        assert m.commits >= 1 and m.changes_committed == 12  # 10 sets, the update, the transaction
        assert m.batch_sizes.count == m.commits and m.commit_latency.count == m.commits
        assert m.call_latency.count >= 12
        assert m.recovery_points == 1 and m.snapshots >= 1  # eviction snapshots
        assert m.bytes_written > 0 and m.payload_bytes > 0 and m.compression_ratio > 0
        assert set(m.mailbox_depths) >= {"supervisor", "persistence", "events", "contexts_total"}
        assert m.commit_latency.quantile(0.5) > 0


def test_concurrent_writers_show_group_commit_in_batch_sizes(store_path: Path) -> None:
    with open_system(store_path) as s:
        trackers = [s.adapter.activate(f"c{i}") for i in range(16)]
        threads = [threading.Thread(target=lambda t=t: [t.set("k", j) for j in range(30)]) for t in trackers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        m = s.metrics()
        assert m.changes_committed == 16 * 30
        assert m.batch_sizes.sum == 16 * 30 and m.batch_sizes.count == m.commits


def test_prometheus_exposition_is_scraped(system) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")

    registry = prometheus_client.CollectorRegistry()
    register_prometheus(system.metrics, registry)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        system.adapter.activate("p").set("k", 1)
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        assert float(lines['hoard_calls_total{kind="set"}']) == 1.0
        assert float(lines["hoard_active_contexts"]) == 2.0
        assert "hoard_commit_latency_seconds_bucket" in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
