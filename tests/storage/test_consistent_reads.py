"""Readers see one consistent state of the store while another process writes to it.

A separate process (busy_writer.py) commits as fast as it can: appends, snapshots (which trim the
journal) and recovery points (which trim the older ones). Meanwhile the test reads through a
read-only store in a loop: `verify()`, strict `load()` of every context, and the read interface
(`contexts`, `journal`, `snapshot_versions`, `stats`). Each of these runs in one read transaction
(REPEATABLE READ on PostgreSQL), so none may report damage that is not there: zero issues, zero
errors. Before that rule, a verify or load could read the acknowledged version before a commit and the
journal after it ("journal entry v393 beyond the acknowledged version v392").

Several calls that must agree with each other go through one `read_view()`: the totals of `stats`
equal the sums over `contexts`, and each context's journal, snapshots and loaded state end at the
version `contexts` lists. Made as separate calls (each its own snapshot), these combine two states of
the store under the busy writer; through the view they never do. The memory store's view is checked
the same way against a writer thread.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hoard.storage import (
    Append,
    Change,
    CreateContext,
    HoardError,
    MemoryStore,
    PutSnapshot,
    ReadView,
    apply_change,
    freeze_mapping,
    new_state,
    open_store,
)
from tests.pg import url_for

from . import busy_writer

CONTEXTS = 4


def _target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return str(tmp_path / "busy.db")
    return url_for(request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_schema"))


def _read_while_it_writes(target: str, child: subprocess.Popen[str]) -> tuple[list[Any], list[str], set[int], int]:
    """Loop verify, load and the read interface through a read-only store while `child` runs (and three
    rounds at least); return the issues, the errors, the versions of c0 seen, and the rounds."""
    issues: list[Any] = []
    errors: list[str] = []
    seen_versions: set[int] = set()
    rounds = 0
    ro = open_store(target)
    try:
        while child.poll() is None or rounds < 3:
            rounds += 1
            try:
                issues += ro.verify()
                for cid in (f"c{i}" for i in range(CONTEXTS)):
                    state = ro.load(cid)
                    assert state is not None
                    if cid == "c0":
                        seen_versions.add(state.version)
                    versions = [e.version for e in ro.journal(cid)]
                    assert versions == list(range(versions[0], versions[0] + len(versions))) if versions else True
                    assert ro.snapshot_versions(cid)
                assert [c.id for c in ro.contexts()] == [f"c{i}" for i in range(CONTEXTS)]
                ro.stats()
                with ro.read_view() as view:
                    errors += disagreements(view)
            except HoardError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        ro.close()
    return issues, errors, seen_versions, rounds


def disagreements(view: ReadView) -> list[str]:
    """What does not agree between several reads of `view` (empty: they saw one state of the store)."""
    found = []
    totals, contexts = view.stats(), view.contexts()
    if totals.contexts != len(contexts) or totals.journal_entries != sum(c.journal_entries for c in contexts) \
            or totals.snapshot_bytes + totals.journal_bytes != sum(c.stored_bytes for c in contexts):
        found.append(f"stats {totals} do not add up over contexts {contexts}")
    for c in contexts:
        journal, snapshots, state = view.journal(c.id), view.snapshot_versions(c.id), view.load(c.id)
        newest = journal[-1].version if journal else snapshots[-1] if snapshots else None
        if newest != c.version or state is None or state.version != c.version \
                or snapshots[-1] != c.snapshot_version or len(journal) != c.journal_entries:
            found.append(f"{c.id}: listed at v{c.version} (snapshot v{c.snapshot_version}, {c.journal_entries} "
                         f"journal entries), but journal ends at v{newest}, snapshots {snapshots}, state "
                         f"v{None if state is None else state.version}")
    return found


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_reads_during_a_busy_writer_see_no_damage_that_is_not_there(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    target = _target(kind, request, tmp_path)
    cfg = {"target": target, "contexts": CONTEXTS, "commits": 2500 if kind == "sqlite" else 1500}
    with busy_writer.started(cfg, ready_timeout=30) as (child, lines):
        issues, errors, seen_versions, rounds = _read_while_it_writes(target, child)
        assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    assert issues == [] and errors == [], (issues[:5], errors[:5], f"{rounds} rounds")
    assert len(seen_versions) >= 3, f"the reads did not overlap the writes ({rounds} rounds)"
    done = lines[-1]["done"]
    final = open_store(target)
    try:
        assert final.verify() == []
        assert {cid: final.load(cid).version for cid in done} == done  # type: ignore[union-attr]
    finally:
        final.close()


def test_a_memory_store_view_never_holds_half_a_batch_committed_by_another_thread() -> None:
    store = MemoryStore()
    states = [new_state(f"c{i}", freeze_mapping({"n": 0})) for i in range(2)]
    store.commit([CreateContext(st) for st in states])
    stop = threading.Event()

    def write() -> None:  # every batch moves both contexts one version on, and snapshots both
        while not stop.is_set():
            ops: list[Append | PutSnapshot] = []
            for i, st in enumerate(states):
                change = Change(st.version + 1, st.updated_at, freeze_mapping({"n": st.version}))
                states[i] = apply_change(st, change)
                ops += [Append(st.id, change), PutSnapshot(states[i])]
            store.commit(ops)
    writer = threading.Thread(target=write)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: a half-installed batch is visible often
    writer.start()
    seen, found = set(), []
    try:
        while len(seen) < 100:
            with store.reader().read_view() as view:
                versions = {c.version for c in view.contexts()}
                found += disagreements(view)
            if len(versions) != 1:
                found.append(f"one batch half seen: versions {versions}")
            seen |= versions
    finally:
        stop.set()
        writer.join(30)
        sys.setswitchinterval(interval)
    assert found == []


@pytest.mark.parametrize("kind", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_read_view_keeps_the_snapshot_it_started_with_while_the_writer_commits(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    writer = open_store(":memory:" if kind == "memory" else _target(kind, request, tmp_path), readonly=False)
    reader = writer.reader()
    reader.open()
    try:
        st = new_state("c", freeze_mapping({"n": 0}))
        writer.commit([CreateContext(st)])
        with reader.read_view() as view:
            before = (view.contexts(), view.stats(), view.feed_bounds(), view.load("c"))
            change = Change(2, st.updated_at, freeze_mapping({"n": 1}))
            writer.commit([Append("c", change), CreateContext(new_state("d"))])  # the writer never waits
            with view.read_view() as inner:  # nested: the same snapshot
                assert (inner.contexts(), inner.stats(), inner.feed_bounds(), inner.load("c")) == before
            assert view.journal("c") == [] and view.list_ids() == ["c"] and view.count() == 1
            assert [e.context_id for e in view.feed(0)] == ["c"]
        assert [c.version for c in reader.contexts()] == [2, 1]  # out of the view: the newest commit
        assert reader.load("c") == apply_change(st, change)
    finally:
        if reader is not writer:
            reader.close()
        writer.close()
