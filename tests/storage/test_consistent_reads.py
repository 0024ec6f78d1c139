"""Readers see one consistent state of the store while another process writes to it.

A separate process (busy_writer.py) commits as fast as it can: appends, snapshots (which trim the
journal) and recovery points (which trim the older ones). Meanwhile the test reads through a
read-only store in a loop: `verify()`, strict `load()` of every context, and the read interface
(`contexts`, `journal`, `snapshot_versions`, `stats`). Each of these runs in one read transaction
(REPEATABLE READ on PostgreSQL), so none may report damage that is not there: zero issues, zero
errors. Before that rule, a verify or load could read the acknowledged version before a commit and the
journal after it ("journal entry v393 beyond the acknowledged version v392").
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hoard.storage import HoardError, open_store
from tests.pg import url_for

WRITER = Path(__file__).with_name("busy_writer.py")
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
            except HoardError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        ro.close()
    return issues, errors, seen_versions, rounds


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_reads_during_a_busy_writer_see_no_damage_that_is_not_there(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    target = _target(kind, request, tmp_path)
    cfg = {"target": target, "contexts": CONTEXTS, "commits": 2500 if kind == "sqlite" else 1500}
    child = subprocess.Popen([sys.executable, str(WRITER), json.dumps(cfg)],  # noqa: S603 - our own script
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict[str, Any]] = []
    ready = threading.Event()

    def read_stdout() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(json.loads(line))
            ready.set()
    reader_thread = threading.Thread(target=read_stdout)
    reader_thread.start()
    try:
        assert ready.wait(30), "the writer did not start"
        issues, errors, seen_versions, rounds = _read_while_it_writes(target, child)
        assert child.wait(60) == 0, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        reader_thread.join(30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert issues == [] and errors == [], (issues[:5], errors[:5], f"{rounds} rounds")
    assert len(seen_versions) >= 3, f"the reads did not overlap the writes ({rounds} rounds)"
    done = lines[-1]["done"]
    final = open_store(target)
    try:
        assert final.verify() == []
        assert {cid: final.load(cid).version for cid in done} == done  # type: ignore[union-attr]
    finally:
        final.close()
