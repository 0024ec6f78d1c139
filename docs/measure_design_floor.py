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
- ``hoard``: `ContextTracker.set` with ``durability="immediate"``, SQLite ``sync="full"``.

    .venv/bin/python docs/measure_design_floor.py [rounds]
"""

from __future__ import annotations

import queue
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from hoard import ContextAdapterConfig, ContextManagerConfig, open_system

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
    start = time.perf_counter()
    for _ in range(WRITES):
        first.put((BLOB, answer))
        answer.get(timeout=30)
    return WRITES / (time.perf_counter() - start)


def through(actor: pykka.ActorRef[Any]) -> float:
    start = time.perf_counter()
    for _ in range(WRITES):
        future: pykka.ThreadingFuture[None] = pykka.ThreadingFuture()
        actor.tell((BLOB, future))
        future.get(timeout=30)
    return WRITES / (time.perf_counter() - start)


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        floor_db, one_db, two_db, bare_db = (connect(Path(tmp) / f"{name}.db")
                                             for name in ("floor", "one", "two", "bare"))
        one = Committer.start(one_db)
        two = Relay.start(Committer.start(two_db))
        first, threads = bare_threads(bare_db)
        system = open_system(Path(tmp) / "hoard.db",
                             manager_config=ContextManagerConfig(durability="immediate", sync="full"),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False))
        try:
            tracker = system.adapter.activate("bench")

            def floor() -> float:
                start = time.perf_counter()
                for _ in range(WRITES):
                    floor_db.execute("INSERT INTO journal (blob) VALUES (?)", (BLOB,))
                return WRITES / (time.perf_counter() - start)

            def hoard() -> float:
                start = time.perf_counter()
                for i in range(WRITES):
                    tracker.set(f"k{i % 50}", i)
                return WRITES / (time.perf_counter() - start)

            variants = {"one hop": lambda: through(one), "two hops": lambda: through(two),
                        "two hops, bare threads": lambda: through_threads(first), "hoard": hoard}
            ratios: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(rounds):
                for name, variant in variants.items():  # each between two floors: the disk drifts
                    before = floor()
                    rate = variant()
                    ratios[name].append(rate / statistics.mean((before, floor())))
        finally:
            system.stop()
            pykka.ActorRegistry.stop_all()
            first.put(None)
            for thread in threads:
                thread.join(30)
            for db in (floor_db, one_db, two_db, bare_db):
                db.close()
    for name, values in ratios.items():
        print(f"{name:<22} {statistics.median(values):.2f} of the floor's rate "
              f"(median of {rounds} rounds of {WRITES} writes; range {min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
