"""Hostile input gets a typed error and changes nothing: malformed context ids, keys and values that
are not JSON (NaN, cycles, 100 levels, too large), files that are not hoard stores or come from a newer
hoard. Ids with slashes and dots are ordinary ids (they never become paths). Nothing is unpickled
anywhere; store files are owner-only (0600), the -wal and -shm files included.

The PostgreSQL variants (a schema per test) check the same through ``open_system(postgresql://...)`` and
the store itself, and that a schema that is not a hoard store (or is a newer hoard's) is refused and left
untouched; recovery point labels are checked on both stores."""

from __future__ import annotations

import ast
import math
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoard import (
    ContextManagerConfig,
    ContextStatus,
    ContextSystem,
    CorruptStateError,
    InvalidContextIdError,
    InvalidValueError,
    PersistenceError,
    open_system,
)
from hoard.storage import Append, Change, CreateContext, DeleteContext, PostgresStore, SQLiteStore, new_state

from ._backends import PostgresBackend, backend

ROOT = Path(__file__).resolve().parents[2]

BAD_IDS: list[Any] = ["", "\x00", "a\x00b", "\x01", "tab\there", "new\nline", "\x7f", "\x85", "\x9f",
                      "x" * 10_000, "é" * 128, "\ud800", 5, None, b"bytes", ("t",)]
GOOD_IDS = ["/", "..", "../../etc/passwd", "a/b/../c", "C:\\temp\\x", " spaced ", "emoji 🎉", "%_*",
            "ключ", "x" * 255, "é" * 127, "\u2028line sep", "-", "."]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[ContextSystem]:
    s = open_system(tmp_path / "h.db", manager_config=ContextManagerConfig(max_value_bytes=1000))
    try:
        yield s
    finally:
        s.stop()


# -- context ids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: repr(v)[:20])
def test_a_malformed_context_id_is_refused_everywhere_and_changes_nothing(system: ContextSystem, bad: Any,
                                                                          tmp_path: Path) -> None:
    a, m = system.adapter, system.manager
    before = (m.list_ids(), sorted(os.listdir(tmp_path)))
    calls: list[Callable[[], object]] = [
        lambda: a.activate(bad), lambda: a.switch(bad), lambda: a.tracker(bad), lambda: a.status(bad),
        lambda: a.deactivate(bad), lambda: a.create_and_activate(bad), lambda: m.create(bad),
        lambda: m.get_state(bad), lambda: m.exists(bad), lambda: m.delete(bad), lambda: m.update(bad, {"k": 1}),
        lambda: m.recovery_points(bad)]
    for call in calls:
        with pytest.raises(InvalidContextIdError):
            call()
    assert (m.list_ids(), sorted(os.listdir(tmp_path))) == before
    assert a.current_id() == "default"


def test_ids_with_slashes_dots_and_any_unicode_round_trip_exactly_and_never_become_paths(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    with open_system(path) as system:
        for i, cid in enumerate(GOOD_IDS):
            system.adapter.activate(cid).set("i", i)
    with open_system(path) as system:
        assert system.manager.list_ids() == sorted([*GOOD_IDS, "default"])
        for i, cid in enumerate(GOOD_IDS):
            assert system.manager.get_state(cid).data["i"] == i
            assert system.adapter.status(cid) is ContextStatus.INACTIVE
        assert system.store.verify() == []
    assert sorted(os.listdir(tmp_path)) == ["ids.db", "ids.db.lock"]  # -wal and -shm are gone at close


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(min_size=1, max_size=60))
def test_any_valid_id_round_trips_through_the_store_and_any_invalid_one_is_refused(cid: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "p.db")
        store.open()
        try:
            valid = (len(cid.encode("utf-8", "surrogatepass")) <= 255
                     and not any(ord(c) < 32 or 127 <= ord(c) < 160 or 0xD800 <= ord(c) < 0xE000 for c in cid))
            if not valid:
                with pytest.raises(InvalidContextIdError):
                    store.commit([CreateContext(new_state(cid))])
                with pytest.raises(InvalidContextIdError):
                    store.load(cid)
                assert store.count() == 0
                return
            store.commit([CreateContext(new_state(cid, {"v": cid}))])
            assert store.list_ids() == [cid] and store.list_ids(cid) == [cid]
            st_ = store.load(cid)
            assert st_ is not None and st_.id == cid and st_.data["v"] == cid
        finally:
            store.close()


