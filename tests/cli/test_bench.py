"""`hoard bench`: the quick run produces every row of issue 5's table. Ratios are printed in the test
output (this is a shared, noisy machine), never asserted."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from hoard import ConfigError
from hoard._bench import MEASURES, _growth, run_bench

from .conftest import Hoard

ROWS = ["sync_set", "get", "pipelined", "update_1000", "set_100k", "durable_set", "durable_32_threads",
        "activation_10k", "open_100k", "rss_1000", "peer_diskcache", "peer_json_file",
        "pg_durable_set", "pg_durable_32_threads",  # issue 6; skipped with a note when no PostgreSQL answers
        "fwd_throughput", "fwd_latency_median", "fwd_latency_p99", "fwd_vs_local",  # issue 15; also needs NATS
        *(f"relay{s}_{k}" for k in ("nats", "mqtt", "amqp", "redis") for s in ("", "_latency")),  # issue 16
        "feed_write_cost", "feed_write_cost_16_threads", "pg_feed_write_cost_16_threads", "feed_read",
        "state_at_1000",  # issue 13
        "metrics_1000", "compression_dict", "compression_write", "events_delivery", "events_latency",
        "peer_diskcache_16_threads", "peer_sqlitedict",
        "peer_sqlitedict_16_threads"]  # issue 14


@pytest.mark.timeout(480)  # the whole quick bench in one run (the command itself is given 420 s)
def test_quick_bench_json_has_every_row(hoard: Hoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = importlib.util.find_spec("matplotlib") is not None  # an optional extra
    # one round a row (after its warm-up): every row's code runs, in half the time of --quick's five
    args = ["bench", "--quick", "--rounds", "1", "--json", "--dir", str(tmp_path)] + (
        ["--chart", "scaling.png"] if chart else [])
    rows = hoard(*args, timeout=420).json()  # every row, on a shared machine: minutes
    assert [row["name"] for row in rows] == ROWS
    for row in rows:
        assert {"name", "value", "floor", "ratio", "target", "meets", "unit", "better", "note"} <= row.keys()
        if row["skipped"]:  # peer_diskcache without the optional diskcache, pg_* / fwd_* without a server
            assert row["ratio"] is None and row["note"].startswith("skipped")
            continue
        assert row["value"] > 0 and row["floor"] > 0 and math.isfinite(row["ratio"])
        assert row["meets"] == (row["ratio"] >= row["target"] if row["better"] == "higher"
                                else row["ratio"] <= row["target"])
    if chart:
        assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == (["scaling.png"] if chart else [])  # temp stores removed
    with capsys.disabled():  # shown in every run, CI included: the ratios are the point
        print("\nhoard bench --quick ratios (printed, not asserted):")
        for row in rows:
            ratio = "skipped" if row["skipped"] else f"{row['ratio']:.2f}"
            print(f"  {row['name']:<20} {ratio:>7}  target {'>=' if row['better'] == 'higher' else '<='} "
                  f"{row['target']}")


def test_bench_table_names_each_measure_and_its_floor(hoard: Hoard) -> None:
    r = hoard("bench", "--quick", "--only", "get")
    assert r.code == 0, r.err
    assert "tracker.get" in r.out and "a plain method reading a dict" in r.out and ">= 0.65" in r.out
    assert "compare ratios only" in r.out and "(5 for most rows" in r.out
    r = hoard("bench", "--quick", "--only", "get", "--rounds", "3")
    assert r.code == 0 and "(3 for most rows" in r.out, r.err


def test_bench_usage_errors(hoard: Hoard) -> None:
    assert hoard("bench", "--only", "nonsense").code == 2
    r = hoard("bench", "--quick", "--only", "get", "--rounds", "0")
    assert r.code == 2 and "--rounds" in r.err
    with pytest.raises(ConfigError, match="rounds"):
        run_bench(quick=True, only=["get"], rounds=0)
    help_text = hoard("bench", "--help").out
    assert all(name in help_text for name in MEASURES)
    r = hoard("bench", "--quick", "--only", "get", "--chart", "x.png")
    assert r.code == 2 and "scaling series" in r.err


def test_soak_mode_reports_activations_and_rss_and_leaves_nothing_behind(hoard: Hoard, tmp_path: Path) -> None:
    r = hoard("bench", "--soak", "0.1", "--json", "--dir", str(tmp_path), timeout=120)
    assert r.code == 0, r.err
    report = r.json()
    assert report["minutes"] == 0.1
    assert report["activations"] >= report["distinct"] > 0 and report["hot_writes"] > 0
    assert report["rss_start_mib"] > 0 and report["rss_end_mib"] > 0
    assert report["growth_per_100k"] is None or isinstance(report["growth_per_100k"], float)
    assert list(tmp_path.iterdir()) == []  # the soak's store was removed


def test_soak_growth_is_not_fooled_by_a_swing_of_live_contexts() -> None:
    # flat memory, but the machine slowed down: fewer contexts stayed alive at once later in the run
    # (each live actor costs 40 KiB), which a slope on activations alone read as -63 MiB per 100k
    samples = [(a, 50.0 + active * 40 / 1024, active)
               for a, active in zip(range(2_000, 8_000, 500), [150, 140, 150, 120, 110, 120, 100, 90, 80, 90, 70, 60],
                                    strict=True)]
    per_activation, per_active = _growth(samples)
    assert per_activation is not None and abs(per_activation * 100_000) < 0.01
    assert per_active is not None and abs(per_active * 1024 - 40) < 0.01
    # real growth still shows, whatever the live contexts do
    leaking = [(a, r + a * 5 / 100_000, n) for a, r, n in samples]
    per_activation, _ = _growth(leaking)
    assert per_activation is not None and abs(per_activation * 100_000 - 5) < 0.01
    # no spread in the active count: the plain slope; too few samples: nothing
    steady = [(a, 50.0 + a / 100_000, 100) for a in range(0, 5_000, 500)]
    assert _growth(steady)[1] is None and abs(_growth(steady)[0] * 100_000 - 1) < 1e-6  # type: ignore[operator]
    assert _growth(steady[:2]) == (None, None)
