"""Issue 12: a retry with the same ``request_id`` after kill -9 is applied at most once, on SQLite and on
PostgreSQL (where the retry runs in another process, which takes the context over once the killed
owner's lease expires). Every request the killed writer acknowledged returns its original version;
every request in flight is applied exactly once however often it is retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hoard import ContextManagerConfig, open_system
from tests.pg import url_for

CHILD = Path(__file__).resolve().parent / "idempotent_child.py"


def _run_and_kill(target: str, acks_before_kill: int) -> tuple[dict[int, int], int]:
    """Start the writer, kill -9 it after `acks_before_kill` acks; return (acked: i -> version, the
    highest i it announced)."""
    proc = subprocess.Popen([sys.executable, str(CHILD), target], stdout=subprocess.PIPE,  # noqa: S603 - our own child script
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    acked: dict[int, int] = {}
    announced = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            if event["e"] == "i":
                announced = event["i"]
            elif event["e"] == "a":
                acked[event["i"]] = event["v"]
                if len(acked) >= acks_before_kill:
                    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next call is already in flight
                    break
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            for line in proc.stdout:  # intents written before the kill landed
                event = json.loads(line)
                if event["e"] == "i":
                    announced = max(announced, event["i"])
                elif event["e"] == "a":
                    acked[event["i"]] = event["v"]
            proc.stdout.close()
    assert len(acked) >= acks_before_kill, "the writer died before it acknowledged enough"
    return acked, announced


def _retry_everything(target: str, acked: dict[int, int], announced: int) -> None:
    with open_system(target, manager_config=ContextManagerConfig(call_timeout=15.0)) as system:
        t = system.adapter.get_or_create("ledger")
        for _round in range(2):  # a retry of a retry is as safe
            for i in range(announced + 1):
                version = t.update({f"k{i}": i}, request_id=f"r{i}")
                if i in acked:
                    assert version == acked[i], f"r{i} was acknowledged at v{acked[i]}, the retry says v{version}"
        # each request applied exactly once: creation (v1) plus one version per request id
        assert t.version == 1 + announced + 1
        assert dict(t) == {f"k{i}": i for i in range(announced + 1)}


def test_retries_after_kill9_apply_each_request_once_on_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    acked, announced = _run_and_kill(path, 40)
    _retry_everything(path, acked, announced)


def test_retries_after_kill9_in_another_process_apply_each_request_once_on_postgres(
        pg_dsn: str, pg_schema: str) -> None:
    url = url_for(pg_dsn, pg_schema, lease_ttl=1.0)
    acked, announced = _run_and_kill(url, 40)
    _retry_everything(url, acked, announced)  # another process (this one), after the lease expires


@pytest.mark.slow
def test_retries_after_repeated_kill9_apply_each_request_once_on_sqlite(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    for acks in (5, 17, 33):  # kill, retry everything, kill again: each writer starts over at r0 (duplicates)
        acked, announced = _run_and_kill(path, acks)
        _retry_everything(path, acked, announced)
