"""Issue 15 in one test process: two (or three) systems on one PostgreSQL schema, each its own owner,
forwarding over the real NATS server. A call on a context active in another system is answered
there: same result, same typed errors with their fields, same deadline, and a call made while the
context changes hands is applied exactly once. Separate hosts and partitions: test_hosts.py."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from hoard import (
    CallNotStartedError,
    ConfigError,
    ContextAdapterConfig,
    ContextManagerConfig,
    ContextOwnedElsewhereError,
    ContextStatus,
    ContextSystem,
    HoardError,
    InvalidValueError,
    NotForwardableError,
    PostgresStore,
    RecoveryPointNotFoundError,
    VersionConflictError,
    open_system,
)
from hoard.actors import Get, Set, Update
from tests.distributed.conftest import Node
from tests.distributed.test_hosts import Host
from tests.helpers import wait_until

pytestmark = pytest.mark.postgres

Open = Callable[..., ContextSystem]


@pytest.fixture
def systems(pg_url: Callable[..., str], nats_url: str) -> Iterator[Open]:
    """``open_(lease_ttl=..., forward=True, **adapter options)``: a system on this test's schema,
    forwarding through NATS unless ``forward=False``; every one is stopped at teardown."""
    opened: list[ContextSystem] = []

    def open_(lease_ttl: float = 10.0, *, forward: bool = True, store: Any = None,
              manager_config: ContextManagerConfig | None = None, **adapter: Any) -> ContextSystem:
        adapter.setdefault("auto_activate_default", False)
        system = open_system(store if store is not None else pg_url(lease_ttl), manager_config=manager_config,
                             adapter_config=ContextAdapterConfig(**adapter),
                             forward_via=nats_url if forward else None)
        opened.append(system)
        return system

    yield open_
    for system in reversed(opened):
        with contextlib.suppress(HoardError):
            system.stop()


def test_every_kind_of_call_on_a_context_owned_elsewhere_is_answered_by_its_owner(systems: Open) -> None:
    a, b = systems(), systems()
    here = a.adapter.get_or_create("acct", data={"n": 0}, metadata={"tier": "gold"})
    there = b.adapter.get_or_create("acct")  # owned by a: b's tracker forwards
    assert b.manager.owner("acct") is not None
    assert b.manager.owner("acct").owner == a.store.owner_id  # type: ignore[union-attr]
    assert b.adapter.status("acct") is not ContextStatus.ACTIVE  # nothing was activated in b

    assert there["n"] == 0 and there.metadata()["tier"] == "gold" and dict(there) == {"n": 0}
    assert there.set("n", 1) == 2
    assert there.update({"a": 1, "b": 2}) == 3
    assert there.delete("b") == 4
    assert there.set_metadata("tier", "silver") == 5
    rp = there.create_recovery_point("before")
    assert (rp.id, rp.version, rp.label) == (1, 5, "before")
    assert there.set("n", 2) == 6
    assert there.restore(rp.id) == 7
    assert b.manager.update("acct", {"m": 1}) == 8
    assert b.manager.create_recovery_point("acct").version == 8
    assert b.manager.restore("acct", rp) == 9
    assert there.set_async("x", [1, {"y": 2}]).get() == 10
    assert there.update_async({"z": True}).get() == 11
    ref = b.ref("acct")
    assert ref.ask(Get("x")) == [1, {"y": 2}]
    assert ref.ask(Update({"w": 1})) == 12
    assert ref.ask(Set("v", 2), block=False).get() == 13

    # every call was applied by the owner, once, in order: its own tracker reads the result
    assert here.version == there.version == 13
    assert dict(here) == dict(there) == {"n": 1, "a": 1, "x": [1, {"y": 2}], "z": True, "w": 1, "v": 2}
    assert a.manager.owner("acct").here  # type: ignore[union-attr]
    assert b.adapter.status("acct") is not ContextStatus.ACTIVE

    # the manager's writes that need no context actor run in the owner too
    b.manager.set_ttl("acct", 3600)
    b.manager.delete_recovery_point("acct", rp.id)
    assert [p.id for p in a.manager.recovery_points("acct")] == [2]
    b.manager.delete("acct")
    assert a.adapter.status("acct") is ContextStatus.NONEXISTENT and not b.manager.exists("acct")


def test_typed_errors_come_back_as_the_same_classes_with_their_fields(systems: Open) -> None:
    a, b = systems(manager_config=ContextManagerConfig(max_value_bytes=1024)), systems()
    a.adapter.get_or_create("acct", data={"n": 0})
    there = b.adapter.get_or_create("acct")

    with pytest.raises(VersionConflictError) as conflict:
        there.set("n", 1, expected_version=7)
    assert (conflict.value.context_id, conflict.value.expected, conflict.value.actual) == ("acct", 7, 1)
    with pytest.raises(InvalidValueError) as bad:  # refused by the owner's own limit (b's is 1 MiB)
        there.set("big", "x" * 2000)
    assert bad.value.key == "big" and bad.value.context_id == "acct"
    with pytest.raises(NotForwardableError, match="max_payload"):  # more than NATS carries: not sent
        there.set("huge", "x" * (2**20 + 10))
    with pytest.raises(RecoveryPointNotFoundError):
        there.restore(99)
    with pytest.raises(NotForwardableError) as nf:  # a function does not cross processes
        there.transact(lambda d: d.update(n=5))
    assert nf.value.owner == a.store.owner_id
    assert there.version == 1  # nothing above changed it


def _add(draft: Any, by: int = 1) -> int:
    draft["n"] = draft.get("n", 0) + by
    return int(draft["n"])


def _refuse(draft: Any) -> None:
    raise ValueError("not today")


def test_a_registered_transaction_runs_in_the_owner_by_name_with_json_arguments(systems: Open) -> None:
    a, b = systems(), systems()
    for system in (a, b):  # every process registers the same functions under the same names
        system.register_transaction(_add, name="add")
        system.register_transaction(_refuse, name="refuse")
    add = b.register_transaction(_add, name="add")  # again: the same record
    here = a.adapter.get_or_create("acct", data={"n": 0})
    there = b.adapter.get_or_create("acct")  # owned by a: b forwards

    assert there.transact(add.bind(by=5)) == 5
    assert there.transact(add) == 6  # the registered record, no arguments
    assert there.transact(_add) == 7  # the registered function itself, found by identity
    assert there.transact_async(add.bind(by=2)).get() == 9
    first = there.transact(add.bind(by=10), with_version=True, request_id="tx-1")
    assert (first.value, first.version, first.duplicate) == (19, 6, False)
    again = there.transact(add.bind(by=10), with_version=True, request_id="tx-1")  # a retry: not applied twice
    assert (again.value, again.version, again.duplicate) == (None, 6, True)
    assert here.version == 6 and here["n"] == 19 and b.adapter.status("acct") is not ContextStatus.ACTIVE

    with pytest.raises(VersionConflictError) as conflict:  # the owner's typed error, with its fields
        there.transact(add, expected_version=2)
    assert (conflict.value.expected, conflict.value.actual) == (2, 6)
    with pytest.raises(HoardError, match="ValueError in the owning process: not today"):
        there.transact(b.register_transaction(_refuse, name="refuse"))
    with pytest.raises(NotForwardableError, match="register_transaction") as unregistered:
        there.transact(lambda d: d.update(n=0))
    assert unregistered.value.owner == a.store.owner_id
    only_b = b.register_transaction(lambda d: d.update(n=0), name="only-in-b")
    with pytest.raises(NotForwardableError, match="no transaction named 'only-in-b'") as unknown:
        there.transact(only_b)
    assert (unknown.value.owner, unknown.value.context_id) == (a.store.owner_id, "acct")
    with pytest.raises(InvalidValueError):  # arguments are JSON values, checked in the caller's thread
        add.bind(by=object())
    with pytest.raises(ConfigError, match="already"):  # one name, one function
        b.register_transaction(_refuse, name="add")
    with pytest.raises(ConfigError, match="name"):  # a lambda needs a name
        b.register_transaction(lambda d: None)
    assert here.version == 6  # nothing refused above changed it
    assert here.transact(add.bind(by=1)) == 20  # and locally the record is just the function


def test_a_registered_transaction_crosses_to_another_process_both_ways(
        systems: Open, pg_dsn: str, pg_schema: str, nats_url: str) -> None:
    host = Host(None, {"dsn": pg_dsn, "schema": pg_schema, "nats": nats_url, "owner": "host-1",
                       "lease_ttl": 10.0, "default": None})
    try:
        host.expect("ready", 60)
        host.command(op="own", ids=["theirs"])
        host.expect("owned", 30)
        here = systems()
        add = here.register_transaction(_add, name="add")  # host.py registers its own "add"
        theirs = here.adapter.get_or_create("theirs")
        assert theirs.transact(add.bind(by=3)) == 3  # run by the host process's function
        assert theirs.transact(add.bind(by=3), request_id="once") == 6
        assert theirs.transact(add.bind(by=3), request_id="once") is None  # a retry: not applied twice
        assert here.manager.owner("theirs").owner == "host-1"  # type: ignore[union-attr]
        mine = here.adapter.get_or_create("mine")
        host.command(op="transact", cid="mine", by=5, request_id="r-1")  # the host reaches this process
        assert host.expect("transacted", 30) == {"e": "transacted", "value": 5, "v": 2, "duplicate": False}
        assert mine["n"] == 5 and mine.version == 2
        host.command(op="exit")
        host.expect("bye", 30)
    finally:
        host.kill()
    assert here.manager.get_state("theirs").data["n"] == 6


def test_a_forwarded_call_keeps_the_callers_deadline(systems: Open) -> None:
    a, b = systems(), systems()
    here = a.adapter.get_or_create("acct", data={"n": 0})
    there = b.adapter.get_or_create("acct")
    there.set("n", 1)  # the owner is known now
    busy, release = threading.Event(), threading.Event()

    def slow(draft: Any) -> None:
        busy.set()
        release.wait(10)

    blocker = here.transact_async(slow, timeout=15)
    assert busy.wait(5)
    try:
        with pytest.raises(CallNotStartedError) as late:  # queued behind the transaction past its deadline
            there.set("n", 2, timeout=0.5)
        assert late.value.context_id == "acct"
    finally:
        release.set()
    blocker.get()
    assert here.version == 3 and here["n"] == 1  # 1 (create) + set + transact: the cancelled set never ran


def test_writes_while_ownership_moves_back_and_forth_land_exactly_once(systems: Open) -> None:
    a, b = systems(lease_ttl=2.0), systems(lease_ttl=2.0)
    a.adapter.get_or_create("acct")
    there = b.adapter.get_or_create("acct")
    acknowledged: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                there.set(f"k{i}", i, timeout=5)
                acknowledged.append(i)
            except HoardError as exc:
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(6):  # the context moves: a lets go, the next call (from b) takes it, a takes it back...
            n = len(acknowledged)
            wait_until(lambda n=n: len(acknowledged) > n + 5, 20, "writes through a")
            a.adapter.deactivate("acct")
            n = len(acknowledged)
            wait_until(lambda n=n: len(acknowledged) > n + 5, 20, "writes in b")
            b.adapter.deactivate("acct")
            a.adapter.get_or_create("acct")
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    state = a.manager.get_state("acct")
    assert {f"k{i}" for i in acknowledged} <= set(state.data)
    assert state.version == 1 + len(acknowledged)  # gapless: no write applied twice, none lost


def test_owner_names_the_lease_holder_without_activating(systems: Open) -> None:
    a, b = systems(), systems()
    assert b.manager.owner("acct") is None  # never activated anywhere
    a.adapter.get_or_create("acct")
    seen = b.manager.owner("acct")
    assert seen is not None and seen.owner == a.store.owner_id and not seen.here and seen.token >= 1
    assert 0 < seen.expires_in <= 10
    assert b.adapter.status("acct") is ContextStatus.INACTIVE  # asking activated nothing in b
    a.adapter.deactivate("acct")
    assert b.manager.owner("acct") is None  # released


def test_without_forwarding_writes_and_activations_wait_alike_or_fail_fast(systems: Open) -> None:
    a, b = systems(forward=False), systems(forward=False)
    a.adapter.get_or_create("acct", data={"n": 0})
    for call in (lambda: b.manager.update("acct", {"n": 1}, wait=False),
                 lambda: b.adapter.activate("acct", wait=False),
                 lambda: b.manager.tracker("acct", wait=False),
                 lambda: b.manager.update("acct", {"n": 1}, timeout=0.3),
                 lambda: b.adapter.activate("acct", timeout=0.3)):
        with pytest.raises(ContextOwnedElsewhereError) as owned:
            call()
        assert owned.value.owner == a.store.owner_id
    # waiting means waiting: a manager write that started while a owned it lands once a lets go
    result: list[int] = []
    started = threading.Event()

    def write() -> None:
        started.set()
        result.append(b.manager.update("acct", {"n": 2}, timeout=10))

    thread = threading.Thread(target=write)
    thread.start()
    started.wait(5)
    a.adapter.deactivate("acct")
    thread.join(15)
    assert result == [2]


def test_one_owner_id_is_one_live_process_a_restart_takes_its_leases_back_and_a_zombie_is_fenced(
        nodes: Callable[[dict[str, Any]], Node], pg_dsn: str, pg_schema: str) -> None:
    cfg = {"mode": "owner", "dsn": pg_dsn, "schema": pg_schema, "owner": "node-1", "cid": "acct", "lease_ttl": 30.0}
    first = nodes(cfg)
    token = first.expect("ready", 60)["token"]
    # a second live process with the same owner id would share its leases: refused, naming the id
    refused = nodes(cfg).expect("refused", 60)
    assert (refused["err"], refused["owner_id"]) == ("OwnerIdInUseError", "node-1")
    first.send("write")
    assert first.expect("wrote", 30)["ok"]  # the first one was not disturbed
    # SIGKILLed: a restart with the same id takes the 30 s lease back at once, with a new token
    first.kill()
    restarted = nodes(cfg)
    ready = restarted.expect("ready", 60)
    assert ready["token"] == token + 1
    # a zombie of that incarnation: stopped, and its claim's session ended by the server (as after a
    # partition longer than its keepalives); the next restart takes over
    os.kill(restarted.pid, signal.SIGSTOP)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'hoard owner node-1'").fetchall()
        assert ended == [(True,)]
        newest = nodes(cfg)
        latest = newest.expect("ready", 60)
        assert latest["token"] == token + 2
    finally:
        os.kill(restarted.pid, signal.SIGCONT)
    restarted.send("write")  # fenced off by the new token, or refused its claim: nothing written
    late = restarted.expect("wrote", 30)
    assert not late["ok"] and late["err"] in ("FencedOffError", "OwnerIdInUseError"), late
    restarted.send("activate")  # it cannot take the lease back under the id the newest one holds
    again = restarted.expect("activated", 30)
    assert (again["ok"], again["err"]) == (False, "OwnerIdInUseError"), again
    newest.send("write")
    assert newest.expect("wrote", 30)["v"] == latest["v"] + 1  # the zombie's write never landed


def test_a_restart_under_a_new_owner_id_takes_its_default_context_once_the_old_lease_ends(
        systems: Open, pg_dsn: str, pg_schema: str, nats_url: str) -> None:
    old = Host(None, {"dsn": pg_dsn, "schema": pg_schema, "nats": nats_url, "owner": "incarnation-1",
                      "lease_ttl": 4.0, "default": "main"})
    try:
        old.expect("ready", 60)
        old.kill()  # SIGKILL: its lease on "main" is left to run out (4 s)
        new = systems(store=PostgresStore(pg_dsn, schema=pg_schema, owner_id="incarnation-2", lease_ttl=1.0),
                      auto_activate_default=True, default_context_id="main")
        # opened while the dead incarnation's lease still ran: no current context at first, then the
        # default is activated in the background as soon as that lease has ended
        assert new.adapter.current_id() is None
        wait_until(lambda: new.adapter.current_id() == "main", 15, "the default context becoming current")
        assert new.manager.owner("main").here  # type: ignore[union-attr]
    finally:
        old.kill()


def test_a_postgres_store_object_is_configured_like_the_url(systems: Open, pg_dsn: str, pg_schema: str) -> None:
    store = PostgresStore(pg_dsn, schema=pg_schema)
    system = systems(store=store, manager_config=ContextManagerConfig(max_state_bytes=4096, recovery="fallback"))
    assert store.require_lease  # like the URL form: every write under its lease
    assert store.recovery == "fallback"
    with pytest.raises(InvalidValueError):  # the config's max_state_bytes applies
        system.adapter.get_or_create("acct").set("big", "x" * 5000)
    with pytest.raises(ConfigError, match="max_state_bytes"):  # both set, differently: which one?
        systems(store=PostgresStore(pg_dsn, schema=pg_schema, max_state_bytes=8192),
                manager_config=ContextManagerConfig(max_state_bytes=4096))

