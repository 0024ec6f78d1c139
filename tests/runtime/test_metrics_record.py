"""The `Metrics` record: built from actor parts, frozen, exposed to Prometheus (and scraped)."""

from __future__ import annotations

import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

# the lead exports these from `runtime`; until then the tests import the module itself
from hoard._metrics import Metrics, _exposition, register_prometheus
from hoard.actors import LATENCY_BOUNDS, SIZE_BOUNDS, Histogram, HistogramSnapshot


def _hist(bounds: tuple[float, ...], values: list[float]) -> HistogramSnapshot:
    h = Histogram(bounds)
    for v in values:
        h.observe(v)
    return h.snapshot()


SUPERVISOR = {"activations": 3, "evictions": 1, "passivations": 1, "deactivations": 2, "restarts": 1,
              "active_contexts": 2, "failed_contexts": 0}
PERSISTENCE = {"commits": 4, "changes": 9, "failed_commits": 1, "snapshots": 2, "recovery_points": 1,
               "max_batch": 5, "bytes_written": 1000, "payload_bytes": 2500,
               "batch_sizes": _hist(SIZE_BOUNDS, [1, 2, 1, 5]),
               "commit_latency": _hist(LATENCY_BOUNDS, [0.001, 0.003, 0.003, 0.02])}
CONTEXT_A = {"calls": {"set": 5, "get": 2}, "conflicts": 1, "call_latency": _hist(LATENCY_BOUNDS, [1e-5] * 7)}
CONTEXT_B = {"calls": {"set": 2, "transact": 1}, "call_latency": _hist(LATENCY_BOUNDS, [0.5, 0.5, 20.0])}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.from_parts(SUPERVISOR, PERSISTENCE, CONTEXT_A, CONTEXT_B,
                              mailbox_depths={"persistence": 3, "supervisor": 0, 'context:odd "id"\\x': 1})


# -- the record ----------------------------------------------------------------------------------------------
def test_an_empty_record_is_all_zero_with_empty_histograms() -> None:
    m = Metrics()
    assert m.calls == {} and m.commits == 0 and m.compression_ratio == 1.0
    assert m.call_latency == HistogramSnapshot.empty(LATENCY_BOUNDS)
    assert m.batch_sizes == HistogramSnapshot.empty(SIZE_BOUNDS)
    assert Metrics.from_parts() == m


def test_from_parts_adds_counters_merges_histograms_and_computes_the_ratio(metrics: Metrics) -> None:
    m = metrics
    assert m.calls == {"set": 7, "get": 2, "transact": 1}
    assert (m.conflicts, m.activations, m.evictions, m.passivations, m.deactivations, m.restarts) == (1, 3, 1, 1, 2, 1)
    assert (m.active_contexts, m.failed_contexts) == (2, 0)
    assert (m.commits, m.changes_committed, m.failed_commits, m.snapshots, m.recovery_points) == (4, 9, 1, 2, 1)
    assert (m.bytes_written, m.payload_bytes, m.compression_ratio) == (1000, 2500, 2.5)
    assert m.mailbox_depths == {"persistence": 3, "supervisor": 0, 'context:odd "id"\\x': 1}
    assert m.call_latency.count == 10 and m.call_latency.max == 20.0
    assert m.call_latency.counts[LATENCY_BOUNDS.index(1e-5)] == 7
    assert m.call_latency.counts[LATENCY_BOUNDS.index(0.5)] == 2 and m.call_latency.counts[-1] == 1
    assert m.batch_sizes.counts[:4] == (2, 1, 0, 1) and m.batch_sizes.max == 5.0
    assert m.commit_latency == PERSISTENCE["commit_latency"]


def test_the_record_is_frozen_hashable_and_compares_with_plain_dicts(metrics: Metrics) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        metrics.commits = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        metrics.calls["set"] = 0
    assert hash(metrics) == hash(Metrics.from_parts(SUPERVISOR, PERSISTENCE, CONTEXT_A, CONTEXT_B,
                                                    mailbox_depths=dict(metrics.mailbox_depths)))


