"""Driving the zygote (tests/bridges/zygote.py) from a test: fork bridge processes, kill them, wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Zygote:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc
        self.pids: list[int] = []

    def fork(self, args: Sequence[str], out: Path | None = None) -> int:
        """Start ``hoard ARGS...`` in a forked child (its stdout appended to `out`); returns its pid."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        words = [str(out) if out is not None else "-", *args]
        assert all(w and not any(c.isspace() for c in w) for w in words), words
        self._proc.stdin.write("fork " + " ".join(words) + "\n")
        self._proc.stdin.flush()
        pid = int(self._proc.stdout.readline())
        self.pids.append(pid)
        return pid

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self, pid: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send `sig` and wait until the process is gone (the zygote reaps it)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_for(lambda: not self.alive(pid), timeout, f"process {pid} to end after signal {sig}")


    def end_children(self, since: int = 0) -> None:
        """SIGKILL every child forked after the first `since` (those still alive) and wait until each is gone."""
        for pid in self.pids[since:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids[since:]:
            wait_for(lambda p=pid: not self.alive(p), 30, f"process {pid} to end")


@contextlib.contextmanager
def zygote() -> Iterator[Zygote]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.bridges.zygote"], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    z = Zygote(proc)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield z
    finally:
        z.end_children()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()
