"""The benchmark behind ``hoard bench``: every measure against its floor, in the same process and run.

Each row of the table in issue 5 is measured here next to its *floor* (the cheapest thing that does
the same job without hoard: a bare pykka actor, a plain dict, one raw SQLite commit, a raw read...).
Value and floor run in alternating rounds (value, floor, floor, value, ...) and each side's median is
kept, so load from other programs on a shared machine hits both about equally; only the **ratio** is
meant to be compared, never a number across runs or machines.

Ratios: for throughput rows (``better="higher"``) ``ratio = value / floor`` and the target is a
minimum; for time and memory rows (``better="lower"``) ``ratio = value / floor`` and the target is a
maximum.

Everything runs in the calling thread, except the RSS row, which starts two short-lived child
processes (``python -m hoard._bench rss ...``) so that each measures a clean interpreter, and the
threaded rows. Every system and actor a measure starts is stopped before it returns, and every file
lives in one temporary directory removed at the end. Nothing here prints: progress goes to the
``progress`` callback.

The PostgreSQL rows run against the server of ``HOARD_BENCH_PG_DSN`` (a libpq connection string;
default ``host=127.0.0.1 port=5432 user=postgres dbname=test``) in a schema of their own
(``hoard_bench_<random>``, dropped afterwards); they are skipped with a note when psycopg is not
installed or no server answers.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

import attrs
import orjson
import pykka
import zstandard

from hoard.actors import Set as SetMessage
from hoard.actors import StateChanged
from hoard.storage import (
    KIND_CHANGE,
    KIND_DICTIONARY,
    KIND_STATE,
    Append,
    Change,
    Codec,
    ConfigError,
    CreateContext,
    HoardError,
    PostgresStore,
    SQLiteStore,
    freeze_mapping,
    new_state,
)

from ._bench_bridges import (  # the broker clients load in its calls
    broker_problem,
    latency_sides,
    plain_xadd_side,
    publisher_side,
    throughput_sides,
)
from ._bridges import Outgoing, change_body, message_id, render_subject
from ._config import ContextAdapterConfig, ContextManagerConfig
from ._forward import encode_message, with_request_id
from ._system import ContextSystem, open_system
from ._version import DISTRIBUTION

__all__ = ["MEASURES", "SERIES_MEASURES", "BenchReport", "BenchRow", "SoakReport", "run_bench", "run_soak",
           "write_chart"]

_NO_DEFAULT = ContextAdapterConfig(auto_activate_default=False)


@attrs.frozen
class BenchRow:
    """One measure next to its floor.

    Attributes:
        name: stable id of the measure (what ``--only`` takes).
        measure: what hoard does.
        floor_name: what it is compared with.
        value: hoard's median (in `unit`); None when the row was skipped.
        floor: the floor's median (in `unit`); None when skipped.
        unit: e.g. ``"ops/s"``, ``"ms"``, ``"MiB"``.
        ratio: ``value / floor``; None when skipped.
        target: the ratio the issue asks for.
        better: ``"higher"`` (ratio must be >= target) or ``"lower"`` (ratio must be <= target).
        meets: whether the ratio reaches the target; None when skipped.
        note: how it was measured, or why it was skipped.
        value_samples: every round's value (for the curious; medians are what count).
        floor_samples: every round's floor.
    """

    name: str
    measure: str
    floor_name: str
    value: float | None
    floor: float | None
    unit: str
    ratio: float | None
    target: float
    better: str
    meets: bool | None
    note: str = ""
    value_samples: tuple[float, ...] = ()
    floor_samples: tuple[float, ...] = ()

    @property
    def skipped(self) -> bool:
        return self.ratio is None

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["target_op"] = ">=" if self.better == "higher" else "<="
        out["skipped"] = self.skipped
        out["value_samples"] = list(self.value_samples)
        out["floor_samples"] = list(self.floor_samples)
        return out


@attrs.frozen
class Series:
    """A scaling series for the chart: `y` (in `unit`) against `x`."""

    title: str
    xlabel: str
    unit: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@attrs.frozen
class BenchReport:
    """What `run_bench` measured: the rows (in table order), scaling series, and the machine."""

    rows: tuple[BenchRow, ...]
    series: tuple[Series, ...]
    environment: dict[str, Any]
    seconds: float
    quick: bool
    rounds: int = 15  # alternating rounds of most rows with their floor


# -- workload -----------------------------------------------------------------------------------------
def _value(i: int) -> Any:
    """Mixed JSON values like those of shared/reference/perf-floors.md."""
    r = i % 6
    if r == 0:
        return f"status-{i}-é✓"
    if r == 1:
        return i * 7919
    if r == 2:
        return {"id": i, "name": f"user {i}", "tags": ["a", "b"], "active": i % 2 == 0, "score": i / 7}
    if r == 3:
        return [i, i + 1, i + 2, i + 3]
    if r == 4:
        return (None, True, i / 3, "x")[i % 4]
    return {"ts": 1_700_000_000 + i, "by": "bench", "changes": [{"op": "set", "path": f"/a/{i}"}]}


def _key(i: int) -> str:
    return f"user.{i}.status"


def _mapping(n: int, offset: int = 0) -> dict[str, Any]:
    return {_key(i): _value(i + offset) for i in range(n)}


def _items(n: int, keys: int = 100) -> list[tuple[str, Any]]:
    return [(_key(i % keys), _value(i)) for i in range(n)]


class _BareActor(pykka.ThreadingActor):
    """The floor of a synchronous mutation: a pykka actor that sets a key and counts versions."""

    use_daemon_thread = True

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}
        self.version = 0

    def set(self, key: str, value: Any) -> int:
        self.data[key] = value
        self.version += 1
        return self.version


class _PlainReader:
    """The floor of a read: a plain method reading a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)


# -- timing -------------------------------------------------------------------------------------------
def _rate(n: int, fn: Callable[[], object]) -> float:
    """Run `fn` (which does `n` operations) once; operations per second."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _elapsed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(rounds: int, *sides: Callable[[], float], warmup: bool = True) -> list[list[float]]:
    """Alternate the sides for `rounds` rounds (reversing the order every other round); one sample per
    side per round. A first, discarded round warms caches and lazy imports."""
    samples: list[list[float]] = [[] for _ in sides]
    order = list(range(len(sides)))
    if warmup:
        for i in order:
            sides[i]()
    for r in range(rounds):
        for i in order if r % 2 == 0 else reversed(order):
            gc.collect()
            samples[i].append(sides[i]())
    return samples


@attrs.frozen
class _Spec:
    """A row of issue 5's table: what is measured, against what, and the target ratio."""

    measure: str
    floor_name: str
    unit: str
    target: float
    better: str  # "higher": ratio >= target; "lower": ratio <= target


