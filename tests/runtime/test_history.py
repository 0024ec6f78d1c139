"""History, state_at and diffs (`ContextManager.history/state_at/diff`), and the history policy
(`ContextManagerConfig(history=...)`) that compaction and ``hoard compact`` keep to: memory, SQLite and
PostgreSQL, against a model of every version written."""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoard import (
    ConfigError,
    ContextManagerConfig,
    InvalidValueError,
    VersionNotStoredError,
    open_system,
    thaw,
)
from hoard.storage import open_store
from tests.cli.conftest import command_env
from tests.helpers import Clock


def _cfg(**kw: Any) -> ContextManagerConfig:
    return ContextManagerConfig(**kw)


# -- a model of every version ---------------------------------------------------------------------------
KEYS = st.sampled_from(["a", "b", "c", "d/e", "~f"])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2),
                   st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2))
OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), KEYS, VALUES),
    st.tuples(st.just("delete"), KEYS, st.none()),
    st.tuples(st.just("meta"), KEYS, VALUES),
    st.tuples(st.just("rp"), st.none(), st.none()),
    st.tuples(st.just("restore"), st.none(), st.none()),
), min_size=1, max_size=40)
BY = st.one_of(st.none(), st.sampled_from(["user:ana", "svc:billing"]))


def _run_model(system: Any, ops: list[tuple[str, Any, Any]], bys: list[str | None]) -> dict[int, tuple]:
    """Apply `ops` to context "m"; return version -> (data, metadata, by) of every version."""
    t = system.adapter.get_or_create("m")
    model: dict[int, tuple] = {1: ({}, {}, None)}
    data: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    rps: list[Any] = []
    for (kind, key, value), by in zip(ops, bys, strict=False):
        if kind == "rp":
            rps.append((t.create_recovery_point(), dict(data), dict(meta)))
            continue
        if kind == "set":
            v = t.set(key, value, by=by)
            data[key] = value
        elif kind == "delete":
            v = t.delete(key, by=by)
            data.pop(key, None)
        elif kind == "meta":
            v = t.set_metadata(key, value, by=by)
            meta[key] = value
        else:
            if not rps:
                continue
            rp, rdata, rmeta = rps[-1]
            v = t.restore(rp, by=by)
            data, meta = dict(rdata), dict(rmeta)
        model[v] = (dict(data), dict(meta), by)
    return model


def _check_against_model(system: Any, model: dict[int, tuple], oldest: int) -> None:
    m = system.manager
    head = max(model)
    for v in range(1, head + 1):
        if v < oldest:
            try:  # older than the history kept: refused, unless a recovery point rebuilds it exactly
                state = m.state_at("m", v)
            except VersionNotStoredError as exc:
                assert exc.oldest is not None
                continue
        else:
            state = m.state_at("m", v)
        assert state.version == v
        assert thaw(dict(state.data)) == model[v][0], f"state_at v{v}"
        assert thaw({k: x for k, x in state.metadata.items() if not k.startswith("hoard.")}) == model[v][1]
    entries = list(m.history("m"))
    assert [e.version for e in entries] == list(range(head - len(entries) + 1, head + 1))
    assert not entries or entries[0].version == oldest + 1  # the journal goes on from the oldest snapshot
    for e in entries:
        before, after = model[e.version - 1][0], model[e.version][0]
        assert e.by == model[e.version][2]
        assert {k: thaw(x) for k, x in e.after.items()} == {k: after[k] for k in e.changed}
        assert {k: thaw(x) for k, x in e.before.items()} == {k: before[k] for k in (*e.changed, *e.removed)
                                                                if k in before}
        assert set(e.removed) == ({k for k in before if k not in after} if e.replaced else set(e.removed))
        if e.replaced:  # a restore lists every key of the restored data
            assert set(e.changed) == set(after)
        assert all(k not in after for k in e.removed)
    # a diff between any two kept versions, and its JSON patch, lead from one to the other
    kept = [v for v in model if v >= oldest]
    a, b = kept[0], kept[-1]
    d = m.diff("m", a, b)
    doc = {"data": model[a][0], "metadata": thaw(dict(m.state_at("m", a).metadata))}
    patched = jsonpatch.apply_patch(doc, d.to_json_patch())
    assert patched["data"] == model[b][0]
    assert set(d.added) | set(d.changed) | set(d.removed) == {
        k for k in set(model[a][0]) | set(model[b][0]) if model[a][0].get(k, d) != model[b][0].get(k, d)}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, bys=st.lists(BY, min_size=40, max_size=40), every=st.integers(2, 6))
def test_history_and_state_at_match_a_model_of_every_version_with_history_all(
        ops: list[tuple[str, Any, Any]], bys: list[str | None], every: int) -> None:
    with tempfile.TemporaryDirectory() as d, open_system(
            Path(d) / "h.db", manager_config=_cfg(history="all", snapshot_every=every)) as system:
        model = _run_model(system, ops, bys)
        _check_against_model(system, model, oldest=1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, bys=st.lists(BY, min_size=40, max_size=40), keep=st.integers(1, 8))
