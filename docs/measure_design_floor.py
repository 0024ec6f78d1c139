"""What the design itself costs a lone durable write: the `durable_set` row's floor (one SQLite FULL
commit in the caller's thread) against the same commit reached through bare pykka actors, with none
of hoard's code, and against hoard's durable set. In alternating rounds in one process (the machine
is shared: compare the ratios, never rates across runs). Prints each variant's median ratio to the
floor (higher is better; 1.0 is the floor's rate).

- ``one hop``: the caller tells one bare actor that commits and answers the caller's future (two
  thread wake-ups: what a design where a context's own actor committed would pay).
- ``two hops``: the caller tells a bare "context" actor, which tells a bare "persistence" actor that
  commits and answers the caller's future (three wake-ups: hoard's design, with nothing else in it).
- ``two hops, bare threads``: the same with two plain threads and `queue.SimpleQueue`s, the cheapest
  hand-offs Python has (no pykka): what three wake-ups cost at the least.
- ``hoard's store, no thread``: `SQLiteStore.commit` of the change a set makes, in the caller's
  thread (no actor, no wake-up): what hoard's own commit costs (the contexts row's version check, the
  journal and feed rows, the encoding and the file-identity checks) against the floor's one INSERT.
  A design with no hop at all could not do better than this.
- ``hoard``: `ContextTracker.set` with ``durability="immediate"``, SQLite ``sync="full"``.
- ``diskcache Cache.set``: the `peer_diskcache` row's peer at the same sync setting (WAL,
  synchronous=FULL), when diskcache is installed: hoard's set meets that row's target (>= 1) only
  if it is at least this.

With ``--postgres DSN``, the same for PostgreSQL (`pg_durable_set`: the floor is one autocommitted
INSERT by psycopg; ``hoard's store, no thread`` is `PostgresStore.commit`, which takes the lease
the bench's store does) in a throwaway schema, dropped afterwards.

    .venv/bin/python docs/measure_design_floor.py [rounds] [--postgres DSN]
"""

from __future__ import annotations

import itertools
import queue
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system
from hoard.storage import Append, Change, ContextState, CreateContext, PostgresStore, SQLiteStore