_SPECS: dict[str, _Spec] = {
    # issue 14 raised these two targets (0.8 -> 0.9, 0.5 -> 0.65)
    "sync_set": _Spec("sync tracker.set, durability none", "pykka proxy call .get() on a bare actor",
                      "ops/s", 0.9, "higher"),
    "get": _Spec("tracker.get", "a plain method reading a dict", "ops/s", 0.65, "higher"),
    "pipelined": _Spec("pipelined writes (non-blocking form, then wait all)", "pykka pipelined proxy calls",
                       "ops/s", 0.7, "higher"),
    "update_1000": _Spec("update of 1,000 keys in one call", "1,000 plain dict writes", "keys/s", 0.05, "higher"),
    "set_100k": _Spec("sync set on a context holding 100k keys", "the same on a context holding 10 keys",
                      "ops/s", 0.5, "higher"),
    "durable_set": _Spec("durable set, 1 thread, immediate",
                         "one SQLite commit per write, synchronous=FULL, same blob size", "ops/s", 0.7, "higher"),
    "durable_32_threads": _Spec("durable set, 32 threads on 32 contexts, immediate",
                                "the same workload with durability none", "ops/s", 0.5, "higher"),
    "activation_10k": _Spec("activation of a 10k-key context (snapshot + 1k journal entries)",
                            "raw SQLite read + zstd decompress + JSON decode of the same data", "ms", 2.0, "lower"),
    "open_100k": _Spec("open a store holding 100k contexts", "same with 100 contexts", "ms", 2.0, "lower"),
    "rss_1000": _Spec("RSS of 1,000 active contexts x 100 keys", "idle pykka actors + the same dicts", "MiB", 2.0,
                      "lower"),
    "peer_diskcache": _Spec("peers: durable single-key writes", "diskcache Cache.set at equal sync settings",
                            "ops/s", 1.0, "higher"),
    "peer_json_file": _Spec("peers: durable single-key writes",
                            "a JSON file rewritten atomically per change (tmp + fsync + os.replace + dir fsync)",
                            "ops/s", 1.0, "higher"),
    # issue 6: the PostgreSQL store against raw psycopg, one commit per write (the targets are those of
    # the SQLite durable rows: a durable write costs at most a little more than one raw commit)
    "pg_durable_set": _Spec("PostgreSQL: durable set, 1 thread, immediate",
                            "one raw psycopg commit per write (autocommit INSERT), same blob size", "ops/s", 0.7,
                            "higher"),
    # issue 13: what history and the change feed cost, and how fast they read
    "feed_write_cost": _Spec("durable set with history='all' and the change feed, 1 thread, immediate",
                             "the same writes with neither (history='recovery', feed=False)", "ops/s", 0.87,
                             "higher"),
    "feed_write_cost_16_threads": _Spec("the same, 16 threads on 16 contexts (group commit)",
                                        "the same writes with neither", "ops/s", 0.87, "higher"),
    "pg_feed_write_cost_16_threads": _Spec(
        "PostgreSQL: durable set with the change feed (its one counter row), 16 threads on 16 contexts",
        "the same writes without the feed", "ops/s", 0.87, "higher"),
    "feed_read": _Spec("a consumer catching up: system.changes() entries (decoded, verified)",
                       "a raw indexed range scan of the same feed table (rows, not decoded)", "entries/s", 0.1,
                       "higher"),
    "state_at_1000": _Spec("manager.state_at 1,000 versions back from the newest snapshot",
                           "raw rebuild: the snapshot row and 1,000 journal rows read, decompressed, JSON-decoded "
                           "and applied to a dict", "ms", 2.0, "lower"),
    "pg_durable_32_threads": _Spec("PostgreSQL: durable set, 32 threads on 32 contexts, immediate",
                                   "32 threads, each on its own psycopg connection, one commit per write, same "
                                   "blob size", "ops/s", 0.5, "higher"),
    # issue 15: a call forwarded to the owning process over NATS, against a bare nats-py request/reply
    # round trip with the same payload sizes (the target is the issue's), and against a local call
    "fwd_throughput": _Spec("forwarded set (owner in another system), 8 threads",
                            "bare NATS request/reply, same payload sizes, 8 threads", "ops/s", 0.6, "higher"),
    "fwd_latency_median": _Spec("forwarded set, 1 thread: median latency", "bare NATS round trip: median",
                                "ms", 1 / 0.6, "lower"),
    "fwd_latency_p99": _Spec("forwarded set, 1 thread: p99 latency", "bare NATS round trip: p99", "ms", 1 / 0.6,
                             "lower"),
    "fwd_vs_local": _Spec("forwarded set, 8 threads", "the same set by the owner itself (a local call), 8 threads",
                          "ops/s", 0.0, "higher"),
}
# issue 14's rows (self-contained: their measures are in the "issue 14" section below)
_SPECS.update({
    "metrics_1000": _Spec("system.metrics() with 1,000 active contexts (no message sent)",
                          "reading and summing 1,000 plain counter sets (a dict of call kinds and a 23-bucket "
                          "histogram each) in Python", "ms", 3.0, "lower"),
    "compression_dict": _Spec("compression ratio of 1 KB session-like states, with the store's trained zstd "
                              "dictionary", "the same states with zstd alone (no dictionary)", "x", 2.0, "higher"),
    "compression_write": _Spec("encoding 1 KB session-like states with the dictionary (write path)",
                               "the same with zstd alone", "states/s", 0.8, "higher"),
    "events_delivery": _Spec("StateChanged delivered to one callable subscriber (emitted as after a commit)",
                             "a pykka tell loop to a bare actor carrying the same event objects", "events/s",
                             0.5, "higher"),
    "events_latency": _Spec("change-to-callback latency of StateChanged (the commit included), median "
                            "(durable set, immediate)",
                            "one SQLite FULL commit of the same journal blob", "ms", 2.0, "lower"),
    "peer_diskcache_16_threads": _Spec("peers: durable writes, 16 threads on 16 contexts",
                                       "diskcache Cache.set, 16 threads on 16 keys, equal sync settings",
                                       "ops/s", 2.0, "higher"),
    "peer_sqlitedict": _Spec("peers: durable single-key writes", "sqlitedict, autocommit, WAL, synchronous=FULL",
                             "ops/s", 1.0, "higher"),
    "peer_sqlitedict_16_threads": _Spec("peers: durable writes, 16 threads on 16 contexts",
                                        "sqlitedict, 16 threads on 16 keys, autocommit, WAL, synchronous=FULL",
                                        "ops/s", 2.0, "higher"),
})


def _row(name: str, values: Sequence[float], floors: Sequence[float], note: str = "") -> BenchRow:
    spec = _SPECS[name]
    value, floor = statistics.median(values), statistics.median(floors)
    ratio = value / floor if floor else float("inf")
    meets = ratio >= spec.target if spec.better == "higher" else ratio <= spec.target
    return BenchRow(name, spec.measure, spec.floor_name, value, floor, spec.unit, ratio, spec.target, spec.better,
                    meets, note, tuple(values), tuple(floors))


def _skipped(name: str, note: str) -> BenchRow:
    spec = _SPECS[name]
    return BenchRow(name, spec.measure, spec.floor_name, None, None, spec.unit, None, spec.target, spec.better,
                    None, note)


