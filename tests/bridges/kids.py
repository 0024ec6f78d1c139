"""Driving the zygote (tests/bridges/zygote.py) from a test: fork bridge processes, kill them, wait."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

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

    def kill(self, pid: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Have the zygote send `sig` to its child `pid` and reap it once it ended (at most `timeout`
        s; then AssertionError). A child reaped already is left alone: its pid may be another's now."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"kill {pid} {int(sig)} {timeout}\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        assert answer and answer != "alive", f"process {pid} did not end within {timeout} s of signal {sig}"

    def end_children(self, since: int = 0) -> None:
        """SIGKILL every child forked after the first `since` that was not reaped yet, and reap it."""
        for pid in self.pids[since:]:
            self.kill(pid)


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
