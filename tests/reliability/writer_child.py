"""The process the kill -9 tests kill: several threads write to many contexts of one store and report
every call to the parent through stdout, one JSON line per event, each written with a single
``os.write`` (atomic on a pipe below PIPE_BUF bytes, so lines of different threads never mix).

Events (``e``):
  ``ready``   the system is open and every context active (``t``: monotonic time).
  ``i``       intent: thread ``th`` is about to call ``op`` on context ``c`` (``sets``: key -> value,
              ``dels``: keys); written *before* the call, so the parent knows every call in flight.
  ``a``       ack: that call returned; ``v`` is the version it made (``rp``/``rv`` for a recovery
              point); ``t`` is the monotonic time it returned.
  ``x``       the call raised (``err``); its outcome is unknown, the thread stops.
  ``c``       (``--report-commits``) a store commit finished: ``t0``/``t1`` monotonic start/end,
              ``tips``: context -> newest version it made durable.
  ``stop``    the child began an orderly ``system.stop()`` (so a kill may land in the shutdown).

Run as ``python writer_child.py '<json config>'``; it writes until it is killed (or, with
``stop_after``, stops itself and exits 0). The store is the SQLite file ``path``, or, with ``pg``
(``dsn``, ``schema``, ``owner``, ``lease_ttl``), a `PostgresStore` made as ``open_system`` makes one for
a ``postgresql://`` URL (``require_lease=True``), with a given ``owner_id``: a child started with the
owner of the killed one is a restart of the same node and takes its leases back at once; one with a
new owner waits for the killed one's leases to expire.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, without installing

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.storage import Append, Op, PostgresStore, SQLiteStore


def emit(event: dict[str, Any]) -> None:
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    assert len(line) < 4096, "a report line must stay atomic on the pipe"
    os.write(1, line)


class _Reporting:
    """Mixed into a real store: reports each finished commit (its duration and the versions it made
    durable)."""

    def commit(self, ops: Sequence[Op]) -> None:
        t0 = time.monotonic()
        super().commit(ops)  # type: ignore[misc]
        tips: dict[str, int] = {}
        for op in ops:
            if isinstance(op, Append):
                tips[op.context_id] = max(tips.get(op.context_id, 0), op.change.version)
        emit({"e": "c", "t0": t0, "t1": time.monotonic(), "tips": tips})


class ReportingStore(_Reporting, SQLiteStore):
    pass


class ReportingPostgresStore(_Reporting, PostgresStore):
    pass


def writer(system: Any, th: int, contexts: list[str], keys: int, seed: int, big_every: int,  # noqa: PLR0917 - positional, like the child process's command line
           rp_share: float) -> None:
    rng = random.Random(seed * 1000 + th)  # noqa: S311 - seeded, reproducible test data, not a secret
    trackers = {c: system.manager.tracker(c) for c in contexts}
    seq = 0
    while True:
        seq += 1
        c = rng.choice(contexts)
        t = trackers[c]
        own = [f"k{th}_{j}" for j in range(keys)]
        value: Any = f"{th}.{seed}.{seq}"
        if big_every and seq % big_every == 0:
            value = {"v": value, "pad": "x" * 400}  # large enough to be zstd-compressed
        roll = rng.random()
        try:
            if roll < 0.45:
                k = rng.choice(own)
                emit({"e": "i", "th": th, "c": c, "op": "set", "sets": {k: value}, "dels": []})
                v = t.set(k, value)
            elif roll < 0.65:
                k1, k2 = rng.sample(own, 2)
                sets = {k1: value, k2: f"{value}/2"}
                emit({"e": "i", "th": th, "c": c, "op": "update", "sets": sets, "dels": []})
                v = t.update(sets)
            elif roll < 0.78:
                k = rng.choice(own)
                emit({"e": "i", "th": th, "c": c, "op": "delete", "sets": {}, "dels": [k]})
                v = t.delete(k)
            elif roll < 1 - rp_share:
                k = rng.choice(own)
                emit({"e": "i", "th": th, "c": c, "op": "transact", "sets": {k: value}, "dels": []})

                def fn(draft: Any, k: str = k, value: Any = value) -> int:
                    draft[k] = value
                    return int(draft.version) + 1
                v = t.transact(fn)
            else:
                emit({"e": "i", "th": th, "c": c, "op": "rp", "sets": {}, "dels": []})
                rp = t.create_recovery_point(label=f"{th}.{seq}")
                emit({"e": "a", "th": th, "c": c, "rp": rp.id, "rv": rp.version, "t": time.monotonic()})
                continue
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
            emit({"e": "x", "th": th, "c": c, "err": f"{type(exc).__name__}: {exc}"[:500]})
            return
        emit({"e": "a", "th": th, "c": c, "v": v, "t": time.monotonic()})


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mcfg = ContextManagerConfig(durability=cfg["durability"], flush_interval=cfg.get("flush_interval", 0.05),
                                snapshot_every=cfg.get("snapshot_every", 1000), call_timeout=30.0,
                                max_recovery_points=cfg.get("keep", 10))
    # on PostgreSQL the default context would be one more lease a new owner waits for: not part of the test
    acfg = ContextAdapterConfig(max_active_contexts=cfg.get("max_active", 1024), auto_activate_default="pg" not in cfg)
    store: Any = cfg.get("path")
    pg = cfg.get("pg")
    if pg is not None:
        cls = ReportingPostgresStore if cfg.get("report_commits") else PostgresStore
        store = cls(pg["dsn"], schema=pg["schema"], owner_id=pg["owner"], lease_ttl=pg["lease_ttl"],
                    require_lease=True, compression_level=mcfg.compression_level, max_state_bytes=mcfg.max_state_bytes)
    elif cfg.get("report_commits"):
        store = ReportingStore(cfg["path"], sync=mcfg.sync, compression_level=mcfg.compression_level,
                               max_state_bytes=mcfg.max_state_bytes)
    system = open_system(store, manager_config=mcfg, adapter_config=acfg)
    contexts = [f"ctx/{i}" for i in range(cfg["contexts"])]  # ids with a slash: ids never become paths
    for c in contexts:
        if not system.manager.exists(c):
            system.manager.create(c)
    emit({"e": "ready", "t": time.monotonic()})
    threads = [threading.Thread(target=writer, args=(system, th, contexts, cfg.get("keys", 3), cfg["seed"],
                                                     cfg.get("big_every", 0), cfg.get("rp_share", 0.03)),
                                daemon=True)
               for th in range(cfg["threads"])]
    for t in threads:
        t.start()
    stop_after = cfg.get("stop_after")
    if stop_after is not None:
        threading.Event().wait(stop_after)
        emit({"e": "stop"})
        system.stop()
        os._exit(0)  # the writer threads are daemons blocked on a stopped system
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