@attrs.define
class _Run:
    """Settings and scratch space shared by the measures of one run."""

    quick: bool
    workdir: str
    series: list[Series] = attrs.Factory(list)
    rounds_wanted: int | None = None  # None: 5 with quick, else 15

    def n(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    @property
    def rounds(self) -> int:
        if self.rounds_wanted is not None:
            return self.rounds_wanted
        return 5 if self.quick else 15

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def system(self, store: str | None, durability: str, **config: Any) -> ContextSystem:
        return open_system(store, manager_config=ContextManagerConfig(durability=durability, **config),
                           adapter_config=_NO_DEFAULT)


# -- the measures -------------------------------------------------------------------------------------
def _sync_set(run: _Run) -> list[BenchRow]:
    n = run.n(2_000, 10_000)
    items = _items(n)
    system = run.system(None, "none")
    bare = _BareActor.start()
    try:
        tracker = system.adapter.activate("bench")
        proxy = bare.proxy()

        def hoard() -> float:
            tset = tracker.set
            return _rate(n, lambda: [tset(k, v) for k, v in items])

        def floor() -> float:
            pset = proxy.set
            return _rate(n, lambda: [pset(k, v).get(timeout=30) for k, v in items])

        values, floors = _rounds(run.rounds, hoard, floor)
    finally:
        bare.stop()
        system.stop()
    return [_row("sync_set", values, floors, f"{n} calls a round, mixed values, 100 keys")]


def _get(run: _Run) -> list[BenchRow]:
    n = run.n(200_000, 1_000_000)
    data = _mapping(100)
    keys = [_key(i % 100) for i in range(n)]
    system = run.system(None, "none")
    try:
        system.manager.create("bench", data)
        tracker = system.adapter.activate("bench")
        plain = _PlainReader(data)

        def hoard() -> float:
            get = tracker.get
            return _rate(n, lambda: [get(k) for k in keys])

        def floor() -> float:
            get = plain.get
            return _rate(n, lambda: [get(k) for k in keys])

        values, floors = _rounds(run.rounds, hoard, floor)
    finally:
        system.stop()
    return [_row("get", values, floors, f"{n} reads a round")]


def _pipelined(run: _Run) -> list[BenchRow]:
    n = run.n(1_000, 5_000)
    items = _items(n)
    system = run.system(None, "none")
    bare = _BareActor.start()
    try:
        tracker = system.adapter.activate("bench")
        proxy = bare.proxy()

        def hoard() -> float:
            def go() -> None:
                set_async = tracker.set_async
                futures = [set_async(k, v) for k, v in items]
                pykka.get_all(futures, timeout=60)
            return _rate(n, go)

        def floor() -> float:
            def go() -> None:
                pset = proxy.set
                futures = [pset(k, v) for k, v in items]
                pykka.get_all(futures, timeout=60)
            return _rate(n, go)

        values, floors = _rounds(run.rounds, hoard, floor)
    finally:
        bare.stop()
        system.stop()
    return [_row("pipelined", values, floors,
                 f"{n} writes a round: tracker.set_async(k, v) futures, then pykka.get_all (durability none)")]


def _update(run: _Run) -> list[BenchRow]:
    calls = run.n(20, 100)
    mappings = [_mapping(1_000, offset=c) for c in range(calls)]
    system = run.system(None, "none")
    try:
        tracker = system.adapter.activate("bench")

        def hoard() -> float:
            update = tracker.update
            return _rate(calls * 1_000, lambda: [update(m) for m in mappings])

        def floor() -> float:
            def go() -> None:
                for m in mappings:
                    d: dict[str, Any] = {}
                    for k, v in m.items():
                        d[k] = v
            return _rate(calls * 1_000, go)

        values, floors = _rounds(run.rounds, hoard, floor)
    finally:
        system.stop()
    return [_row("update_1000", values, floors, f"{calls} calls of 1,000 mixed values a round, durability none")]


def _big_state(run: _Run) -> list[BenchRow]:
    sizes = [10, 100_000] if run.quick else [10, 1_000, 10_000, 100_000]
    n = run.n(2_000, 5_000)
    system = run.system(None, "none")
    try:
        trackers = {}
        for size in sizes:
            system.manager.create(f"ctx{size}", _mapping(size))
            trackers[size] = system.adapter.activate(f"ctx{size}")
        items = _items(n, keys=10)  # keys present in every context: each set replaces a value

        def side(size: int) -> Callable[[], float]:
            def go() -> float:
                tset = trackers[size].set
                return _rate(n, lambda: [tset(k, v) for k, v in items])
            return go

        samples = _rounds(run.rounds, *(side(s) for s in sizes))
    finally:
        system.stop()
    medians = [statistics.median(s) for s in samples]
    run.series.append(Series("sync set vs context size (durability none)", "keys in the context", "ops/s",
                             tuple(float(s) for s in sizes), tuple(medians)))
    return [_row("set_100k", samples[-1], samples[0], f"{n} calls a round, durability none")]


def _durable_set(run: _Run) -> list[BenchRow]:
    n = run.n(200, 1_000)
    items = _items(n)
    codec = Codec()
    # the floor commits exactly the journal blobs hoard writes for these changes
    blobs = [codec.encode_change(Change(i + 2, time.time(), {k: v})) for i, (k, v) in enumerate(items)]
    system = run.system(run.path("durable.db"), "immediate", sync="full")
    db = sqlite3.connect(run.path("floor.db"), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchone()
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE journal (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
        tracker = system.adapter.activate("bench")

        def hoard() -> float:
            tset = tracker.set
            return _rate(n, lambda: [tset(k, v) for k, v in items])

        def floor() -> float:
            ex = db.execute
            return _rate(n, lambda: [ex("INSERT INTO journal (blob) VALUES (?)", (b,)) for b in blobs])

        values, floors = _rounds(run.rounds, hoard, floor)
    finally:
        db.close()
        system.stop()
    size = statistics.mean(len(b) for b in blobs)
    return [_row("durable_set", values, floors,
                 f"{n} writes a round; SQLite WAL, sync=full; blobs of {size:.0f} B on average")]


def _parallel_rate(workers: Sequence[Any], per_thread: int, work: Callable[[Any], None], name: str) -> float:
    """Aggregate rate of one thread per worker, all released at once by a barrier: `work(worker)` does
    `per_thread` operations. The first error of any thread is re-raised here."""
    start = threading.Barrier(len(workers) + 1)
    errors: list[BaseException] = []

    def body(worker: Any) -> None:
        try:
            start.wait(30)
            work(worker)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(w,), name=f"{name}-{i}") for i, w in enumerate(workers)]
    for th in threads:
        th.start()
    start.wait(30)
    t0 = time.perf_counter()
    for th in threads:
        th.join(120)
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return len(workers) * per_thread / elapsed


def _threaded_rate(trackers: Sequence[Any], per_thread: int, items: Sequence[tuple[str, Any]]) -> float:
    """Aggregate set rate of one thread per tracker, all released at once by a barrier."""

    def work(tracker: Any) -> None:
        tset = tracker.set
        for k, v in items[:per_thread]:
            tset(k, v)

    return _parallel_rate(trackers, per_thread, work, "bench-writer")


def _durable_threads(run: _Run) -> list[BenchRow]:
    threads = 32
    per_thread = run.n(25, 100)
    items = _items(per_thread)
    durable = run.system(run.path("threads-durable.db"), "immediate", sync="full")
    volatile = run.system(run.path("threads-none.db"), "none")
    try:
        t_durable = [durable.adapter.activate(f"c{i}") for i in range(threads)]
        t_none = [volatile.adapter.activate(f"c{i}") for i in range(threads)]
        values, floors = _rounds(run.rounds, lambda: _threaded_rate(t_durable, per_thread, items),
                                 lambda: _threaded_rate(t_none, per_thread, items))
        counts = [1, 32] if run.quick else [1, 4, 8, 16, 32]
        scaling = [statistics.median(_threaded_rate(t_durable[:c], per_thread, items) for _ in range(3))
                   for c in counts]
    finally:
        durable.stop()
        volatile.stop()
    run.series.append(Series("durable set, aggregate over threads (1 context each)", "threads", "ops/s",
                             tuple(float(c) for c in counts), tuple(scaling)))
    return [_row("durable_32_threads", values, floors,
                 f"{per_thread} writes per thread a round; SQLite sync=full; group commit")]


def _raw_codec(path: str) -> Codec:
    """storage's codec for the raw floors, which read a store's rows without hoard's store: with the
    store's zstd dictionaries (read straight from its table) when it trained any."""
    codec = Codec()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT blob FROM dictionaries ORDER BY version").fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        db.close()
    for (blob,) in rows:
        content = codec.unframe(KIND_DICTIONARY, blob)
        codec.add_dictionary(zstandard.ZstdCompressionDict(content).dict_id(), content, newest=True)
    return codec


def _raw_payload(blob: bytes, codec: Codec, kind: int) -> bytes:
    """The verified payload of a stored blob, through storage's codec (header, checksum, zstd): the
    floors read rows without hoard's store, but never parse its blob format themselves."""
    return codec.unframe(kind, blob)


def _build_big_context(path: str, keys: int, journal: int) -> None:
    store = SQLiteStore(path, sync="normal")
    store.open()
    try:
        now = time.time()
        state = new_state("big", freeze_mapping(_mapping(keys)), now=now)
        ops: list[Any] = [CreateContext(state)]
        for i in range(journal):
            k = _key(i % keys)
            ops.append(Append("big", Change(i + 2, now + i / 1000, freeze_mapping({k: _value(i + keys)}))))
        store.commit(ops)
    finally:
        store.close()


def _activation(run: _Run) -> list[BenchRow]:
    keys, journal = 10_000, 1_000
    template = run.path("activation-template.db")
    _build_big_context(template, keys, journal)
    codec = _raw_codec(template)
    copy = run.path("activation.db")

    def fresh_copy() -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(copy + suffix):
                os.remove(copy + suffix)
        shutil.copyfile(template, copy)

    def hoard() -> float:
        fresh_copy()  # passivation writes a new snapshot: every round starts from the same data
        system = run.system(copy, "immediate")
        try:
            return _elapsed(lambda: system.adapter.activate("big")) * 1e3
        finally:
            system.stop()

    def floor() -> float:
        fresh_copy()
        db = sqlite3.connect(copy, isolation_level=None)
        try:
            def read() -> None:
                version, blob = db.execute("SELECT version, blob FROM snapshots WHERE context_id=? "
                                           "ORDER BY version DESC LIMIT 1", ("big",)).fetchone()
                orjson.loads(_raw_payload(blob, codec, KIND_STATE))
                for (entry,) in db.execute("SELECT blob FROM journal WHERE context_id=? AND version>? "
                                           "ORDER BY version", ("big", version)):
                    orjson.loads(_raw_payload(entry, codec, KIND_CHANGE))
            return _elapsed(read) * 1e3
        finally:
            db.close()

    values, floors = _rounds(run.rounds, hoard, floor)
    return [_row("activation_10k", values, floors,
                 "time of adapter.activate on a freshly opened store (file in the page cache)")]


def _build_many(path: str, count: int) -> None:
    store = SQLiteStore(path, sync="normal")
    store.open()
    try:
        now = time.time()
        batch: list[Any] = []
        for i in range(count):
            batch.append(CreateContext(new_state(f"ctx-{i:06d}", {"n": i, "name": f"c{i}"}, now=now)))
            if len(batch) == 10_000:
                store.commit(batch)
                batch = []
        store.commit(batch)
    finally:
        store.close()


def _open_store(run: _Run) -> list[BenchRow]:
    big = 100_000
    counts = [100, big] if run.quick else [100, 1_000, 10_000, big]
    paths = {}
    for c in counts:
        paths[c] = run.path(f"open-{c}.db")
        _build_many(paths[c], c)

    def side(count: int) -> Callable[[], float]:
        def go() -> float:
            t0 = time.perf_counter()
            system = run.system(paths[count], "immediate")
            elapsed = time.perf_counter() - t0
            system.stop()
            return elapsed * 1e3
        return go

    samples = _rounds(run.rounds + 2, *(side(c) for c in counts))
    run.series.append(Series("open_system() time vs contexts in the store", "contexts", "ms",
                             tuple(float(c) for c in counts), tuple(statistics.median(s) for s in samples)))
    return [_row("open_100k", samples[-1], samples[0], "time of open_system() (no default context) on a SQLite file")]


def _rss_child(mode: str, contexts: int, keys: int) -> int:
    """Runs in a child process: RSS growth (bytes) for `contexts` x `keys` in hoard or in the floor."""
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    gc.collect()
    before = rss()
    if mode == "hoard":
        system = open_system(None, manager_config=ContextManagerConfig(durability="none"),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False,
                                                                 max_active_contexts=contexts + 1))
        try:
            for i in range(contexts):
                system.adapter.create_and_activate(f"c{i}", _mapping(keys, offset=i))
            gc.collect()
            return rss() - before
        finally:
            system.stop()
    held = []
    try:
        for i in range(contexts):
            ref = _BareActor.start()
            held.append((ref, _mapping(keys, offset=i)))
        gc.collect()
        return rss() - before
    finally:
        pykka.ActorRegistry.stop_all(block=True, timeout=30)


def _rss(run: _Run) -> list[BenchRow]:
    if not os.path.exists("/proc/self/statm"):
        return [_skipped("rss_1000", "skipped: needs /proc (Linux)")]
    contexts, keys = 1_000, 100

    def child(mode: str) -> float:
        argv = [sys.executable, "-m", "hoard._bench", "rss", mode, str(contexts), str(keys)]
        out = subprocess.run(argv,  # noqa: S603 - our own interpreter and module, fixed arguments
                             capture_output=True, text=True, timeout=300, check=False)
        if out.returncode != 0:
            raise HoardError(f"RSS child ({mode}) failed: {out.stderr.strip()[-500:]}")
        return int(out.stdout.strip().splitlines()[-1]) / 2**20

    rounds = 1 if run.quick else 3
    values, floors = _rounds(rounds, lambda: child("hoard"), lambda: child("floor"), warmup=False)
    return [_row("rss_1000", values, floors, "RSS growth of a fresh child process (durability none)")]


def _atomic_json_writes(path: str, doc: dict[str, Any], items: Sequence[tuple[str, Any]]) -> Callable[[], float]:
    """The JSON-file peer: each change rewrites the whole document atomically and durably
    (temp file, fsync, os.replace, fsync of the directory), as STYLE.md's storage section says."""
    directory = os.path.dirname(path)
    tmp = path + ".tmp"

    def go() -> None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            for k, v in items:
                doc[k] = v
                with open(tmp, "wb") as f:
                    f.write(orjson.dumps(doc))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return lambda: _rate(len(items), go)