# -- keys and values -------------------------------------------------------------------------------
def _cyclic_list() -> list[Any]:
    v: list[Any] = [1]
    v.append(v)
    return v


def _cyclic_dict() -> dict[str, Any]:
    v: dict[str, Any] = {}
    v["self"] = v
    return v


def _deep(n: int, container: str) -> Any:
    v: Any = 0
    for _ in range(n):
        v = [v] if container == "list" else {"d": v}
    return v


BAD_VALUES: list[tuple[str, Any]] = [
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("nested nan", {"a": [1, math.nan]}),
    ("set", {1, 2}), ("bytes", b"x"), ("object", object()), ("function", len), ("complex", 1j),
    ("cyclic list", _cyclic_list()), ("cyclic dict", _cyclic_dict()),
    ("100 deep list", _deep(100, "list")), ("100 deep dict", _deep(100, "dict")),
    ("int too big", 2**64), ("int too small", -(2**63) - 1), ("int key", {1: "x"}), ("tuple key", {("a",): 1}),
    ("lone surrogate", "\ud800"), ("too large", "x" * 999), ("too large once escaped", "\x00" * 200),
    ("too large nested", {"a": ["y" * 500, "z" * 500]}),
]
BAD_KEYS: list[Any] = [1, None, b"k", "", "a\x00b", "k" * 1025, "\udc80", 1.5]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[n for n, _ in BAD_VALUES])
def test_a_value_that_is_not_storable_is_refused_by_every_write_and_changes_nothing(
        system: ContextSystem, name: str, value: Any) -> None:
    t = system.adapter.activate("v")
    t.set("keep", 1)
    before = t.state()
    writes: list[Callable[[], object]] = [
        lambda: t.set("k", value), lambda: t.update({"ok": 1, "k": value}),
        lambda: t.transact(lambda d: d.update({"ok": 1, "k": value})), lambda: t.set_metadata("k", value),
        lambda: t.set_metadata({"ok": 1, "k": value}), lambda: system.manager.create(f"new-{name}", {"k": value}),
        lambda: system.adapter.create_and_activate(f"new2-{name}", metadata={"k": value})]
    for write in writes:
        with pytest.raises(InvalidValueError) as info:
            write()
        assert info.value.key in ("k", None)
    assert t.state() == before
    system.adapter.deactivate("v")
    assert system.manager.get_state("v") == before  # what the store holds, too
    assert f"new-{name}" not in system.manager.list_ids()


class Abort(BaseException):
    """A user's own BaseException (not an Exception)."""


class Gives(int):
    """An int whose own conversion gives up with a BaseException: user code, run where the value is checked."""

    def __int__(self) -> int:
        raise Abort("int conversion gave up")


def test_a_value_whose_own_code_raises_a_base_exception_reaches_the_caller_and_stops_no_actor(
        system: ContextSystem) -> None:
    # checked in the context actor: raised there, pykka would stop every actor of the process
    t = system.adapter.activate("v")
    t.set("keep", 1)
    before = t.state()
    writes: list[Callable[[], object]] = [
        lambda: t.set("k", Gives(3), timeout=5), lambda: t.update({"ok": 1, "k": Gives(3)}, timeout=5),
        lambda: t.set_metadata({"ok": 1, "k": Gives(3)}, timeout=5),
        lambda: t.set_async("k", Gives(3)).get(timeout=5)]
    for write in writes:
        with pytest.raises(Abort):
            write()
    assert t.state() == before
    assert t.set("k", 3, timeout=5) == before.version + 1  # every actor still runs
    system.adapter.deactivate("v")
    assert system.manager.get_state("v").data["k"] == 3


def test_an_oversized_key_is_named_by_its_start_in_an_error_of_bounded_size(system: ContextSystem) -> None:
    """The error names the key, but a megabyte of key is not a message: it was repeated whole (and
    then whole again in a bridge's dead letter)."""
    t = system.adapter.activate("k")
    key = "\u00e9" + "k" * 1_000_000
    for write in (lambda: t.set(key, 1), lambda: t.update({key: 1}), lambda: t.set_metadata({key: 1})):
        with pytest.raises(InvalidValueError) as info:
            write()
        message = str(info.value)
        assert len(message) < 300 and message.startswith("key '\u00e9kkk") and "..." in message, message[:400]
        assert "UTF-8 bytes" in message and info.value.key == key  # the reason, and the whole key on the error
    assert t.version == 1


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_a_key_that_is_not_storable_is_refused_and_changes_nothing(system: ContextSystem, key: Any) -> None:
    t = system.adapter.activate("k")
    before = t.state()
    for write in (lambda: t.set(key, 1), lambda: t.update({key: 1}),
                  lambda: t.transact(lambda d: d.__setitem__(key, 1)), lambda: t.set_metadata({key: 1})):
        with pytest.raises(InvalidValueError):
            write()
    assert t.state() == before


