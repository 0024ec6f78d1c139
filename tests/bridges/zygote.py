"""A pre-imported parent that forks bridge processes for the kill tests: ``python -m tests.bridges.zygote``.

Starting ``hoard relay`` afresh costs an interpreter and every import (seconds on a loaded machine);
ten SIGKILLs per test would spend most of their time there. This process imports hoard, its CLI and
every broker client once, then on each line ``fork OUT ARG...`` on stdin forks a child that runs
``hoard ARG...`` (the real command line: `hoard.cli.main`) with its stdout appended to the file OUT
(``-``: this process's stderr), and writes the child's pid on stdout; on each line ``kill PID SIG
TIMEOUT`` it signals its child PID, waits up to TIMEOUT seconds for it to end, reaps it and writes
``exit STATUS`` (``alive``: it did not end in time; ``gone``: reaped already). It exits at end of input.

It reaps a child only there, never on its own: until then a child that ended is a zombie that keeps
its pid, so no signal it sends can reach a process or thread the kernel gave a freed pid to. (It let
the kernel reap them, and the tests signalled pids they remembered: at the end of a CI run one of
them was a thread of pytest by then, and the run died of SIGKILL.)
It forks before starting any thread, so each child starts from a single-threaded copy.
"""

from __future__ import annotations

import os
import select
import sys

import nats  # noqa: F401 - imported before forking: the children need not import them
import paho.mqtt.client  # noqa: F401
import pika  # noqa: F401
import redis  # noqa: F401

import hoard.bridges  # noqa: F401 - the bridges' own modules are small; their clients are the cost
from hoard.cli import main


def serve() -> None:
    live: set[int] = set()  # children forked and not reaped yet
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 4 and words[0] == "kill":
            print(end_child(live, int(words[1]), int(words[2]), float(words[3])), flush=True)
            continue
        if len(words) < 2 or words[0] != "fork":
            continue
        out = words[1]
        pid = os.fork()
        if pid == 0:
            # the child's output must not mix with the pids on this process's stdout: to its file, or stderr
            if out == "-":
                os.dup2(2, 1)
            else:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.close(fd)
            sys.stdin.close()
            sys.argv = ["hoard", *words[2:]]
            code = 0
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        live.add(pid)
        print(pid, flush=True)


def end_child(live: set[int], pid: int, sig: int, timeout: float) -> str:
    """Signal child `pid` (unreaped: its pid is still its own), wait for its end (its pidfd becomes
    readable), reap it; what to answer."""
    if pid not in live:
        return "gone"
    os.kill(pid, sig)
    fd = os.pidfd_open(pid)
    try:
        ended, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ended:
        return "alive"
    _pid, status = os.waitpid(pid, 0)
    live.discard(pid)
    return f"exit {status}"

if __name__ == "__main__":
    serve()