def _open_diskcache(directory: str, doc: dict[str, Any]) -> Any:
    """A diskcache `Cache` at synchronous=FULL (its default is NORMAL; FULL matches hoard's
    sync="full"), filled with `doc`; None if diskcache is not installed (it is an optional extra)."""
    try:
        import diskcache  # noqa: PLC0415 - optional: pip install 'hoard-contexts[bench]'
    except ImportError:
        return None
    cache = diskcache.Cache(directory, sqlite_synchronous=2, sqlite_journal_mode="wal")
    for k, v in doc.items():
        cache.set(k, v)
    return cache


def _peers(run: _Run) -> list[BenchRow]:
    n = run.n(150, 1_000)
    keys = 100
    items = _items(n, keys)
    system = run.system(run.path("peer-hoard.db"), "immediate", sync="full")
    cache = _open_diskcache(run.path("diskcache"), _mapping(keys))
    try:
        system.manager.create("bench", _mapping(keys))
        tracker = system.adapter.activate("bench")

        def hoard() -> float:
            tset = tracker.set
            return _rate(n, lambda: [tset(k, v) for k, v in items])

        sides = [hoard, _atomic_json_writes(run.path("peer.json"), _mapping(keys), items)]
        if cache is not None:
            cset = cache.set
            sides.append(lambda: _rate(n, lambda: [cset(k, v) for k, v in items]))
        samples = _rounds(run.rounds, *sides)
    finally:
        if cache is not None:
            cache.close()
        system.stop()
    note = f"{n} single-key writes a round on a {keys}-key context; hoard: SQLite sync=full, immediate"
    if cache is None:
        first = _skipped("peer_diskcache", "skipped: diskcache is not installed (pip install 'hoard-contexts[bench]')")
    else:
        first = _row("peer_diskcache", samples[0], samples[2], note + "; diskcache: sqlite_synchronous=FULL, WAL")
    return [first, _row("peer_json_file", samples[0], samples[1], note)]


PG_DSN_ENV = "HOARD_BENCH_PG_DSN"
_PG_DSN_DEFAULT = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def _pg_unavailable(dsn: str) -> str | None:
    """Why the PostgreSQL rows cannot run (None: they can)."""
    try:
        import psycopg  # noqa: PLC0415 - the "postgres" extra is optional
    except ImportError:
        return "psycopg is not installed (pip install 'hoard-contexts[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL server answers at {dsn!r} (set {PG_DSN_ENV}): {first}"
    return None


def _pg_threads(conns: Sequence[Any], per_thread: int, blobs: Sequence[bytes], table: str) -> float:
    """Aggregate rate of one thread per raw connection, each INSERT its own commit (autocommit)."""
    sql = f"INSERT INTO {table} (blob) VALUES (%s)"  # noqa: S608 - our own table name

    def work(conn: Any) -> None:
        for b in blobs[:per_thread]:
            conn.execute(sql, (b,))

    try:
        return _parallel_rate(conns, per_thread, work, "bench-pg")
    except HoardError:
        raise
    except Exception as exc:
        raise HoardError(f"raw psycopg writer failed: {exc!r}") from exc


def _postgres(run: _Run) -> list[BenchRow]:
    """Durable sets on PostgreSQL (1 thread; 32 threads on 32 contexts) against raw psycopg commits of
    the same journal blobs, in a throwaway schema of the server of ``HOARD_BENCH_PG_DSN``."""
    names = ("pg_durable_set", "pg_durable_32_threads")
    dsn = os.environ.get(PG_DSN_ENV) or _PG_DSN_DEFAULT
    problem = _pg_unavailable(dsn)
    if problem is not None:
        return [_skipped(name, f"skipped: {problem}") for name in names]
    import psycopg  # noqa: PLC0415 - present: _pg_unavailable checked

    schema = f"hoard_bench_{uuid.uuid4().hex[:12]}"
    threads = 32
    n = run.n(100, 500)
    per_thread = run.n(10, 40)
    items = _items(max(n, per_thread))
    codec = Codec()
    blobs = [codec.encode_change(Change(i + 2, time.time(), {k: v})) for i, (k, v) in enumerate(items)]
    table = f'"{schema}".floor_journal'
    admin = psycopg.connect(dsn, autocommit=True)
    conns: list[Any] = []
    system = None
    try:
        # what open_system makes for a postgresql:// URL (require_lease=True); it creates the schema
        store = PostgresStore(dsn, schema=schema, require_lease=True)
        system = open_system(store, manager_config=ContextManagerConfig(durability="immediate"),
                             adapter_config=_NO_DEFAULT)
        admin.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, blob bytea NOT NULL)")
        admin.execute(f"ALTER TABLE {table} ALTER COLUMN blob SET STORAGE EXTERNAL")  # as hoard's journal
        one = system.adapter.activate("bench")
        many = [system.adapter.activate(f"c{i}") for i in range(threads)]
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]

        def hoard_one() -> float:
            tset = one.set
            return _rate(n, lambda: [tset(k, v) for k, v in items[:n]])

        def floor_one() -> float:
            ex = conns[0].execute
            sql = f"INSERT INTO {table} (blob) VALUES (%s)"  # noqa: S608 - our own table name
            return _rate(n, lambda: [ex(sql, (b,)) for b in blobs[:n]])

        values, floors = _rounds(run.rounds, hoard_one, floor_one)
        t_values, t_floors = _rounds(run.rounds, lambda: _threaded_rate(many, per_thread, items),
                                     lambda: _pg_threads(conns, per_thread, blobs, table))
        server = admin.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')"
                               ).fetchone()
    finally:
        for conn in conns:
            conn.close()
        if system is not None:
            system.stop()
        try:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            admin.close()
    size = statistics.mean(len(b) for b in blobs)
    version, sync = server if server is not None else ("?", "?")
    where = f"PostgreSQL {version}, synchronous_commit={sync}; blobs of {size:.0f} B on average"
    return [_row("pg_durable_set", values, floors, f"{n} writes a round; {where}"),
            _row("pg_durable_32_threads", t_values, t_floors,
                 f"{per_thread} writes per thread a round; hoard: one connection, group commit; {where}")]


NATS_URL_ENV = "HOARD_BENCH_NATS_URL"
_NATS_URL_DEFAULT = "nats://127.0.0.1:4222"
_FWD_ROWS = ("fwd_throughput", "fwd_latency_median", "fwd_latency_p99", "fwd_vs_local")
_FWD_THREADS = 8


def _nats_unavailable(url: str) -> str | None:
    """Why the forwarding rows cannot run (None: they can)."""
    try:
        import nats  # noqa: F401, PLC0415 - the "nats" extra is optional
    except ImportError:
        return "nats-py is not installed (pip install 'hoard-contexts[nats]')"
    host, _, port = url.partition("://")[2].partition(":")
    try:
        socket.create_connection((host, int(port or 4222)), timeout=2).close()
    except OSError as exc:
        return f"no NATS server answers at {url} (set {NATS_URL_ENV}): {exc}"
    return None


class _BareNats:
    """The floor of the forwarding rows: nats-py request/reply with nothing around it. A responder
    on one connection and event-loop thread answers every request at once with `reply`; requests go
    out on another connection and loop thread, from the calling threads, as hoard's forwarder does."""

    def __init__(self, url: str, reply: bytes) -> None:
        import nats  # noqa: PLC0415 - checked by _nats_unavailable

        self.subject = f"hoard.bench.{uuid.uuid4().hex}"
        self._loops = [asyncio.new_event_loop() for _ in range(2)]
        self._threads = [threading.Thread(target=loop.run_forever, name="bench-nats", daemon=True)
                         for loop in self._loops]
        for th in self._threads:
            th.start()

        async def respond(msg: Any) -> None:
            await msg.respond(reply)

        async def responder() -> Any:
            nc = await nats.connect(url)
            await nc.subscribe(self.subject, cb=respond)
            await nc.flush()
            return nc

        self._responder = asyncio.run_coroutine_threadsafe(responder(), self._loops[0]).result(10)
        self._requester = asyncio.run_coroutine_threadsafe(nats.connect(url), self._loops[1]).result(10)

    def request(self, payload: bytes) -> bytes:
        msg = asyncio.run_coroutine_threadsafe(self._requester.request(self.subject, payload, timeout=5),
                                               self._loops[1]).result(10)
        data: bytes = msg.data
        return data

    def close(self) -> None:
        for nc, loop in ((self._requester, self._loops[1]), (self._responder, self._loops[0])):
            asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        for loop, th in zip(self._loops, self._threads, strict=True):
            loop.call_soon_threadsafe(loop.stop)
            th.join(10)
            loop.close()


