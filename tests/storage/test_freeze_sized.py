"""`freeze_mapping_sized` (the update path) and `freeze_value_sized` (the set path) accept, refuse and
freeze exactly what `freeze_mapping` and `freeze_value` do, and their sizes are the exact JSON sizes of
what they return: their fast paths let orjson check strings and integers, so any value orjson encodes
but hoard refuses (NaN, an int or str subclass, a str-subclass key, a datetime, 65 levels) must still
be refused with the same error, and a refused key among good values must be named in the same order."""

from __future__ import annotations

import datetime
import enum
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoard.storage import (
    FrozenDict,
    FrozenList,
    InvalidValueError,
    encoded_size,
    freeze_mapping,
    freeze_mapping_sized,
    freeze_value,
    freeze_value_sized,
)


class _Str(str):
    pass


class _Color(enum.IntEnum):
    RED = 1


class _Plain(enum.Enum):
    A = "a"


def _outcome(fn: Any, mapping: Any) -> Any:
    try:
        return ("ok", fn(mapping))
    except InvalidValueError as exc:
        return ("refused", str(exc), exc.key, exc.path)


def _shape(value: Any) -> Any:
    """The value with its exact container types (equality alone would not tell a FrozenDict from a dict)."""
    if isinstance(value, dict):
        return (type(value).__name__, [(type(k).__name__, k, _shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return (type(value).__name__, [_shape(v) for v in value])
    return (type(value).__name__, "nan" if isinstance(value, float) and math.isnan(value) else orjson.dumps(value))


def _compare(full: Any, fast: Any, value: Any) -> None:
    """`fast` (frozen value, size) refuses as `full` does, or returns what it returns and its JSON size."""
    old = _outcome(full, value)
    new = _outcome(fast, value)
    if old[0] == "refused":
        assert new == old
        return
    assert new[0] == "ok"
    frozen, size = new[1]
    assert _shape(frozen) == _shape(old[1])
    assert size == len(orjson.dumps(old[1]))


def _check_same(mapping: Any) -> None:
    _compare(freeze_mapping, freeze_mapping_sized, mapping)


def _check_same_value(value: Any) -> None:
    """The set path: `freeze_value_sized` as `freeze_value` and `encoded_size`."""
    _compare(lambda v: freeze_value("k", v, None, "c"), lambda v: freeze_value_sized("k", v, "c"), value)
    if _outcome(lambda v: freeze_value("k", v), value)[0] == "ok":
        assert freeze_value_sized("k", value)[1] == encoded_size(freeze_value("k", value))


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES = [
    math.nan, math.inf, -math.inf, 2**64, 2**64 - 1, -(2**63), -(2**63) - 1, "\ud800", _Str("s"), _Color.RED,
    _Plain.A, datetime.datetime(2024, 1, 1), (1, "a"), FrozenDict({"a": 1}), FrozenList([1]), {_Str("k"): 1},
    {"\ud800": 1}, {1: 2}, {"": 1}, {"a\x00": 1}, _nested(63), _nested(64), _nested(65), _nested(300), b"x",
    object(), [math.nan], {"a": [{"b": math.inf}]}, {"a": (1, [2, {"c": _Color.RED}])}, "é✓", "\x07",
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_the_update_fast_path_freezes_and_refuses_every_odd_value_as_the_full_checks_do(value: Any) -> None:
    _check_same({"k": value})
    _check_same({"a": 1, "k": {"x": [1, value]}, "z": "ok"})
    # after a nested container, whose frozen copy is already being filled in: still checked, still refused
    _check_same({"k": {"l": [1], "d": {"x": 2}, "v": value, "m": [{"y": 3}]}})
    for one in (value, [value], {"x": value}, ({"l": [1]}, value), {"l": [1], "v": value, "m": [{"y": 3}]}):
        _check_same_value(one)


@pytest.mark.parametrize("key", ["", "a\x00b", "k" * 1025, "é" * 600, "é" * 200, _Str("sub"), 7, "\ud800"],
                         ids=repr)
def test_a_bad_top_level_key_is_named_as_the_full_checks_name_it(key: Any) -> None:
    _check_same({"first": math.nan, key: 1})  # the bad value before it is what both report
    _check_same({"first": 1, key: 1})


def test_a_cyclic_value_is_refused_as_the_full_checks_refuse_it() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    _check_same({"k": cyclic})
    _check_same_value(cyclic)


def test_values_from_the_fast_path_are_immutable() -> None:
    frozen, _ = freeze_mapping_sized({"d": {"l": [1, {"x": 2}], "e": {"f": [3]}, "s": 4}, "t": (1, 2)})
    assert type(frozen["d"]) is FrozenDict and type(frozen["d"]["l"]) is FrozenList
    assert type(frozen["d"]["e"]) is FrozenDict and type(frozen["d"]["e"]["f"]) is FrozenList
    assert type(frozen["d"]["l"][1]) is FrozenDict and type(frozen["t"]) is FrozenList
    with pytest.raises(TypeError):
        frozen["d"]["l"].append(3)
    with pytest.raises(TypeError):
        frozen["d"]["l"][1]["y"] = 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**65) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    | st.tuples(children, children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _json, max_size=6))
def test_any_mapping_gets_the_same_result_from_both_paths(mapping: dict[str, Any]) -> None:
    _check_same(mapping)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_value_gets_the_same_result_from_both_set_paths(value: Any) -> None:
    _check_same_value(value)
