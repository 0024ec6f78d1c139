"""One damaged context never keeps the system or the other contexts from working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hoard import ContextStatus, CorruptStateError, NoCurrentContextError, open_system


def _damage(path: Path, context_id: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE snapshots SET blob = zeroblob(40) WHERE context_id = ?", (context_id,))


def test_a_damaged_default_opens_with_no_current_context(store_path: Path) -> None:
    with open_system(store_path) as s:
        s.adapter.activate("a").set("k", 1)
    _damage(store_path, "default")
    with open_system(store_path) as s:
        a = s.adapter
        assert a.current_id() is None
        assert a.status("default") is ContextStatus.FAILED
        with pytest.raises(NoCurrentContextError):
            a.current()
        assert a.activate("a").get("k") == 1  # the others work
        assert a.current_id() == "a"


def test_a_damaged_context_raises_corrupt_state_naming_it(store_path: Path) -> None:
    with open_system(store_path) as s:
        s.adapter.activate("bad").set("k", 1)
        s.adapter.activate("good").set("k", 2)
    _damage(store_path, "bad")
    with open_system(store_path) as s:
        with pytest.raises(CorruptStateError) as info:
            s.adapter.activate("bad")
        assert info.value.context_id == "bad"
        assert "checksum" in str(info.value) or "magic" in str(info.value)
        assert s.adapter.activate("good").get("k") == 2
        assert s.adapter.current_id() == "good"
        with pytest.raises(CorruptStateError):
            s.manager.get_state("bad")