def test_with_the_last_n_versions_every_one_of_them_is_kept_and_older_ones_are_refused_by_name(
        ops: list[tuple[str, Any, Any]], bys: list[str | None], keep: int) -> None:
    with tempfile.TemporaryDirectory() as d, open_system(
            Path(d) / "h.db", manager_config=_cfg(history=keep, snapshot_every=3)) as system:
        model = _run_model(system, ops, bys)
        head = max(model)
        reader = open_store(Path(d) / "h.db")
        try:
            oldest = reader.snapshot_versions("m")[0]
        finally:
            reader.close()
        assert oldest <= max(1, head - keep + 1), "a version the policy keeps was dropped"
        assert head - oldest < keep + 3 + 3, "more kept than the policy and the snapshot interval explain"
        _check_against_model(system, model, oldest)
        if oldest > 1:
            with pytest.raises(VersionNotStoredError) as info:
                list(system.manager.history("m", since_version=oldest))
            assert info.value.oldest == oldest + 1  # named: the oldest version history still shows


# -- the policy on every store ------------------------------------------------------------------------
def _kept(system: Any, cid: str) -> tuple[list[int], list[int]]:
    reader = system.store.reader()
    if reader is not system.store:
        reader.open()
    try:
        return reader.snapshot_versions(cid), [e.version for e in reader.journal(cid)]
    finally:
        if reader is not system.store:
            reader.close()


@pytest.mark.parametrize("policy", ["recovery", "all", 25, datetime.timedelta(seconds=300)])
def test_compaction_keeps_exactly_what_the_policy_says(target: str | Path | None, policy: Any) -> None:
    clock = Clock(1_000_000.0)
    with open_system(target, manager_config=_cfg(history=policy, snapshot_every=10, clock=clock)) as system:
        t = system.adapter.get_or_create("c")
        for i in range(120):  # one change every 10 s: 1,200 s in all
            clock.now += 10
            t.set("i", i)
        snaps, journal = _kept(system, "c")
        top = t.version  # 121
        if policy == "recovery":
            assert snaps == [111, 121] and journal == list(range(112, 122))
        elif policy == "all":
            assert snaps == list(range(1, 122, 10)) and journal == list(range(2, 122))
        elif policy == 25:  # versions 97..121 must be rebuildable: the newest snapshot <= 97 is 91
            assert snaps == [91, 101, 111, 121] and journal == list(range(92, 122))
            assert system.manager.state_at("c", top - 24).version == top - 24
        else:  # 300 s back from the newest snapshot's time: versions made since, and the one before
            window_start = clock.now - 300  # v121 was made at clock.now; v91 at clock.now - 300
            assert snaps == [91, 101, 111, 121] and journal == list(range(92, 122))
            assert system.manager.state_at("c", 91).updated_at <= window_start
        if snaps[0] > 1:
            with pytest.raises(VersionNotStoredError):
                system.manager.state_at("c", snaps[0] - 1)


def test_the_policy_is_recorded_in_the_store_and_hoard_compact_keeps_to_it(store_path: Path) -> None:
    with open_system(store_path, manager_config=_cfg(history="all", snapshot_every=10)) as system:
        t = system.adapter.get_or_create("c")
        for i in range(60):
            t.set("i", i)
    with open_system(store_path, manager_config=_cfg(snapshot_every=10)) as system:  # no history=: kept
        assert str(system.store.history_policy) == "all"
        t = system.adapter.get_or_create("c")
        for i in range(20):
            t.set("i", i)
        assert _kept(system, "c")[1] == list(range(2, 82))

    def compact() -> None:
        proc = subprocess.run([sys.executable, "-m", "hoard.cli", "compact", str(store_path), "--json"],  # noqa: S603
                              env=command_env(), capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
    compact()  # no flag: the recorded "all" keeps everything
    reader = open_store(store_path)
    try:
        assert [e.version for e in reader.journal("c")] == list(range(2, 82))
    finally:
        reader.close()
    with open_system(store_path, manager_config=_cfg(history=30, snapshot_every=10)):
        pass  # records the shorter policy
    compact()  # now trims to it: the newest snapshot at or below v81 - 30 + 1 = 52 is v51
    reader = open_store(store_path)
    try:
        assert reader.snapshot_versions("c") == [51, 61, 71, 81]
        assert [e.version for e in reader.journal("c")] == list(range(52, 82))
        assert reader.verify() == []
    finally:
        reader.close()


@pytest.mark.parametrize("bad", ["forever", 0, -3, 1.5, datetime.timedelta(0), True, "versions:inf", "versions:1e400"])
def test_a_bad_history_policy_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="history"):
        _cfg(history=bad)


