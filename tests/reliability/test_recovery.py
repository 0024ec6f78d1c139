"""Damaged stores: ``recovery="strict"`` refuses naming the context and the row, ``"fallback"`` rebuilds
from the newest valid snapshot or recovery point plus the journal and reports (log + record) what it
skipped and which acknowledged changes it lost; `verify()` reports every inconsistency and
``verify(fix=True)`` repairs exactly those that lose no acknowledged change.

Every test runs on SQLite and on PostgreSQL (a schema per test), damaging the stored rows with SQL
(`SQLiteDamage`, `PgDamage`); what is SQLite's alone (read-only stores) runs on SQLite only."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hoard import (
    ContextFailedError,
    ContextManagerConfig,
    ContextStatus,
    CorruptionRecovered,
    CorruptStateError,
    open_system,
)
from hoard.storage import (
    Append,
    Change,
    Codec,
    ContextState,
    CreateContext,
    PostgresStore,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    SQLiteStore,
    Store,
    apply_change,
    freeze_mapping,
    new_state,
)
from tests.pg import url_for

from ._backends import BACKENDS

TOP = 29  # layout of context "a": snapshots v10 and v20, journal v11..v29, recovery points at v3, v15, v25


class SQLiteDamage:
    """A SQLite store file, opened by tests and damaged with raw SQL."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def opened(self, **kw: Any) -> SQLiteStore:
        return opened(self.path, **kw)

    def target(self) -> Any:
        return self.path

    def runtime_store(self, recovery: str) -> Any:
        """What `open_system` is given to load with `recovery` (a path takes the config's)."""
        return self.path

    def sql(self, query: str, *args: Any) -> list[Any]:
        return raw(self.path, query, *args)

    def flip(self, table: str, version: int, cid: str = "a", *, truncate: bool = False) -> None:
        flip(self.path, table, version, cid, truncate=truncate)

    def quarantined(self, cid: str) -> list[int]:
        return [v for v, in self.sql("SELECT version FROM quarantine WHERE context_id=? ORDER BY version", cid)]


class PgDamage:
    """A PostgreSQL schema, opened by tests (`PostgresStore`) and damaged with raw SQL."""

    name = "postgres"

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def opened(self, **kw: Any) -> PostgresStore:
        store = PostgresStore(self.dsn, schema=self.schema, **kw)
        store.open()
        return store

    def target(self) -> Any:
        return url_for(self.dsn, self.schema)

    def runtime_store(self, recovery: str) -> Any:
        # a postgresql:// URL does not pass the config's `recovery` on (see
        # test_on_postgres_open_system_on_a_url_loads_with_the_configured_recovery): the store open_system
        # makes for the URL, with it
        return PostgresStore(self.dsn, schema=self.schema, require_lease=True, recovery=recovery)

    def sql(self, query: str, *args: Any) -> list[Any]:
        import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

        with psycopg.connect(self.dsn, autocommit=True, options=f"-c search_path={self.schema}") as conn:
            cur = conn.execute(query.replace("?", "%s"), args)
            if cur.description is None:
                return []
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]

    def flip(self, table: str, version: int, cid: str = "a", *, truncate: bool = False) -> None:
        col = "rp_id" if table == "recovery_points" else "version"
        change = "substring(blob from 1 for 10)" if truncate else \
            "set_byte(blob, length(blob) / 2, get_byte(blob, length(blob) / 2) # 16)"
        self.sql(f"UPDATE {table} SET blob = {change} WHERE context_id = ? AND {col} = ?", cid, version)  # noqa: S608

    def quarantined(self, cid: str) -> list[int]:
        if not self.sql("SELECT 1 FROM pg_tables WHERE schemaname = ? AND tablename = 'quarantine'", self.schema):
            return []
        return [v for v, in self.sql("SELECT version FROM quarantine WHERE context_id=? ORDER BY version", cid)]


Damage = SQLiteDamage | PgDamage


def build(where: Path | Damage) -> dict[int, ContextState]:
    """Context "a" at v29 in the layout above, and an intact context "b". Returns "a"'s state per version."""
    store: Store
    if isinstance(where, Path):
        store = SQLiteStore(where)
        store.open()
    else:
        store = where.opened()
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


def _damage(request: pytest.FixtureRequest, tmp_path: Path, file: str) -> Damage:
    if request.param == "sqlite":
        return SQLiteDamage(tmp_path / file)
    return PgDamage(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))


@pytest.fixture(params=BACKENDS)
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Damage, dict[int, ContextState]]:
    d = _damage(request, tmp_path, "r.db")
    return d, build(d)


@pytest.fixture(params=BACKENDS)
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Damage:
    """A store nobody opened yet (a SQLite path, or an empty schema)."""
    return _damage(request, tmp_path, "rt.db")


