"""Property tests: the codec round-trips every JSON value and state, and a context behaves like a plain
dict model through any sequence of set / update / delete / metadata / transact / conflicting writes /
invalid values / recovery points / restore / stop-and-reopen (a RuleBasedStateMachine on a real
SQLite file, and on PostgreSQL through ``open_system(postgresql://...)``): versions grow by exactly 1 per
successful change, failed calls change nothing, and every reopen equals the model."""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import immutables
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hoard import (
    ContextManagerConfig,
    InvalidValueError,
    RecoveryPointNotFoundError,
    VersionConflictError,
    open_system,
    thaw,
)
from hoard.storage import Change, Codec, ContextState, freeze_mapping, freeze_value
from hoard.storage._codec import KIND_ARCHIVE
from tests.pg import url_for

# -- strategies ------------------------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
keys = st.text(min_size=1, max_size=12).filter(lambda k: "\x00" not in k)
mappings = st.dictionaries(keys, json_values, max_size=6)
ids = st.text(min_size=1, max_size=40).filter(
    lambda s: len(s.encode()) <= 255 and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in s))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: same types (True is not 1), same floats (-0.0 stays -0.0)."""
    if type(a) is not type(b) and not (isinstance(a, dict) and isinstance(b, dict)) \
            and not (isinstance(a, list) and isinstance(b, list)):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=300, deadline=None, database=None)
@given(json_values)
def test_any_json_value_round_trips_through_the_codec_exactly(value: Any) -> None:
    codec = Codec()
    frozen = freeze_value("k", value)
    back = codec.decode_json(KIND_ARCHIVE, codec.encode_json(KIND_ARCHIVE, frozen))
    assert _same(back, thaw(frozen)) and _same(thaw(frozen), value)


@settings(max_examples=200, deadline=None, database=None)
@given(ids, mappings, mappings, st.integers(1, 2**62), st.floats(0, 2e9), st.floats(0, 2e9))
def test_any_state_round_trips_through_the_codec(cid: str, data: dict[str, Any], meta: dict[str, Any],  # noqa: PLR0917 - one parameter per hypothesis strategy
                                                 version: int, created: float, updated: float) -> None:
    codec = Codec()
    state = ContextState(cid, version, immutables.Map(freeze_mapping(data)), immutables.Map(freeze_mapping(meta)),
                         created, updated)
    back = codec.decode_state(codec.encode_state(state), "prop")
    assert back == state
    assert _same(thaw(dict(back.data)), thaw(dict(state.data)))


@settings(max_examples=200, deadline=None, database=None)
@given(mappings, st.lists(keys, max_size=4), mappings, st.lists(keys, max_size=3), st.booleans(),
       st.integers(2, 2**62))
def test_any_change_round_trips_through_the_codec(sets: dict[str, Any], dels: list[str], msets: dict[str, Any],  # noqa: PLR0917 - one parameter per hypothesis strategy
                                                  mdels: list[str], replace: bool, version: int) -> None:
    codec = Codec()
    change = Change(version, 12.5, freeze_mapping(sets), tuple(dels), freeze_mapping(msets), tuple(mdels), replace)
    back = codec.decode_change(codec.encode_change(change), "prop")
    assert back == change


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=3000), st.sampled_from([1, 2, 3]))
def test_any_payload_round_trips_through_the_frame(payload: bytes, kind: int) -> None:
    codec = Codec()
    assert codec.unframe(kind, codec.frame(kind, payload)) == payload


# -- the stateful model of one context -------------------------------------------------------------
KEEP = 3
small_keys = st.sampled_from(["a", "b", "c", "d/e", "..", "ключ"])
small_values = st.none() | st.integers(-5, 5) | st.text(max_size=5) | st.lists(st.integers(0, 3), max_size=3) | \
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2) | \
    st.text(min_size=300, max_size=400)  # compressed
bad_values = st.sampled_from([math.nan, math.inf, {1, 2}, b"bytes", object(), 2**64, {1: "int key"}])


class ContextModel(RuleBasedStateMachine):
    """One context on a real SQLite store against a plain-dict model (`PostgresContextModel`: the
    same on PostgreSQL)."""

    rps = Bundle("rps")

    def __init__(self) -> None:
        super().__init__()
        self.dir, self.path, self.cid = self.make_store()
        self.cfg = ContextManagerConfig(max_recovery_points=KEEP, snapshot_every=4)
        self.system = open_system(self.path, manager_config=self.cfg)
        self.t = self.system.adapter.activate(self.cid)
        self.version = 1
        self.data: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.points: dict[int, tuple[int, dict[str, Any], dict[str, Any]]] = {}
        self.next_rp = 1
        self.reopens = 0

    @staticmethod
    def make_store() -> tuple[Path | None, Any, str]:
        """(a directory to remove at teardown, where open_system opens, the context id)."""
        d = Path(tempfile.mkdtemp(prefix="hoard-model-"))
        return d, d / "m.db", "m"

    def teardown(self) -> None:
        try:
            self.system.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _changed(self, version: int) -> None:
        assert version == self.version + 1, f"version {version} after {self.version}: not exactly +1"
        self.version = version

    # -- changes -----------------------------------------------------------------------------------
    @rule(key=small_keys, value=small_values)
    def set(self, key: str, value: Any) -> None:
        self._changed(self.t.set(key, value))
        self.data[key] = value

    @rule(values=st.dictionaries(small_keys, small_values, max_size=3))
    def update(self, values: dict[str, Any]) -> None:
        self._changed(self.t.update(values))
        self.data.update(values)

    @rule(ks=st.lists(small_keys, max_size=3))
    def delete(self, ks: list[str]) -> None:
        self._changed(self.t.delete(ks))
        for k in ks:
            self.data.pop(k, None)

    @rule(values=st.dictionaries(small_keys, small_values, max_size=2), remove=st.lists(small_keys, max_size=2))
    def set_metadata(self, values: dict[str, Any], remove: list[str]) -> None:
        self._changed(self.t.set_metadata(values, remove=remove))
        for k in remove:
            self.meta.pop(k, None)
        self.meta.update(values)

    @rule(sets=st.dictionaries(small_keys, small_values, max_size=3), dels=st.lists(small_keys, max_size=2),
          fail=st.booleans())
    def transact(self, sets: dict[str, Any], dels: list[str], fail: bool) -> None:
        def fn(draft: Any) -> str:
            for k in dels:
                if k in draft:
                    del draft[k]
            for k, v in sets.items():
                draft[k] = v
            if fail:
                raise ValueError("abandon")
            return "done"
        if fail:
            with pytest.raises(ValueError, match="abandon"):
                self.t.transact(fn)
            return
        assert self.t.transact(fn) == "done"
        self._changed(self.version + 1)
        for k in dels:
            self.data.pop(k, None)
        self.data.update(sets)

    @rule(key=small_keys, value=small_values, off=st.sampled_from([-2, -1, 1, 5]))
    def conflicting_write(self, key: str, value: Any, off: int) -> None:
        with pytest.raises(VersionConflictError) as info:
            self.t.set(key, value, expected_version=self.version + off)
        assert (info.value.expected, info.value.actual) == (self.version + off, self.version)

    @rule(key=small_keys, value=small_values)
    def checked_write(self, key: str, value: Any) -> None:
        self._changed(self.t.set(key, value, expected_version=self.version))
        self.data[key] = value

    @rule(key=small_keys, value=bad_values, how=st.sampled_from(["set", "update", "transact", "metadata"]))
    def invalid_write(self, key: str, value: Any, how: str) -> None:
        with pytest.raises(InvalidValueError):
            if how == "set":
                self.t.set(key, value)
            elif how == "update":
                self.t.update({"ok": 1, key: value})
            elif how == "transact":
                self.t.transact(lambda d: d.update({"ok": 1, key: value}))
            else:
                self.t.set_metadata({key: value})

    # -- recovery points ---------------------------------------------------------------------------
    @rule(target=rps, label=st.none() | st.text(max_size=5))
    def create_recovery_point(self, label: str | None) -> int:
        rp = self.t.create_recovery_point(label)
        assert (rp.id, rp.version, rp.label) == (self.next_rp, self.version, label)
        self.points[rp.id] = (self.version, thaw(self.data), thaw(self.meta))
        self.next_rp += 1
        for old in sorted(self.points)[:-KEEP]:
            del self.points[old]
        return rp.id

    @rule(rp_id=rps)
    def restore(self, rp_id: int) -> None:
        if rp_id not in self.points:
            with pytest.raises(RecoveryPointNotFoundError):
                self.t.restore(rp_id)
            return
        self._changed(self.t.restore(rp_id))
        _v, data, meta = self.points[rp_id]
        self.data, self.meta = thaw(data), thaw(meta)

    @rule(rp_id=consumes(rps))
    def delete_recovery_point(self, rp_id: int) -> None:
        if rp_id not in self.points:
            with pytest.raises(RecoveryPointNotFoundError):
                self.t.delete_recovery_point(rp_id)
            return
        self.t.delete_recovery_point(rp_id)
        del self.points[rp_id]

    # -- restarts ----------------------------------------------------------------------------------
    @precondition(lambda self: self.reopens < 4)
    @rule(deactivate_first=st.booleans())
    def stop_and_reopen(self, deactivate_first: bool) -> None:
        if deactivate_first:
            self.system.adapter.deactivate(self.cid)
        self.system.stop()
        self.reopens += 1
        self.system = open_system(self.path, manager_config=self.cfg)
        self.t = self.system.adapter.activate(self.cid)
        self.check_state()
        assert self.system.store.verify() == []

    @invariant()
    def check_state(self) -> None:
        st_ = self.t.state()
        assert st_.version == self.version
        assert _same(thaw(dict(st_.data)), self.data), (dict(st_.data), self.data)
        assert _same(thaw(dict(st_.metadata)), self.meta)
        assert [p.id for p in self.t.recovery_points()] == sorted(self.points)
        for p in self.t.recovery_points():
            version, data, _meta = self.points[p.id]
            assert p.version == version and _same(thaw(dict(p.state.data)), data)


def test_a_context_behaves_like_a_dict_model_through_changes_conflicts_restores_and_reopens() -> None:
    run_state_machine_as_test(ContextModel, settings=settings(
        max_examples=40, stateful_step_count=25, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_context_behaves_like_a_dict_model_many_examples() -> None:
    run_state_machine_as_test(ContextModel, settings=settings(
        max_examples=1000, stateful_step_count=60, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# -- the same model on PostgreSQL --------------------------------------------------------------------------
def _postgres_model(url: str) -> type[ContextModel]:
    """`ContextModel` on the PostgreSQL schema of `url`: one context per example (``m0``, ``m1``...), so
    that every example starts from nothing without a schema of its own."""
    numbers = itertools.count()

    class PostgresContextModel(ContextModel):
        @staticmethod
        def make_store() -> tuple[Path | None, Any, str]:
            return None, url, f"m{next(numbers)}"

    return PostgresContextModel


@pytest.mark.postgres
def test_on_postgres_a_context_behaves_like_a_dict_model_through_changes_conflicts_restores_and_reopens(
        pg_dsn: str, pg_schema: str) -> None:
    # fewer examples than on SQLite: every stop of a system on PostgreSQL waits up to 0.25 s for its
    # listener thread (actors/_remote.py polls), and an example stops up to five times
    run_state_machine_as_test(_postgres_model(url_for(pg_dsn, pg_schema)), settings=settings(
        max_examples=15, stateful_step_count=25, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_on_postgres_a_context_behaves_like_a_dict_model_many_examples(pg_dsn: str, pg_schema: str) -> None:
    run_state_machine_as_test(_postgres_model(url_for(pg_dsn, pg_schema)), settings=settings(
        max_examples=300, stateful_step_count=60, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