WRITES = 300
BLOB = b"x" * 60  # about a journal entry of one small key


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE journal (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
    return db


class Committer(pykka.ThreadingActor):
    """Commits each blob it is told, then answers the future that came with it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__()
        self.db = db

    def on_receive(self, message: Any) -> None:
        blob, future = message
        self.db.execute("INSERT INTO journal (blob) VALUES (?)", (blob,))
        future.set(None)


class Relay(pykka.ThreadingActor):
    """Passes each message on to the committer (a context actor with no work of its own)."""

    def __init__(self, committer: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.committer = committer

    def on_receive(self, message: Any) -> None:
        self.committer.tell(message)


def bare_threads(db: sqlite3.Connection) -> tuple[queue.SimpleQueue[Any], list[threading.Thread]]:
    """Two threads: the first passes each message to the second, which commits and answers it."""
    first: queue.SimpleQueue[Any] = queue.SimpleQueue()
    second: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def relay() -> None:
        while (message := first.get()) is not None:
            second.put(message)
        second.put(None)

    def commit() -> None:
        while (message := second.get()) is not None:
            db.execute("INSERT INTO journal (blob) VALUES (?)", (message[0],))
            message[1].put(None)

    threads = [threading.Thread(target=relay), threading.Thread(target=commit)]
    for thread in threads:
        thread.start()
    return first, threads


def through_threads(first: queue.SimpleQueue[Any]) -> float:
    answer: queue.SimpleQueue[None] = queue.SimpleQueue()

    def write(_: int) -> None:
        first.put((BLOB, answer))
        answer.get(timeout=30)
    return writes(write)


def through(actor: pykka.ActorRef[Any]) -> float:
    def write(_: int) -> None:
        future: pykka.ThreadingFuture[None] = pykka.ThreadingFuture()
        actor.tell((BLOB, future))
        future.get(timeout=30)
    return writes(write)


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        floor_db, one_db, two_db, bare_db = (connect(Path(tmp) / f"{name}.db")
                                             for name in ("floor", "one", "two", "bare"))
        one = Committer.start(one_db)
        two = Relay.start(Committer.start(two_db))
        first, threads = bare_threads(bare_db)
        store = SQLiteStore(Path(tmp) / "store.db", sync="full")
        store.open()
        now = time.time()
        store.commit([CreateContext(ContextState(id="bench", version=1, created_at=now, updated_at=now))])
        versions = itertools.count(2)
        closers: list[Any] = []
        system = open_system(Path(tmp) / "hoard.db",
                             manager_config=ContextManagerConfig(durability="immediate", sync="full"),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False))
        try:
            tracker = system.adapter.activate("bench")

            def floor() -> float:
                return writes(lambda _: floor_db.execute("INSERT INTO journal (blob) VALUES (?)", (BLOB,)))

            def store_alone() -> float:
                return writes(lambda i: store.commit([Append("bench", Change(next(versions), time.time(),
                                                                             {f"k{i % 50}": i}))]))

            def hoard() -> float:
                return writes(lambda i: tracker.set(f"k{i % 50}", i))

            variants = {"one hop": lambda: through(one), "two hops": lambda: through(two),
                        "two hops, bare threads": lambda: through_threads(first),
                        "hoard's store, no thread": store_alone, "hoard": hoard}
            cache = open_diskcache(Path(tmp) / "diskcache")
            if cache is not None:
                closers.append(cache.close)
                variants["diskcache Cache.set"] = lambda: writes(lambda i: cache.set(f"k{i % 50}", i))
            ratios = alternate(rounds, floor, variants)
        finally:
            for close in closers:
                close()
            system.stop()
            store.close()
            pykka.ActorRegistry.stop_all()
            first.put(None)
            for thread in threads:
                thread.join(30)
            for db in (floor_db, one_db, two_db, bare_db):
                db.close()
    report(ratios, rounds)


def writes(write: Callable[[int], object]) -> float:
    """The rate of `WRITES` calls of `write(i)`."""
    start = time.perf_counter()
    for i in range(WRITES):
        write(i)
    return WRITES / (time.perf_counter() - start)


def alternate(rounds: int, floor: Callable[[], float], variants: dict[str, Callable[[], float]]
              ) -> dict[str, list[float]]:
    """Each variant's rate over the mean of the floors measured just before and after it, a round
    after another (the disk drifts)."""
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            before = floor()
            rate = variant()
            ratios[name].append(rate / statistics.mean((before, floor())))
    return ratios


def report(ratios: dict[str, list[float]], rounds: int) -> None:
    for name, values in ratios.items():
        print(f"{name:<26} {statistics.median(values):.2f} of the floor's rate "
              f"(median of {rounds} rounds of {WRITES} writes; range {min(values):.2f}-{max(values):.2f})")


def open_diskcache(directory: Path) -> Any:
    """A diskcache `Cache` at the bench's settings (WAL, synchronous=FULL); None if not installed."""
    try:
        import diskcache  # noqa: PLC0415 - optional: the bench extra
    except ImportError:
        return None
    return diskcache.Cache(str(directory), sqlite_synchronous=2, sqlite_journal_mode="wal")


def postgres(rounds: int, dsn: str) -> None:
    """`pg_durable_set`'s floor, hoard's store alone and hoard's set, in a throwaway schema."""
    import psycopg  # noqa: PLC0415 - only with --postgres

    # the store alone in a schema of its own: a system's listener would wake for its notices
    schema, alone = (f"hoard_floor_{uuid.uuid4().hex[:12]}" for _ in range(2))
    table = f'"{schema}".floor_journal'
    admin = psycopg.connect(dsn, autocommit=True)
    system = None
    store = None
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        system = open_system(PostgresStore(dsn, schema=schema, require_lease=True),
                             manager_config=ContextManagerConfig(durability="immediate"),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False))
        admin.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, blob bytea NOT NULL)")
        tracker = system.adapter.activate("bench")
        store = PostgresStore(dsn, schema=alone, require_lease=True)
        store.open()
        store.acquire_lease("alone")  # as the persistence actor does before a context's first write
        now = time.time()
        store.commit([CreateContext(ContextState(id="alone", version=1, created_at=now, updated_at=now))])
        versions = itertools.count(2)
        sql = f"INSERT INTO {table} (blob) VALUES (%s)"  # noqa: S608 - our own table name
        ratios = alternate(rounds, lambda: writes(lambda _: conn.execute(sql, (BLOB,))), {
            "hoard's store, no thread": lambda: writes(lambda i: store.commit(  # type: ignore[union-attr]
                [Append("alone", Change(next(versions), time.time(), {f"k{i % 50}": i}))])),
            "hoard": lambda: writes(lambda i: tracker.set(f"k{i % 50}", i))})
    finally:
        conn.close()
        if store is not None:
            store.close()
        if system is not None:
            system.stop()
        for name in (schema, alone):
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()
    print("PostgreSQL (the floor: one autocommitted INSERT by psycopg)")
    report(ratios, rounds)


if __name__ == "__main__":
    args = sys.argv[1:]
    pg_dsn = None
    if "--postgres" in args:
        at = args.index("--postgres")
        pg_dsn = args[at + 1]
        del args[at:at + 2]
    main(int(args[0]) if args else 9)
    if pg_dsn is not None:
        postgres(int(args[0]) if args else 9, pg_dsn)
