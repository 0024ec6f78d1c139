"""The change feed across processes: a consumer killed with SIGKILL at random points resumes from its
last committed offset without losing an entry (SQLite and PostgreSQL), and on PostgreSQL three
writer processes committing at once produce a feed with every change exactly once, in commit order,
with no gap, also as seen by a reader following it live."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from hoard import open_system
from hoard.storage import PostgresStore
from tests.pg import url_for

CHILD = Path(__file__).resolve().parent / "feed_child.py"


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE,  # noqa: S603 - our own child script
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _consume(target: str, run: int, kill_after: int | None) -> list[dict[str, Any]]:
    """One consumer run; SIGKILL it after `kill_after` deliveries (None: let it finish). Returns
    every event it wrote before it ended."""
    proc = _spawn("consume", target, str(run))
    events: list[dict[str, Any]] = []
    delivered = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            events.append(event)
            if event["e"] == "d":
                delivered += 1
                if kill_after is not None and delivered >= kill_after:
                    os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-commit, mid-write, mid-read
                    break
    finally:
        if proc.poll() is None and kill_after is not None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        if proc.stdout is not None:
            events += [json.loads(line) for line in proc.stdout]  # what it wrote before the kill landed
            proc.stdout.close()
    if kill_after is None:
        assert proc.returncode == 0 and events[-1]["e"] == "end", f"the last consumer run failed: {events[-3:]}"
    return events


def _kill_and_resume(target: str, kills: int, seed: int) -> None:
    with open_system(target) as system:  # something to consume before the first run
        # a consumer that never commits: retention (which prunes what every consumer passed, in each
        # writer's first commit) keeps the whole feed for the check at the end
        system.consumer("audit")
        for j in range(4):
            t = system.adapter.get_or_create(f"acct-{j}")
            for i in range(60):
                t.update({"i": i}, by="setup")
    rnd = random.Random(seed)  # noqa: S311 - where to kill, reproducibly; nothing secret
    runs = [_consume(target, run, rnd.randint(1, 80)) for run in range(kills)]
    runs.append(_consume(target, kills, None))

    delivered: set[int] = set()
    committed = 0
    for n, events in enumerate(runs):
        start = next(e["pos"] for e in events if e["e"] == "start")
        # it goes on from its last committed offset: at least the last commit it reported (the
        # commit of a killed run may have landed without its report), never past what was delivered
        assert committed <= start <= max(delivered, default=0), f"run {n} started at {start}"
        offsets = [e["o"] for e in events if e["e"] == "d"]
        assert offsets == list(range(start + 1, start + 1 + len(offsets))), f"run {n} skipped an entry"
        per: dict[str, list[int]] = defaultdict(list)
        for e in events:
            if e["e"] == "d":
                per[e["c"]].append(e["v"])
        for cid, versions in per.items():
            assert versions == sorted(versions), f"run {n}: {cid} out of version order"
        delivered.update(offsets)
        committed = max([committed] + [e["o"] for e in events if e["e"] == "c"])
    with open_system(target) as system:
        entries = list(system.changes(timeout=0))
        assert system.consumer("billing").position <= entries[-1].offset
    assert delivered == {e.offset for e in entries}, "an entry was never delivered"
    assert {(e.context_id, e.version) for e in entries} >= {(f"acct-{j}", v) for j in range(4) for v in range(1, 62)}


def test_a_consumer_killed_20_times_resumes_without_losing_an_entry_on_sqlite(tmp_path: Path) -> None:
    _kill_and_resume(str(tmp_path / "feed.db"), 20, seed=13)


@pytest.mark.slow
def test_a_consumer_killed_100_times_resumes_without_losing_an_entry_on_sqlite(tmp_path: Path) -> None:
    _kill_and_resume(str(tmp_path / "feed.db"), 100, seed=1313)


@pytest.mark.postgres
def test_a_consumer_killed_20_times_resumes_without_losing_an_entry_on_postgres(pg_dsn: str, pg_schema: str) -> None:
    _kill_and_resume(url_for(pg_dsn, pg_schema, lease_ttl=1.0), 20, seed=31)


# -- three writer processes on PostgreSQL ------------------------------------------------------------------
@pytest.mark.postgres
def test_three_writer_processes_make_one_feed_without_a_gap_on_postgres(pg_dsn: str, pg_schema: str) -> None:
    url = url_for(pg_dsn, pg_schema)
    with open_system(url):  # the schema exists before the writers race to create it
        pass
    per_writer = 150
    procs = [_spawn("write", url, f"p{k}", str(per_writer)) for k in range(3)]
    acks: dict[str, set[int]] = defaultdict(set)
    progress = threading.Event()

    def collect(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event["e"] == "a":
                acks[event["c"]].add(event["v"])
                progress.set()
    collectors = [threading.Thread(target=collect, args=(p,)) for p in procs]
    for c in collectors:
        c.start()
    # follow the feed live while they commit: every batch must continue exactly where the last one
    # ended (an entry with a lower offset committing after the reader passed would show as a jump)
    reader = PostgresStore(pg_dsn, schema=pg_schema, readonly=True)
    reader.open()
    seen = []
    try:
        after = 0
        while any(p.poll() is None for p in procs) or reader.feed(after, 1):
            progress.wait(0.05)  # read again when a writer acknowledged something (or soon after)
            progress.clear()
            batch = reader.feed(after, 50)
            if batch:
                assert [e.offset for e in batch] == list(range(after + 1, after + 1 + len(batch))), \
                    f"a gap after offset {after}: {[e.offset for e in batch][:5]}"
                seen += batch
                after = batch[-1].offset
        final = reader.feed(0, 100_000)
    finally:
        reader.close()
        for p in procs:
            p.wait(60)
        for c in collectors:
            c.join(10)
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
    assert all(p.returncode == 0 for p in procs)
    assert seen == final  # the live reader saw exactly the final feed, in order
    assert [e.offset for e in final] == list(range(1, len(final) + 1))
    assert len({(e.context_id, e.version) for e in final}) == len(final)
    for cid, versions in acks.items():
        mine = [e.version for e in final if e.context_id == cid]
        assert mine == list(range(1, len(mine) + 1))  # per context: creation, then each version once, in order
        assert versions <= set(mine)
    assert sum(len(v) for v in acks.values()) == 3 * per_writer
    by = {e.by for e in final if not e.created}
    assert by == {"p0", "p1", "p2"}
