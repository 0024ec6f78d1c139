"""Damaged stores: ``recovery="strict"`` refuses naming the context and the row, ``"fallback"`` rebuilds
from the newest valid snapshot or recovery point plus the journal and reports (log + record) what it
skipped and which acknowledged changes it lost; `verify()` reports every inconsistency and
``verify(fix=True)`` repairs exactly those that lose no acknowledged change."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    ContextFailedError,
    ContextManagerConfig,
    ContextStatus,
    CorruptionRecovered,
    CorruptStateError,
    open_system,
)
from storage import (
    Append,
    Change,
    Codec,
    ContextState,
    CreateContext,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    SQLiteStore,
    apply_change,
    freeze_mapping,
    new_state,
)

TOP = 29  # layout of context "a": snapshots v10 and v20, journal v11..v29, recovery points at v3, v15, v25


def build(path: Path) -> dict[int, ContextState]:
    """Context "a" at v29 in the layout above, and an intact context "b". Returns "a"'s state per version."""
    store = SQLiteStore(path)
    store.open()
    states: dict[int, ContextState] = {}
    try:
        st = new_state("a", freeze_mapping({"x": 0}), now=1.0)
        states[1] = st
        store.commit([CreateContext(st), CreateContext(new_state("b", {"b": 1}, now=1.0))])
        rp = 1
        for v in range(2, TOP + 1):
            ch = Change(v, float(v), freeze_mapping({"x": v, f"k{v % 3}": "y" * (v * 20)}))
            st = apply_change(st, ch)
            states[v] = st
            ops: list[Any] = [Append("a", ch)]
            if v % 10 == 0:
                ops.append(PutSnapshot(st))
            if v in (3, 15, 25):
                ops.append(PutRecoveryPoint(RecoveryPoint(rp, "a", v, f"at{v}", 100.0 + v, st), 10))
                rp += 1
            store.commit(ops)
        assert store.verify() == []
        info = store.info("a")
        assert info is not None and (info.version, info.snapshot_version, info.journal_entries) == (TOP, 20, 19)
    finally:
        store.close()
    return states


def raw(path: Path, sql: str, *args: Any) -> list[Any]:
    with sqlite3.connect(path) as db:
        rows = db.execute(sql, args).fetchall()
    db.close()
    return rows


def flip(path: Path, table: str, version: int, cid: str = "a", *, truncate: bool = False) -> None:
    col = "rp_id" if table == "recovery_points" else "version"
    (blob,), = raw(path, f"SELECT blob FROM {table} WHERE context_id=? AND {col}=?", cid, version)  # noqa: S608
    b = bytearray(blob)
    if truncate:
        b = b[:10]
    else:
        b[len(b) // 2] ^= 0x10
    raw(path, f"UPDATE {table} SET blob=? WHERE context_id=? AND {col}=?", bytes(b), cid, version)  # noqa: S608


def opened(path: Path, **kw: Any) -> SQLiteStore:
    store = SQLiteStore(path, **kw)
    store.open()
    return store


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, dict[int, ContextState]]:
    path = tmp_path / "r.db"
    return path, build(path)


# -- strict ----------------------------------------------------------------------------------------
def test_strict_load_names_the_context_and_the_damaged_row_and_changes_nothing(
        damaged: tuple[Path, dict[int, ContextState]]) -> None:
    path, _states = damaged
    flip(path, "snapshots", 20)
    before = raw(path, "SELECT * FROM snapshots ORDER BY context_id, version")
    store = opened(path)
    try:
        with pytest.raises(CorruptStateError) as info:
            store.load("a")
        err = info.value
        assert (err.context_id, err.what) == ("a", "snapshot")
        assert "snapshot v20 of 'a'" in str(err) and "checksum mismatch" in str(err) and "fallback" in str(err)
        assert store.load("b") is not None  # one damaged context never stops another
    finally:
        store.close()
    assert raw(path, "SELECT * FROM snapshots ORDER BY context_id, version") == before
    assert raw(path, "SELECT count(*) FROM quarantine") == [(0,)]