@pytest.mark.parametrize(("part", "error"), [
    ({"comits": 1}, ValueError),
    ({"commits": "1"}, TypeError),
    ({"commits": True}, TypeError),
    ({"calls": 3}, TypeError),
    ({"call_latency": {"count": 1}}, TypeError),
    ({"call_latency": HistogramSnapshot.empty(SIZE_BOUNDS)}, ValueError),  # merged with other bounds
])
def test_from_parts_refuses_unknown_fields_and_wrong_kinds(part: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Metrics.from_parts(CONTEXT_A, part)


def test_to_dict_is_json_encodable(metrics: Metrics) -> None:
    d = orjson.loads(orjson.dumps(metrics.to_dict()))
    assert d["calls"] == {"set": 7, "get": 2, "transact": 1}
    assert d["call_latency"]["count"] == 10 and len(d["call_latency"]["counts"]) == len(LATENCY_BOUNDS) + 1


# -- the exposition --------------------------------------------------------------------------------------------
def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _check_exposed(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    assert samples["hoard_calls_total", (("kind", "set"),)] == 7
    assert samples["hoard_calls_total", (("kind", "transact"),)] == 1
    assert samples["hoard_conflicts_total", ()] == 1
    assert samples["hoard_activations_total", ()] == 3
    assert samples["hoard_changes_committed_total", ()] == 9
    assert samples["hoard_written_bytes_total", ()] == 1000
    assert samples["hoard_active_contexts", ()] == 2
    assert samples["hoard_compression_ratio", ()] == 2.5
    assert samples["hoard_mailbox_depth", (("actor", "persistence"),)] == 3
    assert samples["hoard_mailbox_depth", (("actor", 'context:odd "id"\\x'),)] == 1
    lat = "hoard_call_latency_seconds"
    assert samples[f"{lat}_bucket", (("le", "5e-06"),)] == 0
    assert samples[f"{lat}_bucket", (("le", "1e-05"),)] == 7  # cumulative
    assert samples[f"{lat}_bucket", (("le", "0.5"),)] == 9
    assert samples[f"{lat}_bucket", (("le", "10.0"),)] == 9
    assert samples[f"{lat}_bucket", (("le", "+Inf"),)] == 10
    assert samples[f"{lat}_count", ()] == 10
    assert samples[f"{lat}_sum", ()] == pytest.approx(7e-5 + 21.0)
    assert samples["hoard_commit_batch_size_bucket", (("le", "2.0"),)] == 3
    assert samples["hoard_commit_batch_size_bucket", (("le", "4096.0"),)] == 4
    assert samples["hoard_commit_latency_seconds_count", ()] == 4


def test_to_prometheus_exposes_counters_gauges_and_histograms(metrics: Metrics) -> None:
    text = metrics.to_prometheus()
    assert "# TYPE hoard_calls_total counter" in text
    assert "# TYPE hoard_active_contexts gauge" in text
    assert "# TYPE hoard_call_latency_seconds histogram" in text
    _check_exposed(_samples(text))


def test_the_hand_written_exposition_is_what_prometheus_client_writes(metrics: Metrics) -> None:
    assert _exposition(metrics) == metrics.to_prometheus()
    assert _exposition(Metrics()) == Metrics().to_prometheus()


def test_without_prometheus_client_the_text_is_written_by_hand_and_register_says_what_to_install(
        metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = metrics.to_prometheus()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # `import prometheus_client` now fails
    assert metrics.to_prometheus() == expected
    with pytest.raises(ImportError, match=r"pip install 'hoard-contexts\[prometheus\]'"):
        register_prometheus(lambda: metrics, CollectorRegistry())


# -- scraping a live endpoint ------------------------------------------------------------------------------------
@pytest.fixture
def serve() -> Iterator[Callable[[CollectorRegistry], int]]:
    """Starts prometheus_client's HTTP server on a free port of 127.0.0.1; shuts it down afterwards."""
    servers: list[tuple[Any, threading.Thread]] = []

    def start(registry: CollectorRegistry) -> int:
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        servers.append((server, thread))
        return int(server.server_address[1])

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def _lines(text: str) -> dict[str, float]:
    """The sample lines, parsed by hand: ``name{labels} value`` -> {"name{labels}": value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_a_scrape_calls_the_system_each_time_and_sees_current_values(
        metrics: Metrics, serve: Callable[[CollectorRegistry], int]) -> None:
    registry = CollectorRegistry()
    calls: list[Metrics] = []

    def system_metrics() -> Metrics:
        m = attrs.evolve(metrics, commits=metrics.commits + len(calls))
        calls.append(m)
        return m

    register_prometheus(system_metrics, registry)
    assert calls == []  # registering does not ask the system (it may not serve yet)
    port = serve(registry)

    first = _scrape(port)
    _check_exposed(_samples(first))
    lines = _lines(first)
    assert lines["hoard_commits_total"] == 4
    assert lines['hoard_calls_total{kind="set"}'] == 7
    assert lines['hoard_call_latency_seconds_bucket{le="+Inf"}'] == 10
    assert lines["hoard_call_latency_seconds_count"] == 10

    assert _lines(_scrape(port))["hoard_commits_total"] == 5
    assert len(calls) == 2


def test_a_second_system_in_the_same_registry_is_refused() -> None:
    registry = CollectorRegistry()
    register_prometheus(Metrics, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_prometheus(Metrics, registry)


def test_register_uses_the_default_registry_when_none_is_given() -> None:
    collector = register_prometheus(lambda: Metrics(commits=42))
    try:
        assert _lines(generate_latest(REGISTRY).decode())["hoard_commits_total"] == 42
    finally:
        REGISTRY.unregister(collector)
