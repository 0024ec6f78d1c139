"""A crashing context actor is restarted from its durable state, within a limit; then FAILED."""

from __future__ import annotations

from pathlib import Path

import pytest

import hoard.actors._context as context_module
from hoard import (
    ContextAdapterConfig,
    ContextCrashedError,
    ContextFailedError,
    ContextManagerConfig,
    ContextStatus,
    DeadLetter,
    open_system,
)
from hoard.actors import Transact
from hoard.storage import validate_key as real_validate_key
from tests.helpers import Clock, wait_until


@pytest.fixture
def buggy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the write path: setting the key "boom" raises in the context actor."""

    def validate_key(key, context_id=None):  # every set checks its key in the actor: a bug there crashes it
        if key == "boom":
            raise RuntimeError("injected bug")
        return real_validate_key(key, context_id)

    monkeypatch.setattr(context_module, "validate_key", validate_key)


def test_a_crash_restarts_the_context_from_its_durable_state(store_path: Path, buggy: None) -> None:
    with open_system(store_path) as s:
        t = s.adapter.activate("c")
        t.set("a", 1)
        first_ref = t.actor_ref
        with pytest.raises(ContextCrashedError) as info:
            t.set("boom", 1)
        assert info.value.context_id == "c"
        # the next call reaches a restarted actor holding the durable state
        assert t.get("a") == 1 and t.version == 2
        assert t.set("b", 2) == 3
        assert t.actor_ref.actor_urn != first_ref.actor_urn
        assert s.adapter.status("c") is ContextStatus.ACTIVE
        assert "boom" not in t


def test_a_transact_fn_that_raises_is_the_callers_error_not_a_crash(system) -> None:
    t = system.adapter.activate("c")
    ref = t.actor_ref
    with pytest.raises(KeyError):
        t.transact(lambda d: d["missing"])
    assert t.actor_ref.actor_urn == ref.actor_urn  # same actor: nothing crashed


class Abort(BaseException):
    """A user's own BaseException (not an Exception), as a framework's cancellation might be."""


@pytest.mark.parametrize("error", [SystemExit(3), Abort("stop here")], ids=["SystemExit", "custom"])
def test_a_transact_fn_raising_a_base_exception_reaches_the_caller_and_stops_no_actor(
        tmp_path: Path, error: BaseException) -> None:
    # pykka's actor loop answers a BaseException by stopping every actor of the process: this
    # system's and any other's. It must be the caller's error, like any exception of fn.
    with open_system(tmp_path / "one.db") as s1, open_system(tmp_path / "other.db") as s2:
        t1 = s1.adapter.activate("a")
        t1.set("k", 1)
        t2 = s2.adapter.activate("b")
        ref = t1.actor_ref

        def fn(draft):
            draft["k"] = 2
            raise error

        with pytest.raises(type(error)) as info:
            t1.transact(fn, timeout=5)
        assert info.value is error
        assert t1.get("k") == 1 and t1.version == 2  # nothing changed
        assert t1.actor_ref.actor_urn == ref.actor_urn  # not a crash either: the same actor
        assert t1.set("k", 3, timeout=5) == 3
        assert t2.set("k", 1, timeout=5) == 2  # the other system never noticed


@pytest.mark.parametrize("via", ["ContextRef", "pykka"])
def test_a_told_transact_raising_a_base_exception_is_a_dead_letter(system, via: str) -> None:
    t = system.adapter.activate("c")
    dead: list[DeadLetter] = []
    system.subscribe(dead.append, kinds=[DeadLetter])

    def fn(_draft):
        raise SystemExit(1)

    # a ContextRef's tell waits on a reply; pykka's own tell has none (the actor's told path)
    (system.ref("c") if via == "ContextRef" else t.actor_ref).tell(Transact(fn))
    wait_until(lambda: dead, timeout=10, what="the dead letter")
    assert "SystemExit" in dead[0].reason
    assert t.set("k", 1, timeout=5) == 2  # the context (and the system) still runs


def test_past_the_restart_limit_the_context_is_failed_until_reset(store_path: Path, buggy: None) -> None:
    clock = Clock()
    cfg = ContextAdapterConfig(max_restarts=2, restart_window=5.0)
    with open_system(store_path, adapter_config=cfg, manager_config=ContextManagerConfig(monotonic=clock)) as s:
        a = s.adapter
        t = a.activate("c")
        t.set("a", 1)
        for _ in range(2):
            with pytest.raises(ContextCrashedError):
                t.set("boom", 1)
            a.status("c")  # ordered after the crash report
            clock.now += 1
        assert a.status("c") is ContextStatus.ACTIVE
        with pytest.raises(ContextCrashedError):
            t.set("boom", 1)  # third crash within 5 s: FAILED
        assert a.status("c") is ContextStatus.FAILED
        assert a.current_id() == "default"
        with pytest.raises(ContextFailedError):
            t.get("a")
        with pytest.raises(ContextFailedError):
            a.activate("c")
        assert "c" in s.manager.list_ids()  # still stored, nothing lost
        assert a.reset("c") is True
        assert a.activate("c").get("a") == 1
        assert a.status("c") is ContextStatus.ACTIVE


def test_crashes_spread_out_in_time_do_not_accumulate(store_path: Path, buggy: None) -> None:
    clock = Clock()
    with open_system(store_path, adapter_config=ContextAdapterConfig(max_restarts=1, restart_window=5.0),
                     manager_config=ContextManagerConfig(monotonic=clock)) as s:
        t = s.adapter.activate("c")
        for _ in range(4):
            with pytest.raises(ContextCrashedError):
                t.set("boom", 1)
            s.adapter.status("c")  # the crash report was told before the error: this ask comes after it
            clock.now += 10  # outside the window
        assert s.adapter.status("c") is ContextStatus.ACTIVE
