"""A load pauses the cyclic collector, and a large one hands what it built to the oldest generation
(`hoard.storage._recovery._long_lived`): what the application set (a disabled collector, objects it
froze) is left as it was, and a failed load restores the collector too. The values it decodes are
frozen all the way down and held to the depth a stored value may have (`_codec._owned_dict`)."""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoard.storage import CorruptStateError, CreateContext, SQLiteStore, freeze_mapping, new_state


def _store(path: Path, keys: int) -> SQLiteStore:
    store = SQLiteStore(str(path))
    store.open()
    data = freeze_mapping({f"k{i}": {"n": i, "tags": [i, "x"]} for i in range(keys)})
    store.commit([CreateContext(new_state("c", data))])
    return store


@pytest.fixture
def big(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = _store(tmp_path / "big.db", 5_000)  # 10,000 frozen containers: many young thresholds' worth
    try:
        yield store
    finally:
        store.close()


def _in_generation(generation: int, values: list[object]) -> bool:
    ids = {id(o) for o in gc.get_objects(generation)}
    return all(id(v) in ids for v in values)


def test_a_large_load_leaves_its_values_in_the_oldest_generation_with_the_collector_on(big: SQLiteStore) -> None:
    gc.collect()
    state = big.load("c")
    assert state is not None and len(state.data) == 5_000
    assert gc.isenabled()
    values = [*state.data.values(), *(v["tags"] for v in state.data.values())]
    assert _in_generation(2, values)


def test_a_small_load_leaves_its_values_to_the_young_collections(tmp_path: Path) -> None:
    store = _store(tmp_path / "small.db", 10)
    try:
        gc.collect()
        state = store.load("c")
        assert state is not None
        assert gc.isenabled()
        assert _in_generation(0, list(state.data.values()))
    finally:
        store.close()


def test_a_load_leaves_a_disabled_collector_disabled(big: SQLiteStore) -> None:
    gc.disable()
    try:
        assert big.load("c") is not None
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_load_never_releases_objects_the_application_froze(big: SQLiteStore) -> None:
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert big.load("c") is not None
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def test_a_failed_load_restores_the_collector(tmp_path: Path) -> None:
    store = _store(tmp_path / "bad.db", 10)
    try:
        with sqlite3.connect(tmp_path / "bad.db") as db:
            db.execute("UPDATE snapshots SET blob = ?", (b"not a hoard blob at all, not even close",))
        with pytest.raises(CorruptStateError):
            store.load("c")
        assert gc.isenabled()
    finally:
        store.close()


def _nested(levels: int) -> object:
    value: object = 1
    for i in range(levels):
        value = [value] if i % 2 else {"x": value}
    return value


@pytest.mark.parametrize("levels", [64, 65])
def test_a_loaded_value_may_be_nested_as_deep_as_a_stored_one_and_no_deeper(tmp_path: Path, levels: int) -> None:
    store = SQLiteStore(str(tmp_path / "deep.db"))
    store.open()
    try:
        # written past freeze_mapping (which refuses 65 levels): what a hostile or foreign writer could store
        store.commit([CreateContext(new_state("c", {"v": _nested(levels), "w": [[1], {"y": [2]}]}))])
        if levels > 64:
            with pytest.raises(CorruptStateError, match="snapshot v1"):
                store.load("c")
            return
        state = store.load("c")
        assert state is not None and state.data["v"] == _nested(levels)
        with pytest.raises(TypeError):
            state.data["w"][1]["y"].append(3)  # frozen all the way down
    finally:
        store.close()