def test_size_limits_count_escaped_bytes_so_an_accepted_state_can_always_be_read_back(tmp_path: Path) -> None:
    """A string of control characters is 6 times longer in JSON than in Python; the limits must count
    the JSON bytes, or a state could be accepted that the reader (bounded by max_state_bytes) refuses."""
    path = tmp_path / "esc.db"
    cfg = ContextManagerConfig(max_value_bytes=300_000, max_state_bytes=300_000)
    with open_system(path, manager_config=cfg) as system:
        t = system.adapter.activate("e")
        with pytest.raises(InvalidValueError, match="max_value_bytes"):
            t.set("big", "\x00" * 290_000)  # 1.74 MB as JSON
        t.set("a", "\x01" * 45_000)  # 270 KB as JSON: accepted
        with pytest.raises(InvalidValueError, match="max_state_bytes"):
            t.set("b", "\x02" * 10_000)  # 60 KB more would pass 300 KB
        v = t.version
    with open_system(path, manager_config=cfg) as system:
        assert system.manager.get_state("e").version == v


# -- files that are not (our) hoard stores ---------------------------------------------------------
def _foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (name TEXT)")
    db.execute("INSERT INTO people VALUES ('ana')")
    db.commit()
    db.close()


def _newer_hoard(path: Path) -> None:
    store = SQLiteStore(path)
    store.open()
    store.commit([CreateContext(new_state("a"))])
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE hoard_meta SET value='2' WHERE key='format'")
    db.commit()
    db.execute("PRAGMA journal_mode=DELETE")  # fold the WAL in, so the file alone is the store
    db.close()


NOT_OURS: list[tuple[str, Callable[[Path], None], str]] = [
    ("random bytes", lambda p: p.write_bytes(os.urandom(8192)), "not a hoard store"),
    ("a text file", lambda p: p.write_text("name,age\nana,3\n" * 100), "not a hoard store"),
    ("an SQLite database of something else", _foreign_sqlite, "not a hoard store"),
    ("a hoard store of a newer format", _newer_hoard, "newer"),
]


@pytest.mark.parametrize(("what", "make", "message"), NOT_OURS, ids=[n[0] for n in NOT_OURS])
def test_a_file_that_is_not_a_hoard_store_is_refused_and_left_untouched(tmp_path: Path, what: str,
                                                                        make: Callable[[Path], None],
                                                                        message: str) -> None:
    path = tmp_path / "x.db"
    make(path)
    before = path.read_bytes()
    files = sorted(os.listdir(tmp_path))  # (a store made by hoard left its lock file)
    with pytest.raises(CorruptStateError, match=message) as info:
        open_system(path)
    assert info.value.what == "store"
    with pytest.raises(CorruptStateError, match=message):
        SQLiteStore(path, readonly=True).open()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == files  # no -wal / -shm (not even opened for writing), no lock left


# -- nothing unpickled, owner-only files -----------------------------------------------------------
def test_no_module_can_unpickle_or_evaluate_data() -> None:
    forbidden_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
    bad = []
    for pkg in ("storage", "actors", "runtime"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module.split(".")[0]]
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n in forbidden_modules]
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}")
    assert bad == []


def test_store_files_are_owner_only_even_with_an_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "perm.db"
        with open_system(path) as system:
            system.adapter.activate("p").set("k", "v")
            names = sorted(os.listdir(tmp_path))
            assert names == ["perm.db", "perm.db-shm", "perm.db-wal", "perm.db.lock"]
            modes = {n: stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in names}
            assert modes == dict.fromkeys(names, 0o600)
    finally:
        os.umask(old)


# -- recovery point labels -----------------------------------------------------------------------------------
LABELS = [("sqlite", "a\x00b"), ("postgres", "a\x00b"), ("postgres", "\ud800"),
          ("sqlite", "\ud800")]


def _label_case(name: str, label: str) -> Any:
    marks: list[Any] = [pytest.mark.postgres] if name == "postgres" else []
    return pytest.param(name, label, marks=marks, id=f"{name}-{label!r}")


