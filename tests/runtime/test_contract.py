"""The public contract of issue 2, run exactly as written, plus its semantics."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hoard import (
    CapacityError,
    ConfigError,
    ContextAdapterConfig,
    ContextExistsError,
    ContextManagerConfig,
    ContextNotFoundError,
    ContextState,
    ContextStatus,
    ContextTimeoutError,
    CorruptStateError,
    HoardError,
    InvalidContextIdError,
    InvalidValueError,
    NoCurrentContextError,
    RecoveryPoint,
    RecoveryPointNotFoundError,
    StoreLockedError,
    SystemStoppedError,
    VersionConflictError,
    create_adapter,
    create_adapter_with_config,
    create_manager,
    create_manager_with_config,
    open_system,
)


def test_the_contract_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_system("state.db") as system:
        adapter, manager = system.adapter, system.manager
        assert adapter.current_id() == "default"
        t = adapter.activate("cart-42")
        v = t.set("user", {"name": "ana", "roles": ["admin"]})
        v = t.update({"a": 1, "b": 2}, expected_version=v)
        with pytest.raises(VersionConflictError) as info:
            t.set("a", 3, expected_version=v - 1)
        e = info.value
        assert (e.context_id, e.expected, e.actual) == ("cart-42", v - 1, v)
        rp = t.create_recovery_point(label="before")
        assert isinstance(rp, RecoveryPoint)
        assert (rp.context_id, rp.version, rp.label) == ("cart-42", v, "before")
        assert rp.state.data["a"] == 1
        t.delete("a")
        t.restore(rp.id)
        assert t.get("a") == 1 and t.get("zzz", default=0) == 0
        assert [p.id for p in t.recovery_points()] == [rp.id]
        adapter.switch("other")
        assert adapter.current_id() == "other"
        adapter.switch("cart-42")
        assert adapter.current_id() == "cart-42"
        adapter.deactivate("cart-42")
        assert adapter.current_id() == "default"
        assert adapter.status("cart-42") is ContextStatus.INACTIVE
        assert adapter.status("nope") is ContextStatus.NONEXISTENT
        state = manager.get_state("cart-42")
        assert isinstance(state, ContextState)
        assert sorted(manager.list_ids()) == ["cart-42", "default", "other"]

    with open_system("state.db") as system:
        t = system.adapter.activate("cart-42")
        assert t.get("a") == 1 and t.version == state.version
        assert dict(t.state().data) == dict(state.data)

    manager = create_manager()
    try:
        adapter = create_adapter(manager)
        assert adapter.current_id() == "default"
        with pytest.raises(HoardError):
            create_adapter(manager)
    finally:
        manager.stop()


def test_every_mutation_raises_the_version_by_exactly_one(system) -> None:
    t = system.adapter.activate("c")
    v0 = t.version
    assert v0 == 1
    assert t.set("k", 1) == 2
    assert t.set("k", 1) == 3  # same value: still a change
    assert t.update({}) == 4
    assert t.delete("absent") == 5  # deleting an absent key is allowed
    assert t.delete(["k", "absent"]) == 6
    assert t.set_metadata("owner", "ana") == 7
    assert t.set_metadata({"a": 1, "b": [1, 2]}, remove=["owner"]) == 8
    assert dict(t.metadata()) == {"a": 1, "b": [1, 2]}
    assert t.transact(lambda d: None) is None and t.version == 9
    rp = t.create_recovery_point()
    assert t.version == 9  # a recovery point is not a change
    assert t.restore(rp) == 10
    assert t.state().version == 10


def test_transact_returns_what_fn_returned_and_applies_atomically(system) -> None:
    t = system.adapter.activate("c")
    t.update({"n": 1, "cart": {"items": ["a"]}, "gone": True})

    def fn(d):
        d["n"] += 1
        d["cart"]["items"].append("b")
        del d["gone"]
        d.metadata["touched"] = True
        return ("done", d.version)

    assert t.transact(fn) == ("done", 2)
    assert t.get("n") == 2 and t.get("cart") == {"items": ["a", "b"]} and "gone" not in t
    assert t.metadata()["touched"] is True

    def boom(d):
        d["n"] = 100
        raise ValueError("no")

    before = t.state()
    with pytest.raises(ValueError, match="no"):
        t.transact(boom)
    assert t.state() is before  # nothing changed, not even the version

    with pytest.raises(InvalidValueError):
        t.transact(lambda d: d.__setitem__("bad", float("nan")))
    assert t.state() is before


def test_values_are_deep_immutable_once_inside(system) -> None:
    t = system.adapter.activate("c")
    source = {"roles": ["admin"], "nested": {"x": 1}}
    t.set("user", source)
    source["roles"].append("root")  # the caller's object is not the stored one
    user = t.get("user")
    assert user == {"roles": ["admin"], "nested": {"x": 1}}
    with pytest.raises(TypeError):
        user["roles"].append("root")
    with pytest.raises(TypeError):
        user["nested"]["x"] = 2
    assert t.get("user") == {"roles": ["admin"], "nested": {"x": 1}}


def test_bad_ids_and_values_raise_typed_errors_and_change_nothing(system) -> None:
    adapter = system.adapter
    for bad in ["", "a\x00b", "tab\tid", "x" * 256, "é" * 200, 42, None, b"bytes"]:
        with pytest.raises(InvalidContextIdError):
            adapter.status(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidContextIdError):
            adapter.activate(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidContextIdError):
            system.manager.get_state(bad)  # type: ignore[arg-type]
    # any other Unicode is a valid id and round-trips exactly
    odd = "../etc/passwd/🙂 ü"
    assert adapter.activate(odd).id == odd
    assert odd in system.manager.list_ids()

    t = adapter.activate("c")
    t.set("ok", 1)
    before = t.state()
    cyclic: list = []
    cyclic.append(cyclic)
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    for key, value, reason in [
        ("k", float("nan"), "finite"),
        ("k", float("inf"), "finite"),
        ("k", object(), "JSON"),
        ("k", {1: "x"}, "keys must be str"),
        ("k", cyclic, "deeper"),
        ("k", deep, "deeper"),
        ("k", 2**80, "64-bit"),
        ("k", b"bytes", "JSON"),
        ("", 1, "empty"),
        ("k", "x" * (2**20 + 10), "max_value_bytes"),
    ]:
        with pytest.raises(InvalidValueError, match=reason) as info:
            t.set(key, value)
        assert info.value.key == key
    with pytest.raises(InvalidValueError):
        t.set(3, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        t.update([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        t.get(["unhashable"])  # type: ignore[arg-type]
    assert t.get(3, "absent") == "absent"  # type: ignore[arg-type]  # like dict.get: never present
    assert t.state() is before


def test_errors_for_missing_things(system) -> None:
    m, a = system.manager, system.adapter
    with pytest.raises(ContextNotFoundError):
        m.get_state("missing")
    with pytest.raises(ContextNotFoundError):
        m.delete("missing")
    with pytest.raises(ContextNotFoundError):
        m.update("missing", {"a": 1})
    with pytest.raises(ContextNotFoundError):
        a.deactivate("missing")
    with pytest.raises(ContextNotFoundError):
        m.recovery_points("missing")
    m.create("there", {"a": 1})
    with pytest.raises(ContextExistsError):
        m.create("there")
    with pytest.raises(ContextExistsError):
        a.create_and_activate("there")
    t = a.activate("there")
    with pytest.raises(RecoveryPointNotFoundError):
        t.restore(99)
    with pytest.raises(RecoveryPointNotFoundError):
        t.delete_recovery_point(99)
    with pytest.raises(RecoveryPointNotFoundError):
        t.restore("1")  # type: ignore[arg-type]
    assert a.deactivate("there") is True
    assert a.deactivate("there") is False  # not active (but exists): a no-op


def test_manager_works_on_inactive_contexts_without_activating(system) -> None:
    m, a = system.manager, system.adapter
    st = m.create("inactive", {"a": 1}, {"owner": "ana"})
    assert (st.version, dict(st.data), dict(st.metadata)) == (1, {"a": 1}, {"owner": "ana"})
    assert a.status("inactive") is ContextStatus.INACTIVE
    assert m.get_state("inactive").data["a"] == 1
    assert a.status("inactive") is ContextStatus.INACTIVE
    assert m.exists("inactive") and not m.exists("nope")
    assert m.update("inactive", {"b": 2}, expected_version=1) == 2
    with pytest.raises(VersionConflictError):
        m.update("inactive", {"b": 3}, expected_version=1)
    assert a.current_id() == "default"  # manager writes never change the current context
    rp = m.create_recovery_point("inactive", "x")
    a.deactivate("inactive")
    assert [p.id for p in m.recovery_points("inactive")] == [rp.id]
    assert m.restore("inactive", rp.id) == 3
    m.delete_recovery_point("inactive", rp.id)
    assert m.recovery_points("inactive") == []
    m.delete("inactive")
    assert a.status("inactive") is ContextStatus.NONEXISTENT
    assert not m.exists("inactive")


def test_deleting_the_current_context_falls_back_to_default(system) -> None:
    a, m = system.adapter, system.manager
    t = a.activate("doomed")
    t.set("x", 1)
    t.create_recovery_point()
    m.delete("doomed")
    assert a.current_id() == "default"
    assert "doomed" not in a.list_active()
    with pytest.raises(ContextNotFoundError):
        t.get("x")  # a stale tracker does not bring a deleted context back
    # re-creating gives a fresh context with no recovery points of the old one
    t2 = a.activate("doomed")
    assert t2.version == 1 and t2.recovery_points() == []


def test_deactivating_the_default_leaves_no_current_context(system) -> None:

    a = system.adapter
    a.deactivate("default")
    assert a.current_id() is None
    with pytest.raises(NoCurrentContextError):
        a.current()
    a.switch("x")
    assert a.current().id == "x"


def test_a_second_open_of_the_same_store_is_refused_at_once(store_path: Path) -> None:
    with open_system(store_path):
        with pytest.raises(StoreLockedError):
            open_system(store_path)
        with pytest.raises(StoreLockedError):
            create_manager_with_config(ContextManagerConfig(store=str(store_path)))
    with open_system(store_path) as s:  # released on stop
        assert s.adapter.current_id() == "default"


def test_a_second_open_from_another_process_is_refused(store_path: Path) -> None:

    with open_system(store_path):
        code = ("import sys\nfrom runtime import open_system, StoreLockedError\n"
                "try:\n    open_system(sys.argv[1])\nexcept StoreLockedError:\n    sys.exit(7)\nsys.exit(0)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(store_path)], timeout=60, check=False)  # noqa: S603 - runs our own interpreter/tools with fixed arguments
        assert proc.returncode == 7


def test_store_files_are_owner_only(store_path: Path) -> None:
    with open_system(store_path) as s:
        s.adapter.activate("a").set("k", 1)
        for p in store_path.parent.iterdir():
            assert oct(os.stat(p).st_mode & 0o777) == "0o600", p


def test_a_file_that_is_not_a_hoard_store_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CorruptStateError):
        open_system(p)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(CorruptStateError, match="not a hoard store"):
        open_system(other)


def test_calls_after_stop_raise_system_stopped(store_path: Path) -> None:
    s = open_system(store_path)
    t = s.adapter.activate("a")
    t.set("k", 1)
    s.stop()
    s.stop()  # idempotent
    for call in (lambda: t.set("k", 2), lambda: t.get("k"), lambda: s.adapter.activate("b"),
                 s.manager.list_ids, s.adapter.current_id, t.recovery_points):
        with pytest.raises(SystemStoppedError):
            call()


def test_capacity_reject_policy(store_path: Path) -> None:
    cfg = ContextAdapterConfig(max_active_contexts=2, capacity_policy="reject")
    with open_system(store_path, adapter_config=cfg) as s:
        s.adapter.activate("a")
        with pytest.raises(CapacityError) as info:
            s.adapter.activate("b")
        assert info.value.limit == 2
        assert sorted(s.adapter.list_active()) == ["a", "default"]
        assert s.adapter.status("b") is ContextStatus.NONEXISTENT  # nothing created on refusal


def test_max_contexts_limits_creation(store_path: Path) -> None:
    with open_system(store_path, manager_config=ContextManagerConfig(max_contexts=2)) as s:
        s.adapter.activate("a")  # default + a
        with pytest.raises(CapacityError):
            s.adapter.activate("b")
        with pytest.raises(CapacityError):
            s.manager.create("c")
        assert sorted(s.manager.list_ids()) == ["a", "default"]


def test_no_auto_create(store_path: Path) -> None:
    cfg = ContextAdapterConfig(auto_create_contexts=False)
    with open_system(store_path, adapter_config=cfg) as s:
        with pytest.raises(ContextNotFoundError):
            s.adapter.activate("x")
        t = s.adapter.create_and_activate("x", {"a": 1})
        assert t.get("a") == 1 and s.adapter.current_id() == "x"


def test_memory_manager_and_adapter_with_config() -> None:
    manager = create_manager_with_config(ContextManagerConfig(durability="none"))
    with manager:
        adapter = create_adapter_with_config(manager, ContextAdapterConfig(default_context_id="home"))
        assert adapter.default_context_id == "home" and adapter.current_id() == "home"
        t = adapter.activate("x")
        t.set("k", [1])
        adapter.deactivate("x")  # passivated into the memory store, nothing lost
        assert manager.get_state("x").data["k"] == [1]
        assert adapter.activate("x").get("k") == [1]


def test_timeouts_raise_our_timeout_error(system) -> None:

    t = system.adapter.activate("slow")
    release = threading.Event()
    started = threading.Event()

    def block(_d):
        started.set()
        release.wait(10)

    th = threading.Thread(target=lambda: t.transact(block, timeout=10))
    th.start()
    try:
        assert started.wait(5)
        with pytest.raises(ContextTimeoutError) as info:
            t.set("k", 1, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
    finally:
        release.set()
        th.join(10)
    assert t.get("k") is None  # it had not started: cancelled in the mailbox, never applied (issue 12)


def test_config_is_validated() -> None:

    for kwargs in [{"durability": "sometimes"}, {"snapshot_every": 0}, {"call_timeout": -1},
                   {"max_recovery_points": "3"}, {"store": 3}, {"compression_level": 99}]:
        with pytest.raises(ConfigError):
            ContextManagerConfig(**kwargs)
    for kwargs in [{"capacity_policy": "random"}, {"max_active_contexts": 0}, {"default_context_id": ""},
                   {"auto_create_contexts": "yes"}]:
        with pytest.raises(ConfigError):
            ContextAdapterConfig(**kwargs)
