"""What one thread wake-up costs on this machine, after the woken thread (and the machine) idled for a
while: the price a durable write pays twice (the caller wakes its context's actor, and the caller
is woken by the commit's answer) and the `durable_set` floor, which commits in the caller's own
thread, never pays. No hoard code: two plain threads and C `queue.SimpleQueue`s.

Each sample: the main thread idles for ``idle`` (sleeping, as a thread waiting for an fsync does;
with ``spin``, busy instead), then puts a timestamp in the other thread's queue; that thread,
blocked on the queue, notes when it runs again. Printed: the median and p90 of put -> running, for
each idle time, with the two threads free to run on any CPU and with both pinned to one.

    .venv/bin/python docs/measure_wakeups.py [samples]
"""

from __future__ import annotations

import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable

IDLES_US = (0, 50, 250, 1000)


def wakeups(samples: int, idle_us: int, *, spin: bool, cpus: set[int] | None) -> list[float]:
    """`samples` wake-up latencies (us) of a thread blocked on a queue, after `idle_us` of idling."""
    inbox: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    woke: queue.SimpleQueue[int] = queue.SimpleQueue()

    def sleeper() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)  # 0: this thread
        while True:
            sent = inbox.get()
            now = time.perf_counter_ns()
            if sent is None:
                return
            woke.put(now - sent)

    thread = threading.Thread(target=sleeper, name="wakeup-sleeper")
    old = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    thread.start()
    idle: Callable[[], None]
    if spin:
        def idle() -> None:
            end = time.perf_counter_ns() + idle_us * 1000
            while time.perf_counter_ns() < end:
                pass
    else:
        def idle() -> None:
            if idle_us:
                time.sleep(idle_us / 1e6)
    out: list[float] = []
    try:
        for _ in range(samples):
            idle()
            inbox.put(time.perf_counter_ns())
            out.append(woke.get(timeout=10) / 1000)
    finally:
        inbox.put(None)
        thread.join(10)
        os.sched_setaffinity(0, old)
    return out


def main(samples: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    placements: list[tuple[str, set[int] | None]] = [("any CPU", None)]
    if len(cpus) > 1:
        placements.append((f"both on CPU {cpus[0]}", {cpus[0]}))
    for spin in (False, True):
        for label, pinned in placements:
            row = []
            for idle_us in IDLES_US:
                lat = sorted(wakeups(samples, idle_us, spin=spin, cpus=pinned))
                row.append(f"{idle_us:>5} us idle: {statistics.median(lat):6.1f} / {lat[int(len(lat) * 0.9)]:6.1f}")
            how = "waker busy" if spin else "waker sleeps"
            print(f"{how:12} {label:16} " + "   ".join(row))
    print("(wake-up latency in us, median / p90, of", samples, "samples each)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
