"""The C freezer (storage/_cfreeze.c) against its Python reference: on generated values, the same
accepted and refused, equal results of the same types all the way down, and no reference leaked
or lost (a refcount slip in C corrupts memory later, far from its cause)."""

from __future__ import annotations

import copy
import math
import os
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoard.storage import CorruptStateError, FrozenDict, FrozenList
from hoard.storage._codec import _freeze_decoded, _freeze_owned
from hoard.storage._values import CFREEZE as C
from hoard.storage._values import MAX_DEPTH, _NotPlain, _plain_dict, _plain_list, _plain_top

pytestmark = pytest.mark.skipif(C is None and os.environ.get("CI") != "true",
                                reason="the C freezer was not built here (no C compiler at install)")


class _Str(str):
    __slots__ = ()


class _Int(int):
    pass


class _OtherDict(dict):  # type: ignore[type-arg]
    pass


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
#: what the plain walk may meet: JSON values, tuples, frozen containers, and what it must refuse
#: (NaN and infinities, sets, bytes, str and int subclasses, dict subclasses other than FrozenDict)
_odd = st.one_of(st.sampled_from([float("nan"), float("inf"), b"x", frozenset({1}), _Str("s"), _Int(3)]),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2).map(_OtherDict))


def _tree(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
        st.lists(inner, max_size=3).map(FrozenList),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(FrozenDict)), max_leaves=25)


_values_mixed = _tree(st.one_of(_scalars, _odd))
_json = _tree(st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)))


def _same(a: Any, b: Any) -> None:
    """Equal, and of the same type at every level (a FrozenList is not a list here)."""
    assert type(a) is type(b), (a, b)
    if type(a) in (dict, FrozenDict):
        assert list(a) == list(b)  # the same keys in the same order
        for k in a:
            _same(a[k], b[k])
    elif type(a) in (list, FrozenList, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif type(a) is float and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except _NotPlain:
        return "not plain", None
    except CorruptStateError as exc:
        return "corrupt", str(exc)


def _python_plain(value: Any, depth: int) -> Any:
    if type(value) is dict:
        return _plain_dict(value, depth)
    if type(value) in (list, tuple):
        return _plain_list(value, depth)
    raise _NotPlain


@settings(max_examples=400, deadline=None)
@given(_values_mixed, st.integers(min_value=0, max_value=3))
def test_plain_accepts_refuses_and_copies_as_the_python_walk(value: Any, depth: int) -> None:
    theirs, ours = _outcome(_python_plain, value, depth), _outcome(C.plain, value, depth)
    assert theirs[0] == ours[0], (value, theirs, ours)
    if ours[0] == "ok":
        _same(theirs[1], ours[1])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _values_mixed, max_size=6))
def test_plain_top_accepts_refuses_and_copies_as_the_python_walk(mapping: dict[str, Any]) -> None:
    theirs, ours = _outcome(_plain_top, mapping), _outcome(C.plain_top, mapping)
    assert theirs[0] == ours[0], (mapping, theirs, ours)
    if ours[0] == "ok":
        _same(theirs[1], ours[1])
        assert type(ours[1]) is dict and ours[1] is not mapping


@settings(max_examples=300, deadline=None)
@given(_json, st.integers(min_value=0, max_value=3))
def test_decoded_freezes_as_the_python_walk(value: Any, depth: int) -> None:
    encoded = orjson.dumps(value)
    theirs = _outcome(_freeze_decoded, orjson.loads(encoded), depth)
    ours = _outcome(C.decoded, orjson.loads(encoded), depth)
    assert theirs[0] == ours[0] == "ok"
    _same(theirs[1], ours[1])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), _json, max_size=6))
def test_owned_freezes_in_place_as_the_python_walk(mapping: dict[str, Any]) -> None:
    encoded = orjson.dumps(mapping)
    theirs, ours = orjson.loads(encoded), orjson.loads(encoded)
    assert _freeze_owned(theirs) is theirs
    assert C.owned(ours) is ours
    _same(theirs, ours)


def _nested(levels: int, inner: Any = 0) -> Any:
    value = inner
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH])
def test_depth_limits_are_the_python_walks(levels: int) -> None:
    value = _nested(levels)
    theirs, ours = _outcome(_python_plain, value, 0), _outcome(C.plain, value, 0)
    assert theirs[0] == ours[0]
    encoded = orjson.dumps(value)
    theirs, ours = (_outcome(_freeze_decoded, orjson.loads(encoded), 0),
                    _outcome(C.decoded, orjson.loads(encoded), 0))
    assert theirs == ours if theirs[0] == "corrupt" else theirs[0] == ours[0] == "ok"
    assert (ours[0] == "corrupt") == (levels > MAX_DEPTH)


def test_no_reference_is_leaked_or_lost_accepted_or_refused() -> None:
    leaf, frozen = "a shared leaf " + "x" * 20, FrozenDict({"f": 1})
    good = {"a": [leaf, {"b": (leaf, 1.5)}], "c": frozen, "d": FrozenList([leaf])}
    bad = {"a": [leaf, {"b": [leaf, float("nan")]}]}  # refused deep inside, after copies were made
    deep_json = orjson.dumps(_nested(MAX_DEPTH + 3, leaf))
    before = sys.getrefcount(leaf), sys.getrefcount(frozen), sys.getrefcount(good["a"])
    for _ in range(1000):
        C.plain(good, 0)
        C.plain_top(good)
        with pytest.raises(_NotPlain):
            C.plain(bad, 0)
        with pytest.raises(_NotPlain):
            C.plain_top(bad)
        with pytest.raises(CorruptStateError):
            C.decoded(orjson.loads(deep_json), 0)
    assert (sys.getrefcount(leaf), sys.getrefcount(frozen), sys.getrefcount(good["a"])) == before
    kept = [C.plain(good, 0) for _ in range(3)]
    assert sys.getrefcount(leaf) == before[0] + 3 * 2  # a copied list and tuple hold it (the FrozenList is shared)
    assert kept[0] is not good and kept[0]["a"][0] is leaf and kept[0]["c"] is frozen and kept[0]["d"] is good["d"]
    assert kept[0]["a"][1]["b"] == [leaf, 1.5] and type(kept[0]["a"][1]["b"]) is FrozenList  # a tuple becomes a list


def test_frozen_results_refuse_mutation_and_the_input_is_untouched() -> None:
    value = {"a": [1, {"b": [2]}], "t": (1, 2)}
    snapshot = copy.deepcopy(value)
    out = C.plain(value, 0)
    assert value == snapshot and type(value["t"]) is tuple
    with pytest.raises(TypeError):
        out["a"].append(3)
    with pytest.raises(TypeError):
        out["a"][1]["b"].append(3)
    with pytest.raises(TypeError):
        out["x"] = 1


def test_the_freezer_is_built_where_ci_runs() -> None:
    # CI machines have a C compiler: a build that silently fell back to Python would lose the speed
    if os.environ.get("CI") == "true":
        assert C is not None, "storage/_cfreeze.c was not built"
    assert C is None or C.__name__ == "hoard.storage._cfreeze"