def _latencies(n: int, call: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _forwarding(run: _Run) -> list[BenchRow]:
    """A set on a context active in another system (same PostgreSQL schema, forwarding over NATS),
    against a bare nats-py round trip carrying the same request and reply sizes, and against the same
    set made by the owner itself. Both systems run in this process (durability deferred: the rows
    measure the call, not PostgreSQL's commit)."""
    dsn = os.environ.get(PG_DSN_ENV) or _PG_DSN_DEFAULT
    url = os.environ.get(NATS_URL_ENV) or _NATS_URL_DEFAULT
    problem = _pg_unavailable(dsn) or _nats_unavailable(url)
    if problem is not None:
        return [_skipped(name, f"skipped: {problem}") for name in _FWD_ROWS]
    import psycopg  # noqa: PLC0415 - present: _pg_unavailable checked

    schema = f"hoard_bench_{uuid.uuid4().hex[:12]}"
    per_thread = run.n(100, 400)
    n_lat = run.n(300, 1500)
    value = "x" * 100
    systems: list[ContextSystem] = []
    bare: _BareNats | None = None
    try:
        cfg = ContextManagerConfig(durability="deferred")
        for _ in range(2):
            systems.append(open_system(PostgresStore(dsn, schema=schema), manager_config=cfg,
                                       adapter_config=_NO_DEFAULT, forward_via=url))
        owner, caller = systems
        local = [owner.adapter.get_or_create(f"c{i}") for i in range(_FWD_THREADS)]
        remote = [caller.adapter.get_or_create(f"c{i}") for i in range(_FWD_THREADS)]
        remote[0].set("warm", value)
        # the same sizes on the wire as one forwarded set: its request and its answer
        request = _forwarded_request_size("c0", "k-000000", value)
        bare = _BareNats(url, orjson.dumps({"ok": {"v": 123456}, "lease": 5.0}))
        payload = b"x" * request
        floor_call = bare.request

        def sets(tracker: Any) -> None:
            tset = tracker.set
            for i in range(per_thread):
                tset(f"k-{i:06d}", value)

        def floor_work(_worker: Any) -> None:
            for _ in range(per_thread):
                floor_call(payload)

        fwd, floor, here = _rounds(
            run.rounds, lambda: _parallel_rate(remote, per_thread, sets, "bench-fwd"),
            lambda: _parallel_rate(range(_FWD_THREADS), per_thread, floor_work, "bench-nats"),
            lambda: _parallel_rate(local, per_thread, sets, "bench-local"))
        one = remote[0].set
        lat_fwd = _latencies(n_lat, lambda i: one(f"l-{i:06d}", value))
        lat_floor = _latencies(n_lat, lambda _i: floor_call(payload))
        mine = local[0].set
        lat_local = _latencies(n_lat, lambda i: mine(f"m-{i:06d}", value))
    finally:
        if bare is not None:
            bare.close()
        for system in reversed(systems):
            system.stop()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    note = (f"{_FWD_THREADS} threads x {per_thread} sets a round, each on its own context; request {request} B; "
            f"both systems and the bare responder in this process; NATS at {url}")
    lat_note = (f"{n_lat} sequential calls; request {request} B; the same set as a local call (by the owner): "
                f"median {statistics.median(lat_local):.3g} ms, p99 {_p99(lat_local):.3g} ms")
    return [_row("fwd_throughput", fwd, floor, note),
            _row("fwd_latency_median", [statistics.median(lat_fwd)], [statistics.median(lat_floor)], lat_note),
            _row("fwd_latency_p99", [_p99(lat_fwd)], [_p99(lat_floor)], lat_note),
            _row("fwd_vs_local", fwd, here, note + "; reported against a local call, no target")]


def _forwarded_request_size(context_id: str, key: str, value: Any) -> int:
    """Bytes of the NATS request one forwarded ``set(key, value)`` sends."""
    message = with_request_id(SetMessage(key, value))
    return len(orjson.dumps({"k": "msg", "id": context_id, "m": encode_message(message), "t": 5.0}))
# -- issue 16: broker bridges (the work is in _bench_bridges; this builds the rows) ----------------------
_BRIDGE_KINDS = ("nats", "mqtt", "amqp", "redis")
_BRIDGE_NAMES = {"nats": "NATS JetStream", "mqtt": "MQTT QoS 1", "amqp": "AMQP confirms", "redis": "Redis XADD"}
for _kind in _BRIDGE_KINDS:
    _SPECS[f"relay_{_kind}"] = _Spec(
        f"relay to {_BRIDGE_NAMES[_kind]}: feed -> broker -> offset commit",
        "the same client publishing the same messages in a bare loop, same acks and batches", "msgs/s", 0.7,
        "higher")
    _SPECS[f"relay_latency_{_kind}"] = _Spec(
        f"relay to {_BRIDGE_NAMES[_kind]}: change to broker receipt, median under a steady load",
        "the same client's publish to receipt, same rate", "ms", 20.0, "lower")


def _bridges(run: _Run) -> list[BenchRow]:
    rows: list[BenchRow] = []
    n, writes, rate, rounds = run.n(1_000, 5_000), run.n(50, 1_000), 200.0, run.n(1, 3)
    with run.system(run.path("bridges.db"), "immediate") as system:
        system.consumer("bench-anchor")  # registered at 0, never committing: retention keeps every entry
        trackers = [system.adapter.get_or_create(f"c{i}") for i in range(10)]
        for i in range(n - len(trackers)):
            trackers[i % 10].update({"n": i, "v": _value(i)})
        entries = list(system.changes(after=0, timeout=0))

        def messages(template: str) -> list[Any]:
            return [Outgoing(render_subject(template, e.context_id), change_body(e), message_id(e)) for e in entries]

        # every throughput row first: a latency row writes 1,000 changes to this system's feed, which
        # a later kind's relay (reading the feed from its start) would publish on top of the
        # `entries` its floor publishes (the Redis relay published 8,003 entries a round for 5,000)
        problems = {kind: broker_problem(kind) for kind in _BRIDGE_KINDS}
        throughput: dict[str, BenchRow] = {}
        for kind in (k for k in _BRIDGE_KINDS if problems[k] is None):
            retries: list[int] = []
            relay_side, bare_side = throughput_sides(kind, system, messages, len(entries), retries)
            sides = (relay_side, bare_side)
            other = [plain_xadd_side(messages)] if kind == "redis" else []
            if kind == "amqp":  # every floor keeps the relay's batch in flight ("same acks and batches"),
                # as NATS's futures, MQTT's in-flight window and Redis's pipeline do; pika's blocking
                # channel, which awaits each confirm before the next publish, is the second reference
                sides, other = (relay_side, publisher_side(kind, messages)), [bare_side]
            # warm-up round first: without it the relay's first round alone imported the broker's client
            # (its backend loads it lazily), and the floor, run after it, never paid that
            values, floors, *others = _rounds(rounds, *sides, *other)
            also = "" if not others else ({
                "redis": "; the floor pipelines each batch of 256 XADDs; against redis-py's plain loop (one XADD, "
                         "its reply awaited, then the next: median {:,.0f} msgs/s) the relay is {:.2f}x",
                "amqp": "; the floor is pika itself (SelectConnection, basic_publish) publishing the same "
                        "pre-encoded messages in the relay's batches of 256, confirms in flight and all awaited "
                        "per batch; "
                        "against pika's blocking channel (each confirm awaited before the next publish: median "
                        "{:,.0f} msgs/s) the relay is {:.2f}x",
            }[kind].format(statistics.median(others[0]), statistics.median(values) / statistics.median(others[0])))
            throughput[kind] = _row(f"relay_{kind}", values, floors, f"{len(entries)} feed entries a round "
                                    "(SQLite, sync=full), batches of 256; connect included on both sides; broker "
                                    f"failures (batch published again) per round: {retries}{also}")
        for kind in _BRIDGE_KINDS:
            problem = problems[kind]
            if problem is not None:
                rows += [_skipped(f"relay_{kind}", problem), _skipped(f"relay_latency_{kind}", problem)]
                continue
            rows.append(throughput[kind])
            failures: list[int] = []
            relay_lat, bare_lat = latency_sides(kind, system, writes, rate, failures)
            lat, bare = relay_lat(), bare_lat()
            rows.append(_row(f"relay_latency_{kind}", [lat[0]], [bare[0]],
                             f"p99 {lat[1]:.1f} ms (bare {bare[1]:.2f} ms; the writes' own commit: p99 "
                             f"{lat[2]:.1f} ms); "
                             f"{writes} durable writes at {rate:.0f}/s, "
                             "from the change's time (set as it is applied, before its commit) to a subscriber; "
                             f"relay broker failures: {failures[0]}"))
    return rows


# -- issue 14 -----------------------------------------------------------------------------------------
def _metrics_scale(run: _Run) -> list[BenchRow]:
    """`metrics()` over 1,000 live context actors (each with counted calls) against summing the same
    number of plain counter sets: what reading the published meters costs beyond the arithmetic."""
    contexts = 1_000
    calls = 5  # metrics() calls per round (the round's sample is their mean)
    system = open_system(None, manager_config=ContextManagerConfig(durability="none"),
                         adapter_config=ContextAdapterConfig(auto_activate_default=False,
                                                             max_active_contexts=contexts + 1))
    plain = [({"set": 1, "get": 2}, [0] * 23) for _ in range(contexts)]

    def floor_read() -> None:
        total: dict[str, int] = {}
        for kinds, _ in plain:
            for kind, n in kinds.copy().items():
                total[kind] = total.get(kind, 0) + n
        tuple(map(sum, zip(*[tuple(b) for _, b in plain], strict=True)))

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        return lambda: _elapsed(lambda: [fn() for _ in range(calls)]) / calls * 1e3

    try:
        for i in range(contexts):
            t = system.adapter.activate(f"m{i}")
            t.set("k", i)
            t.get("k")
        values, floors = _rounds(run.rounds, timed(system.metrics), timed(floor_read))
        seen = system.metrics()
    finally:
        system.stop()
    if seen.active_contexts != contexts or seen.calls.get("set") != contexts:
        raise HoardError(f"metrics() read {seen.active_contexts} active contexts and {seen.calls} calls; "
                         f"expected {contexts} and {contexts} sets")
    median = statistics.median(values)
    return [_row("metrics_1000", values, floors,
                 f"{median:.1f} ms median (target <= 10 ms); {calls} calls a round; load average "
                 f"{os.getloadavg()[0]:.1f}")]


def _session(i: int) -> dict[str, Any]:
    """A web-session-like state of about 1 KB: the same keys in every context, different values."""
    r = random.Random(i)  # noqa: S311 - reproducible bench data
    return {
        "user_id": r.randint(1, 10**6), "user_name": f"user{r.randint(1, 99999)}",
        "email": f"u{r.randint(1, 99999)}@example.com", "roles": ["reader", "writer", "admin"][: r.randint(1, 3)],
        "cart": [{"sku": f"SKU-{r.randint(1000, 9999)}", "qty": r.randint(1, 5), "price": round(r.random() * 100, 2),
                  "title": r.choice(["Blue mug", "Red chair", "Green lamp", "Desk", "Notebook"])}
                 for _ in range(r.randint(5, 8))],
        "last_page": f"/products/{r.randint(1, 500)}", "locale": r.choice(["en-US", "de-DE", "fr-FR"]),
        "csrf_token": f"{r.getrandbits(128):032x}", "flags": {"beta": r.random() < 0.5, "dark_mode": r.random() < 0.5},
        "started_at": 1.7e9 + r.random() * 1e6, "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0",
    }


def _compression(run: _Run) -> list[BenchRow]:
    """1 KB session states: stored bytes with the dictionary a store trains from its own blobs (after
    `DICTIONARY_AFTER` writes) against zstd alone, and what encoding them costs either way."""
    trained = SQLiteStore(run.path("dict.db"), sync="normal", dictionary=False)
    trained.open()
    try:
        trained.commit([CreateContext(new_state(f"s{i}", freeze_mapping(_session(i)), now=time.time()))
                        for i in range(1_000)])
        if trained.train_dictionary() is None:
            raise HoardError("no dictionary could be trained from 1,000 session states")
        with_dict = trained.codec
    finally:
        trained.close()
    plain = Codec()
    first = 1_000  # states the dictionary never saw
    states = [new_state(f"t{i}", freeze_mapping(_session(i)), now=time.time())
              for i in range(first, first + run.n(500, 2_000))]
    raw = sum(len(orjson.dumps(plain.converter.unstructure(st))) for st in states)
    sizes = {name: sum(len(c.encode_state(st)) for st in states) for name, c in (("dict", with_dict), ("plain", plain))}
    ratio_dict, ratio_plain = raw / sizes["dict"], raw / sizes["plain"]

    def encoder(codec: Codec) -> Callable[[], float]:
        enc = codec.encode_state
        return lambda: _rate(len(states), lambda: [enc(st) for st in states])

    values, floors = _rounds(run.rounds, encoder(with_dict), encoder(plain))
    avg = raw / len(states)
    note = (f"{len(states)} states of {avg:.0f} B on average (raw JSON / stored blob, headers included): "
            f"{ratio_dict:.2f}x with the dictionary, {ratio_plain:.2f}x without")
    return [_row("compression_dict", [ratio_dict], [ratio_plain], note),
            _row("compression_write", values, floors, f"{len(states)} encodes a round (orjson + zstd level 3)")]


def _open_sqlitedict(path: str) -> Any:
    """A sqlitedict at hoard's sync="full": WAL, autocommit (each write waits for its commit), and
    synchronous=FULL set on its connection (sqlitedict itself sets OFF, which syncs nothing); None if
    sqlitedict is not installed."""
    try:
        import sqlitedict  # noqa: PLC0415 - optional: pip install 'hoard-contexts[bench]'
    except ImportError:
        return None
    d = sqlitedict.SqliteDict(path, autocommit=True, journal_mode="WAL")
    d.conn.execute("PRAGMA synchronous=FULL")  # runs on its worker thread, after its own OFF
    if d.conn.select_one("PRAGMA synchronous")[0] != 2:
        d.close()
        raise HoardError("could not set sqlitedict's connection to synchronous=FULL")
    return d


class _Counter(pykka.ThreadingActor):
    """The events floor: counts told messages and sets `done` at the n-th."""

    def __init__(self, n: int, done: threading.Event) -> None:
        super().__init__()
        self.n, self.seen, self.done = n, 0, done

    def on_receive(self, message: Any) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.done.set()


def _event_delivery(run: _Run) -> tuple[list[float], list[float], int]:
    """StateChanged to one callable subscriber against pykka tells of the same event objects to a bare
    counting actor: (values, floors, events a round). The events are emitted into the system's event
    path as a context actor emits them after a commit (emitter -> the subscription's queue ->
    subscriber actor -> callable), so the writes that would cause them are not part of the figure."""
    n = run.n(1_000, 5_000)
    items = _items(n)
    system = run.system(None, "none")
    try:
        system.adapter.activate("ev")
        got: list[Any] = []
        want = [0]
        dones = [threading.Event()]

        def on_event(event: Any) -> None:
            got.append(event)
            if len(got) >= want[0]:
                dones[-1].set()

        sub = system.subscribe(on_event, context_id="ev", kinds=[StateChanged])

        emit = system._events  # noqa: SLF001 - the emitter context actors publish through
        changes = [(i + 2, (k,)) for i, (k, _) in enumerate(items)]

        def hoard() -> float:
            got.clear()
            want[0] = n
            dones.append(threading.Event())
            t0 = time.perf_counter()
            for version, changed in changes:
                emit(StateChanged, "ev", version=version, changed=changed, removed=())
            if not dones[-1].wait(60):
                raise HoardError(f"events: {len(got)} of {n} StateChanged delivered within 60 s")
            return n / (time.perf_counter() - t0)

        hoard()
        payload = list(got)  # the same event objects, for the floor

        def floor() -> float:
            done = threading.Event()
            ref = _Counter.start(n, done)
            try:
                t0 = time.perf_counter()
                for event in payload:
                    ref.tell(event)
                if not done.wait(60):
                    raise HoardError("events floor: tells not delivered within 60 s")
                return n / (time.perf_counter() - t0)
            finally:
                ref.stop()

        values, floors = _rounds(run.rounds, hoard, floor)
        sub.cancel()
    finally:
        system.stop()
    return values, floors, n


def _event_latency(run: _Run) -> tuple[list[float], list[float], int]:
    """Durable sets one at a time; the callback notes ``time.time() - event.at``. The event is stamped
    when the context actor applies the change, before its hand-off to persistence, so each latency
    holds the hand-off, the commit and the delivery (the issue's "commit-to-callback" plus the hop
    before the commit): (latencies in ms, raw SQLite FULL commit times in ms, sets)."""
    m = run.n(100, 400)
    lat: list[float] = []
    arrived = threading.Event()

    def on_durable(event: Any) -> None:
        lat.append((time.time() - event.at) * 1e3)
        arrived.set()

    durable = run.system(run.path("events.db"), "immediate", sync="full")
    try:
        tracker = durable.adapter.activate("lat")
        sub = durable.subscribe(on_durable, context_id="lat", kinds=[StateChanged])
        for k, v in _items(m):
            arrived.clear()
            tracker.set(k, v)
            if not arrived.wait(30):
                raise HoardError("events: a durable set's StateChanged did not arrive within 30 s")
        sub.cancel()
    finally:
        durable.stop()
    codec = Codec()
    blobs = [codec.encode_change(Change(i + 2, time.time(), {k: v})) for i, (k, v) in enumerate(_items(m))]
    db = sqlite3.connect(run.path("events-floor.db"), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL").fetchone()
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE journal (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
        insert = functools.partial(db.execute, "INSERT INTO journal (blob) VALUES (?)")
        commits = [_elapsed(functools.partial(insert, (b,))) * 1e3 for b in blobs]
    finally:
        db.close()
    return lat, commits, m


def _events(run: _Run) -> list[BenchRow]:
    values, floors, n = _event_delivery(run)
    lat, commits, m = _event_latency(run)
    ordered = sorted(lat)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [_row("events_delivery", values, floors, f"{n} events a round, emitted as after a commit; the "
                                                    "subscriber runs in its own actor (a queue; one wake-up a burst)"),
            _row("events_latency", lat, commits,
                 f"{m} sets; latency median {statistics.median(lat):.2f} ms, p99 {p99:.2f} ms (the event's `at` "
                 "to the callback); floor: the median raw commit; target ratio chosen here (issue: report only)")]


@attrs.frozen
class SoakReport:
    """What `run_soak` measured.

    Attributes:
        minutes: how long it ran.
        activations: context activations in all (each of the distinct contexts, then re-activations
            of passivated ones).
        distinct: distinct contexts touched.
        hot_writes: writes to the hot set.
        rss_start_mib / rss_end_mib: resident memory of this process at the start and at the end.
        growth_per_100k: MiB of RSS growth per 100,000 activations after the warm-up: the slope of a
            least-squares fit of RSS on activations *and the number of active contexts* through the
            samples after it (see `_growth`); None with too few samples.
        samples: ``(activations, rss_mib, active_contexts)`` every sample, warm-up included.
        load_average: the machine's 1-minute load average at the end.
        rss_per_active_kib: KiB of RSS per active context, from the same fit (None with too few
            samples or no spread in the active count): what a live actor costs, not a leak.
    """

    minutes: float
    activations: int
    distinct: int
    hot_writes: int
    rss_start_mib: float
    rss_end_mib: float
    growth_per_100k: float | None
    samples: tuple[tuple[int, float, int], ...]
    load_average: float
    rss_per_active_kib: float | None = None


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_soak(minutes: float, *, workdir: str | None = None, distinct: int = 20_000, hot: int = 16,
             progress: Callable[[int, float], None] | None = None) -> SoakReport:
    """Run a daemon-like workload for `minutes` in this process and measure memory that grows.

    One system on a SQLite file (durability deferred, as a daemon would run it) with at most 200
    active contexts and idle passivation after 1 s: every round touches the next of `distinct`
    contexts once (a creation on the first pass, an activation of a passivated or evicted one
    after) and writes to the next of `hot` hot contexts. RSS and the number of active contexts are
    sampled every 500 activations; the first third of the run is the warm-up (caches, the store's
    page cache, interned strings).
    Blocks for `minutes`; the store is removed afterwards. `progress(activations, rss_mib)` is
    called at each sample.
    """
    deadline = time.monotonic() + minutes * 60
    warm_until = time.monotonic() + minutes * 20
    samples: list[tuple[int, float, int]] = []
    warm: list[tuple[int, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="hoard-soak-", dir=workdir) as tmp:
        system = open_system(os.path.join(tmp, "soak.db"),
                             manager_config=ContextManagerConfig(durability="deferred"),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False, max_active_contexts=200,
                                                                 idle_timeout=1.0))
        start = _rss_mib()
        hot_writes = touched = 0
        try:
            hot_set = [system.adapter.activate(f"hot{i}") for i in range(hot)]
            next_sample = 500
            while time.monotonic() < deadline:
                system.adapter.get_or_create(f"c{touched % distinct}").set("seen", touched)
                touched += 1
                hot_set[touched % hot].set("n", hot_writes)
                hot_writes += 1
                metrics = system.metrics()
                activations = metrics.activations
                if activations >= next_sample:
                    next_sample += 500
                    gc.collect()
                    point = (activations, _rss_mib(), metrics.active_contexts)
                    samples.append(point)
                    if time.monotonic() >= warm_until:
                        warm.append(point)
                    if progress is not None:
                        progress(*point[:2])
            activations = system.metrics().activations
        finally:
            system.stop()
        end = _rss_mib()
    growth, per_active = _growth(warm)
    return SoakReport(minutes, activations, min(touched, distinct), hot_writes, start, end,
                      None if growth is None else growth * 100_000, tuple(samples), os.getloadavg()[0],
                      None if per_active is None else per_active * 1024)


def _growth(samples: Sequence[tuple[int, float, int]]) -> tuple[float | None, float | None]:
    """Least squares of RSS on activations and active contexts: (MiB per activation, MiB per active
    context). The active count matters: with idle passivation it follows the activation rate (a
    loaded machine keeps fewer contexts alive at once), and every live actor holds a thread and its
    state, so a swing of 50 live contexts over a 3-minute run used to read as tens of MiB "growth"
    per 100,000 activations (tests/cli/test_bench.py pins this). Without spread in the active count
    it is the plain slope on activations. (None, None) with fewer than 3 samples."""
    if len(samples) < 3:
        return None, None
    xs, ys, zs = ([float(a) for a, _, _ in samples], [r for _, r, _ in samples],
                  [float(n) for _, _, n in samples])
    mx, my, mz = statistics.fmean(xs), statistics.fmean(ys), statistics.fmean(zs)
    sxx = sum((x - mx) ** 2 for x in xs)
    szz = sum((z - mz) ** 2 for z in zs)
    sxz = sum((x - mx) * (z - mz) for x, z in zip(xs, zs, strict=True))
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    szy = sum((z - mz) * (y - my) for z, y in zip(zs, ys, strict=True))
    det = sxx * szz - sxz * sxz
    if szz > 0 and det > 1e-9 * sxx * szz:
        return (szz * sxy - sxz * szy) / det, (sxx * szy - sxz * sxy) / det
    return (sxy / sxx if sxx > 0 else None), None


def _rate_of_writes(write: Callable[[str, Any], Any], items: Sequence[tuple[str, Any]]) -> float:
    return _rate(len(items), lambda: [write(k, v) for k, v in items])


def _peers_concurrent(run: _Run) -> list[BenchRow]:
    """Durable writes against diskcache and sqlitedict at equal sync settings: 16 threads each on its
    own context (hoard) or key (peers), and sqlitedict from one thread (diskcache's 1-thread row is
    `peers`). Group commit is what should put hoard ahead under concurrency."""
    threads, per_thread = 16, run.n(20, 60)
    n = run.n(150, 1_000)
    items = _items(max(n, per_thread))
    system = run.system(run.path("peer16-hoard.db"), "immediate", sync="full")
    cache = _open_diskcache(run.path("peer16-diskcache"), {})
    sdict = _open_sqlitedict(run.path("peer16-sqlitedict.db"))
    rows: list[BenchRow] = []
    try:
        trackers = [system.adapter.activate(f"c{i}") for i in range(threads)]
        tracker = trackers[0]

        def hoard_16() -> float:
            return _threaded_rate(trackers, per_thread, items)

        def peer_16(write: Callable[[str, Any], Any]) -> Callable[[], float]:
            def work(key: str) -> None:
                for _, v in items[:per_thread]:
                    write(key, v)
            return lambda: _parallel_rate([f"k{i}" for i in range(threads)], per_thread, work, "bench-peer")

        def hoard_1() -> float:
            tset = tracker.set
            return _rate(n, lambda: [tset(k, v) for k, v in items[:n]])

        for name, store, write in (("diskcache", cache, None if cache is None else cache.set),
                                   ("sqlitedict", sdict, None if sdict is None else sdict.__setitem__)):
            if store is None or write is None:
                why = f"skipped: {name} is not installed (pip install 'hoard-contexts[bench]')"
                rows.append(_skipped(f"peer_{name}_16_threads", why))
                if name == "sqlitedict":
                    rows.insert(len(rows) - 1, _skipped("peer_sqlitedict", why))
                continue
            if name == "sqlitedict":
                single = _rounds(run.rounds, hoard_1, functools.partial(_rate_of_writes, write, items[:n]))
                rows.append(_row("peer_sqlitedict", single[0], single[1],
                                 f"{n} single-key writes a round; hoard: SQLite sync=full, immediate"))
            values, floors = _rounds(run.rounds, hoard_16, peer_16(write))
            rows.append(_row(f"peer_{name}_16_threads", values, floors,
                             f"{threads} threads x {per_thread} writes a round; hoard: SQLite sync=full, immediate, "
                             f"group commit; {name}: WAL, synchronous=FULL"))
    finally:
        if sdict is not None:
            sdict.close()
        if cache is not None:
            cache.close()
        system.stop()
    return rows


def _feed_cost(run: _Run) -> list[BenchRow]:
    """Durable sets with history='all' and the feed against the same sets with neither (SQLite,
    sync=full, immediate): 1 thread, and 16 threads on 16 contexts."""
    n = run.n(100, 1_000)
    items = _items(n)
    threads, per_thread = 16, run.n(15, 100)
    rows = []
    for name, with_threads in (("feed_write_cost", False), ("feed_write_cost_16_threads", True)):
        both = run.system(run.path(f"{name}-on.db"), "immediate", sync="full", history="all", feed=True)
        neither = run.system(run.path(f"{name}-off.db"), "immediate", sync="full", history="recovery", feed=False)
        try:
            if with_threads:
                t_on = [both.adapter.activate(f"c{i}") for i in range(threads)]
                t_off = [neither.adapter.activate(f"c{i}") for i in range(threads)]
                values, floors = _rounds(run.rounds, lambda: _threaded_rate(t_on, per_thread, items),  # noqa: B023
                                         lambda: _threaded_rate(t_off, per_thread, items))  # noqa: B023
            else:
                on, off = both.adapter.activate("bench"), neither.adapter.activate("bench")
                values, floors = _rounds(run.rounds, lambda: _rate(n, lambda: [on.set(k, v) for k, v in items]),  # noqa: B023
                                         lambda: _rate(n, lambda: [off.set(k, v) for k, v in items]))  # noqa: B023
        finally:
            both.stop()
            neither.stop()
        what = f"{threads} threads x {per_thread} writes" if with_threads else f"{n} writes"
        rows.append(_row(name, values, floors, f"{what} a round; SQLite WAL, sync=full; snapshot every 1,000"))
    return rows


def _pg_feed_cost(run: _Run) -> list[BenchRow]:
    """On PostgreSQL (``HOARD_BENCH_PG_DSN``), 16 threads writing 16 contexts with the feed against
    without: what serializing offset assignment on the feed_head row costs under concurrent commits.
    Two throwaway schemas, dropped afterwards."""
    name = "pg_feed_write_cost_16_threads"
    dsn = os.environ.get(PG_DSN_ENV) or _PG_DSN_DEFAULT
    problem = _pg_unavailable(dsn)
    if problem is not None:
        return [_skipped(name, f"skipped: {problem}")]
    import psycopg  # noqa: PLC0415 - present: _pg_unavailable checked

    threads, per_thread = 16, run.n(15, 60)
    items = _items(per_thread)
    schemas = [f"hoard_bench_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    systems = []
    try:
        for schema, feed in zip(schemas, (True, False), strict=True):
            store = PostgresStore(dsn, schema=schema, require_lease=True, feed=feed)
            systems.append(open_system(store, manager_config=ContextManagerConfig(durability="immediate"),
                                       adapter_config=_NO_DEFAULT))
        t_on = [systems[0].adapter.activate(f"c{i}") for i in range(threads)]
        t_off = [systems[1].adapter.activate(f"c{i}") for i in range(threads)]
        values, floors = _rounds(run.rounds, lambda: _threaded_rate(t_on, per_thread, items),
                                 lambda: _threaded_rate(t_off, per_thread, items))
    finally:
        for system in systems:
            system.stop()
        with psycopg.connect(dsn, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return [_row(name, values, floors, f"{threads} threads x {per_thread} writes a round; one system per schema")]


def _feed_read(run: _Run) -> list[BenchRow]:
    """A consumer reading the whole feed through `system.changes(timeout=0)` against a raw range scan
    of the feed table by offset (batches of 1,000, no decoding; hoard reads 250 at a time, see
    `hoard._feed`)."""
    n = run.n(2_000, 50_000)
    path = run.path("feed-read.db")
    system = run.system(path, "immediate", sync="normal")
    try:
        trackers = [system.adapter.activate(f"c{i}") for i in range(10)]
        pending = [trackers[i % 10].set_async(f"k{i % 100}", _value(i)) for i in range(n)]
        pykka.get_all(pending, timeout=600)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)

        def hoard() -> float:
            return _rate(n, lambda: sum(1 for _ in system.changes(timeout=0)))

        def floor() -> float:
            def scan() -> None:
                after = 0
                while True:
                    rows = db.execute("SELECT pos, context_id, blob FROM feed WHERE pos > ? ORDER BY pos LIMIT 1000",
                                      (after,)).fetchall()
                    if not rows:
                        return
                    after = rows[-1][0]
            return _rate(n, scan)

        try:
            values, floors = _rounds(run.rounds, hoard, floor)
        finally:
            db.close()
    finally:
        system.stop()
    return [_row("feed_read", values, floors,
                 f"{n} entries of 10 contexts; SQLite; the floor scans batches of 1,000 (hoard reads 250)")]


def _state_at(run: _Run) -> list[BenchRow]:
    """`manager.state_at(v)` where v is 1,000 versions after the snapshot below it (history='all',
    snapshot_every=2,000, a 200-key context) against rebuilding it by hand from the raw rows."""
    path = run.path("state-at.db")
    system = run.system(path, "immediate", sync="normal", history="all", snapshot_every=2_000)
    try:
        t = system.adapter.activate("ctx")
        t.update(_mapping(200))
        pending = [t.set_async(_key(i % 200), _value(i)) for i in range(4_100)]
        pykka.get_all(pending, timeout=600)
        reader = system.store.reader()
        reader.open()
        snaps = reader.snapshot_versions("ctx")
        reader.close()
        newest = snaps[-1]
        target = newest - 1_000
        base = max(v for v in snaps if v <= target)
        codec = _raw_codec(path)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        expected = dict(system.manager.state_at("ctx", target).data)

        def hoard() -> float:
            return _elapsed(lambda: system.manager.state_at("ctx", target)) * 1000

        def floor() -> float:
            def rebuild() -> dict[str, Any]:
                (blob,) = db.execute("SELECT blob FROM snapshots WHERE context_id=? AND version=?",
                                     ("ctx", base)).fetchone()
                data: dict[str, Any] = dict(orjson.loads(_raw_payload(blob, codec, KIND_STATE))["data"])
                for (jblob,) in db.execute("SELECT blob FROM journal WHERE context_id=? AND version>? AND "
                                           "version<=? ORDER BY version", ("ctx", base, target)):
                    change = orjson.loads(_raw_payload(jblob, codec, KIND_CHANGE))
                    for k in change["data_del"]:
                        data.pop(k, None)
                    data.update(change["data_set"])
                return data
            assert rebuild() == expected  # the floor does the same work
            return _elapsed(rebuild) * 1000

        try:
            values, floors = _rounds(run.rounds, hoard, floor)
        finally:
            db.close()
    finally:
        system.stop()
    return [_row("state_at_1000", values, floors,
                 f"v{target} from snapshot v{base} plus {target - base} journal entries; 200 keys; SQLite")]


#: measure name -> (function, the row names it produces), in table order
_MEASURES: dict[str, tuple[Callable[[_Run], list[BenchRow]], tuple[str, ...]]] = {
    "sync_set": (_sync_set, ("sync_set",)),
    "get": (_get, ("get",)),
    "pipelined": (_pipelined, ("pipelined",)),
    "update_1000": (_update, ("update_1000",)),
    "set_100k": (_big_state, ("set_100k",)),
    "durable_set": (_durable_set, ("durable_set",)),
    "durable_32_threads": (_durable_threads, ("durable_32_threads",)),
    "activation_10k": (_activation, ("activation_10k",)),
    "open_100k": (_open_store, ("open_100k",)),
    "rss_1000": (_rss, ("rss_1000",)),
    "peers": (_peers, ("peer_diskcache", "peer_json_file")),
    "postgres": (_postgres, ("pg_durable_set", "pg_durable_32_threads")),
    "forwarding": (_forwarding, _FWD_ROWS),
    "bridges": (_bridges, tuple(f"relay{s}_{k}" for k in _BRIDGE_KINDS for s in ("", "_latency"))),
}
_MEASURES.update({
    "feed": (_feed_cost, ("feed_write_cost", "feed_write_cost_16_threads")),
    "pg_feed": (_pg_feed_cost, ("pg_feed_write_cost_16_threads",)),
    "feed_read": (_feed_read, ("feed_read",)),
    "state_at": (_state_at, ("state_at_1000",)),
})
_MEASURES.update({  # issue 14
    "metrics_1000": (_metrics_scale, ("metrics_1000",)),
    "compression": (_compression, ("compression_dict", "compression_write")),
    "events": (_events, ("events_delivery", "events_latency")),
    "peers_concurrent": (_peers_concurrent, ("peer_diskcache_16_threads", "peer_sqlitedict",
                                             "peer_sqlitedict_16_threads")),
})
MEASURES: tuple[str, ...] = tuple(_MEASURES)
#: the measures that also record a scaling series (what `write_chart` draws)
SERIES_MEASURES: tuple[str, ...] = ("set_100k", "durable_32_threads", "open_100k")


def _environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "sqlite": sqlite3.sqlite_version,
        "hoard": version(DISTRIBUTION),
        "pykka": version("pykka"),
        "diskcache": version("diskcache"),
    }


def run_bench(*, quick: bool = False, only: Iterable[str] | None = None, workdir: str | None = None,
              progress: Callable[[int, int, str], None] | None = None, rounds: int | None = None) -> BenchReport:
    """Run the benchmark in this process (plus two child processes for the RSS row).

    Blocks until every selected measure has run: under a minute with `quick`, under ten otherwise, on
    the 2-core machine of shared/reference/perf-floors.md. Temporary stores go in a directory under
    `workdir` (default: the system temp dir) that is removed afterwards, and every system and actor
    started is stopped, also when a measure fails.

    Args:
        quick: fewer operations and rounds (same rows, noisier ratios).
        only: measure names to run (see `MEASURES`); default all.
        workdir: where the temporary directory goes (the disk measured by the durable rows).
        progress: called as ``progress(done, total, measure_name)`` before each measure and at the end.
        rounds: alternating rounds of most rows with their floor (the row's value is the median; the
            RSS and relay rows keep their own counts); default 5 with `quick`, else 15. More for
            steadier ratios, 1 for a smoke run.

    Raises:
        ConfigError: an unknown measure name in `only`, or `rounds` not a whole number of at least 1.
        HoardError: a measure failed (the message names it).
    """
    chosen = set(MEASURES if only is None else only)
    unknown = sorted(chosen - set(MEASURES))
    names = [n for n in MEASURES if n in chosen]
    if unknown:
        raise ConfigError(f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    if rounds is not None and (type(rounds) is not int or rounds < 1):
        raise ConfigError(f"rounds must be a whole number of at least 1, not {rounds!r}")
    t0 = time.perf_counter()
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="hoard-bench-", dir=workdir) as tmp:
        run = _Run(quick=quick, workdir=tmp, rounds_wanted=rounds)
        for i, name in enumerate(names):
            if progress is not None:
                progress(i, len(names), name)
            fn, _ = _MEASURES[name]
            try:
                rows.extend(fn(run))
            except HoardError as exc:
                raise HoardError(f"bench measure {name!r} failed: {exc}") from exc
        if progress is not None:
            progress(len(names), len(names), "done")
    return BenchReport(tuple(rows), tuple(run.series), _environment(), time.perf_counter() - t0, quick, run.rounds)


def write_chart(report: BenchReport, path: str) -> None:
    """Draw the report's scaling series (one panel each) into a PNG at `path`. Needs matplotlib
    (``pip install 'hoard-contexts[chart]'``; `ImportError` otherwise). Runs in the calling thread."""
    import matplotlib  # noqa: PLC0415 - an optional extra, needed only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    series = report.series
    peers = [r for r in report.rows if r.name.startswith("peer_") and not r.skipped]
    if not series and not peers:
        raise ConfigError("this run measured no scaling series and no peer row (run set_100k, durable_32_threads, "
                          "open_100k, peers or peers_concurrent)")
    panels = len(series) + (1 if peers else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    if peers:  # the last panel: hoard against each peer, as a ratio (1.0: as fast as the peer)
        ax = axes[0][-1]
        labels = [r.name.removeprefix("peer_").replace("_16_threads", "\n16 threads") for r in peers]
        ax.bar(range(len(peers)), [r.ratio or 0.0 for r in peers],
               color=["tab:green" if r.meets else "tab:red" for r in peers])
        for i, r in enumerate(peers):
            ax.plot([i - 0.4, i + 0.4], [r.target, r.target], color="black", linewidth=1)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(peers)), labels, fontsize=7)
        ax.set_title("hoard vs peers (ratio; bar: target)", fontsize=9)
        ax.set_ylabel("x the peer's rate")
        ax.grid(True, axis="y", alpha=0.3)
    for ax, s in zip(axes[0], series, strict=False):
        ax.plot(s.x, s.y, marker="o")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)  # a zero baseline: noise must not look like a trend
        ax.set_title(s.title, fontsize=9)
        ax.set_xlabel(s.xlabel)
        ax.set_ylabel(s.unit)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"hoard bench{' --quick' if report.quick else ''} ({report.environment.get('cpus')} CPUs, "
                 f"Python {report.environment.get('python')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _main(argv: Sequence[str]) -> int:
    """``python -m hoard._bench rss MODE CONTEXTS KEYS``: the RSS row's child process."""
    if len(argv) == 4 and argv[0] == "rss" and argv[1] in ("hoard", "floor"):
        sys.stdout.write(f"{_rss_child(argv[1], int(argv[2]), int(argv[3]))}\n")
        return 0
    sys.stderr.write("usage: python -m hoard._bench rss hoard|floor CONTEXTS KEYS\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
