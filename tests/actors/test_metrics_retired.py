"""metrics() keeps what passivated and crashed context actors counted (issue 14: their meters are
folded into the retired totals once the actor stopped; a crashed actor's counts were lost before)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hoard.actors._context as context_module
from hoard import ContextAdapterConfig, ContextCrashedError, open_system
from hoard.storage import validate_key as real_validate_key


def test_counts_of_passivated_and_crashed_contexts_are_kept(store_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def validate_key(key, context_id=None):  # a bug in the write path: setting "boom" crashes the actor
        if key == "boom":
            raise RuntimeError("injected bug")
        return real_validate_key(key, context_id)

    monkeypatch.setattr(context_module, "validate_key", validate_key)
    with open_system(store_path, adapter_config=ContextAdapterConfig(max_active_contexts=2)) as s:
        t = s.adapter.activate("c")
        t.set("a", 1)
        with pytest.raises(ContextCrashedError):
            t.set("boom", 1)
        t.set("b", 2)  # on the restarted actor
        m = s.metrics()
        assert m.restarts == 1
        assert m.calls["set"] == 3  # the two before the crash are not lost with the crashed actor
        for i in range(3):  # evicts "c" (capacity 2): its counts move to the retired totals
            s.adapter.activate(f"e{i}").set("x", i)
        m = s.metrics()
        assert m.evictions >= 2
        assert m.calls["set"] == 6
