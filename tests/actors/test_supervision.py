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
    open_system,
)
from hoard.storage import validate_key as real_validate_key
from tests.helpers import Clock


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
