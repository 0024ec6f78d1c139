"""Measure the memory a blocked subscriber can hold (issue 11 item 10): one subscriber blocks forever
while a context makes EVENTS changes; prints the RSS growth and the subscriber's fate.

    python -m tests.reliability.subscriber_rss [EVENTS]

Not a test (it measures); the bounded backlog itself is tested in test_edges.py.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

from hoard import ContextManagerConfig, open_system


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(events: int) -> None:
    release = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        system = open_system(Path(tmp) / "s.db", manager_config=ContextManagerConfig(durability="none"))
        try:
            system.subscribe(lambda _e: release.wait(600))
            t = system.adapter.activate("x")
            t.set("k", -1)
            gc.collect()
            before = rss_mib()
            started = time.monotonic()
            for i in range(events):
                t.set("k", i)
            system.metrics()  # the bus has published everything before it answers this
            gc.collect()
            after = rss_mib()
            depths = {k: v for k, v in system.metrics().mailbox_depths.items() if k.startswith("subscriber")}
            print(f"{events} events to a blocked subscriber in {time.monotonic() - started:.1f} s: "
                  f"RSS {before:.1f} -> {after:.1f} MiB (+{after - before:.1f} MiB); "
                  f"subscriber backlogs now {depths or '{} (dropped)'}")
        finally:
            release.set()
            system.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
