"""Journal replay applies a run of changes in one batch (`apply_changes`); it must give exactly the
state that applying them one by one (`apply_change`, what the context actor does live) gives."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoard.storage import Append, Change, Codec, CreateContext, SQLiteStore, apply_change, freeze_mapping, new_state
from hoard.storage._codec import KIND_CHANGE
from hoard.storage._model import apply_changes

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
VALUES = st.one_of(st.integers(), st.text(max_size=3), st.none())
REQUESTS = st.sampled_from(["r1", "r2", "r3"])


@st.composite
def changes(draw: Any) -> list[Change]:
    out = []
    for version in range(2, 2 + draw(st.integers(0, 12))):
        replace = draw(st.booleans()) and draw(st.booleans())  # a restore now and then
        out.append(Change(
            version, float(version),
            data_set=draw(st.dictionaries(KEYS, VALUES, max_size=3)),
            data_del=() if replace else tuple(draw(st.lists(KEYS, max_size=2, unique=True))),
            meta_set=draw(st.dictionaries(KEYS, VALUES, max_size=2)),
            meta_del=() if replace else tuple(draw(st.lists(KEYS, max_size=2, unique=True))),
            replace=replace,
            request_id=draw(st.one_of(st.none(), REQUESTS)),
            forget=tuple(draw(st.lists(REQUESTS, max_size=2, unique=True)))))
    return out


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=4), changes())
def test_replaying_a_run_of_changes_in_one_batch_equals_applying_them_one_by_one(
        data: dict[str, Any], run: list[Change]) -> None:
    start = new_state("c", data, {"m": 1}, now=1.0)
    one_by_one = start
    for change in run:
        one_by_one = apply_change(one_by_one, change)
    handed_in = [(dict(c.data_set), dict(c.meta_set)) for c in run]
    batched = apply_changes(start, run)
    assert batched == one_by_one
    assert [(dict(c.data_set), dict(c.meta_set)) for c in run] == handed_in  # only read, never merged into
    assert (batched.version, batched.updated_at, dict(batched.requests)) == \
        (one_by_one.version, one_by_one.updated_at, dict(one_by_one.requests))


def test_a_journal_entry_in_an_older_valid_form_replays_through_the_full_decoder(tmp_path: Path) -> None:
    """Activation and state_at decode journal rows on a fast path that takes only entries exactly as
    this hoard writes them; an entry without the optional fields and with an int time (valid, as an
    older writer may have stored it) goes through `decode_change` and replays the same."""
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path)
    store.open()
    try:
        store.commit([CreateContext(new_state("c", freeze_mapping({"a": 1}), now=1.0))])
        store.commit([Append("c", Change(2, 2.0, freeze_mapping({"b": [1, 2]})))])
        store.commit([Append("c", Change(3, 3.0, freeze_mapping({"a": {"x": 1}})))])
    finally:
        store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE journal SET blob=? WHERE context_id='c' AND version=2",
               (Codec().frame(KIND_CHANGE, b'{"version":2,"at":2,"data_set":{"b":[1,2]}}'),))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.open()
    try:
        for state in (store.load("c"), store.state_at("c", 3)):
            assert state is not None
            assert (state.version, dict(state.data)) == (3, {"a": {"x": 1}, "b": [1, 2]})
            with pytest.raises(TypeError):
                state.data["b"].append(3)
        assert dict(store.state_at("c", 2).data) == {"a": 1, "b": [1, 2]}
    finally:
        store.close()


def test_a_strict_load_tells_which_snapshot_it_read_and_a_fallback_or_absent_one_does_not(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.open()
    try:
        store.commit([CreateContext(new_state("c", freeze_mapping({"a": 1}), now=1.0)),
                      *(Append("c", Change(v, float(v), freeze_mapping({"k": v}))) for v in range(2, 5))])
        assert store.load("c").version == 4
        info = store.info("c")
        assert info is not None and store.last_loaded == ("c", info.snapshot_version) == ("c", 1)
        assert store.load("absent") is None and store.last_loaded is None
    finally:
        store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE journal SET blob = x'00' WHERE context_id = 'c' AND version = 4")  # damaged
    db.commit()
    db.close()
    fallback = SQLiteStore(path, recovery="fallback")
    fallback.open()
    try:
        assert fallback.load("c").version == 5  # v3 recovered, continued one past the acknowledged v4
        assert fallback.last_recovery_report is not None and fallback.last_loaded is None
    finally:
        fallback.close()
