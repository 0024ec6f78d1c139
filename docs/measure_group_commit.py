"""What group commit buys: durable writes per second of 16 threads on 16 contexts against 1 thread on
1 context, ``durability="immediate"``, SQLite ``sync="full"``, in alternating rounds in one process
(the machine is shared: compare the ratio, never rates across runs). Prints the median ratio.

    .venv/bin/python docs/measure_group_commit.py [rounds]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from hoard import ContextAdapterConfig, ContextManagerConfig, ContextTracker, open_system

THREADS = 16
PER_THREAD = 200


def rate(trackers: list[ContextTracker], per_thread: int) -> float:
    """Aggregate durable sets per second of one thread per tracker, all released at once."""
    start = threading.Barrier(len(trackers) + 1)

    def work(t: ContextTracker) -> None:
        start.wait(30)
        for i in range(per_thread):
            t.set(f"k{i % 50}", i)

    threads = [threading.Thread(target=work, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    start.wait(30)
    t0 = time.perf_counter()
    for th in threads:
        th.join(300)
    return len(trackers) * per_thread / (time.perf_counter() - t0)


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, open_system(
            Path(tmp) / "gc.db", manager_config=ContextManagerConfig(durability="immediate", sync="full"),
            adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        trackers = [system.adapter.activate(f"c{i}") for i in range(THREADS)]
        ratios, ones, manys = [], [], []
        for _ in range(rounds):
            one = rate(trackers[:1], PER_THREAD * 2)
            many = rate(trackers, PER_THREAD)
            ones.append(one)
            manys.append(many)
            ratios.append(many / one)
    print(f"1 thread: {statistics.median(ones):,.0f} ops/s; {THREADS} threads on {THREADS} contexts: "
          f"{statistics.median(manys):,.0f} ops/s; median ratio over {rounds} rounds: "
          f"{statistics.median(ratios):.1f}x (rounds: {', '.join(f'{r:.1f}' for r in ratios)})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