@pytest.mark.parametrize(("name", "label"), [_label_case(n, lb) for n, lb in LABELS])
def test_a_recovery_point_label_is_stored_exactly_or_refused_with_a_typed_error(
        request: pytest.FixtureRequest, tmp_path: Path, name: str, label: str) -> None:
    """PostgreSQL text cannot hold NUL; no store can hold a lone surrogate. Whatever a store cannot keep
    exactly is refused with our error, changes nothing, and the system goes on."""
    b = backend(name, request, tmp_path)
    with open_system(b.target(), manager_config=ContextManagerConfig(call_timeout=2.0)) as system:
        t = system.adapter.activate("l")
        t.set("k", 1)
        before = (t.state(), t.recovery_points())
        try:
            rp = t.create_recovery_point(label)
        except (InvalidValueError, PersistenceError):
            assert (t.state(), t.recovery_points()) == before
            rp = None
        else:
            assert [p.label for p in t.recovery_points()] == [label]
        assert t.set("k", 2) == 3  # the system goes on
    with open_system(b.target()) as system:
        assert [p.label for p in system.manager.recovery_points("l")] == ([] if rp is None else [label])


# -- the same on PostgreSQL ----------------------------------------------------------------------------------
@pytest.fixture
def pg(pg_dsn: str, pg_schema: str, tmp_path: Path) -> PostgresBackend:
    return PostgresBackend(pg_dsn, pg_schema)


def _pg_rows(b: PostgresBackend) -> dict[str, int]:
    import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

    with psycopg.connect(b.dsn, autocommit=True) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{b.schema}".{t}').fetchone()[0]  # noqa: S608 - fixed names
                for t in ("contexts", "snapshots", "journal", "recovery_points")}


@pytest.mark.postgres
def test_on_postgres_a_malformed_context_id_is_refused_everywhere_and_changes_nothing(pg: PostgresBackend) -> None:
    with open_system(pg.target(), manager_config=ContextManagerConfig(max_value_bytes=1000)) as system:
        a, m = system.adapter, system.manager
        before = (m.list_ids(), _pg_rows(pg))
        for bad in BAD_IDS:
            for call in (a.activate, a.switch, a.tracker, a.status, a.deactivate, a.create_and_activate, m.create,
                         m.get_state, m.exists, m.delete, lambda b: m.update(b, {"k": 1}), m.recovery_points):
                with pytest.raises(InvalidContextIdError):
                    call(bad)
        assert (m.list_ids(), _pg_rows(pg)) == before
        assert a.current_id() == "default"


@pytest.mark.postgres
def test_on_postgres_ids_with_slashes_dots_and_any_unicode_round_trip_exactly(pg: PostgresBackend) -> None:
    with open_system(pg.target()) as system:
        for i, cid in enumerate(GOOD_IDS):
            system.adapter.activate(cid).set("i", i)
    with open_system(pg.target()) as system:
        assert system.manager.list_ids() == sorted([*GOOD_IDS, "default"])
        for i, cid in enumerate(GOOD_IDS):
            assert system.manager.get_state(cid).data["i"] == i
            assert system.adapter.status(cid) is ContextStatus.INACTIVE
        assert system.store.verify() == []


@pytest.fixture
def pg_store(make_pg_store: Callable[..., PostgresStore]) -> PostgresStore:
    return make_pg_store(notify=False)


@pytest.mark.postgres
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cid=st.text(min_size=1, max_size=60))
def test_on_postgres_any_valid_id_round_trips_through_the_store_and_any_invalid_one_is_refused(
        pg_store: PostgresStore, cid: str) -> None:
    """One store (and schema) for every example, as a fresh one each would cost more than the test:
    each example starts from an empty store and deletes what it made."""
    store = pg_store
    assert store.count() == 0
    valid = (len(cid.encode("utf-8", "surrogatepass")) <= 255
             and not any(ord(c) < 32 or 127 <= ord(c) < 160 or 0xD800 <= ord(c) < 0xE000 for c in cid))
    if not valid:
        for call in (lambda: store.commit([CreateContext(new_state(cid))]), lambda: store.load(cid),
                     lambda: store.info(cid), lambda: store.recovery_points(cid),
                     lambda: store.commit([Append(cid, Change(2, 0.0, {"k": 1}))])):
            with pytest.raises(InvalidContextIdError):
                call()
        assert store.count() == 0 and store.list_ids(cid) == []
        return
    store.commit([CreateContext(new_state(cid, {"v": cid}))])
    try:
        assert store.list_ids() == [cid] and store.list_ids(cid) == [cid]
        st_ = store.load(cid)
        assert st_ is not None and st_.id == cid and st_.data["v"] == cid
    finally:
        store.commit([DeleteContext(cid)])


