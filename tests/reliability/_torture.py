"""The parent side of the kill -9 tests: run `writer_child.py`, SIGKILL it, and check the store
against everything the child reported (see that module for the line protocol).

The check is exact. Each thread of the child makes one call at a time, writes only its own keys
(``k<thread>_<n>``) and reports an intent before each call and an ack after it, so for every context
the parent knows each acknowledged change (its version and what it set or deleted) and the at most
one call per thread still in flight when the kill landed (which may or may not have committed).
After the kill the store must hold, per context:

* every acknowledged version, and its journal entry (while the journal still covers it) must be
  exactly the acknowledged change;
* no version unaccounted for beyond the calls in flight (versions are gapless: every version
  between the previous round's and the new one belongs to an acked or an in-flight call);
* for every key, the value of the newest acknowledged change to it, or that of its thread's call
  in flight, or (no change this round) the value of the previous round; no other key;
* every acknowledged recovery point (unless trimmed by newer ones), at its version;
* and `verify()` finds nothing.

The store is a SQLite file (`SQLiteAccess`) or a PostgreSQL schema (`PostgresAccess`). On PostgreSQL
the parent first waits for the killed child's server sessions to end: a session keeps running what
it had received (a COMMIT, say) until the server notices its client is gone, and the check must see
the store as it will stay.

In ``deferred`` mode acknowledged changes may be lost; the check then also collects, for each lost
change, how long before the kill it was acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from hoard.storage import PostgresStore, SQLiteStore, Store, thaw
from tests.pg import wait_for_sessions_to_end

CHILD = Path(__file__).resolve().parent / "writer_child.py"
ABSENT = object()


@attrs.define
class Run:
    """One child process run: its report lines, when it was killed and how it ended."""

    lines: list[dict[str, Any]]
    kill_time: float | None
    returncode: int | None
    stderr: str
    ready_time: float | None


def run_child(cfg: dict[str, Any], workdir: Path, *, kill_after: float, from_ready: bool,
              ready_timeout: float = 60.0) -> Run:
    """Start the child, SIGKILL it `kill_after` s after it is ready (or after it was started), reap it.

    A random delay before the kill is the point of the test; everything else waits on events.
    """
    err_path = workdir / f"child-{cfg['seed']}.err"
    lines: list[dict[str, Any]] = []
    ready = threading.Event()
    ended = threading.Event()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(CHILD), json.dumps(cfg)], stdout=subprocess.PIPE,  # noqa: S603 - runs our own interpreter/tools with fixed arguments
                                stderr=err, cwd=workdir)
    started = time.monotonic()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut by the kill (cannot happen with atomic writes, but never trust it)
            event = json.loads(raw)
            lines.append(event)
            if event["e"] == "ready":
                ready.set()
        ended.set()
        ready.set()

    reader = threading.Thread(target=read, name="torture-reader", daemon=True)
    reader.start()
    kill_time = None
    try:
        if from_ready:
            if not ready.wait(ready_timeout):
                raise AssertionError(f"child not ready within {ready_timeout} s")
            deadline = time.monotonic() + kill_after
        else:
            deadline = started + kill_after
        ended.wait(max(0.0, deadline - time.monotonic()))  # the random kill delay (or the child's end)
        if proc.poll() is None:
            kill_time = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    ready_time = next((e["t"] for e in lines if e["e"] == "ready"), None)
    return Run(lines, kill_time, proc.returncode, err_path.read_text(errors="replace"), ready_time)


class SQLiteAccess:
    """How the checker reads a SQLite store (strict: any damage fails the round)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> SQLiteStore:
        store = SQLiteStore(self.path)
        store.open()
        return store

    def settle(self, cfg: dict[str, Any]) -> None:
        """Nothing outlives a killed SQLite writer."""


