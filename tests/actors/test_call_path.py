"""The call path's shortcut: a one-key set (no request id) makes its new state directly and builds
its journal entry only when a commit or an event takes it. Its state must be exactly what
`apply_change` makes of that entry, in every durability mode, and its event and journal the same."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, StateChanged, open_system
from hoard.storage import Change, apply_change


@pytest.mark.parametrize("durability", ["none", "deferred", "immediate"])
def test_a_one_key_set_makes_the_state_apply_change_makes(tmp_path: Path, durability: str) -> None:
    store = None if durability == "none" else tmp_path / "s.db"
    with open_system(store, manager_config=ContextManagerConfig(durability=durability),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        t = system.adapter.activate("c")
        t.set("a", 1)
        before = t.state()
        version = t.set("k", {"x": [1, "y"]}, by="user:ana")
        after = t.state()
        assert version == before.version + 1 == after.version
        entry = Change(after.version, after.updated_at, {"k": after.data["k"]}, by="user:ana")
        assert apply_change(before, entry) == after
        assert after.requests == before.requests and after.metadata == before.metadata


def test_a_one_key_set_still_emits_its_event_and_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    seen: queue.SimpleQueue[StateChanged] = queue.SimpleQueue()
    with open_system(path, adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        t = system.adapter.activate("c")
        sub = system.subscribe(seen.put, context_id="c", kinds=[StateChanged])
        t.set("k", 1, by="svc:x")
        event = seen.get(timeout=10)
        sub.cancel()
        t.set("j", 2)  # nobody subscribed now: no entry is built for an event, the commit still takes one
        expected = t.state()
    assert (event.version, event.changed, event.removed, event.by) == (expected.version - 1, ("k",), (), "svc:x")
    with open_system(path, adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        assert system.adapter.activate("c").state() == expected  # reopened: every acknowledged set is there
