"""Metric accumulators: exact bucket counts, quantile estimates, merging, and one-writer ownership."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoard.actors._messages import CreateRecoveryPoint, Get, GetState, Set, SetMetadata, Transact

# the lead exports these from `actors`; until then the tests import the module itself
from hoard.actors._metrics import LATENCY_BOUNDS, SIZE_BOUNDS, Counters, Histogram, HistogramSnapshot, kind_of


# -- buckets -----------------------------------------------------------------------------------------------
def test_latency_buckets_run_from_one_microsecond_to_ten_seconds_in_1_2_5_steps() -> None:
    assert len(LATENCY_BOUNDS) == 22
    assert LATENCY_BOUNDS[:4] == (1e-6, 2e-6, 5e-6, 1e-5)
    assert LATENCY_BOUNDS[-4:] == (1.0, 2.0, 5.0, 10.0)
    assert list(LATENCY_BOUNDS) == sorted(set(LATENCY_BOUNDS))
    assert tuple(float(2**i) for i in range(13)) == SIZE_BOUNDS


def test_a_value_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    h = Histogram((1.0, 2.0, 4.0))
    for v in (0.0, -3.0, 1.0, 1.0000001, 2.0, 3.9, 4.0, 4.5, 1e9):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (3, 2, 2, 2)  # <=1: 0, -3, 1 | <=2: 1.0000001, 2 | <=4: 3.9, 4 | +Inf: 4.5, 1e9
    assert snap.count == 9
    assert snap.sum == pytest.approx(0.0 - 3.0 + 1.0 + 1.0000001 + 2.0 + 3.9 + 4.0 + 4.5 + 1e9)
    assert snap.max == 1e9
    assert snap.cumulative() == (3, 5, 7, 9)


def test_latencies_are_counted_exactly_per_bucket() -> None:
    h = Histogram()
    for _ in range(7):
        h.observe(0.0000015)  # 1.5 µs -> the 2 µs bucket
    for _ in range(3):
        h.observe(0.004)  # 4 ms -> the 5 ms bucket
    h.observe(30.0)  # above 10 s -> +Inf
    snap = h.snapshot()
    expected = [0] * (len(LATENCY_BOUNDS) + 1)
    expected[LATENCY_BOUNDS.index(2e-6)] = 7
    expected[LATENCY_BOUNDS.index(0.005)] = 3
    expected[-1] = 1
    assert list(snap.counts) == expected
    assert snap.count == 11 and snap.max == 30.0


def test_nan_is_ignored_and_snapshots_are_copies() -> None:
    h = Histogram((1.0,))
    h.observe(0.5)
    before = h.snapshot()
    h.observe(math.nan)
    h.observe(2.0)
    assert before == HistogramSnapshot((1.0,), (1, 0), 0.5, 1, 0.5)
    assert h.snapshot() == HistogramSnapshot((1.0,), (1, 1), 2.5, 2, 2.0)


@pytest.mark.parametrize(("bounds", "counts"), [((1.0, 1.0), (0, 0, 0)), ((2.0, 1.0), (0, 0, 0)),
                                                ((1.0,), (0,)), ((math.nan,), (0, 0))])
def test_a_snapshot_refuses_inconsistent_bounds_or_counts(bounds: tuple[float, ...], counts: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        HistogramSnapshot(bounds, counts)


# -- quantiles ----------------------------------------------------------------------------------------------
def _filled(bounds: tuple[float, ...], values: list[float]) -> HistogramSnapshot:
    h = Histogram(bounds)
    for v in values:
        h.observe(v)
    return h.snapshot()


def test_quantiles_interpolate_inside_the_bucket_holding_the_rank() -> None:
    snap = _filled((1.0, 2.0, 4.0, 8.0), [0.5] * 4 + [1.5] * 4 + [3.0] * 2)
    assert snap.quantile(0.2) == 0.5  # rank 2 of 4 in (0, 1]
    assert snap.quantile(0.6) == 1.5  # rank 2 of 4 in (1, 2]
    assert snap.quantile(0.9) == 3.0  # rank 1 of 2 in (2, 4]
    assert snap.quantile(1.0) == 3.0  # the bucket says 4, but nothing above 3.0 was seen
    assert snap.quantile(0.0) == 0.0
    assert snap.mean == pytest.approx(1.4)


def test_quantiles_above_the_highest_bound_report_that_bound() -> None:
    snap = _filled((1.0, 2.0), [0.5, 100.0, 200.0])
    assert snap.quantile(0.99) == 2.0
    assert snap.max == 200.0


def test_quantile_of_an_empty_histogram_is_nan_and_q_must_be_a_fraction() -> None:
    empty = HistogramSnapshot.empty()
    assert math.isnan(empty.quantile(0.5)) and math.isnan(empty.mean)
    with pytest.raises(ValueError):
        empty.quantile(1.5)
    with pytest.raises(ValueError):
        empty.quantile(-0.1)


def test_a_latency_p99_is_within_one_bucket_of_the_truth() -> None:
    values = [i / 10_000 for i in range(1, 1001)]  # 0.1 ms .. 100 ms, uniform
    snap = _filled(LATENCY_BOUNDS, values)
    assert 0.05 <= snap.quantile(0.99) <= 0.1  # the truth (99 ms) lies in the (50 ms, 100 ms] bucket
    assert 0.02 <= snap.quantile(0.5) <= 0.05  # the truth (50 ms) lies in the (20 ms, 50 ms] bucket


# -- merging ------------------------------------------------------------------------------------------------
def test_merge_adds_counts_sums_and_keeps_the_larger_max() -> None:
    a = _filled((1.0, 2.0), [0.5, 1.5])
    b = _filled((1.0, 2.0), [0.25, 3.0, 3.0])
    merged = a.merge(b)
    assert merged == HistogramSnapshot((1.0, 2.0), (2, 1, 2), 8.25, 5, 3.0)
    assert b.merge(a) == merged
    assert a.merge(HistogramSnapshot.empty((1.0, 2.0))) == a


def test_merge_refuses_other_bounds() -> None:
    with pytest.raises(ValueError, match="different bucket bounds"):
        HistogramSnapshot.empty((1.0,)).merge(HistogramSnapshot.empty((2.0,)))
    with pytest.raises(ValueError, match="different bucket bounds"):
        Histogram((1.0,)).add(HistogramSnapshot.empty((2.0,)))


_VALUES = st.lists(st.integers(0, 10_000).map(lambda i: i / 1000), max_size=40)


@settings(max_examples=80, deadline=None)
@given(_VALUES, _VALUES)
def test_merging_snapshots_equals_observing_everything_in_one(xs: list[float], ys: list[float]) -> None:
    one = _filled(SIZE_BOUNDS, xs + ys)
    merged = _filled(SIZE_BOUNDS, xs).merge(_filled(SIZE_BOUNDS, ys))
    assert merged.counts == one.counts and merged.count == one.count and merged.max == one.max
    assert merged.sum == pytest.approx(one.sum)
    folded = Histogram(SIZE_BOUNDS)
    folded.add(_filled(SIZE_BOUNDS, xs))
    folded.add(_filled(SIZE_BOUNDS, ys))
    assert folded.snapshot().counts == one.counts


# -- counters ------------------------------------------------------------------------------------------------
def test_counters_count_add_and_snapshot_as_copies() -> None:
    c = Counters()
    c.inc("set")
    c.inc("set", 2)
    c.inc("get")
    snap = c.snapshot()
    c.add({"set": 10, "delete": 1})
    assert snap == {"set": 3, "get": 1}
    assert c.snapshot() == {"set": 13, "get": 1, "delete": 1}
    assert c["set"] == 13 and c["never"] == 0
    assert Counters({"a": 1}).snapshot() == {"a": 1}


def test_message_classes_count_as_snake_case_kinds() -> None:
    assert [kind_of(t) for t in (Set, SetMetadata, GetState, Get, Transact, CreateRecoveryPoint)] == [
        "set", "set_metadata", "get_state", "get", "transact", "create_recovery_point"]


# -- one writer: the owning actor ---------------------------------------------------------------------------
@attrs.frozen
class _Observe:
    kind: str
    seconds: float


@attrs.frozen
class _Snapshot:
    pass


class _RecordingActor(pykka.ThreadingActor):
    """How an actor of ours keeps metrics: plain attributes, written only by its own thread."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = Counters()
        self.latency = Histogram()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Observe):
            self.calls.inc(message.kind)
            self.latency.observe(message.seconds)
            return None
        return {"calls": self.calls.snapshot(), "call_latency": self.latency.snapshot()}


