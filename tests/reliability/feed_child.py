"""The processes of the change-feed process tests, one JSON line per event (a single ``os.write``).

``python feed_child.py consume <store> <run>``: a consumer named "billing" reads the feed from its
committed position to the end: ``{"e": "start", "pos": p}``, then ``{"e": "d", "o": offset, "c":
context, "v": version}`` per entry delivered and ``{"e": "c", "o": offset}`` after each commit (every
7 entries); every 10 entries it also writes a change of context ``live-<run>`` (so the feed grows
while it is read); ``{"e": "end"}`` when caught up. The test kills it with SIGKILL at random points.

``python feed_child.py write <store> <name> <n>``: n updates spread over 3 contexts ``<name>-<j>``
(``by=<name>``), ``{"e": "a", "c": context, "v": version}`` after each returns."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, without installing

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system


def emit(event: dict[str, object]) -> None:
    os.write(1, json.dumps(event).encode() + b"\n")


def consume(target: str, run: str) -> None:
    with open_system(target, manager_config=ContextManagerConfig(call_timeout=15.0)) as system:
        billing = system.consumer("billing")
        emit({"e": "start", "pos": billing.position})
        live = system.adapter.get_or_create(f"live-{run}")
        for n, entry in enumerate(billing.changes(timeout=0), 1):
            emit({"e": "d", "o": entry.offset, "c": entry.context_id, "v": entry.version})
            if n % 7 == 0:
                billing.commit(entry.offset)
                emit({"e": "c", "o": entry.offset})
            if n % 10 == 0:
                live.update({"n": n})
        emit({"e": "end"})


def write(target: str, name: str, n: int) -> None:
    with open_system(target, manager_config=ContextManagerConfig(call_timeout=15.0),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        trackers = [system.adapter.get_or_create(f"{name}-{j}") for j in range(3)]
        emit({"e": "ready"})
        for i in range(n):
            t = trackers[i % 3]
            emit({"e": "a", "c": t.id, "v": t.update({"i": i}, by=name)})


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3])
    else:
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
