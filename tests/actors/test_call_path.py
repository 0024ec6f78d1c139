"""The call path's shortcut: a one-key set (with or without a request id) makes its new state directly
and builds its journal entry only when a commit or an event takes it. Its state must be exactly what
`apply_change` makes of that entry, in every durability mode, and its event and journal the same."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from hoard import ContextAdapterConfig, ContextManagerConfig, StateChanged, open_system
from hoard.storage import Change, apply_change, open_store
from tests.helpers import Clock


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


@pytest.mark.parametrize("durability", ["none", "deferred", "immediate"])
def test_a_one_key_set_with_a_request_id_makes_the_state_apply_change_makes(tmp_path: Path, durability: str) -> None:
    """A forwarded set carries a request id; its shortcut records the id and trims the record (by the
    window and by the ttl) exactly as `apply_change` does with the entry's `forget`, write after write."""
    clock = Clock()
    store = None if durability == "none" else tmp_path / "s.db"
    cfg = ContextManagerConfig(durability=durability, request_window=8, request_ttl=50.0, clock=clock,
                               snapshot_every=100_000)
    states = []
    no_default = ContextAdapterConfig(auto_activate_default=False)
    with open_system(store, manager_config=cfg, adapter_config=no_default) as system:
        t = system.adapter.activate("c")
        states.append(t.state())
        trims = 0
        for i in range(120):
            clock.now += 20.0 if i % 40 == 39 else 0.5  # now and then past the ttl: a trim by age
            before = states[-1]
            version = t.set(f"k{i % 7}", {"i": i}, request_id=f"r{i}", by="svc:x" if i % 3 else None)
            after = t.state()
            assert version == before.version + 1 == after.version
            assert after.requests[f"r{i}"] == (version, clock.now) and after.updated_at == clock.now
            forget = tuple(r for r in before.requests if r not in after.requests)
            trims += bool(forget)
            entry = Change(version, clock.now, {f"k{i % 7}": after.data[f"k{i % 7}"]}, request_id=f"r{i}",
                           forget=forget)
            assert apply_change(before, entry) == after
            assert len(after.requests) <= 8 + 1 + 8 // 8  # the window and its batch
            states.append(after)
        assert trims > 10
        assert t.set("k0", -1, request_id="r119") == states[-1].version  # the newest are remembered: not again
        assert t.set("k0", -1, request_id="r0") == states[-1].version + 1  # trimmed long ago: applied
        states.append(t.state())
    if store is None:
        return
    reader = open_store(store)
    try:
        entries = reader.journal("c", after=states[0].version)
    finally:
        reader.close()
    assert [e.version for e in entries] == [s.version for s in states[1:]]
    for before, entry, after in zip(states[:-1], entries, states[1:], strict=True):
        assert apply_change(before, entry.change) == after  # what replay makes of the journal, too