# -- fallback --------------------------------------------------------------------------------------
def test_fallback_rebuilds_a_damaged_newest_snapshot_from_the_older_one_losing_nothing(
        damaged: tuple[Path, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    path, states = damaged
    flip(path, "snapshots", 20)
    store = opened(path, recovery="fallback")
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            assert store.load("a") == states[TOP]
        report = store.last_recovery_report
        assert report is not None and report.lost == 0 and report.repaired
        assert (report.acknowledged_version, report.recovered_version, report.version) == (TOP, TOP, TOP)
        assert [(s.what, s.version) for s in report.skipped] == [("snapshot", 20)]
        assert "checksum mismatch" in report.skipped[0].problem
        assert "no acknowledged change lost" in caplog.text
        assert store.verify() == []
    finally:
        store.close()
    strict = opened(path)  # repaired in place: the strict path loads it now
    try:
        assert strict.load("a") == states[TOP]
    finally:
        strict.close()


def test_fallback_loses_only_the_tail_after_a_damaged_journal_entry_and_names_every_lost_change(
        damaged: tuple[Path, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    path, states = damaged
    flip(path, "journal", 27)  # after the newest recovery point (v25): nothing can bridge it
    store = opened(path, recovery="fallback")
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            st = store.load("a")
        report = store.last_recovery_report
        assert report is not None and report.repaired
        assert report.lost_versions == (27, 28, 29) and report.lost == 3
        assert (report.recovered_version, report.version, report.base) == (26, TOP + 1, "recovery point 3 (v25)")
        assert [(s.what, s.version) for s in report.skipped] == [("journal", v) for v in range(27, 30)]
        assert "checksum mismatch" in report.skipped[0].problem
        assert "follows the unrecoverable v27" in report.skipped[1].problem
        assert "LOST 3 acknowledged changes (v27..v29); continuing at v30" in caplog.text
        # the recovered data is v26's, as a new version: versions never go backwards
        assert st is not None and st.version == TOP + 1
        assert (dict(st.data), dict(st.metadata)) == (dict(states[26].data), dict(states[26].metadata))
        assert store.recovery_reports == [report]
        assert raw(path, "SELECT version FROM quarantine WHERE context_id='a' ORDER BY version") == \
            [(v,) for v in range(27, 30)]
        assert store.verify() == []
        store.commit([Append("a", Change(TOP + 2, 99.0, {"after": True}))])  # writing continues
        again = store.load("a")
        assert again is not None and again.version == TOP + 2 and store.last_recovery_report is None
    finally:
        store.close()


def test_fallback_uses_a_recovery_point_when_every_snapshot_is_damaged(
        damaged: tuple[Path, dict[int, ContextState]]) -> None:
    path, states = damaged
    flip(path, "snapshots", 10)
    flip(path, "snapshots", 20, truncate=True)
    store = opened(path, recovery="fallback")
    try:
        assert store.load("a") == states[TOP]  # recovery point 3 (v25) + journal v26..v29
        report = store.last_recovery_report
        assert report is not None and report.base == "recovery point 3 (v25)" and report.lost == 0
        assert {(s.what, s.version) for s in report.skipped} == {("snapshot", 10), ("snapshot", 20)}
        assert store.verify() == []
    finally:
        store.close()


def test_fallback_refuses_a_context_that_nothing_can_rebuild(damaged: tuple[Path, dict[int, ContextState]]) -> None:
    path, _states = damaged
    for v in (10, 20):
        flip(path, "snapshots", v)
    for rp in (1, 2, 3):
        flip(path, "recovery_points", rp)
    store = opened(path, recovery="fallback")
    try:
        with pytest.raises(CorruptStateError) as info:
            store.load("a")
        assert info.value.context_id == "a" and "cannot be recovered" in str(info.value)
        assert store.load("b") is not None
    finally:
        store.close()


def test_a_damaged_context_through_the_runtime_strict_and_fallback(tmp_path: Path) -> None:
    path = tmp_path / "rt.db"
    cfg = ContextManagerConfig(snapshot_every=10)
    with open_system(path, manager_config=cfg) as system:
        t = system.adapter.activate("a")
        for i in range(25):
            t.set("n", i)
        system.adapter.activate("b").set("ok", True)
    # the stop wrote a snapshot of the last version: damage it and the journal entry that could rebuild it
    (last,), = raw(path, "SELECT max(version) FROM snapshots WHERE context_id='a'")
    assert raw(path, "SELECT max(version) FROM journal WHERE context_id='a'") == [(last,)] and last == 26
    flip(path, "snapshots", last)
    flip(path, "journal", last)
    with open_system(path, manager_config=cfg) as system:  # strict: refuses "a", serves the rest
        with pytest.raises(CorruptStateError) as info:
            system.adapter.activate("a")
        assert info.value.context_id == "a"
        assert system.adapter.activate("b").get("ok") is True
    fallback = ContextManagerConfig(snapshot_every=10, recovery="fallback")
    with open_system(path, manager_config=fallback) as system:
        recovered: list[Any] = []
        done = threading.Event()
        system.subscribe(lambda e: (recovered.append(e), done.set()), kinds=[CorruptionRecovered])
        t = system.adapter.activate("a")
        assert t.get("n") == 23 and t.version == last + 1  # v{last} (n=24) was lost; a new version
        report = system.store.last_recovery_report  # type: ignore[attr-defined]
        assert report.lost_versions == (last,)
        assert done.wait(10)  # ... and subscribers are told what was skipped and lost
        (event,) = recovered
        assert (event.context_id, event.version, event.lost_versions) == ("a", last + 1, (last,))
        assert event.skipped and all(f"v{last}" in item for item in event.skipped)
        assert t.set("n", 100) == last + 2
    with open_system(path, manager_config=cfg) as system:
        assert system.adapter.activate("a").get("n") == 100
        assert system.store.verify() == []


# -- verify ----------------------------------------------------------------------------------------
def _valid_change_blob(version: int) -> bytes:
    return Codec().encode_change(Change(version, 0.0, {"x": -version}))


Damage = Callable[[Path, dict[int, ContextState]], None]
CASES: list[tuple[str, Damage, str, str, bool]] = [
    ("newest snapshot checksum", lambda p, s: flip(p, "snapshots", 20), "snapshot", "checksum mismatch", True),
    ("older snapshot truncated", lambda p, s: flip(p, "snapshots", 10, truncate=True), "snapshot", "truncated", True),
    ("journal before the newest snapshot", lambda p, s: flip(p, "journal", 15), "journal", "checksum", True),
    ("journal tail", lambda p, s: flip(p, "journal", 27), "journal", "checksum", False),
    ("journal bridged by a recovery point", lambda p, s: flip(p, "journal", 24), "journal", "checksum", True),
    ("version gap before the newest snapshot", lambda p, s: raw(p, "DELETE FROM journal WHERE version=15"),
     "journal", "version gap", True),
    ("version gap in the tail", lambda p, s: raw(p, "DELETE FROM journal WHERE version=27"),
     "journal", "version gap", False),
    ("context without snapshot", lambda p, s: raw(p, "DELETE FROM snapshots WHERE context_id='a'"),
     "snapshot", "no snapshot", True),
    ("orphan rows", lambda p, s: raw(p, "INSERT INTO journal VALUES ('ghost', 2, x'00')"),
     "journal", "orphan", True),
    ("stale journal entry", lambda p, s: raw(p, "INSERT INTO journal VALUES ('a', 5, ?)", _valid_change_blob(5)),
     "journal", "stale", True),
    ("journal beyond the acknowledged version",
     lambda p, s: raw(p, "INSERT INTO journal VALUES ('a', 31, ?)", _valid_change_blob(31)),
     "journal", "beyond acknowledged version", True),
    ("snapshot beyond the acknowledged version",
     lambda p, s: raw(p, "INSERT INTO snapshots VALUES ('a', 35, ?)",
                      Codec().encode_state(ContextState("a", 35, s[TOP].data, s[TOP].metadata, 1.0, 35.0))),
     "snapshot", "beyond acknowledged version", True),
    ("recovery point the journal rebuilds", lambda p, s: flip(p, "recovery_points", 2),
     "recovery_point", "checksum", True),
    ("recovery point nothing rebuilds", lambda p, s: flip(p, "recovery_points", 1),
     "recovery_point", "checksum", False),
    ("recovery point sequence", lambda p, s: raw(p, "UPDATE contexts SET next_rp_id=2 WHERE id='a'"),
     "context", "recovery point sequence", True),
    ("snapshot that disagrees with the journal",
     lambda p, s: raw(p, "UPDATE snapshots SET blob=? WHERE context_id='a' AND version=20",
                      Codec().encode_state(ContextState("a", 20, s[19].data, s[19].metadata, 1.0, 20.0))),
     "snapshot", "mismatch", False),
]


@pytest.mark.parametrize(("case", "damage", "what", "problem", "fixable"), CASES, ids=[c[0] for c in CASES])
def test_verify_reports_each_inconsistency_and_fix_repairs_it_without_losing_acknowledged_data(
        damaged: tuple[Path, dict[int, ContextState]], case: str, damage: Damage, what: str, problem: str,
        fixable: bool) -> None:
    path, states = damaged
    damage(path, states)
    store = opened(path)
    try:
        issues = store.verify()
        assert issues, case
        assert any(i.what == what and problem in i.problem for i in issues), issues
        assert all(not i.fixed for i in issues)
        fixed = store.verify(fix=True)
        assert [(i.what, i.problem) for i in fixed] == [(i.what, i.problem) for i in issues]
        remaining = store.verify()
        if fixable:
            assert all(i.fixed for i in fixed), fixed
            assert remaining == [], remaining
            assert store.load("a") == states[TOP]  # nothing acknowledged was lost
            assert [rp.state for rp in store.recovery_points("a")] == [states[3], states[15], states[25]]
        else:
            assert [(i.what, i.problem) for i in remaining] == [(i.what, i.problem) for i in issues]
            assert not any(i.fixed for i in fixed if i.what == what and problem in i.problem)
        assert store.load("b") is not None
    finally:
        store.close()


def test_verify_on_a_read_only_store_reports_and_fixes_nothing(damaged: tuple[Path, dict[int, ContextState]]) -> None:
    path, _states = damaged
    flip(path, "snapshots", 20)
    before = raw(path, "SELECT blob FROM snapshots ORDER BY context_id, version")
    store = opened(path, readonly=True)
    try:
        issues = store.verify(fix=True)
        assert [(i.what, i.fixed) for i in issues] == [("snapshot", False)]
    finally:
        store.close()
    assert raw(path, "SELECT blob FROM snapshots ORDER BY context_id, version") == before


def test_a_damaged_default_context_does_not_stop_the_system_from_opening(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with open_system(path) as system:
        system.adapter.activate("other").set("ok", 1)
        system.adapter.activate("default").set("k", 1)
    for v, in raw(path, "SELECT version FROM snapshots WHERE context_id='default'"):
        flip(path, "snapshots", v, cid="default")
    with open_system(path) as system:
        assert system.adapter.current_id() is None
        assert system.adapter.status("default") is ContextStatus.FAILED
        with pytest.raises(ContextFailedError, match="checksum mismatch"):
            system.adapter.activate("default")
        assert system.adapter.activate("other").get("ok") == 1


def test_a_damaged_recovery_point_is_refused_in_strict_mode_and_left_out_with_a_warning_in_fallback(
        damaged: tuple[Path, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    path, states = damaged
    flip(path, "recovery_points", 2)
    store = opened(path)
    try:
        with pytest.raises(CorruptStateError) as info:
            store.recovery_points("a")
        assert (info.value.context_id, info.value.what) == ("a", "recovery_point")
        with pytest.raises(CorruptStateError):
            store.recovery_point("a", 2)
        assert store.recovery_point("a", 3) is not None
    finally:
        store.close()
    store = opened(path, recovery="fallback")
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            assert [rp.id for rp in store.recovery_points("a")] == [1, 3]
        assert "recovery point 2 of 'a' skipped" in caplog.text
        assert store.load("a") == states[TOP]  # the damaged point is not needed to load
    finally:
        store.close()
