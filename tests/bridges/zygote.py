"""A pre-imported parent that forks bridge processes for the kill tests: ``python -m tests.bridges.zygote``.

Starting ``hoard relay`` afresh costs an interpreter and every import (seconds on a loaded machine);
ten SIGKILLs per test would spend most of their time there. This process imports hoard, its CLI and
every broker client once, then on each line ``fork OUT ARG...`` on stdin forks a child that runs
``hoard ARG...`` (the real command line: `hoard.cli.main`) with its stdout appended to the file OUT
(``-``: this process's stderr), and writes the child's pid on stdout. The
test kills the children itself; this process reaps them (SIGCHLD ignored) and exits at end of input.
It forks before starting any thread, so each child starts from a single-threaded copy.
"""

from __future__ import annotations

import os
import signal
import sys

import nats  # noqa: F401 - imported before forking: the children need not import them
import paho.mqtt.client  # noqa: F401
import pika  # noqa: F401
import redis  # noqa: F401

import hoard.bridges  # noqa: F401 - the bridges' own modules are small; their clients are the cost
from hoard.cli import main


def serve() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) < 2 or words[0] != "fork":
            continue
        out = words[1]
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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
        print(pid, flush=True)


if __name__ == "__main__":
    serve()
