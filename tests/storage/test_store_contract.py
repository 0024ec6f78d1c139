"""The `Store` contract, run against every store: MemoryStore, SQLiteStore and PostgresStore.

What the persistence actor relies on: version-checked, all-or-nothing batches; snapshots (the newest
two) with journal truncation and the checkpoint rule; recovery point sequence and trimming; reads
(`info`, `list_ids`, `count`); and, for the durable stores, that a reopened store holds exactly what
was committed. Every test ends with a clean `verify()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import immutables
import pytest

from hoard.storage import (
    Append,
    Change,
    ContextNotFoundError,
    ContextState,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    InvalidContextIdError,
    MemoryStore,
    PersistenceError,
    PostgresStore,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    SQLiteStore,
    Store,
    VersionNotStoredError,
    apply_change,
    freeze_mapping,
    new_state,
    open_store,
)
from tests.pg import url_for

KINDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Harness:
    """One store under test, and a way to reopen it (durable stores only)."""

    def __init__(self, kind: str, factory: Callable[[], Store]) -> None:
        self.kind = kind
        self.durable = kind != "memory"
        self._factory = factory
        self.store = self._open()

    def _open(self) -> Store:
        store = self._factory()
        store.open()
        return store

    def reopen(self) -> Store:
        self.store.close()
        self.store = self._open()
        return self.store


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    kind = request.param
    if kind == "memory":
        shared = MemoryStore()
        factory: Callable[[], Store] = lambda: shared  # noqa: E731 - "reopening" memory is a no-op
    elif kind == "sqlite":
        factory = lambda: SQLiteStore(tmp_path / "state.db")  # noqa: E731
    else:
        dsn = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")
        factory = lambda: PostgresStore(dsn, schema=schema)  # noqa: E731
    h = Harness(kind, factory)
    try:
        yield h
        assert h.store.verify() == []
    finally:
        h.store.close()


def _state(cid: str = "c", **data: Any) -> ContextState:
    return new_state(cid, freeze_mapping(data), now=1_700_000_000.25)


def _change(version: int, **data: Any) -> Change:
    return Change(version, 1_700_000_000.5 + version, freeze_mapping(data))


def _grow(store: Store, state: ContextState, n: int, **extra: Any) -> ContextState:
    """Append `n` changes to `state` one commit each; return the resulting state."""
    for _ in range(n):
        ch = _change(state.version + 1, **{f"k{state.version + 1}": state.version + 1}, **extra)
        store.commit([Append(state.id, ch)])
        state = apply_change(state, ch)
    return state


def test_a_created_context_loads_back_equal_and_an_unknown_one_is_none(harness: Harness) -> None:
    s = harness.store
    st = new_state("c", freeze_mapping({"n": 1, "f": 0.1, "deep": {"a": [1, 2, {"b": None}]}, "ü": "日本"}),
                   freeze_mapping({"owner": "me"}), now=1_700_000_000.123456789)
    s.commit([CreateContext(st)])
    assert s.load("c") == st
    assert s.load("nope") is None
    assert s.info("nope") is None
    info = s.info("c")
    assert info is not None
    assert (info.id, info.version, info.created_at, info.updated_at, info.next_rp_id) == \
        ("c", 1, st.created_at, st.updated_at, 1)


def test_appends_replay_in_order_and_each_must_follow_the_stored_version(harness: Harness) -> None:
    s = harness.store
    st = _state()
    s.commit([CreateContext(st)])
    st = _grow(s, st, 3)
    for bad in (st.version, st.version + 2, 1):  # a duplicate, a gap, a stale one
        with pytest.raises(PersistenceError):
            s.commit([Append("c", _change(bad, x=bad))])
    with pytest.raises(PersistenceError):
        s.commit([Append("ghost", _change(2))])
    assert s.load("c") == st
    assert s.info("c").version == 4  # type: ignore[union-attr]


def test_a_batch_with_one_bad_op_applies_nothing(harness: Harness) -> None:
    s = harness.store
    st = _state()
    s.commit([CreateContext(st), CreateContext(_state("other"))])
    good = _change(2, a=1)
    rp = RecoveryPoint(1, "c", 1, None, 1.0, st)
    with pytest.raises(PersistenceError):
        s.commit([Append("c", good), PutRecoveryPoint(rp, 5), CreateContext(_state("new")),
                  DeleteContext("other"), Append("c", _change(4, b=2))])
    assert s.load("c") == st
    assert s.recovery_points("c") == []
    assert s.list_ids() == ["c", "other"]
    s.commit([Append("c", good)])  # the store is still usable, and the good op still applies
    assert s.load("c") == apply_change(st, good)


def test_a_group_commit_of_appends_lands_whole_and_a_bad_one_names_its_context(harness: Harness) -> None:
    """A batch of appends only (a group commit: several contexts, some with consecutive versions)
    lands together, in order; one whose version does not follow refuses the whole batch and names
    its own context, wherever it sits in the batch."""
    s = harness.store
    states = {cid: _state(cid) for cid in ("a", "b", "c")}
    s.commit([CreateContext(st) for st in states.values()])
    batch = [("a", 2), ("b", 2), ("a", 3), ("c", 2), ("b", 3), ("a", 4)]
    s.commit([Append(cid, _change(v, **{cid: v})) for cid, v in batch])
    for cid, v in batch:
        states[cid] = apply_change(states[cid], _change(v, **{cid: v}))
    assert {cid: s.load(cid) for cid in states} == states
    for bad, culprit in (([("a", 5), ("b", 4), ("c", 4)], "c"),  # c's does not follow its stored v2
                         ([("a", 5), ("a", 7), ("b", 4)], "a"),  # a gap inside the batch
                         ([("c", 3), ("b", 4), ("ghost", 2)], "ghost")):  # not in the store
        with pytest.raises(PersistenceError) as caught:
            s.commit([Append(cid, _change(v, x=v)) for cid, v in bad])
        assert caught.value.context_id == culprit
        assert {cid: s.load(cid) for cid in states} == states  # nothing of the batch was written
    s.commit([Append("c", _change(3, x=3)), Append("a", _change(5, x=5))])  # the store goes on
    assert (s.info("a").version, s.info("c").version) == (5, 3)  # type: ignore[union-attr]


def test_creating_an_existing_context_is_refused(harness: Harness) -> None:
    s = harness.store
    s.commit([CreateContext(_state(a=1))])
    with pytest.raises(PersistenceError):
        s.commit([CreateContext(_state(a=2))])
    assert s.load("c").get("a") == 1  # type: ignore[union-attr]


def test_snapshots_keep_the_newest_two_and_truncate_the_journal(harness: Harness) -> None:
    s = harness.store
    st = _state()
    s.commit([CreateContext(st)])
    st = _grow(s, st, 4)
    s.commit([PutSnapshot(st)])
    assert s.info("c").snapshot_version == 5  # type: ignore[union-attr]
    st = _grow(s, st, 2)
    s.commit([PutSnapshot(st)])
    info = s.info("c")
    assert info is not None
    assert (info.version, info.snapshot_version) == (7, 7)
    if harness.durable:  # the journal is kept back to the older snapshot (v5): entries 6 and 7
        assert info.journal_entries == 2
        assert info.stored_bytes > 0
    st = _grow(s, st, 1)
    assert s.load("c") == st
    if harness.durable:
        assert harness.reopen().load("c") == st


def test_a_snapshot_ahead_of_the_stored_version_is_a_checkpoint(harness: Harness) -> None:
    s = harness.store
    st = _state(a=1)
    s.commit([CreateContext(st)])
    ahead = ContextState("c", 9, immutables.Map({"a": 9}), immutables.Map(), st.created_at, st.created_at + 9)
    s.commit([PutSnapshot(ahead)])
    info = s.info("c")
    assert info is not None
    assert (info.version, info.snapshot_version, info.journal_entries) == (9, 9, 0)
    assert s.load("c") == ahead
    with pytest.raises(PersistenceError):
        s.commit([Append("c", _change(2))])
    after = _grow(s, ahead, 1)
    assert s.load("c") == after


def test_recovery_points_follow_their_sequence_and_are_trimmed_oldest_first(harness: Harness) -> None:
    s = harness.store
    st = _state(a=1)
    s.commit([CreateContext(st)])
    made = []
    for rp_id in range(1, 6):
        st = _grow(s, st, 1)
        rp = RecoveryPoint(rp_id, "c", st.version, f"rp{rp_id}", 1_700_000_100.0 + rp_id, st)
        s.commit([PutRecoveryPoint(rp, 3)])
        made.append(rp)
    assert s.recovery_points("c") == made[-3:]
    assert s.recovery_point("c", 5) == made[4]
    assert s.recovery_point("c", 1) is None
    for wrong in (5, 7, 1):  # reused, skipped ahead, and trimmed ids are all out of sequence
        with pytest.raises(PersistenceError):
            s.commit([PutRecoveryPoint(RecoveryPoint(wrong, "c", st.version, None, 1.0, st), 3)])
    with pytest.raises(PersistenceError):
        s.commit([PutRecoveryPoint(RecoveryPoint(1, "ghost", 1, None, 1.0, _state("ghost")), 3)])
    s.commit([DeleteRecoveryPoint("c", 5)])
    assert [rp.id for rp in s.recovery_points("c")] == [3, 4]
    assert s.info("c").next_rp_id == 6  # type: ignore[union-attr]  # ids are never reused
    # keep=1 never drops the point just made
    s.commit([PutRecoveryPoint(RecoveryPoint(6, "c", st.version, None, 1.0, st), 1)])
    assert [rp.id for rp in s.recovery_points("c")] == [6]
    if harness.durable:
        assert harness.reopen().recovery_points("c") == [RecoveryPoint(6, "c", st.version, None, 1.0, st)]


def test_deleting_a_context_removes_everything_and_it_can_be_created_afresh(harness: Harness) -> None:
    s = harness.store
    st = _state(a=1)
    s.commit([CreateContext(st), CreateContext(_state("keep"))])
    st = _grow(s, st, 3)
    s.commit([PutRecoveryPoint(RecoveryPoint(1, "c", st.version, None, 1.0, st), 5), PutSnapshot(st)])
    s.commit([DeleteContext("c")])
    assert s.load("c") is None
    assert s.info("c") is None
    assert s.recovery_points("c") == []
    assert (s.list_ids(), s.count()) == (["keep"], 1)
    fresh = _state(b=2)
    s.commit([CreateContext(fresh)])
    assert s.load("c") == fresh
    assert s.info("c").next_rp_id == 1  # type: ignore[union-attr]


def test_ids_list_sorted_by_code_point_and_filter_by_literal_prefix(harness: Harness) -> None:
    s = harness.store
    ids = ["b", "a", "a%", "a_b", "ab", "aé", "a\U0001f600", "日本", "A", "a b", "%", "_"]
    s.commit([CreateContext(_state(cid)) for cid in ids])
    assert s.list_ids() == sorted(ids)
    assert s.list_ids("a") == sorted(i for i in ids if i.startswith("a"))
    assert s.list_ids("a_") == ["a_b"]
    assert s.list_ids("a%") == ["a%"]
    assert s.list_ids("%") == ["%"]
    assert s.list_ids("zz") == []
    assert s.count() == len(ids)
    for cid in ids:
        assert s.load(cid).id == cid  # type: ignore[union-attr]


def test_a_reopened_durable_store_holds_exactly_what_was_committed(harness: Harness) -> None:
    if not harness.durable:
        pytest.skip("a memory store keeps nothing across a real reopen")
    s = harness.store
    a, b = _state("a", x=1), _state("b", y=[1, {"z": 0.5}])
    s.commit([CreateContext(a), CreateContext(b)])
    a = _grow(s, a, 3)
    ch = Change(2, 2.0, freeze_mapping({"new": True}), ("y",), freeze_mapping({"m": 1}))
    s.commit([Append("b", ch)])
    b = apply_change(b, ch)
    restore = Change(5, 3.0, freeze_mapping({"only": 1}), (), {}, (), True)
    s.commit([Append("a", restore)])
    a = apply_change(a, restore)
    s = harness.reopen()
    assert (s.load("a"), s.load("b")) == (a, b)
    assert s.list_ids() == ["a", "b"]
    assert dict(s.load("a").data) == {"only": 1}  # type: ignore[union-attr]


def test_an_empty_batch_is_a_no_op(harness: Harness) -> None:
    harness.store.commit([])
    assert harness.store.count() == 0


def test_a_large_state_round_trips(harness: Harness) -> None:
    s = harness.store
    st = new_state("big", freeze_mapping({f"key{i}": {"i": i, "s": "x" * 50} for i in range(2000)}))
    s.commit([CreateContext(st)])
    started = time.perf_counter()
    assert s.load("big") == st
    assert time.perf_counter() - started < 5


# -- the read interface ------------------------------------------------------------------------------------
def _history(harness: Harness) -> dict[int, ContextState]:
    """Context "c" through v1..v9 (a snapshot at v4 and v7, a recovery point of v5); every state by version.
    Also a second context "d" at v1."""
    s = harness.store
    st = _state("c", base=0)
    states = {1: st}
    s.commit([CreateContext(st), CreateContext(_state("d"))])
    for v in range(2, 10):
        ch = Change(v, 1_700_000_000.5 + v, freeze_mapping({f"k{v}": v}), ("base",) if v == 3 else (),
                    freeze_mapping({"m": v} if v == 6 else {}))
        st = apply_change(st, ch)
        states[v] = st
        ops: list[Any] = [Append("c", ch)]
        if v in (4, 7):
            ops.append(PutSnapshot(st))
        if v == 5:
            ops.append(PutRecoveryPoint(RecoveryPoint(1, "c", 5, "five", 1.0, st), keep=3))
        s.commit(ops)
    return states


def test_contexts_lists_every_context_with_its_stored_version_and_sizes(harness: Harness) -> None:
    _history(harness)
    s = harness.store
    listed = s.contexts()
    assert [(c.id, c.version, c.snapshot_version, c.journal_entries, c.recovery_points, c.next_rp_id)
            for c in listed] == [("c", 9, 7, 5, 1, 2), ("d", 1, 1, 0, 0, 1)]
    assert listed[0] == s.info("c")
    assert [c.id for c in s.contexts("d")] == ["d"] and s.contexts("x") == [] and s.contexts("\x00") == []
    if harness.durable:
        assert listed[0].stored_bytes > listed[1].stored_bytes > 0


def test_journal_returns_the_stored_changes_between_two_versions_as_records(harness: Harness) -> None:
    states = _history(harness)
    s = harness.store
    entries = s.journal("c")
    assert [e.version for e in entries] == [5, 6, 7, 8, 9]  # back to the older kept snapshot (v4)
    assert [e.version for e in s.journal("c", after=6, upto=8)] == [7, 8]
    assert s.journal("c", after=9) == [] and s.journal("d") == []
    six = entries[1]
    assert (six.context_id, six.at, six.changed, six.removed, six.metadata_changed, six.replaced) == \
        ("c", states[6].updated_at, ("k6",), (), True, False)
    assert apply_change(states[5], six.change) == states[6]
    with pytest.raises(ContextNotFoundError):
        s.journal("nope")


def test_snapshot_versions_lists_the_kept_snapshots(harness: Harness) -> None:
    _history(harness)
    assert harness.store.snapshot_versions("c") == [4, 7]
    assert harness.store.snapshot_versions("d") == [1]
    with pytest.raises(ContextNotFoundError):
        harness.store.snapshot_versions("nope")


def test_state_at_rebuilds_every_stored_version_and_names_what_it_cannot(harness: Harness) -> None:
    states = _history(harness)
    s = harness.store
    for v in range(4, 10):  # from the snapshot at v4 (or the recovery point at v5) on
        assert s.state_at("c", v) == states[v], v
    with pytest.raises(VersionNotStoredError) as info:
        s.state_at("c", 3)  # older than every kept snapshot and recovery point
    assert (info.value.context_id, info.value.version, info.value.oldest, info.value.newest) == ("c", 3, 4, 9)
    for bad in (10, 0, -1, True):
        with pytest.raises(VersionNotStoredError):
            s.state_at("c", bad)  # type: ignore[arg-type]
    with pytest.raises(ContextNotFoundError):
        s.state_at("nope", 1)
    with pytest.raises(InvalidContextIdError):
        s.state_at("", 1)


def test_a_version_not_stored_names_the_oldest_from_which_every_later_one_rebuilds(harness: Harness) -> None:
    states = _history(harness)
    s = harness.store
    ch = Change(10, 1_700_000_010.5, freeze_mapping({"k10": 10}))
    ten = apply_change(states[9], ch)
    s.commit([Append("c", ch), PutSnapshot(ten)])  # snapshots v7 and v10 now; the recovery point of v5 stays
    assert s.state_at("c", 5) == states[5]
    with pytest.raises(VersionNotStoredError) as info:
        s.state_at("c", 6)  # between the recovery point and the oldest snapshot: no journal reaches it
    e = info.value
    assert (e.oldest, e.newest, e.also) == (7, 10, ((5, 5),))
    assert "v7..v10" in str(e) and "v5" in str(e)
    for v in range(e.oldest, e.newest + 1):  # the range it names is true
        assert s.state_at("c", v).version == v


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "memory"])
def test_feed_retention_holds_for_a_writer_that_restarts_before_a_prune_point(
        request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    def make() -> Store:
        if kind == "sqlite":
            return SQLiteStore(tmp_path / "state.db", sync="normal", feed_retention=100)
        return PostgresStore(request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema"),
                             feed_retention=100)
    state = _state()
    for run in range(6):  # six short runs of 1,000 changes each: none reaches a prune point (1,024) alone
        store = make()
        store.open()
        try:
            if run == 0:
                store.commit([CreateContext(state)])
            for _ in range(10):
                changes = [_change(v, n=v) for v in range(state.version + 1, state.version + 101)]
                store.commit([Append("c", ch) for ch in changes])
                state = attrs.evolve(state, version=changes[-1].version)
            floor, head = store.feed_bounds()
            assert head == 1 + 1000 * (run + 1)
            # at most the retention plus what was appended since the last prune point
            assert head - floor <= 100 + 1000, (run, floor, head)
        finally:
            store.close()


@pytest.mark.parametrize("huge", [2**63, 2**64])
def test_numbers_past_what_a_store_holds_read_as_nothing_there(harness: Harness, huge: int) -> None:
    states = _history(harness)
    s = harness.store
    assert s.journal("c", after=huge) == []
    assert [e.version for e in s.journal("c", upto=huge)] == [e.version for e in s.journal("c")]
    assert s.recovery_point("c", huge) is None
    assert s.feed(after=huge) == []
    with pytest.raises(VersionNotStoredError):
        s.state_at("c", huge)
    assert s.state_at("c", 9) == states[9]


def test_stats_count_the_rows_of_the_whole_store(harness: Harness) -> None:
    _history(harness)
    stats = harness.store.stats()
    assert (stats.contexts, stats.snapshots, stats.journal_entries, stats.recovery_points, stats.quarantined) == \
        (2, 3, 5, 1, 0)
    assert stats.location == harness.store.location
    if harness.durable:
        assert stats.snapshot_bytes > 0 and stats.journal_bytes > 0 and stats.recovery_point_bytes > 0
        assert stats.stored_bytes == stats.snapshot_bytes + stats.journal_bytes + stats.recovery_point_bytes


def test_a_read_only_store_gives_the_same_answers_and_refuses_writes(harness: Harness) -> None:
    if not harness.durable:
        pytest.skip("a memory store has nothing to reopen read-only")
    states = _history(harness)
    s = harness.store
    ro = open_store(s.path if isinstance(s, SQLiteStore) else url_for(s.dsn, s.schema))  # type: ignore[attr-defined]
    try:
        assert ro.contexts() == s.contexts()
        assert ro.journal("c") == s.journal("c")
        assert ro.state_at("c", 6) == states[6] and ro.load("c") == states[9]
        assert ro.stats() == attrs.evolve(s.stats(), location=ro.location)
        assert ro.verify(fix=True) == []
        with pytest.raises(PersistenceError, match="read-only"):
            ro.commit([Append("c", _change(10))])
    finally:
        ro.close()
    assert s.load("c") == states[9]


class _CountingRows:
    """A store's `RowAccess`, counting the snapshot blobs handed out (by version)."""

    def __init__(self, rows: Any, read: list[int]) -> None:
        self._rows, self._read = rows, read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rows, name)

    def snapshot_rows(self, context_id: str) -> Any:
        found = self._rows.snapshot_rows(context_id)
        self._read.extend(v for v, _ in found)
        return found

    def snapshot_row(self, context_id: str, version: int) -> Any:
        blob = self._rows.snapshot_row(context_id, version)
        if blob is not None:
            self._read.append(version)
        return blob


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_state_at_reads_only_the_snapshot_it_rebuilds_from_however_long_the_history(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # history="all" keeps every snapshot: a state_at that read them all (to keep one) grew with the
    # history's length (1.2 of 4.6 ms with 202 snapshots of 2,000 keys)
    if kind == "sqlite":
        store: Any = SQLiteStore(tmp_path / "state.db")
    else:
        store = PostgresStore(request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema"))
    store.open()
    try:
        store.set_history("all")
        state = _state(a=0)
        store.commit([CreateContext(state)])
        states = {1: state}
        for v in range(2, 41):
            change = Change(v, 1_700_000_000.0 + v, freeze_mapping({"a": v}))
            state = apply_change(state, change)
            states[v] = state
            ops: list[Any] = [Append("c", change)]
            if v % 4 == 0:
                ops.append(PutSnapshot(state))
            store.commit(ops)
        assert store.snapshot_versions("c") == [1, *range(4, 41, 4)]
        read: list[int] = []
        real = store._read  # noqa: SLF001 - the spy wraps the row access of the store's read transaction
        store._read = lambda what, cid, fn: real(what, cid, lambda rows: fn(_CountingRows(rows, read)))  # noqa: SLF001
        for v in (3, 4, 22, 39, 40):
            read.clear()
            assert store.state_at("c", v) == states[v]
            assert read == [v - v % 4 or 1], v  # the newest snapshot at or below v, and no other
    finally:
        store.close()