class PostgresAccess:
    """How the checker reads a PostgreSQL store (strict; no lease needed to read)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def open(self) -> PostgresStore:
        store = PostgresStore(self.dsn, schema=self.schema, notify=False)
        store.open()
        return store

    def settle(self, cfg: dict[str, Any]) -> None:
        """Wait until the server has ended every session of the killed child (see the module docstring)."""
        wait_for_sessions_to_end(self.dsn, f"hoard {cfg['pg']['owner']}"[:63])


@attrs.define
class Op:
    th: int
    c: str
    op: str
    sets: dict[str, Any]
    dels: list[str]
    version: int | None = None
    t_ack: float | None = None
    rp: int | None = None


@attrs.define
class RoundResult:
    acked: int = 0
    inflight: int = 0
    committed_inflight: int = 0
    lost_ages: list[float] = attrs.Factory(list)
    commit_durations: list[float] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)
    max_version: int = 0


class Model:
    """What the store must hold, round after round (see the module docstring)."""

    def __init__(self, contexts: list[str], keep: int) -> None:
        self.contexts = contexts
        self.keep = keep
        self.version: dict[str, int] = dict.fromkeys(contexts, 0)  # 0: not created yet
        self.data: dict[str, dict[str, Any]] = {c: {} for c in contexts}
        self.rps: dict[str, dict[int, int]] = {c: {} for c in contexts}
        self.total = RoundResult()
        self.takeovers = 0  # PostgreSQL: rounds in which a new node took the contexts over

    @staticmethod
    def parse(run: Run) -> tuple[list[Op], dict[int, Op], RoundResult]:
        last_intent: dict[int, Op] = {}
        acked: list[Op] = []
        result = RoundResult()
        for e in run.lines:
            kind = e["e"]
            if kind == "i":
                last_intent[e["th"]] = Op(e["th"], e["c"], e["op"], e["sets"], e["dels"])
            elif kind == "a":
                op = last_intent.pop(e["th"])
                assert op.c == e["c"]
                op.t_ack = e["t"]
                if op.op == "rp":
                    op.rp, op.version = e["rp"], e["rv"]
                else:
                    op.version = e["v"]
                acked.append(op)
            elif kind == "x":
                result.errors.append(e["err"])
            elif kind == "c":
                result.commit_durations.append(e["t1"] - e["t0"])
        return acked, last_intent, result

    def check(self, where: Path | SQLiteAccess | PostgresAccess, run: Run, *, immediate: bool) -> RoundResult:
        acked, inflight, result = self.parse(run)
        result.acked = len(acked)
        result.inflight = len(inflight)
        access = SQLiteAccess(where) if isinstance(where, Path) else where
        store = access.open()  # strict: any damage fails the round
        try:
            issues = store.verify()
            assert issues == [], f"verify() after the kill: {issues}"
            for c in self.contexts:
                self._check_context(store, access, c, acked, inflight, run, result, immediate=immediate)
        finally:
            store.close()
        self.total.acked += result.acked
        self.total.inflight += result.inflight
        self.total.committed_inflight += result.committed_inflight
        self.total.lost_ages += result.lost_ages
        self.total.commit_durations += result.commit_durations
        self.total.errors += result.errors
        return result

    def _check_context(self, store: Store, access: SQLiteAccess | PostgresAccess, c: str, acked: list[Op],  # noqa: PLR0915, PLR0917 - one context's whole check, in one place, over what the run produced
                       inflight: dict[int, Op], run: Run, result: RoundResult, *, immediate: bool) -> None:
        mine = [o for o in acked if o.c == c and o.op != "rp"]
        rps = [o for o in acked if o.c == c and o.op == "rp"]
        state = store.load(c)
        if state is None:
            assert not mine and not rps and self.version[c] == 0, f"{c}: acknowledged changes but no context"
            return
        prev_v = self.version[c] or 1  # created (v1, empty) by the child before it was ready
        prev = self.data[c]
        versions = [o.version for o in mine]
        assert len(set(versions)) == len(versions), f"{c}: one version acknowledged twice: {sorted(versions)}"
        assert all(v is not None and v > prev_v for v in versions), f"{c}: version went backwards {versions}"
        present = [o for o in mine if o.version is not None and o.version <= state.version]
        lost = [o for o in mine if o.version is not None and o.version > state.version]
        if immediate:
            assert not lost, (f"{c}: acknowledged versions {[o.version for o in lost]} lost "
                              f"(store at v{state.version})")
        for o in lost:
            assert run.kill_time is not None and o.t_ack is not None
            result.lost_ages.append(run.kill_time - o.t_ack)
        flying = [o for o in inflight.values() if o.c == c and o.op != "rp"]
        unaccounted = state.version - prev_v - len(present)
        assert 0 <= unaccounted <= len(flying), (
            f"{c}: store at v{state.version}, previous round v{prev_v}, {len(present)} acknowledged and "
            f"{len(flying)} in flight: versions do not add up")
        result.committed_inflight += unaccounted
        result.max_version = max(result.max_version, state.version)
        # the journal entry of every acknowledged version it still covers is exactly that change
        by_version = {o.version: o for o in present}
        for entry in store.journal(c):
            o = by_version.get(entry.version)
            if o is None:
                continue
            change, version = entry.change, entry.version
            assert thaw(dict(change.data_set)) == o.sets, f"{c} v{version}: journal {change} != acked {o}"
            assert set(change.data_del) <= set(o.dels), f"{c} v{version}: journal {change} != acked {o}"
        # every key: newest acknowledged value, or its thread's call in flight, or last round's value
        last_acked_version: dict[int, int] = {}
        for o in mine:
            assert o.version is not None
            last_acked_version[o.th] = max(last_acked_version.get(o.th, 0), o.version)
        actual = thaw(dict(state.data))
        keys = set(actual) | set(prev) | {k for o in mine for k in (*o.sets, *o.dels)} | \
            {k for o in flying for k in (*o.sets, *o.dels)}
        for k in keys:
            touching = [o for o in present if k in o.sets or k in o.dels]
            if touching:
                newest = max(touching, key=lambda o: o.version or 0)
                expected = newest.sets.get(k, ABSENT)
            else:
                expected = prev.get(k, ABSENT)
            candidates = [expected]
            th = int(k[1:].split("_")[0])
            o = inflight.get(th)
            if (o is not None and o.c == c and unaccounted > 0 and (k in o.sets or k in o.dels)
                    and last_acked_version.get(th, 0) <= state.version):
                candidates.append(o.sets.get(k, ABSENT))
            got = actual.get(k, ABSENT)
            assert any(got is cand if cand is ABSENT else got == cand for cand in candidates), (
                f"{c}[{k}] = {'<absent>' if got is ABSENT else got!r}, expected one of "
                f"{['<absent>' if x is ABSENT else x for x in candidates]}")
        # recovery points: every acknowledged one is kept (unless newer ones trimmed it), at its version
        stored_rps = {rp.id: rp.version for rp in store.recovery_points(c)}
        top = max(stored_rps, default=0)
        for o in rps:
            assert o.rp is not None
            assert o.rp <= top, f"{c}: acknowledged recovery point {o.rp} missing (newest stored {top})"
            if o.rp > top - self.keep:
                assert stored_rps.get(o.rp) == o.version, f"{c}: recovery point {o.rp} != acked v{o.version}"
        self.version[c] = state.version
        self.data[c] = actual