# -- reads that never wait for the writer -------------------------------------------------------------------
def test_history_reads_take_no_lock_and_never_wait_for_the_context_s_writer(store_path: Path) -> None:
    with open_system(store_path, manager_config=_cfg(history="all", snapshot_every=5)) as system:
        t = system.adapter.get_or_create("c")
        for i in range(12):
            t.set("i", i, by="user:ana")
        inside, release = threading.Event(), threading.Event()

        def slow(draft: Any) -> None:
            inside.set()
            assert release.wait(30)
            draft["i"] = 99
        pending = t.transact_async(slow, timeout=30)
        assert inside.wait(10)  # the context's actor is busy inside the transaction now
        try:
            assert [e.version for e in system.manager.history("c")] == list(range(2, 14))
            assert system.manager.state_at("c", 7).data["i"] == 5
            assert system.manager.diff("c", 2, 13).changed == {"i": (0, 11)}
        finally:
            release.set()
        pending.get(timeout=30)
        assert system.manager.history("c", since_version=14).__next__().after == {"i": 99}


def test_history_and_feed_reads_follow_the_store_file_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with open_system(tmp_path / "b" / "state.db") as other:  # another store, under the same relative name
        other.adapter.get_or_create("orders").set("total", 999)
    monkeypatch.chdir(tmp_path / "a")
    with open_system("state.db") as system:
        t = system.adapter.get_or_create("orders")
        v = t.set("total", 10)
        monkeypatch.chdir(tmp_path / "b")  # a daemon, or a library, changes directory
        assert t.set("total", 11) == v + 1
        assert dict(system.manager.state_at("orders", v).data) == {"total": 10}
        assert [h.version for h in system.manager.history("orders")] == [v, v + 1]
        assert [e.values.get("total") for e in system.changes(timeout=0) if e.context_id == "orders"][-2:] == [10, 11]


def test_a_restore_s_history_entry_lists_every_restored_key_as_its_feed_entry_does(system: Any) -> None:
    t = system.adapter.get_or_create("a")
    t.update({"x": 1, "y": 2})
    t.set_metadata("owner", "ana")
    rp = t.create_recovery_point()
    t.delete("x")
    t.set("z", 3)
    v = t.restore(rp.id)
    [h] = list(system.manager.history("a", since_version=v))
    assert h.replaced
    assert (h.changed, h.removed) == (("x", "y"), ("z",))
    assert (dict(h.before), dict(h.after)) == ({"y": 2, "z": 3}, {"x": 1, "y": 2})
    assert "owner" in h.metadata_changed
    [e] = [e for e in system.changes(timeout=0) if e.context_id == "a" and e.version == v]
    assert (e.changed, tuple(sorted(e.metadata))) == (h.changed, h.metadata_changed)


def test_a_diff_against_a_recovery_point_and_its_json_patch(system: Any) -> None:
    t = system.adapter.get_or_create("c")
    t.update({"keep": 1, "change": {"x": 1}, "drop": True, "a/b": "slash"})
    rp = t.create_recovery_point()
    t.update({"change": {"x": 2}, "new": [1]})
    t.delete(["drop", "a/b"])
    t.set_metadata("owner", "ana")
    d = system.manager.diff("c", rp, t.version)
    assert (d.a, d.b) == (f"rp:{rp.id}", str(t.version))
    assert d.added == {"new": (1,)} or thaw(dict(d.added)) == {"new": [1]}
    assert {k: (thaw(a), thaw(b)) for k, (a, b) in d.changed.items()} == {"change": ({"x": 1}, {"x": 2})}
    assert set(d.removed) == {"drop", "a/b"}
    assert thaw(dict(d.metadata_added)) == {"owner": "ana"}
    ops = d.to_json_patch()
    assert {"op": "remove", "path": "/data/a~1b"} in ops  # RFC 6901 escaping of "/"
    doc = {"data": thaw(dict(rp.state.data)), "metadata": thaw(dict(rp.state.metadata))}
    assert jsonpatch.apply_patch(doc, ops) == {"data": thaw(dict(t.state().data)),
                                               "metadata": thaw(dict(t.state().metadata))}
    assert system.manager.diff("c", t.version, t.version).empty


@pytest.mark.parametrize("name", ["since_version", "until_version"])
@pytest.mark.parametrize("number", [2**63, 2**64])
def test_history_refuses_a_version_past_what_a_store_can_hold_by_name(system: Any, name: str, number: int) -> None:
    system.adapter.get_or_create("c").set("k", 1)
    with pytest.raises(InvalidValueError, match=name):
        list(system.manager.history("c", **{name: number}))
    with pytest.raises(InvalidValueError, match="version"):
        system.manager.state_at("c", number)
    with pytest.raises(InvalidValueError, match="'b'"):
        system.manager.diff("c", 1, number)


@pytest.mark.parametrize("args", [("c", 0), ("c", "3"), ("c", None), ("c", 1.0)])
def test_bad_versions_are_refused(system: Any, args: tuple[str, Any]) -> None:
    system.adapter.get_or_create("c").set("k", 1)
    with pytest.raises(InvalidValueError):
        system.manager.state_at(*args)
    with pytest.raises(InvalidValueError):
        system.manager.diff("c", 1, args[1])
