"""`open_store` / `make_store`: one function turns what users write (a path, ``":memory:"``, a
``postgresql://`` URL) into a store, read-only by default; `open_system` goes through it too."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoard.storage import (
    ConfigError,
    CorruptStateError,
    CreateContext,
    MemoryStore,
    PersistenceError,
    PostgresStore,
    SQLiteStore,
    StoreLockedError,
    make_store,
    new_state,
    open_store,
)
from tests.pg import url_for


def test_a_postgresql_url_makes_a_postgres_store_with_hoards_options_taken_out_of_it() -> None:
    store = make_store("postgresql://u@db.example:6543/app?sslmode=disable&schema=tenant_7&lease_ttl=2.5"
                       "&application_name=x", max_state_bytes=4096, require_lease=True)
    assert isinstance(store, PostgresStore)
    assert (store.schema, store.lease_ttl, store.require_lease, store.readonly) == ("tenant_7", 2.5, True, False)
    assert store.dsn == "postgresql://u@db.example:6543/app?sslmode=disable&application_name=x"
    assert store.codec.max_bytes == 4096 + 2**20  # the limits reach the store
    plain = make_store("postgres://u@h/app", readonly=True)
    assert isinstance(plain, PostgresStore)
    assert (plain.schema, plain.lease_ttl, plain.require_lease, plain.readonly) == ("hoard", 10.0, False, True)
    with pytest.raises(ConfigError, match="lease_ttl"):
        make_store("postgresql://u@h/app?lease_ttl=soon")
    with pytest.raises(ConfigError, match="schema"):
        make_store("postgresql://u@h/app?schema=no;drop")
    # PostgreSQL keeps names starting with pg_ for itself: the open failed at the server, as a
    # PersistenceError (the store away?) instead of the settings' error
    for reserved in ("pg_catalog", "pg_mine"):
        with pytest.raises(ConfigError, match=f"schema.*{reserved}.*pg_"):
            make_store(f"postgresql://u@h/app?schema={reserved}")


def test_a_path_makes_a_sqlite_store_and_memory_a_memory_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.db", sync="normal", recovery="fallback")
    assert isinstance(store, SQLiteStore)
    assert (store.sync, store.recovery, store.readonly) == ("normal", "fallback", False)
    assert isinstance(make_store(":memory:"), MemoryStore) and isinstance(make_store(""), MemoryStore)
    with pytest.raises(ConfigError, match="path or a postgresql"):
        make_store(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sync"):
        make_store(tmp_path / "s.db", sync="sometimes")


def test_open_store_reads_alongside_the_writer_and_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with pytest.raises(PersistenceError, match="no store"):
        open_store(path)  # read-only: nothing is created
    assert not path.exists()
    writer = open_store(path, readonly=False)
    try:
        writer.commit([CreateContext(new_state("a"))])
        with pytest.raises(StoreLockedError):
            open_store(path, readonly=False)
        reader = open_store(path)  # no writer lock
        try:
            assert [c.id for c in reader.contexts()] == ["a"]
        finally:
            reader.close()
    finally:
        writer.close()
    (tmp_path / "other.db").write_bytes(b"not a database at all, just some bytes" * 100)
    with pytest.raises(CorruptStateError):
        open_store(tmp_path / "other.db")


@pytest.mark.parametrize("name", [b"hoard_meta", b"contexts"])
def test_a_store_whose_text_is_not_utf8_is_refused_as_damaged(tmp_path: Path, name: bytes) -> None:
    path = tmp_path / "s.db"
    writer = open_store(path, readonly=False)
    try:
        writer.commit([CreateContext(new_state("a"))])
    finally:
        writer.close()
    data = bytearray(path.read_bytes())
    data[data.find(name) + 2] = 0xF2  # one damaged byte in a table name (sqlite_master): not UTF-8
    path.write_bytes(bytes(data))
    for readonly in (True, False):
        with pytest.raises(CorruptStateError, match="UTF-8"):
            open_store(path, readonly=readonly).close()


@pytest.mark.postgres
def test_open_store_on_a_url_reads_without_creating_or_writing_anything(pg_dsn: str, pg_schema: str) -> None:
    url = url_for(pg_dsn, pg_schema)
    with pytest.raises(CorruptStateError, match="no hoard store"):
        open_store(url)  # the schema is empty: a reader creates no tables
    writer = open_store(url, readonly=False)
    try:
        writer.commit([CreateContext(new_state("a"))])
        reader = open_store(url)
        try:
            assert [c.id for c in reader.contexts()] == ["a"] and reader.load("a") == writer.load("a")
            with pytest.raises(PersistenceError, match="read-only"):
                reader.commit([CreateContext(new_state("b"))])
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_refused_open_for_writing_leaves_no_lock_file_it_made(tmp_path: Path) -> None:
    # `hoard demo --dir` onto a file that is no store, `hoard import` into one, open_system on one:
    # each was refused, and each left STORE.lock behind
    notes = tmp_path / "notes.db"
    notes.write_text("not a database, just some notes\n" * 100)
    with pytest.raises(CorruptStateError):
        SQLiteStore(notes).open()
    assert not (tmp_path / "notes.db.lock").exists()
    kept = tmp_path / "kept.db"
    kept.write_text("not a database either\n" * 100)
    (tmp_path / "kept.db.lock").write_bytes(b"")  # there before: not this open's to remove
    with pytest.raises(CorruptStateError):
        SQLiteStore(kept).open()
    assert (tmp_path / "kept.db.lock").exists()
