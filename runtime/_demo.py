"""`hoard demo`: a short, daemon-like workload on the embedded SQLite default.

Several threads work on many contexts at once through transactions (so the active set overflows and
contexts are evicted and re-activated on the way), the current context is switched, a recovery
point is made and restored, the system is stopped, and a reopen checks that everything that was
acknowledged came back. Ends with a readable summary; returns 0 if every check held, else 1.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hoard.storage import SQLiteStore

from ._config import ContextAdapterConfig, ContextManagerConfig
from ._system import open_system

__all__ = ["run_demo"]

WORKERS = 4
CONTEXTS = 24
ROUNDS = 60
MAX_ACTIVE = 8


def run_demo(directory: str | None = None, *, echo: Callable[[str], Any] = print) -> int:
    """Run the demo in `directory` (a new temporary one if None). Blocks until done (a few seconds).

    Prints progress and a summary through `echo`; returns 0 when every check passed, 1 otherwise.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="hoard-demo-") as tmp:
            return _run(Path(tmp), echo)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return _run(path, echo)


def _run(folder: Path, echo: Callable[[str], Any]) -> int:
    db = folder / "demo.db"
    echo(f"hoard demo: store {db}")
    checks: list[tuple[str, bool]] = []
    ids = [f"account-{i:02d}" for i in range(CONTEXTS)]
    per_worker: list[Counter[str]] = [Counter() for _ in range(WORKERS)]  # each thread counts its own
    errors: list[BaseException] = []
    adapter_cfg = ContextAdapterConfig(max_active_contexts=MAX_ACTIVE)
    manager_cfg = ContextManagerConfig(durability="immediate", snapshot_every=50)
    started = time.perf_counter()

    with open_system(db, manager_config=manager_cfg, adapter_config=adapter_cfg) as system:
        adapter, manager = system.adapter, system.manager
        echo(f"  opened; current context: {adapter.current_id()!r}; "
             f"{WORKERS} threads x {ROUNDS} rounds over {CONTEXTS} contexts (at most {MAX_ACTIVE} active)")
        trackers = {cid: adapter.tracker(cid) if manager.exists(cid) else
                    adapter.create_and_activate(cid, {"balance": 0, "log": []}) for cid in ids}
        base = {cid: int(trackers[cid].get("balance", 0)) for cid in ids}  # a rerun in the same folder
        adapter.switch("default")

        def deposit(d: Any, amount: int, who: str) -> int:
            d["balance"] = d.get("balance", 0) + amount
            d["log"] = [*d.get("log", []), who][-5:]
            return int(d["balance"])

        def worker(n: int) -> None:
            try:
                for r in range(ROUNDS):
                    cid = ids[(n * 7 + r * 5) % CONTEXTS]
                    trackers[cid].transact(functools.partial(deposit, amount=1, who=f"w{n}r{r}"))
                    per_worker[n][cid] += 1
            except BaseException as exc:  # noqa: BLE001 - reported in the summary
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,), name=f"demo-worker-{n}") for n in range(WORKERS)]
        for t in threads:
            t.start()
        for cid in ids[:6]:  # meanwhile, the "UI thread" switches the current context around
            adapter.switch(cid)
        for t in threads:
            t.join(120)
        checks.append(("all worker calls succeeded", not errors))
        acknowledged = sum(per_worker, Counter())
        echo(f"  {sum(acknowledged.values())} deposits acknowledged; active now: {len(adapter.list_active())}")

        vip = adapter.switch("account-00")
        before = vip.get("balance")
        rp = vip.create_recovery_point(label="before-bonus")
        vip.set("balance", before + 1_000_000)
        vip.restore(rp.id)
        checks.append(("restore brought the balance back", vip.get("balance") == before))
        echo(f"  recovery point {rp.id} of 'account-00' at v{rp.version}; bonus applied, then restored "
             f"(balance {before})")
        versions = {cid: manager.get_state(cid).version for cid in ids}
        current = adapter.current_id()
    elapsed = time.perf_counter() - started
    echo(f"  stopped after {elapsed:.2f} s (every context committed and snapshotted)")

    with open_system(db, manager_config=manager_cfg, adapter_config=adapter_cfg) as system:
        manager = system.manager
        back = {cid: manager.get_state(cid) for cid in ids}
        checks.append(("every balance came back", all(back[c].data["balance"] == base[c] + acknowledged[c] for c in ids)))
        checks.append(("every version came back", all(back[c].version == versions[c] for c in ids)))
        checks.append(("the recovery point came back",
                       manager.recovery_points("account-00")[-1].id == rp.id))
        echo(f"  reopened: {len(manager.list_ids())} contexts; current was {current!r}")
    store = SQLiteStore(db, readonly=True)
    store.open()
    try:
        problems = store.verify()
    finally:
        store.close()
    checks.append(("store verifies clean", problems == []))

    echo("")
    echo("summary")
    echo(f"  contexts             {CONTEXTS} (+ 'default')")
    echo(f"  changes acknowledged {sum(acknowledged.values())} deposits, all durable before each call returned")
    echo(f"  newest version       {max(versions.values())} ({min(versions.values())} at the least)")
    echo(f"  throughput           {sum(acknowledged.values()) / elapsed:,.0f} durable transactions/s "
         f"with {WORKERS} threads (incl. start, evictions, stop)")
    for name, ok in checks:
        echo(f"  [{'ok' if ok else 'FAILED'}] {name}")
    for exc in errors[:3]:
        echo(f"  error: {exc!r}")
    return 0 if all(ok for _, ok in checks) else 1
