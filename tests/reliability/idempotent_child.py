"""The process the idempotency kill -9 tests kill: it applies ``update({"k<i>": i}, request_id="r<i>")``
for i = 0, 1, 2 ... to one context and reports, one JSON line per event with a single ``os.write``:
``{"e": "i", "i": i}`` before each call (intent) and ``{"e": "a", "i": i, "v": version}`` after it
returned (ack). Run as ``python idempotent_child.py <store path or postgresql:// URL>``; it writes
until it is killed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, without installing

from hoard import ContextManagerConfig, open_system


def emit(event: dict[str, object]) -> None:
    os.write(1, json.dumps(event).encode() + b"\n")


def main() -> None:
    system = open_system(sys.argv[1], manager_config=ContextManagerConfig(call_timeout=10.0))
    t = system.adapter.get_or_create("ledger")
    i = 0
    emit({"e": "ready"})
    while True:
        emit({"e": "i", "i": i})
        version = t.update({f"k{i}": i}, request_id=f"r{i}")
        emit({"e": "a", "i": i, "v": version})
        i += 1


if __name__ == "__main__":
    main()