# -- strict ----------------------------------------------------------------------------------------
def test_strict_load_names_the_context_and_the_damaged_row_and_changes_nothing(
        damaged: tuple[Damage, dict[int, ContextState]]) -> None:
    d, _states = damaged
    d.flip("snapshots", 20)
    before = d.sql("SELECT * FROM snapshots ORDER BY context_id, version")
    store = d.opened()
    try:
        with pytest.raises(CorruptStateError) as info:
            store.load("a")
        err = info.value
        assert (err.context_id, err.what) == ("a", "snapshot")
        assert "snapshot v20 of 'a'" in str(err) and "checksum mismatch" in str(err) and "fallback" in str(err)
        assert store.load("b") is not None  # one damaged context never stops another
    finally:
        store.close()
    assert d.sql("SELECT * FROM snapshots ORDER BY context_id, version") == before
    assert d.quarantined("a") == []


# -- fallback --------------------------------------------------------------------------------------
def test_fallback_rebuilds_a_damaged_newest_snapshot_from_the_older_one_losing_nothing(
        damaged: tuple[Damage, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    d, states = damaged
    d.flip("snapshots", 20)
    store = d.opened(recovery="fallback")
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
    strict = d.opened()  # repaired in place: the strict path loads it now
    try:
        assert strict.load("a") == states[TOP]
    finally:
        strict.close()


def test_fallback_loses_only_the_tail_after_a_damaged_journal_entry_and_names_every_lost_change(
        damaged: tuple[Damage, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    d, states = damaged
    d.flip("journal", 27)  # after the newest recovery point (v25): nothing can bridge it
    store = d.opened(recovery="fallback")
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
        assert d.quarantined("a") == list(range(27, 30))
        assert store.verify() == []
        store.commit([Append("a", Change(TOP + 2, 99.0, {"after": True}))])  # writing continues
        again = store.load("a")
        assert again is not None and again.version == TOP + 2 and store.last_recovery_report is None
    finally:
        store.close()


def test_fallback_uses_a_recovery_point_when_every_snapshot_is_damaged(
        damaged: tuple[Damage, dict[int, ContextState]]) -> None:
    d, states = damaged
    d.flip("snapshots", 10)
    d.flip("snapshots", 20, truncate=True)
    store = d.opened(recovery="fallback")
    try:
        assert store.load("a") == states[TOP]  # recovery point 3 (v25) + journal v26..v29
        report = store.last_recovery_report
        assert report is not None and report.base == "recovery point 3 (v25)" and report.lost == 0
        assert {(s.what, s.version) for s in report.skipped} == {("snapshot", 10), ("snapshot", 20)}
        assert store.verify() == []
    finally:
        store.close()


def test_fallback_refuses_a_context_that_nothing_can_rebuild(damaged: tuple[Damage, dict[int, ContextState]]) -> None:
    d, _states = damaged
    for v in (10, 20):
        d.flip("snapshots", v)
    for rp in (1, 2, 3):
        d.flip("recovery_points", rp)
    store = d.opened(recovery="fallback")
    try:
        with pytest.raises(CorruptStateError) as info:
            store.load("a")
        assert info.value.context_id == "a" and "cannot be recovered" in str(info.value)
        assert store.load("b") is not None
    finally:
        store.close()


def test_a_damaged_context_through_the_runtime_strict_and_fallback(empty: Damage) -> None:
    d = empty
    cfg = ContextManagerConfig(snapshot_every=10)
    with open_system(d.target(), manager_config=cfg) as system:
        t = system.adapter.activate("a")
        for i in range(25):
            t.set("n", i)
        system.adapter.activate("b").set("ok", True)
    # the stop wrote a snapshot of the last version: damage it and the journal entry that could rebuild it
    reader = d.opened(readonly=True)
    try:
        last = reader.snapshot_versions("a")[-1]
        assert reader.journal("a")[-1].version == last == 26
    finally:
        reader.close()
    d.flip("snapshots", last)
    d.flip("journal", last)
    with open_system(d.target(), manager_config=cfg) as system:  # strict: refuses "a", serves the rest
        with pytest.raises(CorruptStateError) as info:
            system.adapter.activate("a")
        assert info.value.context_id == "a"
        assert system.adapter.activate("b").get("ok") is True
    fallback = ContextManagerConfig(snapshot_every=10, recovery="fallback")
    with open_system(d.runtime_store("fallback"), manager_config=fallback) as system:
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
    with open_system(d.target(), manager_config=cfg) as system:
        assert system.adapter.activate("a").get("n") == 100
        assert system.store.verify() == []


# -- verify ----------------------------------------------------------------------------------------
def _valid_change_blob(version: int) -> bytes:
    return Codec().encode_change(Change(version, 0.0, {"x": -version}))


Damaging = Callable[[Damage, dict[int, ContextState]], object]
CASES: list[tuple[str, Damaging, str, str, bool]] = [
    ("newest snapshot checksum", lambda d, s: d.flip("snapshots", 20), "snapshot", "checksum mismatch", True),
    ("older snapshot truncated", lambda d, s: d.flip("snapshots", 10, truncate=True), "snapshot", "truncated", True),
    ("journal before the newest snapshot", lambda d, s: d.flip("journal", 15), "journal", "checksum", True),
    ("journal tail", lambda d, s: d.flip("journal", 27), "journal", "checksum", False),
    ("journal bridged by a recovery point", lambda d, s: d.flip("journal", 24), "journal", "checksum", True),
    ("version gap before the newest snapshot", lambda d, s: d.sql("DELETE FROM journal WHERE version=15"),
     "journal", "version gap", True),
    ("version gap in the tail", lambda d, s: d.sql("DELETE FROM journal WHERE version=27"),
     "journal", "version gap", False),
    ("context without snapshot", lambda d, s: d.sql("DELETE FROM snapshots WHERE context_id='a'"),
     "snapshot", "no snapshot", True),
    ("orphan rows", lambda d, s: d.sql("INSERT INTO journal VALUES ('ghost', 2, ?)", b"\x00"),
     "journal", "orphan", True),
    ("stale journal entry", lambda d, s: d.sql("INSERT INTO journal VALUES ('a', 5, ?)", _valid_change_blob(5)),
     "journal", "stale", True),
    ("journal beyond the acknowledged version",
     lambda d, s: d.sql("INSERT INTO journal VALUES ('a', 31, ?)", _valid_change_blob(31)),
     "journal", "beyond acknowledged version", True),
    ("snapshot beyond the acknowledged version",
     lambda d, s: d.sql("INSERT INTO snapshots VALUES ('a', 35, ?)",
                        Codec().encode_state(ContextState("a", 35, s[TOP].data, s[TOP].metadata, 1.0, 35.0))),
     "snapshot", "beyond acknowledged version", True),
    ("recovery point the journal rebuilds", lambda d, s: d.flip("recovery_points", 2),
     "recovery_point", "checksum", True),
    ("recovery point nothing rebuilds", lambda d, s: d.flip("recovery_points", 1),
     "recovery_point", "checksum", False),
    ("recovery point sequence", lambda d, s: d.sql("UPDATE contexts SET next_rp_id=2 WHERE id='a'"),
     "context", "recovery point sequence", True),
    ("snapshot that disagrees with the journal",
     lambda d, s: d.sql("UPDATE snapshots SET blob=? WHERE context_id='a' AND version=20",
                        Codec().encode_state(ContextState("a", 20, s[19].data, s[19].metadata, 1.0, 20.0))),
     "snapshot", "mismatch", False),
]


@pytest.mark.parametrize(("case", "damage", "what", "problem", "fixable"), CASES, ids=[c[0] for c in CASES])
def test_verify_reports_each_inconsistency_and_fix_repairs_it_without_losing_acknowledged_data(  # noqa: PLR0917 - pytest passes fixtures by name; the count is the fixtures it needs
        damaged: tuple[Damage, dict[int, ContextState]], case: str, damage: Damaging, what: str, problem: str,
        fixable: bool) -> None:
    d, states = damaged
    damage(d, states)
    store = d.opened()
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


@pytest.mark.postgres
@pytest.mark.parametrize(("case", "damage"), [c[:2] for c in CASES], ids=[c[0] for c in CASES])
def test_sqlite_and_postgres_report_and_repair_the_same_damage_the_same_way(
        tmp_path: Path, pg_dsn: str, pg_schema: str, case: str, damage: Damaging) -> None:
    """One engine: the same damage gives the same issues (kinds and texts), the same fallback report
    from a read-only store, and the same repairs, on both backends."""
    seen = []
    for d in (SQLiteDamage(tmp_path / "same.db"), PgDamage(pg_dsn, pg_schema)):
        damage(d, build(d))
        reader = d.opened(recovery="fallback", readonly=True)
        try:
            loaded = reader.load("a")
            report = reader.last_recovery_report  # type: ignore[attr-defined]
        finally:
            reader.close()
        store = d.opened()
        try:
            found = [(i.context_id, i.what, i.problem) for i in store.verify()]
            fixed = [(i.context_id, i.what, i.problem, i.fixed) for i in store.verify(fix=True)]
            after = [(i.context_id, i.what, i.problem) for i in store.verify()]
        finally:
            store.close()
        # (a state continuing at a new version after a loss is stamped with the time of the recovery)
        seen.append((found, fixed, after, loaded and (loaded.version, loaded.data, loaded.metadata), report))
    assert seen[0][0], case
    assert seen[0] == seen[1]


def test_verify_on_a_read_only_store_reports_and_fixes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    build(path)
    flip(path, "snapshots", 20)
    before = raw(path, "SELECT blob FROM snapshots ORDER BY context_id, version")
    store = opened(path, readonly=True)
    try:
        issues = store.verify(fix=True)
        assert [(i.what, i.fixed) for i in issues] == [("snapshot", False)]
    finally:
        store.close()
    assert raw(path, "SELECT blob FROM snapshots ORDER BY context_id, version") == before


def test_a_damaged_default_context_does_not_stop_the_system_from_opening(empty: Damage) -> None:
    d = empty
    with open_system(d.target()) as system:
        system.adapter.activate("other").set("ok", 1)
        system.adapter.activate("default").set("k", 1)
    reader = d.opened(readonly=True)
    try:
        versions = reader.snapshot_versions("default")
    finally:
        reader.close()
    for v in versions:
        d.flip("snapshots", v, cid="default")
    with open_system(d.target()) as system:
        assert system.adapter.current_id() is None
        assert system.adapter.status("default") is ContextStatus.FAILED
        with pytest.raises(ContextFailedError, match="checksum mismatch"):
            system.adapter.activate("default")
        assert system.adapter.activate("other").get("ok") == 1


def test_a_damaged_recovery_point_is_refused_in_strict_mode_and_left_out_with_a_warning_in_fallback(
        damaged: tuple[Damage, dict[int, ContextState]], caplog: pytest.LogCaptureFixture) -> None:
    d, states = damaged
    d.flip("recovery_points", 2)
    store = d.opened()
    try:
        with pytest.raises(CorruptStateError) as info:
            store.recovery_points("a")
        assert (info.value.context_id, info.value.what) == ("a", "recovery_point")
        with pytest.raises(CorruptStateError):
            store.recovery_point("a", 2)
        assert store.recovery_point("a", 3) is not None
    finally:
        store.close()
    store = d.opened(recovery="fallback")
    try:
        with caplog.at_level(logging.WARNING, logger="storage"):
            assert [rp.id for rp in store.recovery_points("a")] == [1, 3]
        assert "recovery point 2 of 'a' skipped" in caplog.text
        assert store.load("a") == states[TOP]  # the damaged point is not needed to load
    finally:
        store.close()


# -- PostgreSQL only -------------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_on_postgres_a_fallback_load_repairs_only_under_the_lease(pg_dsn: str, pg_schema: str) -> None:
    """A fallback repair writes, so it is fenced like a commit: a store that may not write the context
    (another owner holds its live lease) still loads what can be recovered, but leaves the rows as they
    are (``repaired=False``); the owner's own fallback load then repairs them."""
    d = PgDamage(pg_dsn, pg_schema)
    states = build(d)
    d.flip("journal", 27)
    owner = d.opened(owner_id="owner", recovery="fallback", require_lease=True)
    reader = d.opened(owner_id="reader", recovery="fallback", require_lease=True)
    try:
        owner.acquire_lease("a")
        before = d.sql("SELECT version, blob FROM journal WHERE context_id='a' ORDER BY version")
        st = reader.load("a")
        report = reader.last_recovery_report
        assert report is not None and not report.repaired and report.lost_versions == (27, 28, 29)
        assert st is not None and st.version == TOP + 1 and dict(st.data) == dict(states[26].data)
        assert d.sql("SELECT version, blob FROM journal WHERE context_id='a' ORDER BY version") == before
        assert d.sql("SELECT version FROM contexts WHERE id='a'") == [(TOP,)]
        got = owner.load("a")
        report = owner.last_recovery_report
        assert report is not None and report.repaired and report.lost_versions == (27, 28, 29)
        assert got is not None and got.version == TOP + 1 and dict(got.data) == dict(states[26].data)
        assert d.quarantined("a") == [27, 28, 29]
    finally:
        reader.close()
        owner.close()
    strict = d.opened()
    try:
        assert strict.load("a") == got
        assert strict.verify() == []
    finally:
        strict.close()


@pytest.mark.postgres
def test_on_postgres_open_system_on_a_url_loads_with_the_configured_recovery(pg_dsn: str, pg_schema: str) -> None:
    d = PgDamage(pg_dsn, pg_schema)
    states = build(d)
    d.flip("snapshots", 20)
    with open_system(d.target(), manager_config=ContextManagerConfig(recovery="fallback")) as system:
        assert system.adapter.activate("a").state() == states[TOP]
