"""Memory that stays flat (issue 14): activating and passivating contexts again and again keeps no
Python memory per cycle. Measured with tracemalloc in bytes, never with time; `hoard bench --soak`
measures the same for RSS over minutes."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from hoard import ContextAdapterConfig, ContextManagerConfig, StateChanged, open_system
from hoard.storage import SQLiteStore


def test_activating_and_passivating_contexts_keeps_no_memory_per_cycle(tmp_path: Path) -> None:
    contexts, rounds = 120, 2
    last = [0]  # the subscriber keeps one number: a growing list of its own would be measured
    # dictionary=False: the store's one zstd dictionary (trained once, after 2,000 writes: 16 KiB and
    # its tables, bounded) would otherwise land inside the measured cycles
    system = open_system(SQLiteStore(tmp_path / "state.db", dictionary=False),
                         manager_config=ContextManagerConfig(durability="deferred"),
                         adapter_config=ContextAdapterConfig(auto_activate_default=False, max_active_contexts=8))
    try:
        # what a daemon has around it: a subscriber, metrics read now and then, a hot context
        sub = system.subscribe(lambda e: last.__setitem__(0, e.version), kinds=[StateChanged])
        hot = system.adapter.activate("hot")

        def cycle(n: int) -> None:  # every context activated from the store (evicted, then deactivated)
            for i in range(contexts):
                system.adapter.get_or_create(f"c{i}").set("seen", n)
                hot.set("n", n * contexts + i)
                system.metrics()
            for cid in system.adapter.list_active():
                if cid != "hot":
                    system.adapter.deactivate(cid)

        cycle(0)  # creations, caches, the store's statements
        cycle(1)
        gc.collect()
        tracemalloc.start()
        try:
            marks = []
            for n in range(2, 2 + 2 * rounds):
                cycle(n)
                if n - 1 in (rounds, 2 * rounds):  # after `rounds` cycles, and after `rounds` more
                    gc.collect()
                    marks.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        # the second window's growth: what the first window left alive once (a timer, a thread's
        # bookkeeping, a statement cache filling up) is not counted per activation
        activations = rounds * contexts
        per_activation = (marks[1] - marks[0]) / activations
        print(f"{activations} more activations and passivations: {marks[1] - marks[0]:+d} bytes traced, "
              f"{per_activation:.1f} bytes per activation")
        # 9.45 MiB per 100,000 activations (the soak's figure before) would be 99 bytes each
        assert per_activation < 40, f"{per_activation:.1f} bytes kept per activation"
        sub.cancel()
    finally:
        system.stop()
