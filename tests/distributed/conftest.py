"""Fixtures of the multi-process tests: the PostgreSQL server (skipped with the reason when none
answers, required under ``CI=true``: tests/pg.py, shared with tests/storage and tests/reliability), a
schema per test (dropped afterwards), its ``postgresql://`` URL, and the node processes a test
starts (all killed and reaped at teardown)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import url_for

NODE = Path(__file__).with_name("node.py")
_OUR_THREADS = ("hoard-listener", "hoard-lease-renewal", "hoard-forward")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """The listener and lease-renewal threads of every system a test opened end with its stop()."""
    before = {t for t in threading.enumerate() if t.name.startswith(_OUR_THREADS)}
    yield
    deadline = time.monotonic() + 5
    for t in threading.enumerate():
        if t.name.startswith(_OUR_THREADS) and t not in before:
            t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in threading.enumerate() if t.name.startswith(_OUR_THREADS) and t.is_alive()
              and t not in before]
    assert leaked == [], f"test left threads running: {leaked}"


@pytest.fixture
def pg_url(pg_dsn: str, pg_schema: str) -> Callable[..., str]:
    """``pg_url(lease_ttl=1.0)``: the ``postgresql://`` URL of this test's schema, as users write it."""
    def url(lease_ttl: float = 10.0) -> str:
        return url_for(pg_dsn, pg_schema, lease_ttl=lease_ttl)
    return url


class Node:
    """A node process (tests/distributed/node.py): its JSON reports arrive in `reports` (read by a
    thread), commands go to its stdin."""

    def __init__(self, config: dict[str, Any]) -> None:
        # a file, not a pipe: a chatty node never blocks on it (closed by kill())
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this method
        self.proc = subprocess.Popen(  # noqa: S603 - our own script, run by this interpreter
            [sys.executable, str(NODE), json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True)
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="node-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.reports.put(json.loads(line))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next report of kind `event` (earlier ones of other kinds are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.reports.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"node {self.pid}: no {event!r} within {timeout} s; "
                                     f"exit code {self.proc.poll()}; stderr: {self.stderr()}") from None
            self.seen.append(report)
            if report.get("e") == event:
                return report

    def drain(self) -> list[dict[str, Any]]:
        """Every report received so far (after the reader saw the end of the output, all of them)."""
        while True:
            try:
                self.seen.append(self.reports.get_nowait())
            except queue.Empty:
                return self.seen

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for the node to exit 0; return all its reports."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {self.pid} still running after {timeout} s") from None
        self._reader.join(5)
        assert code == 0, f"node {self.pid} exited with {code}; stderr: {self.stderr()}"
        return self.drain()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGCONT (a stopped node dies too), SIGKILL, reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self._stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def nodes() -> Iterator[Callable[[dict[str, Any]], Node]]:
    """``nodes(config)`` starts a node process; every one is killed and reaped at teardown."""
    started: list[Node] = []

    def start(config: dict[str, Any]) -> Node:
        node = Node(config)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


NATS_URL = os.environ.get("HOARD_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
def nats_url() -> str:
    """The NATS server forwarding tests use; skipped with the reason when none answers (failed under
    ``CI=true``, where the server is required)."""
    import socket  # noqa: PLC0415 - only this fixture needs it

    host, _, port = NATS_URL.removeprefix("nats://").partition(":")
    try:
        socket.create_connection((host, int(port or 4222)), timeout=3).close()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the NATS server at {NATS_URL}: {exc}")
        pytest.skip(f"no NATS server answers at {NATS_URL} ({exc}); these tests run in CI, where it is required")
    return NATS_URL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Variants marked ``slow`` (more rounds, more partitions) run with ``-m slow`` or HOARD_SLOW=1."""
    markexpr = config.getoption("markexpr", "") or ""
    if "slow" in markexpr or os.environ.get("HOARD_SLOW") == "1":
        return
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason="slow variant: run with -m slow (or HOARD_SLOW=1)")
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