@pytest.fixture
def recorder() -> Iterator[pykka.ActorRef[Any]]:
    ref = _RecordingActor.start()
    try:
        yield ref
    finally:
        ref.stop(timeout=5)


def test_many_threads_report_through_one_actor_and_every_observation_counts(
        recorder: pykka.ActorRef[Any]) -> None:
    per_thread, threads = 500, 4

    def report(i: int) -> None:
        for n in range(per_thread):
            recorder.tell(_Observe("set" if n % 2 else "get", 0.001 * (i + 1)))

    workers = [threading.Thread(target=report, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=10)
    # the ask lands behind every tell of every thread: each thread was joined
    snap: dict[str, Any] = recorder.ask(_Snapshot(), timeout=10)  # type: ignore[assignment]
    assert snap["calls"] == {"set": per_thread * threads // 2, "get": per_thread * threads // 2}
    latency: HistogramSnapshot = snap["call_latency"]
    assert latency.count == per_thread * threads
    assert latency.counts[LATENCY_BOUNDS.index(0.001)] == per_thread  # 1 ms
    assert latency.counts[LATENCY_BOUNDS.index(0.002)] == per_thread  # 2 ms
    assert latency.counts[LATENCY_BOUNDS.index(0.005)] == 2 * per_thread  # 3 and 4 ms
