"""PostgresStore beyond the shared contract (tests/storage/test_store_contract.py): its schema and
migrations, ownership leases and fencing tokens, LISTEN/NOTIFY, connection faults, and real OS
processes competing for the same contexts.

Every test runs in a schema of its own (the `pg_schema` fixture drops it), against the server at
127.0.0.1:5432; without one they skip, under CI=true they fail (tests/storage/conftest.py).
Child processes use the "spawn" start method and are killed at teardown (`children`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from hoard.storage import (
    Append,
    Change,
    ChangeListener,
    ChangeNotice,
    ContextOwnedElsewhereError,
    ContextState,
    CorruptStateError,
    CreateContext,
    FencedOffError,
    OwnerIdInUseError,
    PersistenceError,
    PostgresStore,
    PutSnapshot,
    apply_change,
    freeze_mapping,
    new_state,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.postgres

MakeStore = Callable[..., PostgresStore]
SPAWN = multiprocessing.get_context("spawn")


# -- helpers ---------------------------------------------------------------------------------------------
def acquire_when_free(store: PostgresStore, cid: str, timeout: float) -> tuple[int, int]:
    """Acquire the lease on `cid`, retrying while it is owned elsewhere; return (token, refusals)."""
    refusals = 0

    def attempt() -> int | None:
        nonlocal refusals
        try:
            return store.acquire_lease(cid)
        except ContextOwnedElsewhereError:
            refusals += 1
            return None
    return wait_for(attempt, timeout, f"the lease on {cid!r} to be free", pause=0.02), refusals


def change(version: int, **data: Any) -> Change:
    return Change(version, time.time(), freeze_mapping(data))


def grow(store: PostgresStore, state: ContextState, n: int) -> ContextState:
    for _ in range(n):
        ch = change(state.version + 1, **{f"v{state.version + 1}": state.version + 1})
        store.commit([Append(state.id, ch)])
        state = apply_change(state, ch)
    return state


def sql(dsn: str, query: str, params: Any = None, *, schema: str | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (tables of `schema` unqualified)."""
    with psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}" if schema else "") as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def journal_versions(store: PostgresStore, cid: str) -> list[int]:
    """The versions of the stored journal of `cid`, through the store's read interface."""
    return [e.version for e in store.journal(cid)]


def read_log(path: Path) -> list[dict[str, Any]]:
    """JSON lines written by a child; a torn last line (child killed mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


@pytest.fixture
def children() -> Iterator[list[Any]]:
    """Child processes started by a test; whatever is still alive at teardown is killed (SIGCONT
    first, so a stopped one dies too) and reaped."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.join(10)
        assert not p.is_alive(), f"child {p.pid} survived SIGKILL"
        p.close()


# -- schema and migrations -------------------------------------------------------------------------------
def test_open_creates_the_tables_and_records_the_schema_version(make_pg_store: MakeStore, pg_dsn: str,
                                                                pg_schema: str) -> None:
    make_pg_store()
    tables = {r[0] for r in sql(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,))}
    assert tables == {"schema_version", "contexts", "snapshots", "journal", "recovery_points", "leases", "feed",
                      "feed_head", "feed_consumers", "settings"}
    assert sql(pg_dsn, "SELECT version FROM schema_version ORDER BY version", schema=pg_schema) == [(1,), (2,)]
    make_pg_store()  # a second opener (another process, say) migrates nothing
    assert sql(pg_dsn, "SELECT count(*) FROM schema_version", schema=pg_schema) == [(2,)]


def test_a_schema_written_by_a_newer_hoard_is_refused(make_pg_store: MakeStore, pg_dsn: str,
                                                      pg_schema: str) -> None:
    make_pg_store().close()
    sql(pg_dsn, "INSERT INTO schema_version (version) VALUES (99)", schema=pg_schema)
    with pytest.raises(CorruptStateError, match="newer hoard"):
        make_pg_store()


