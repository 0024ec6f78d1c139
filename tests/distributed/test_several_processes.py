"""Several hoard processes on one PostgreSQL store, through the public API (``open_system(url)``):
single activation by ownership lease, failover after a lease expires, fencing of a paused owner,
a connection killed mid-write, and events across processes.

The nodes are real OS processes running tests/distributed/node.py (killed and reaped at teardown);
the test process itself is often the other node. Every test has a schema of its own (dropped
afterwards). Without a server at 127.0.0.1:5432 they skip; under CI=true they fail.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from hoard import (
    ContextAdapterConfig,
    ContextManagerConfig,
    ContextOwnedElsewhereError,
    FencedOffError,
    PersistenceError,
    PostgresStore,
    RemoteChange,
    open_system,
)
from hoard.storage import open_store
from tests.helpers import wait_for

from .conftest import Node

pytestmark = pytest.mark.postgres

Url = Callable[..., str]
Nodes = Callable[[dict[str, Any]], Node]
NO_DEFAULT = ContextAdapterConfig(auto_activate_default=False)  # each node picks its contexts itself


def sql(dsn: str, schema: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def next_key(draft: Any, tag: Any) -> int:
    """As in node.py: one key per version, naming its writer."""
    version = int(draft.version) + 1
    draft[f"v{version}"] = tag
    return version


def gapless(data: Any, version: int) -> bool:
    """The data holds exactly one key per version 2..version (the transact writes of node.py)."""
    return sorted(data) == sorted(f"v{v}" for v in range(2, version + 1))


# Every acquisition (the token changes) and every release of a lease, in the order the database
# serialized them (the trigger runs under the lease row's lock), by a trigger on the store's table.
LEASE_LOG = """
CREATE TABLE {s}.lease_log (n bigserial PRIMARY KEY, context_id text, owner text, token bigint, event text);
CREATE FUNCTION {s}.log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.owner <> '' AND (TG_OP = 'INSERT' OR NEW.token <> OLD.token) THEN
    INSERT INTO {s}.lease_log (context_id, owner, token, event)
    VALUES (NEW.context_id, NEW.owner, NEW.token, 'acquire');
  ELSIF TG_OP = 'UPDATE' AND NEW.expires_at = '-infinity' AND OLD.expires_at <> '-infinity' THEN
    INSERT INTO {s}.lease_log (context_id, owner, token, event)
    VALUES (NEW.context_id, NEW.owner, NEW.token, 'release');
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER lease_log AFTER INSERT OR UPDATE ON {s}.leases FOR EACH ROW EXECUTE FUNCTION {s}.log_lease();
"""


# -- the URL -----------------------------------------------------------------------------------------------
def test_a_system_opened_on_a_url_writes_under_leases_with_the_configs_limits(pg_url: Url) -> None:
    """The URL is parsed by `hoard.storage.make_store` (tested in tests/storage); the system adds
    ``require_lease=True`` and its configured limits."""
    with open_system(pg_url(lease_ttl=2.5), manager_config=ContextManagerConfig(max_state_bytes=4096),
                     adapter_config=NO_DEFAULT) as system:
        store = system.store
        assert isinstance(store, PostgresStore)
        assert (store.lease_ttl, store.require_lease) == (2.5, True)
        assert store.codec.max_bytes == 4096 + 2**20


# -- single activation ---------------------------------------------------------------------------------------
def test_activating_a_context_owned_by_another_system_waits_its_timeout_then_names_the_owner(pg_url: Url) -> None:
    url = pg_url()
    with open_system(url, adapter_config=NO_DEFAULT) as a, open_system(url, adapter_config=NO_DEFAULT) as b:
        a.adapter.activate("x").set("k", 1)
        started = time.monotonic()
        with pytest.raises(ContextOwnedElsewhereError) as refused:
            b.adapter.activate("x", timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 2
        assert refused.value.owner == a.store.owner_id  # type: ignore[attr-defined]
        with pytest.raises(ContextOwnedElsewhereError):  # writes need the lease too, not just activation
            b.manager.delete("x")
        # released by a deactivation: a waiting activation gets it at once, with every change
        waiting = threading.Thread(target=lambda: got.append(b.adapter.activate("x", timeout=5)))
        got: list[Any] = []
        waiting.start()
        a.adapter.deactivate("x")
        waiting.join(10)
        assert got and got[0].get("k") == 1 and got[0].version == 2
        assert got[0].set("k", 2) == 3


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_hammering_overlapping_contexts_own_each_alone_and_lose_nothing(
        pg_dsn: str, pg_schema: str, pg_url: Url, nodes: Nodes, processes: int) -> None:
    ids = ["c0", "c1", "c2"]
    store = PostgresStore(pg_dsn, schema=pg_schema)
    store.open()  # creates the tables, so that the test can watch them
    try:
        sql(pg_dsn, pg_schema, LEASE_LOG.format(s=f'"{pg_schema}"'))
        sql(pg_dsn, pg_schema, "CREATE TABLE occupancy (id text PRIMARY KEY, holder text)")
        sql(pg_dsn, pg_schema, "INSERT INTO occupancy SELECT unnest(%s::text[])", (ids,))
        config = {"mode": "hammer", "url": pg_url(), "dsn": pg_dsn, "schema": pg_schema, "ids": ids,
                  "duration": 2.0, "min_turns": 3, "limit": 40.0}
        started = [nodes(config) for _ in range(processes)]
        owners = [n.expect("ready", 30)["owner"] for n in started]
        for n in started:
            n.send("go")
        reports = [r for n in started for r in n.finish(90)]
        assert [r["what"] for r in reports if r["e"] == "violation"] == []
        assert all(r["turns"] > 0 for r in reports if r["e"] == "done")  # every process got its turns
        acks = [r for r in reports if r["e"] == "ack"]
        for cid in ids:
            state = store.load(cid)
            assert state is not None
            mine = {r["v"]: r["tag"] for r in acks if r["c"] == cid}
            # versions gapless, and the data is exactly the acknowledged changes, each by its writer
            assert gapless(state.data, state.version)
            assert {int(k[1:]): list(v) for k, v in state.data.items()} == mine
            # the lease history: acquire, release, acquire, ... never two owners at once, tokens +1 each
            log = sql(pg_dsn, pg_schema, "SELECT event, owner, token FROM lease_log WHERE context_id = %s "
                      "ORDER BY n", (cid,))
            assert [e for e, _, _ in log] == ["acquire", "release"] * (len(log) // 2)
            acquired = [(o, t) for e, o, t in log if e == "acquire"]
            assert [(o, t) for e, o, t in log if e == "release"] == acquired  # each released by its holder
            tokens = [t for _, t in acquired]
            assert tokens == list(range(tokens[0], tokens[0] + len(tokens)))
            assert {o for o, _ in acquired} <= set(owners)
            # they really competed: every process held every context (each had its turns on each), so
            # it changed hands at least once per process beyond the first
            assert {o for o, _ in acquired} == set(owners), (cid, acquired)
            handovers = sum(a[0] != b[0] for a, b in itertools.pairwise(acquired))
            assert handovers >= processes - 1, (cid, acquired)
        assert len({o for e, o, _ in sql(pg_dsn, pg_schema, "SELECT event, owner, token FROM lease_log")}) == processes
        assert store.verify() == []
    finally:
        store.close()


# -- failover ------------------------------------------------------------------------------------------------
def test_a_killed_owner_is_taken_over_after_its_lease_expires_with_every_acknowledged_change(
        pg_url: Url, nodes: Nodes) -> None:
    url = pg_url(lease_ttl=1.0)
    owner = nodes({"mode": "writer", "url": url, "cid": "f", "count": None})
    ready = owner.expect("ready", 30)
    with open_system(url, adapter_config=NO_DEFAULT) as system:
        owner.send("go")
        for _ in range(20):
            owner.expect("ack", 20)
        os.kill(owner.pid, signal.SIGKILL)  # wherever it is, possibly mid-commit
        killed_at = time.monotonic()
        with pytest.raises(ContextOwnedElsewhereError) as refused:  # its lease still runs (renewed < 0.4 s ago)
            system.adapter.activate("f", timeout=0.05)
        assert refused.value.owner == ready["owner"]
        tracker = system.adapter.activate("f", timeout=5)  # waits for the expiry, then takes it over
        waited = time.monotonic() - killed_at
        owner.proc.wait(10)
        acked = [r["v"] for r in owner.drain() if r.get("e") == "ack"]
        state = tracker.state()
        assert waited < 3  # a 1 s lease, not the call's 5 s
        assert max(acked) <= state.version <= max(acked) + 1  # every acknowledged change; one may be unacked
        assert gapless(state.data, state.version)
        assert [state.data[f"v{v}"] for v in acked] == [v - 2 for v in acked]
        assert tracker.transact(lambda d: next_key(d, "successor")) == state.version + 1


def test_a_paused_owner_whose_lease_was_taken_over_is_fenced_off_and_must_reactivate(
        pg_url: Url, nodes: Nodes) -> None:
    url = pg_url(lease_ttl=1.0)
    paused = nodes({"mode": "paused", "url": url, "cid": "p", "call_timeout": 5.0})
    assert paused.expect("ack", 30)["v"] == 2
    paused.expect("in_fn", 10)  # its next write is being made when it is paused
    with open_system(url, adapter_config=NO_DEFAULT) as system:
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            tracker = system.adapter.activate("p", timeout=5)  # taken over once the paused lease expired
            assert time.monotonic() - started > 0.3
            assert tracker.transact(lambda d: next_key(d, "successor")) == 3
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        paused.send("go")
        late = paused.expect("late", 15)
        assert (late["ok"], late["err"]) == (False, "FencedOffError"), late
        later = paused.expect("later", 15)  # refused too: fenced, or (once dropped) owned elsewhere
        assert not later["ok"] and later["err"] in ("FencedOffError", "ContextOwnedElsewhereError"), later
        state = tracker.state()
        assert (state.version, dict(state.data)) == (3, {"v2": "before the pause", "v3": "successor"})
        system.adapter.deactivate("p")
        paused.send("reactivate")
        back = paused.expect("reactivated", 15)
        assert (back.get("v"), back.get("keys")) == (3, ["v2", "v3"]), back  # it reads the successor's write
        paused.finish(15)
    with open_system(url, adapter_config=NO_DEFAULT) as check:
        assert check.manager.get_state("p") == state


# -- a connection killed mid-write ------------------------------------------------------------------------------
def test_a_backend_killed_mid_write_is_a_typed_error_and_the_system_keeps_working(
        pg_dsn: str, pg_schema: str, pg_url: Url) -> None:
    url = pg_url()
    with open_system(url, adapter_config=NO_DEFAULT) as system:
        tracker = system.adapter.activate("n")
        assert tracker.transact(lambda d: next_key(d, "a")) == 2
        pid = system.store.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_dsn, options=f"-c search_path={pg_schema}") as locker:
            locker.execute("SELECT 1 FROM contexts WHERE id = 'n' FOR UPDATE")  # the write waits on this
            pending = tracker.transact_async(lambda d: next_key(d, "lost"))
            wait_for(lambda: sql(pg_dsn, pg_schema, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND "
                                 "wait_event_type = 'Lock'", (pid,)), 10, "the write to block in its transaction")
            sql(pg_dsn, pg_schema, "SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(PersistenceError, match="connection lost") as caught:
                pending.get(timeout=10)
            assert not isinstance(caught.value, FencedOffError)
            locker.rollback()
        assert tracker.state().version == 2
        assert tracker.transact(lambda d: next_key(d, "b")) == 3  # reconnected; nothing half-done in the way
        assert dict(tracker.state().data) == {"v2": "a", "v3": "b"}
    reader = open_store(url)
    try:  # (empty if the final snapshot covered it)
        assert [e.version for e in reader.journal("n")] in ([2, 3], [])
    finally:
        reader.close()
    with open_system(url, adapter_config=NO_DEFAULT) as again:
        assert dict(again.manager.get_state("n").data) == {"v2": "a", "v3": "b"}
        assert again.store.verify() == []


# -- events across processes ---------------------------------------------------------------------------------
def test_a_subscriber_receives_remote_changes_committed_by_another_process(pg_url: Url, nodes: Nodes) -> None:
    url = pg_url()
    writer = nodes({"mode": "writer", "url": url, "cid": "e", "count": 10})
    ready = writer.expect("ready", 30)
    with open_system(url, adapter_config=NO_DEFAULT) as system:
        received: queue.Queue[RemoteChange] = queue.Queue()
        system.subscribe(received.put, kinds=[RemoteChange])
        system.adapter.activate("mine").set("k", 1)  # this process's own commits are not remote changes
        writer.send("go")
        acked = {r["v"] for r in writer.finish(30) if r["e"] == "ack"}
        assert len(acked) == 10
        events: list[RemoteChange] = []

        def appended() -> set[int]:
            while not received.empty():
                events.append(received.get_nowait())
            return {e.version for e in events if e.context_id == "e" and "append" in e.ops}  # type: ignore[misc]

        wait_for(lambda: appended() >= acked and any("lease_released" in e.ops for e in events), 10,
                 "a RemoteChange for each acknowledged write and the release")
        assert {e.owner for e in events} == {ready["owner"]}
        assert {e.context_id for e in events} == {"e"}
        ordered = [e.version for e in events if "append" in e.ops]
        assert ordered == sorted(ordered)  # in commit order