@pytest.mark.postgres
def test_on_postgres_values_and_keys_that_are_not_storable_are_refused_and_change_nothing(
        pg: PostgresBackend) -> None:
    with open_system(pg.target(), manager_config=ContextManagerConfig(max_value_bytes=1000)) as system:
        t = system.adapter.activate("v")
        t.set("keep", 1)
        before = t.state()
        m, a = system.manager, system.adapter
        writes: list[Callable[[str, Any], object]] = [
            lambda _n, v: t.set("k", v), lambda _n, v: t.update({"ok": 1, "k": v}),
            lambda _n, v: t.transact(lambda d: d.update({"ok": 1, "k": v})), lambda _n, v: t.set_metadata("k", v),
            lambda _n, v: t.set_metadata({"ok": 1, "k": v}), lambda n, v: m.create(f"new-{n}", {"k": v}),
            lambda n, v: a.create_and_activate(f"new2-{n}", metadata={"k": v})]
        for name, value in BAD_VALUES:
            for write in writes:
                with pytest.raises(InvalidValueError) as info:
                    write(name, value)
                assert info.value.key in ("k", None), name
        key_writes: list[Callable[[Any], object]] = [
            lambda k: t.set(k, 1), lambda k: t.update({k: 1}), lambda k: t.transact(lambda d: d.__setitem__(k, 1)),
            lambda k: t.set_metadata({k: 1})]
        for key in BAD_KEYS:
            for key_write in key_writes:
                with pytest.raises(InvalidValueError):
                    key_write(key)
        assert t.state() == before
        system.adapter.deactivate("v")
        assert system.manager.get_state("v") == before  # what the store holds, too
        assert system.manager.list_ids() == ["default", "v"]


@pytest.mark.postgres
def test_on_postgres_size_limits_count_escaped_bytes(pg: PostgresBackend) -> None:
    cfg = ContextManagerConfig(max_value_bytes=300_000, max_state_bytes=300_000)
    with open_system(pg.target(), manager_config=cfg) as system:
        t = system.adapter.activate("e")
        with pytest.raises(InvalidValueError, match="max_value_bytes"):
            t.set("big", "\x00" * 290_000)  # 1.74 MB as JSON
        t.set("a", "\x01" * 45_000)  # 270 KB as JSON: accepted
        with pytest.raises(InvalidValueError, match="max_state_bytes"):
            t.set("b", "\x02" * 10_000)  # 60 KB more would pass 300 KB
        v = t.version
    with open_system(pg.target(), manager_config=cfg) as system:
        assert system.manager.get_state("e").version == v
        assert system.manager.get_state("e").data["a"] == "\x01" * 45_000


def _foreign_schema(b: PostgresBackend, conn: Any) -> None:
    conn.execute(f'CREATE TABLE "{b.schema}".people (name text)')
    conn.execute(f"""INSERT INTO "{b.schema}".people VALUES ('ana')""")  # noqa: S608 - the test's schema


def _newer_schema(b: PostgresBackend, conn: Any) -> None:
    store = b.open_store()
    store.commit([CreateContext(new_state("a"))])
    store.close()
    conn.execute(f'INSERT INTO "{b.schema}".schema_version (version) VALUES (99)')  # noqa: S608 - the test's schema


@pytest.mark.postgres
@pytest.mark.parametrize(("what", "make", "message"), [
    ("a schema of something else", _foreign_schema, "not a hoard store"),
    ("a hoard schema of a newer version", _newer_schema, "newer"),
], ids=["foreign", "newer"])
def test_on_postgres_a_schema_that_is_not_a_hoard_store_is_refused_and_left_untouched(
        pg: PostgresBackend, what: str, make: Callable[[PostgresBackend, Any], None], message: str) -> None:
    import psycopg  # noqa: PLC0415 - the PostgreSQL tests only

    def dump(conn: Any) -> list[Any]:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                                             (pg.schema,))]
        return [(t, conn.execute(f'SELECT r::text FROM "{pg.schema}".{t} r ORDER BY 1').fetchall())  # noqa: S608
                for t in tables]

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        make(pg, conn)
        before = dump(conn)
        with pytest.raises(CorruptStateError, match=message) as info:
            open_system(pg.target())
        assert info.value.what == "store", what
        assert dump(conn) == before
