"""What the change feed costs on PostgreSQL when several processes commit at once: its offsets come
from one counter row (``feed_head``) updated as the last statement of each commit, so commits of
different processes take turns from that statement to COMMIT. Three processes, each with 8 threads on
8 contexts of its own, ``durability="immediate"``, in alternating rounds with the feed on and off (two
schemas). Prints aggregate writes per second of each round and the median ratio (on / off).

    .venv/bin/python docs/measure_feed_processes.py [rounds] [dsn]
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.storage import PostgresStore

PROCESSES, THREADS, PER_THREAD = 3, 8, 60


def writer(dsn: str, schema: str, feed: bool, name: str, ready: Any, go: Any, done: Any) -> None:  # noqa: PLR0917 - a Process target takes its arguments positionally
    store = PostgresStore(dsn, schema=schema, require_lease=True, feed=feed)
    with open_system(store, manager_config=ContextManagerConfig(durability="immediate"),
                     adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        trackers = [system.adapter.get_or_create(f"{name}-{i}") for i in range(THREADS)]
        ready.put(name)
        go.wait(60)

        def work(t: Any) -> None:
            for i in range(PER_THREAD):
                t.set(f"k{i % 20}", i)
        threads = [threading.Thread(target=work, args=(t,)) for t in trackers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        done.put(time.monotonic())


def one_round(ctx: Any, dsn: str, schema: str, feed: bool, n: int) -> float:
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=writer, args=(dsn, schema, feed, f"r{n}p{k}", ready, go, done))
             for k in range(PROCESSES)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.monotonic()
    go.set()
    end = max(done.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    return PROCESSES * THREADS * PER_THREAD / (end - t0)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    dsn = sys.argv[2] if len(sys.argv) > 2 else "host=127.0.0.1 port=5432 user=postgres dbname=test"
    ctx = mp.get_context("spawn")
    schemas = {True: f"feed_on_{uuid.uuid4().hex[:8]}", False: f"feed_off_{uuid.uuid4().hex[:8]}"}
    on: list[float] = []
    off: list[float] = []
    try:
        for r in range(rounds):
            for feed in ((True, False) if r % 2 == 0 else (False, True)):
                rate = one_round(ctx, dsn, schemas[feed], feed, r)
                (on if feed else off).append(rate)
                print(f"round {r}: feed {'on ' if feed else 'off'} {rate:7.0f} writes/s", flush=True)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            for schema in schemas.values():
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print(f"{PROCESSES} processes x {THREADS} threads: feed on / off = {statistics.median(ratios):.2f} "
          f"(median of {rounds}; range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