def test_a_schema_holding_other_tables_is_refused(make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    sql(pg_dsn, "CREATE TABLE customers (id int)", schema=pg_schema)
    with pytest.raises(CorruptStateError, match="not a hoard store"):
        make_pg_store()


def test_an_unreachable_server_is_a_persistence_error() -> None:
    store = PostgresStore("host=127.0.0.1 port=1 user=postgres dbname=test", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PersistenceError, match="cannot connect"):
        store.open()
    assert time.monotonic() - started < 5
    store.close()


# -- version-checked writes ------------------------------------------------------------------------------
def test_two_stores_can_never_both_append_the_same_version(make_pg_store: MakeStore) -> None:
    a, b = make_pg_store(), make_pg_store()
    st = new_state("c")
    a.commit([CreateContext(st)])
    a.commit([Append("c", change(2, by="a"))])
    with pytest.raises(PersistenceError, match="does not follow stored version 2"):
        b.commit([Append("c", change(2, by="b"))])
    assert b.load("c").get("by") == "a"  # type: ignore[union-attr]


def test_a_refused_append_rolls_back_the_whole_batch_sent_with_its_commit(make_pg_store: MakeStore) -> None:
    """A batch of appends goes to the server with its COMMIT: the server's own check of a later append
    (it does not follow its stored version) must keep the earlier, valid ones from committing."""
    s = make_pg_store()
    s.commit([CreateContext(new_state("a")), CreateContext(new_state("b"))])
    s.commit([Append("b", change(2, x=1))])
    with pytest.raises(PersistenceError, match="journal entry 2 for 'b' does not follow stored version 2") as caught:
        s.commit([Append("a", change(2, x=1)), Append("b", change(2, x=2))])
    assert caught.value.context_id == "b"
    assert s.load("a").version == 1  # type: ignore[union-attr]
    assert [e.version for e in s.feed()] == [1, 1, 2]  # the creates and b's first append: nothing of the batch
    s.commit([Append("a", change(2, x=1)), Append("b", change(3, x=2))])  # the connection goes on
    assert (s.load("a").version, s.load("b").version) == (2, 3)  # type: ignore[union-attr]
    with pytest.raises(PersistenceError, match="journal entry for 'ghost', which is not in the store"):
        s.commit([Append("ghost", change(2, x=1))])
    assert s.verify() == []


def test_a_batch_of_appends_is_one_round_trip_to_the_server(make_pg_store: MakeStore) -> None:
    """The durable write of the common batch (appends to leased contexts: fence, journal rows, NOTIFY,
    feed rows, COMMIT) is one exchange with the server, however many appends and contexts: counted on
    the store's own connection (injected), a pipeline is one exchange, a statement outside one is one."""
    exchanges: list[str] = []

    class Counting(psycopg.Connection[Any]):
        depth = 0

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            if self.depth == 0:
                exchanges.append(str(query))
            return super().execute(query, params, **kwargs)

        @contextlib.contextmanager
        def pipeline(self) -> Iterator[Any]:  # type: ignore[override]
            self.depth += 1
            try:
                with super().pipeline() as p:
                    yield p
            finally:
                self.depth -= 1
                exchanges.append("pipeline")

    s = make_pg_store(require_lease=True, connection_class=Counting)
    for cid in ("a", "b"):
        s.acquire_lease(cid)
    s.commit([CreateContext(new_state("a")), CreateContext(new_state("b"))])
    exchanges.clear()
    s.commit([Append("a", change(2, x=1)), Append("b", change(2, x=2)), Append("a", change(3, x=3))])
    assert len(exchanges) == 1 and "hoard_appends" in exchanges[0]
    assert (s.load("a").version, s.load("b").version) == (3, 2)  # type: ignore[union-attr]
    assert [(e.context_id, e.version) for e in s.feed()][-3:] == [("a", 2), ("b", 2), ("a", 3)]
    exchanges.clear()  # a lone append: one statement too (through execute(), which this class overrides)
    s.commit([Append("b", change(3, x=4))])
    assert len(exchanges) == 1 and "hoard_append(" in exchanges[0]
    assert s.load("b").version == 3  # type: ignore[union-attr]
    assert [(e.context_id, e.version) for e in s.feed()][-1:] == [("b", 3)]


def test_a_batch_of_appends_sent_in_binary_keeps_every_value_and_check(make_pg_store: MakeStore, pg_dsn: str,
                                                                      pg_schema: str) -> None:
    """A batch of appends goes to the server through libpq with its arrays packed by the store: every
    value arrives as sent (non-ASCII ids, exact float times, blobs, versions and notices), a token
    held for some contexts and none for others is checked per context, a fenced or out-of-order
    append refuses the whole batch, and the prepared call survives psycopg's DEALLOCATE ALL."""
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    ids = ["é-1", "plain", "z\u4e2d"]
    a.commit([CreateContext(new_state(cid)) for cid in ids])
    token = a.acquire_lease("plain", 60)
    at = 1_700_000_000.123456789
    with b.listen() as listener:
        listener.open()
        a.commit([Append("é-1", Change(2, at, freeze_mapping({"x": 1}))), Append("plain", change(2, y="ü")),
                  Append("z\u4e2d", change(2)), Append("é-1", Change(3, at + 0.5, freeze_mapping({"x": 2})))])
        got = collect(listener, 3)
    assert sorted((n.context_id, n.version, n.ops) for n in got) == [
        ("plain", 2, ("append",)), ("z\u4e2d", 2, ("append",)), ("é-1", 3, ("append",))]
    assert [(e.version, e.at) for e in a.journal("é-1")] == [(2, at), (3, at + 0.5)]
    assert sql(pg_dsn, "SELECT updated_at FROM contexts WHERE id = 'é-1'", schema=pg_schema) == [(at + 0.5,)]
    assert a.load("é-1").get("x") == 2  # type: ignore[union-attr]
    assert a.load("plain").get("y") == "ü"  # type: ignore[union-attr]
    assert [(e.context_id, e.version) for e in a.feed()][-4:] == [("é-1", 2), ("plain", 2), ("z\u4e2d", 2), ("é-1", 3)]
    assert sql(pg_dsn, "SELECT token FROM leases WHERE context_id = 'plain'", schema=pg_schema) == [(token,)]
    # another owner takes "plain": a's batch touching it is refused as a whole
    sql(pg_dsn, "UPDATE leases SET owner = 'node-b', token = token + 1, expires_at = now() + interval '1 h' "
                "WHERE context_id = 'plain'", schema=pg_schema)
    with pytest.raises(FencedOffError) as caught:
        a.commit([Append("é-1", change(4)), Append("plain", change(3))])
    assert (caught.value.context_id, caught.value.token) == ("plain", token)
    with pytest.raises(PersistenceError, match="journal entry 4 for 'z\u4e2d' does not follow stored version 2"):
        a.commit([Append("é-1", change(4)), Append("z\u4e2d", change(4))])
    assert a.load("é-1").version == 3  # type: ignore[union-attr]
    # psycopg prepares its own statements after five runs, and drops every prepared statement of the
    # session (DEALLOCATE ALL) at a later rollback: the store prepares its call again
    st = a.load("z\u4e2d")
    for _ in range(6):
        assert st is not None
        a.commit([PutSnapshot(st)])
    def prepared() -> list[str]:
        conn = a._connection()  # noqa: SLF001 - the store's own session
        return sorted(r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements") if "hoard" in r[0])
    assert prepared() == ["hoard_appends"]
    with pytest.raises(PersistenceError, match="already exists"):
        a.commit([CreateContext(new_state("é-1"))])
    assert prepared() == []
    a.commit([Append("é-1", change(4)), Append("z\u4e2d", change(3))])
    assert prepared() == ["hoard_appends"]
    assert (a.load("é-1").version, a.load("z\u4e2d").version) == (4, 3)  # type: ignore[union-attr]
    assert a.verify() == []


def test_damaged_blobs_are_detected_not_loaded(make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    s = make_pg_store()
    st = new_state("c", freeze_mapping({"a": 1}))
    s.commit([CreateContext(st)])
    grow(s, st, 2)
    sql(pg_dsn, "UPDATE journal SET blob = set_byte(blob, 30, (get_byte(blob, 30) + 1) % 256) "
                "WHERE context_id = 'c' AND version = 3", schema=pg_schema)
    with pytest.raises(CorruptStateError, match="checksum"):
        s.load("c")
    issues = s.verify()
    # the damaged row, and its consequence (as SQLiteStore reports it: one engine)
    assert [(i.context_id, i.what, i.problem.split(" ")[0]) for i in issues] == [
        ("c", "journal", "checksum"), ("c", "journal", "unrecoverable:")]
    # orphan rows (no such context) are reported, and removed by verify(fix=True)
    sql(pg_dsn, "INSERT INTO snapshots VALUES ('ghost', 1, '\\x00')", schema=pg_schema)
    assert ("ghost", "snapshot", False) in [(i.context_id, i.what, i.fixed) for i in s.verify()]
    assert ("ghost", "snapshot", True) in [(i.context_id, i.what, i.fixed) for i in s.verify(fix=True)]
    assert [i.context_id for i in s.verify()] == ["c", "c"]


# -- leases and fencing ----------------------------------------------------------------------------------
def test_a_lease_excludes_other_owners_until_released_and_tokens_grow(make_pg_store: MakeStore) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    t1 = a.acquire_lease("c", 30)
    assert a.acquire_lease("c", 30) == t1  # held already: renewed, same token
    with pytest.raises(ContextOwnedElsewhereError) as caught:
        b.acquire_lease("c", 30)
    assert (caught.value.context_id, caught.value.owner) == ("c", "node-a")
    assert 25 < caught.value.expires_in <= 30  # type: ignore[operator]
    assert a.release_lease("c", t1) is True
    t2 = b.acquire_lease("c", 30)
    assert t2 > t1
    assert a.lease_token("c") is None
    assert b.lease_token("c") == t2


def test_expiry_is_judged_by_the_database_clock(make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    t1 = a.acquire_lease("c", 3600)
    (left,) = sql(pg_dsn, "SELECT extract(epoch FROM expires_at - now())::float8 FROM leases", schema=pg_schema)[0]
    assert 3590 < left <= 3600
    # an hour passes on the server's clock only: the lease is free, whatever the local clock says
    sql(pg_dsn, "UPDATE leases SET expires_at = expires_at - interval '1 hour'", schema=pg_schema)
    assert b.acquire_lease("c") == t1 + 1


def test_a_write_by_an_owner_that_was_taken_over_is_fenced_off(make_pg_store: MakeStore) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    t1 = a.acquire_lease("c", 0.2)
    st = new_state("c")
    a.commit([CreateContext(st)])
    st = grow(a, st, 2)
    t2, _ = acquire_when_free(b, "c", timeout=10)
    assert t2 == t1 + 1
    # a's version would be the right next one: only the token stops it
    with pytest.raises(FencedOffError) as caught:
        a.commit([Append("c", change(4, late=True))])
    assert (caught.value.token, caught.value.current_token, caught.value.owner) == (t1, t2, "node-b")
    with pytest.raises(FencedOffError):
        a.commit([PutSnapshot(st)])
    with pytest.raises(FencedOffError):
        a.renew_lease("c", t1)
    assert b.load("c") == st
    grow(b, st, 1)
    assert b.load("c").version == 4  # type: ignore[union-attr]


def test_an_expired_lease_nobody_took_still_lets_its_holder_write_and_renew(make_pg_store: MakeStore,
                                                                            pg_dsn: str, pg_schema: str) -> None:
    a = make_pg_store()
    t = a.acquire_lease("c", 60)
    sql(pg_dsn, "UPDATE leases SET expires_at = now() - interval '1 s'", schema=pg_schema)
    a.commit([CreateContext(new_state("c"))])
    a.renew_lease("c", t)
    assert a.acquire_lease("c") == t


def test_a_store_without_the_lease_cannot_write_a_context_leased_elsewhere(make_pg_store: MakeStore) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    a.commit([CreateContext(new_state("c")), CreateContext(new_state("free"))])
    a.acquire_lease("c", 30)
    with pytest.raises(FencedOffError) as caught:
        b.commit([Append("free", change(2)), Append("c", change(2))])  # one fenced op: nothing applies
    assert (caught.value.token, caught.value.owner) == (None, "node-a")
    assert b.info("free").version == 1  # type: ignore[union-attr]
    b.commit([Append("free", change(2))])  # contexts nobody leases stay writable
    strict = make_pg_store(owner_id="strict", require_lease=True)
    with pytest.raises(FencedOffError):
        strict.commit([Append("free", change(3))])
    strict.acquire_lease("free")
    strict.commit([Append("free", change(3))])


def test_renew_leases_reports_the_leases_taken_over(make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    for cid in ("x", "y", "z"):
        a.acquire_lease(cid, 60)
    sql(pg_dsn, "UPDATE leases SET expires_at = now() - interval '1 s' WHERE context_id = 'y'", schema=pg_schema)
    b.acquire_lease("y")
    assert a.renew_leases(60) == ["y"]
    assert (a.lease_token("x"), a.lease_token("y")) == (1, None)
    assert a.renew_leases() == []


def test_renew_leases_skips_a_lease_row_another_session_holds_locked(make_pg_store: MakeStore, pg_dsn: str,
                                                                    pg_schema: str) -> None:
    """A lease row locked by another session (a paused stale writer whose fence locked it) neither
    delays the renewal of the others (the persistence actor renews between commits) nor makes them
    fail: it is skipped, still held, and renewed by a later renewal."""
    a = make_pg_store(owner_id="node-a", lock_timeout=5.0)
    for cid in ("x", "y"):
        a.acquire_lease(cid, 60)
    sql(pg_dsn, "UPDATE leases SET expires_at = now() + interval '5 s'", schema=pg_schema)
    with psycopg.connect(pg_dsn, autocommit=True, options=f"-c search_path={pg_schema}") as other:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM leases WHERE context_id = 'x' FOR UPDATE")
        assert a.renew_leases(60) == []  # not lost: skipped
        left = dict(sql(pg_dsn, "SELECT context_id, extract(epoch FROM expires_at - now())::float8 FROM leases",
                        schema=pg_schema))
        assert left["x"] <= 5 and left["y"] > 55
        assert (a.lease_token("x"), a.lease_token("y")) == (1, 1)
        other.execute("ROLLBACK")
    assert a.renew_leases(60) == []
    (left_x,) = sql(pg_dsn, "SELECT extract(epoch FROM expires_at - now())::float8 FROM leases "
                            "WHERE context_id = 'x'", schema=pg_schema)[0]
    assert left_x > 55


def test_a_restarted_owner_with_the_same_id_takes_its_leases_back_and_fences_its_old_self(
        make_pg_store: MakeStore, pg_dsn: str) -> None:
    old = make_pg_store(owner_id="node-a")
    t1 = old.acquire_lease("c", 60)
    old.commit([CreateContext(new_state("c"))])
    with pytest.raises(OwnerIdInUseError) as in_use:  # while the old one lives, the id is taken
        make_pg_store(owner_id="node-a")
    assert in_use.value.owner_id == "node-a"
    # the server ends the old incarnation's claim session (as for a dead or long-partitioned client)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'hoard owner node-a'")
    new = make_pg_store(owner_id="node-a")
    assert new.acquire_lease("c", 60) == t1 + 1  # no wait for expiry
    with pytest.raises(FencedOffError):
        old.commit([Append("c", change(2))])
    with pytest.raises(OwnerIdInUseError):  # the zombie cannot take it back under the same id
        old.acquire_lease("c", 60)
    new.commit([Append("c", change(2))])


def test_closing_a_store_releases_its_leases(make_pg_store: MakeStore) -> None:
    a, b = make_pg_store(owner_id="node-a"), make_pg_store(owner_id="node-b")
    t = a.acquire_lease("c", 60)
    a.close()
    assert b.acquire_lease("c", 60) == t + 1


# -- LISTEN / NOTIFY -------------------------------------------------------------------------------------
def collect(listener: ChangeListener, count: int, timeout: float = 10) -> list[ChangeNotice]:
    """Notices from `listener` until there are `count` of them (fails after `timeout`)."""
    got: list[ChangeNotice] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} notices arrived: {got}"
        got += listener.wait(0.5)
    return got


def test_commits_notify_listeners_of_other_stores_with_id_and_version(make_pg_store: MakeStore, pg_dsn: str) -> None:
    writer, reader = make_pg_store(owner_id="writer"), make_pg_store(owner_id="reader")
    other_schema = make_pg_store(schema="hoard_test_other_" + os.urandom(4).hex())
    try:
        with reader.listen() as listener:
            st = new_state("c")
            writer.commit([CreateContext(st)])
            st = grow(writer, st, 2)
            with pytest.raises(PersistenceError):  # refused: rolled back, so nothing is notified
                writer.commit([Append("c", change(2))])
            other_schema.commit([CreateContext(new_state("elsewhere"))])
            ch = change(4)
            writer.commit([Append("c", ch), PutSnapshot(apply_change(st, ch)), CreateContext(new_state("d"))])
            got = collect(listener, 5)
            assert [(n.context_id, n.version, n.ops) for n in got] == [
                ("c", 1, ("create",)), ("c", 2, ("append",)), ("c", 3, ("append",)),
                ("c", 4, ("append", "snapshot")), ("d", 1, ("create",))]
            assert {n.owner for n in got} == {"writer"}
            assert listener.wait(0.05) == []
            t = writer.acquire_lease("c")
            writer.release_lease("c", t)
            got = collect(listener, 2)
            assert [(n.context_id, n.ops) for n in got] == [("c", ("lease_acquired",)), ("c", ("lease_released",))]
    finally:
        other_schema.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(other_schema.schema)))


def test_a_batch_of_appends_notifies_each_context_once_with_its_last_version(make_pg_store: MakeStore) -> None:
    """Appends-only batches (the common commit) carry their versions in the notice themselves."""
    writer, reader = make_pg_store(owner_id="writer"), make_pg_store(owner_id="reader")
    with reader.listen() as listener:
        writer.commit([CreateContext(new_state("c")), CreateContext(new_state("b"))])
        collect(listener, 2)
        writer.commit([Append("c", change(2)), Append("b", change(2)), Append("c", change(3))])
        got = collect(listener, 2)
        assert [(n.context_id, n.version, n.ops, n.owner) for n in got] == [
            ("b", 2, ("append",), "writer"), ("c", 3, ("append",), "writer")]
        assert listener.wait(0.05) == []


def test_a_listener_whose_connection_dies_raises_then_listens_again(make_pg_store: MakeStore, pg_dsn: str) -> None:
    writer = make_pg_store()
    with writer.listen() as listener:
        listener.open()
        pid = listener._conn.info.backend_pid  # noqa: SLF001 - the test needs the server-side pid
        sql(pg_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(PersistenceError, match="notices sent meanwhile are lost"):
            wait_for(lambda: listener.wait(0.2) and False, 10, "the listener to notice its connection died")
        listener.open()
        writer.commit([CreateContext(new_state("c"))])
        assert [n.context_id for n in wait_for(lambda: listener.wait(0.5), 10, "a notice")] == ["c"]


# -- connection faults -----------------------------------------------------------------------------------
def terminate(dsn: str, pid: int) -> None:
    assert sql(dsn, "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    wait_for(lambda: not sql(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), 10, "backend exit")


def test_a_connection_killed_while_idle_is_replaced_without_an_error(make_pg_store: MakeStore, pg_dsn: str) -> None:
    s = make_pg_store()
    st = new_state("c")
    s.commit([CreateContext(st)])
    for step in range(2):
        old = s.backend_pid
        assert old is not None
        terminate(pg_dsn, old)
        if step == 0:
            assert s.load("c") == st  # a read is retried on a new connection
        else:
            st = grow(s, st, 1)  # so is a commit whose connection was dead before it began
        assert s.backend_pid not in (None, old)
    assert s.load("c") == st
    assert journal_versions(s, "c") == [2]


def test_a_connection_killed_mid_commit_is_a_persistence_error_and_nothing_is_lost_or_doubled(
        make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    s = make_pg_store()
    st = new_state("c")
    s.commit([CreateContext(st)])
    st = grow(s, st, 2)
    pid = s.backend_pid
    outcome: list[BaseException | None] = []
    # a transaction holding the context row: the store's commit waits on it
    with psycopg.connect(pg_dsn, options=f"-c search_path={pg_schema}") as locker:
        locker.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", ("c",))

        def write() -> None:
            try:
                s.commit([Append("c", change(4, lost=True))])
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)
        writer = threading.Thread(target=write)
        writer.start()
        wait_for(lambda: sql(pg_dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                             (pid,)), 10, "the commit to block inside its transaction")
        terminate(pg_dsn, pid)  # type: ignore[arg-type]
        writer.join(10)
        locker.rollback()
    assert len(outcome) == 1
    assert isinstance(outcome[0], PersistenceError)
    assert not isinstance(outcome[0], FencedOffError)
    assert "connection lost" in str(outcome[0])
    assert s.load("c") == st  # nothing of the lost transaction
    retried = change(4, lost=False)
    s.commit([Append("c", retried)])
    assert s.load("c") == apply_change(st, retried)
    assert journal_versions(s, "c") == [2, 3, 4]
    assert s.verify() == []


def test_a_commit_that_waits_too_long_for_the_feed_head_commits_nothing(make_pg_store: MakeStore, pg_dsn: str,
                                                                         pg_schema: str) -> None:
    """The feed rows and COMMIT go to the server together: when the feed rows fail (here: the feed_head
    row is locked by another session past lock_timeout), the COMMIT behind them does not run."""
    s = make_pg_store(lock_timeout=0.2)
    st = new_state("c")
    s.commit([CreateContext(st)])
    with psycopg.connect(pg_dsn, autocommit=False) as locker:
        locker.execute(pgsql.SQL("SELECT head FROM {}.feed_head WHERE id = 1 FOR UPDATE").format(
            pgsql.Identifier(pg_schema)))
        with pytest.raises(PersistenceError, match="lock_timeout"):
            s.commit([Append("c", change(2, x=1))])
        locker.rollback()
    assert s.load("c") == st
    assert journal_versions(s, "c") == []
    ch = change(2, x=2)
    s.commit([Append("c", ch)])
    assert s.load("c") == apply_change(st, ch)
    assert [(e.offset, e.version) for e in s.feed()] == [(1, 1), (2, 2)]  # the failed one took no offset
    assert s.verify() == []


@pytest.mark.parametrize("breaks", ["after COMMIT", "before COMMIT"])
def test_a_connection_lost_around_commit_is_resolved_by_transaction_status(
        make_pg_store: MakeStore, caplog: pytest.LogCaptureFixture, breaks: str) -> None:
    armed: list[bool] = []

    class BreakAtCommit(psycopg.Connection[Any]):
        """The store's connections (injected): the armed COMMIT loses its session."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            # the COMMIT, or the one statement that is a batch of appends with its commit
            if (query != "COMMIT" and "hoard_append" not in str(query)) or not armed:
                return super().execute(query, params, **kwargs)
            armed.clear()
            if breaks == "after COMMIT":
                super().execute(query, params, **kwargs)
                # in a pipeline (the feed rows go with COMMIT) the call returns once COMMIT is sent:
                # wait until the server has committed; then the session ends
                wait_for(lambda: sql(self_dsn, "SELECT 1 FROM journal WHERE version = 2", schema=s.schema), 10,
                         "the commit to be visible")
            sql(self_dsn, "SELECT pg_terminate_backend(%s)", (self.info.backend_pid,))
            return wait_for(lambda: super(BreakAtCommit, self).execute("SELECT 1") and False, 10,
                            "the connection to break")  # raises once the client learns it

    s = make_pg_store(connection_class=BreakAtCommit)
    self_dsn = s.dsn
    st = new_state("c")
    s.commit([CreateContext(st)])
    armed.append(True)
    ch = change(2, x=1)
    if breaks == "after COMMIT":
        with caplog.at_level(logging.WARNING, logger="hoard.storage._postgres"):
            s.commit([Append("c", ch)])  # reported done: it is stored
        assert "broke during COMMIT" in caplog.text and "but the transaction committed" in caplog.text
        assert s.load("c") == apply_change(st, ch)
        assert journal_versions(s, "c") == [2]
    else:
        with pytest.raises(PersistenceError, match="connection lost"):  # reported failed: it is not stored
            s.commit([Append("c", ch)])
        assert s.load("c") == st
        assert journal_versions(s, "c") == []
    assert not armed


class _CuttingProxy:
    """A TCP relay to the server that, once armed, swallows the next answer the server sends on any
    connection and closes that connection on both sides: what the client sees when the network fails
    after the server committed but before its answer arrived. For a store that talks to libpq
    directly (no connection class can see the statement)."""

    def __init__(self, host: str, port: int) -> None:
        import socket  # noqa: PLC0415 - this helper only

        self.target = (host, port)
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[Any] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        import socket  # noqa: PLC0415 - this helper only

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for src, dst, answers in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, answers), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src: Any, dst: Any, answers: bool) -> None:
        import socket  # noqa: PLC0415 - this helper only

        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if answers and self.armed.is_set():
                    self.armed.clear()
                    for sock in (src, dst):  # the answer is lost, and the connection with it
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    self.cut.set()
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for t in self.threads:
            t.join(5)


def test_a_lone_append_whose_answer_is_lost_after_the_server_committed_is_acknowledged(
        pg_dsn: str, pg_schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """The lone append goes to libpq directly (no connection class sees it): when the connection
    breaks after the server committed it, before its answer arrived, the store finds the batch's
    journal row on a new connection and returns normally; nothing is lost or doubled."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415 - this test only

    params = conninfo_to_dict(pg_dsn)
    proxy = _CuttingProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
    s = PostgresStore(make_conninfo(pg_dsn, host="127.0.0.1", port=proxy.port), schema=pg_schema)
    try:
        s.open()
        st = new_state("c")
        s.commit([CreateContext(st)])
        st = grow(s, st, 1)  # a lone append that arrived
        ch = change(3, x=1)
        proxy.armed.set()
        with caplog.at_level(logging.WARNING, logger="hoard.storage._postgres"):
            s.commit([Append("c", ch)])  # reported done: it is stored
        assert proxy.cut.is_set()
        assert "but the transaction committed" in caplog.text
        st = apply_change(st, ch)
        assert s.load("c") == st
        st = grow(s, st, 1)  # and the store goes on, on a new connection
        assert s.load("c") == st
        assert journal_versions(s, "c") == [2, 3, 4]
        assert [(e.context_id, e.version) for e in s.feed()] == [("c", 1), ("c", 2), ("c", 3), ("c", 4)]
        assert s.verify() == []
    finally:
        s.close()
        proxy.close()


# -- real processes --------------------------------------------------------------------------------------
def _hammer_child(*, dsn: str, schema: str, ids: list[str], duration: float, min_turns: int, log_path: str,
                  start: Any) -> None:
    """Repeatedly: take the lease of a random context, mark it occupied (a separate table: the check
    does not trust the lease code), append a few changes, unmark, release. Logs each acknowledged
    change and any occupancy violation as JSON lines."""
    store = PostgresStore(dsn, schema=schema, lease_ttl=5.0)
    store.open()
    occupancy = psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}")
    # every child starts hammering at once, connected: a child still importing on a loaded machine let
    # the others finish their turns before it began, and nobody was ever refused
    start.wait(60)
    me, rng = store.owner_id, random.Random(os.getpid())  # noqa: S311 - picks contexts, not secrets
    # for `duration`, and then on until it held each context `min_turns` times (within `limit` s): on a
    # loaded machine a fixed duration alone left a context with too few changes of hands
    end, limit = time.monotonic() + duration, time.monotonic() + 40.0
    turns = dict.fromkeys(ids, 0)
    refused = 0
    with open(log_path, "a") as log:
        def record(**entry: Any) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()
        while time.monotonic() < limit and (time.monotonic() < end or min(turns.values()) < min_turns):
            cid = rng.choice(ids)
            try:
                token = store.acquire_lease(cid)
            except ContextOwnedElsewhereError:
                refused += 1
                time.sleep(0.001)
                continue
            holders = occupancy.execute("UPDATE occupancy SET holder = %s WHERE id = %s AND holder IS NULL",
                                        (me, cid)).rowcount
            if holders != 1:
                record(violation=f"{me} got the lease on {cid} while it was occupied")
            state = store.load(cid)
            if state is None:
                state = new_state(cid)
                store.commit([CreateContext(state)])
                record(cid=cid, v=1, owner=me, token=token)
            for _ in range(rng.randint(1, 4)):
                ch = Change(state.version + 1, time.time(), freeze_mapping({f"v{state.version + 1}": [me, token]}))
                nxt = apply_change(state, ch)
                store.commit([Append(cid, ch), PutSnapshot(nxt)] if ch.version % 7 == 0 else [Append(cid, ch)])
                state = nxt
                record(cid=cid, v=state.version, owner=me, token=token)
            if occupancy.execute("UPDATE occupancy SET holder = NULL WHERE id = %s AND holder = %s",
                                 (cid, me)).rowcount != 1:
                record(violation=f"{me} found {cid} occupied by someone else before releasing")
            store.release_lease(cid, token)
            turns[cid] += 1
        record(refused=refused)
    occupancy.close()
    store.close()


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_hammering_overlapping_contexts_own_each_alone_and_lose_nothing(
        make_pg_store: MakeStore, tmp_path: Path, children: list[Any], processes: int) -> None:
    ids = ["c0", "c1", "c2"]
    store = make_pg_store()
    sql(store.dsn, "CREATE TABLE occupancy (id text PRIMARY KEY, holder text)", schema=store.schema)
    sql(store.dsn, "INSERT INTO occupancy SELECT unnest(%s::text[])", (ids,), schema=store.schema)
    start = SPAWN.Barrier(processes)
    logs = [tmp_path / f"child{i}.jsonl" for i in range(processes)]
    for path in logs:
        p = SPAWN.Process(target=_hammer_child, kwargs={"dsn": store.dsn, "schema": store.schema, "ids": ids,
                                                         "duration": 2.0, "min_turns": 5, "log_path": str(path),
                                                         "start": start})
        children.append(p)
        p.start()
    for p in children:
        p.join(90)
        assert p.exitcode == 0, f"child {p.pid} failed (exit code {p.exitcode}); see its stderr"
    entries = [e for path in logs for e in read_log(path)]
    assert [e["violation"] for e in entries if "violation" in e] == []
    assert sum(e["refused"] for e in entries if "refused" in e) > 0  # they really did compete
    acked = [e for e in entries if "cid" in e]
    assert len({e["owner"] for e in acked}) == processes  # every process got its turns
    for cid in ids:
        state = store.load(cid)
        assert state is not None
        mine = {e["v"]: (e["owner"], e["token"]) for e in acked if e["cid"] == cid}
        # gapless, and exactly the acknowledged changes: each version holds who wrote it under which token
        assert sorted(mine) == list(range(1, state.version + 1))
        written = [tuple(state.data[f"v{v}"]) for v in range(2, state.version + 1)]
        assert written == [mine[v] for v in range(2, state.version + 1)]
        # ownership moved only forward: tokens never decrease along the history, one owner per token
        tokens = [t for _, t in written]
        assert tokens == sorted(tokens)
        assert len(set(tokens)) >= 5 * processes  # each process held it at least min_turns times
        assert len({t for _, t in written}) == len(set(written))
    assert store.verify() == []


def _owner_child(*, dsn: str, schema: str, cid: str, log_path: str, pipe: Any) -> None:
    """Own `cid` with a 1 s lease. Then either append (renewing the lease) until killed ("run"), or
    wait for a "write" command and report how the late write and renewal went ("hold")."""
    store = PostgresStore(dsn, schema=schema, lease_ttl=1.0)
    store.open()
    token = store.acquire_lease(cid)
    state = store.load(cid)
    assert state is not None
    pipe.send(("ready", token, store.owner_id))
    mode = pipe.recv()
    with open(log_path, "a") as log:
        while mode == "run":
            store.renew_lease(cid, token)
            ch = Change(state.version + 1, time.time(), freeze_mapping({f"v{state.version + 1}": token}))
            store.commit([Append(cid, ch)])
            state = apply_change(state, ch)
            log.write(json.dumps({"v": state.version}) + "\n")
            log.flush()
    pipe.recv()  # "write", sent after SIGCONT
    report: list[Any] = []

    def late_write() -> None:
        store.commit([Append(cid, Change(state.version + 1, time.time(), freeze_mapping({"late": True})))])

    def late_renewal() -> None:
        store.renew_lease(cid, token)

    for attempt in (late_write, late_renewal):
        try:
            attempt()
            report.append("accepted")
        except FencedOffError as exc:
            report.append(("fenced", exc.token, exc.current_token))
    pipe.send(report)
    store.close()


def test_a_killed_owner_is_taken_over_after_expiry_with_every_acknowledged_change(
        make_pg_store: MakeStore, tmp_path: Path, children: list[Any]) -> None:
    store = make_pg_store(owner_id="successor", lease_ttl=5.0)
    pg_dsn, pg_schema = store.dsn, store.schema
    store.commit([CreateContext(new_state("f"))])
    log_path = tmp_path / "owner.jsonl"
    parent_end, child_end = SPAWN.Pipe()
    owner = SPAWN.Process(target=_owner_child, kwargs={"dsn": pg_dsn, "schema": pg_schema, "cid": "f",
                                                       "log_path": str(log_path), "pipe": child_end})
    children.append(owner)
    owner.start()
    assert parent_end.poll(60), "the owner child did not start"
    _, token, _ = parent_end.recv()
    parent_end.send("run")
    wait_for(lambda: len(read_log(log_path)) >= 30, 20, "30 acknowledged changes")
    owner.kill()  # SIGKILL, wherever it is (possibly mid-commit)
    killed_at = time.monotonic()
    owner.join(10)
    new_token, refusals = acquire_when_free(store, "f", timeout=10)
    waited = time.monotonic() - killed_at
    assert refusals >= 1  # it was still owned: the takeover waited for the expiry ...
    assert waited < 5  # ... of a 1 s lease, not longer
    assert new_token == token + 1
    acked = [e["v"] for e in read_log(log_path)]
    state = store.load("f")
    assert state is not None
    assert state.version >= max(acked)  # every acknowledged change survived (one more may be unacknowledged)
    assert sorted(int(k[1:]) for k in state.data) == list(range(2, state.version + 1))
    assert journal_versions(store, "f") == list(range(2, state.version + 1))
    grow(store, state, 1)
    parent_end.close()
    child_end.close()


def test_a_paused_owner_is_taken_over_and_its_late_write_is_fenced_off(
        make_pg_store: MakeStore, tmp_path: Path, children: list[Any]) -> None:
    store = make_pg_store(owner_id="successor", lease_ttl=5.0)
    pg_dsn, pg_schema = store.dsn, store.schema
    st = new_state("p")
    store.commit([CreateContext(st)])
    parent_end, child_end = SPAWN.Pipe()
    owner = SPAWN.Process(target=_owner_child, kwargs={"dsn": pg_dsn, "schema": pg_schema, "cid": "p",
                                                       "log_path": str(tmp_path / "x.jsonl"), "pipe": child_end})
    children.append(owner)
    owner.start()
    assert parent_end.poll(60), "the owner child did not start"
    _, token, owner_id = parent_end.recv()
    parent_end.send("hold")
    os.kill(owner.pid, signal.SIGSTOP)  # type: ignore[arg-type]
    try:
        with pytest.raises(ContextOwnedElsewhereError) as caught:
            store.acquire_lease("p")
        assert caught.value.owner == owner_id
        new_token, _ = acquire_when_free(store, "p", timeout=10)
        assert new_token == token + 1
    finally:
        os.kill(owner.pid, signal.SIGCONT)  # type: ignore[arg-type]
    parent_end.send("write")  # its next version (2) would pass the version check: only the token refuses it
    assert parent_end.poll(30), "the resumed owner did not report"
    assert parent_end.recv() == [("fenced", token, new_token), ("fenced", token, new_token)]
    owner.join(10)
    assert owner.exitcode == 0
    assert store.load("p") == st
    assert journal_versions(store, "p") == []
    grow(store, st, 1)
    parent_end.close()
    child_end.close()


def test_a_commit_skipped_behind_failed_feed_rows_leaves_no_phantom_prepared_statement(
        make_pg_store: MakeStore, pg_dsn: str, pg_schema: str) -> None:
    """psycopg counts a statement's executions and prepares it at the sixth, marking it prepared as it
    sends the PREPARE; in a pipeline whose earlier statement fails, the server skips that PREPARE,
    and psycopg still believes in it unless a ROLLBACK it sees clears its cache (it does not, once it
    has counted ROLLBACK itself). The next COMMIT would then fail with "prepared statement does not
    exist". So COMMIT (and BEGIN) of a write transaction are never prepared."""
    s = make_pg_store(lock_timeout=0.2)
    st = new_state("c")
    s.commit([CreateContext(st)])
    with pytest.raises(PersistenceError, match="already exists"):
        s.commit([CreateContext(st)])  # a ROLLBACK while nothing is prepared: psycopg now counts it

    def step(state: ContextState) -> tuple[list[Any], ContextState]:
        """A batch that is not only appends, with a feed row: the fence, the writes, then feed + COMMIT."""
        ch = change(state.version + 1, x=state.version)
        nxt = apply_change(state, ch)
        return [Append("c", ch), PutSnapshot(nxt)], nxt
    for _ in range(4):  # its COMMIT five times, with the create's
        ops, st = step(st)
        s.commit(ops)
    with psycopg.connect(pg_dsn, autocommit=False) as locker:
        locker.execute(pgsql.SQL("SELECT head FROM {}.feed_head WHERE id = 1 FOR UPDATE").format(
            pgsql.Identifier(pg_schema)))
        with pytest.raises(PersistenceError, match="lock_timeout"):
            s.commit(step(st)[0])  # the sixth COMMIT, skipped behind the feed rows' lock wait
        locker.rollback()
    for _ in range(2):
        ops, st = step(st)
        s.commit(ops)
    assert s.load("c") == st
    assert s.verify() == []


def test_a_store_alone_on_its_schema_sends_no_notices_until_another_listens(make_pg_store: MakeStore,
                                                                           pg_dsn: str) -> None:
    """A batch of appends notifies only while a session of another store or a listener announces
    itself on the schema: the system's own listener (others_only) is not woken by its own commits,
    and still hears every other store's; a listener that joins hears every commit after its open()."""
    writer = make_pg_store(owner_id="writer")
    st = new_state("c")
    writer.commit([CreateContext(st)])
    with writer.listen(others_only=True) as own, psycopg.connect(pg_dsn, autocommit=True) as raw:
        own.open()
        raw.execute("LISTEN hoard_changes")  # a raw session that does not announce itself
        st = grow(writer, st, 2)
        assert own.wait(0.05) == []
        assert [n for n in raw.notifies(timeout=0.05) if f'"{writer.schema}"' in n.payload] == []
        with make_pg_store(owner_id="reader").listen() as joined:
            joined.open()
            st = grow(writer, st, 1)
            assert [(n.context_id, n.version) for n in collect(joined, 1)] == [("c", 4)]
            assert [n.context_id for n in collect(own, 1)] == ["c"]  # sent now; its owner ignores it
        other = make_pg_store(owner_id="other")
        other.commit([CreateContext(new_state("d"))])  # another store's session announces itself: notified
        assert [(n.context_id, n.owner) for n in collect(own, 1)] == [("d", "other")]
        grow(writer, st, 1)
        assert [(n.context_id, n.version) for n in collect(own, 1)] == [("c", 5)]
