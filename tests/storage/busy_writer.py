"""A writer process for tests/storage/test_consistent_reads.py: commits to a store as fast as it can.

Usage: ``python busy_writer.py '<json config>'`` with ``target`` (a SQLite path or a ``postgresql://``
URL), ``contexts`` and ``commits``, and optionally ``stop_file``
(it stops early once that file exists). It creates the contexts, prints ``{"ready": true}``, then commits
`commits` batches: journal appends to one or several contexts, a snapshot every 7th version of a
context, a recovery point every 13th (keeping 3), so that every kind of row changes under a reader.
At the end it prints ``{"done": {context id: version}}`` and closes the store.

Tests start it with `started`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hoard.storage import (
    Append,
    Change,
    CreateContext,
    PutRecoveryPoint,
    PutSnapshot,
    RecoveryPoint,
    apply_change,
    freeze_mapping,
    new_state,
    open_store,
)


def main(cfg: dict[str, Any]) -> None:
    store = open_store(cfg["target"], readonly=False, sync="normal")
    rng = random.Random(cfg.get("seed", 1))  # noqa: S311 - test data, not secrets
    try:
        ids = [f"c{i}" for i in range(cfg["contexts"])]
        states = {cid: new_state(cid, freeze_mapping({"n": 0})) for cid in ids}
        next_rp = dict.fromkeys(ids, 1)
        store.commit([CreateContext(st) for st in states.values()])
        print(json.dumps({"ready": True}), flush=True)
        stop_file = cfg.get("stop_file")
        for i in range(cfg["commits"]):
            if stop_file is not None and os.path.exists(stop_file):
                break
            ops: list[Any] = []
            for cid in rng.sample(ids, rng.choice((1, 1, 2, len(ids)))):
                st = states[cid]
                v = st.version + 1
                ch = Change(v, time.time(), freeze_mapping({"n": i, f"k{v % 5}": "x" * rng.randrange(1, 600)}),
                            (f"k{(v + 2) % 5}",) if v % 3 == 0 else ())
                st = states[cid] = apply_change(st, ch)
                ops.append(Append(cid, ch))
                if v % 7 == 0:
                    ops.append(PutSnapshot(st))
                if v % 13 == 0:
                    ops.append(PutRecoveryPoint(RecoveryPoint(next_rp[cid], cid, v, None, time.time(), st), keep=3))
                    next_rp[cid] += 1
            store.commit(ops)
        print(json.dumps({"done": {cid: st.version for cid, st in states.items()}}), flush=True)
    finally:
        store.close()


@contextlib.contextmanager
def started(cfg: dict[str, Any],
            ready_timeout: float = 60) -> Iterator[tuple[subprocess.Popen[str], list[dict[str, Any]]]]:
    """This script running in a child process with `cfg`, ready (its first line printed) on entry;
    yields the child and the lines it printed so far (a thread appends them as they come). On exit
    the child is killed if it still runs, the thread joined and the pipes closed."""
    child = subprocess.Popen([sys.executable, str(Path(__file__)), json.dumps(cfg)],  # noqa: S603 - this script
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
        assert ready.wait(ready_timeout), "the writer did not start"
        yield child, lines
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        reader_thread.join(30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
