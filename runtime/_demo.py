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
from ._system import ContextSystem, open_system

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
    return _Demo(folder / "demo.db", echo).run()


class _Demo:
    """One run of the demo: its store, what it checked, and what every worker thread acknowledged."""

    def __init__(self, db: Path, echo: Callable[[str], Any]) -> None:
        self.db = db
        self.echo = echo
        self.ids = [f"account-{i:02d}" for i in range(CONTEXTS)]
        self.checks: list[tuple[str, bool]] = []
        self.per_worker: list[Counter[str]] = [Counter() for _ in range(WORKERS)]  # each thread counts its own
        self.errors: list[BaseException] = []

    def _open(self) -> ContextSystem:
        return open_system(self.db, manager_config=ContextManagerConfig(durability="immediate", snapshot_every=50),
                           adapter_config=ContextAdapterConfig(max_active_contexts=MAX_ACTIVE))

    @property
    def acknowledged(self) -> Counter[str]:
        return sum(self.per_worker, Counter())

    def run(self) -> int:
        self.echo(f"hoard demo: store {self.db}")
        started = time.perf_counter()
        with self._open() as system:
            self.echo(f"  opened; current context: {system.adapter.current_id()!r}; {WORKERS} threads x {ROUNDS} "
                      f"rounds over {CONTEXTS} contexts (at most {MAX_ACTIVE} active)")
            base = self._work(system)
            rp = self._bonus(system)
            versions = {cid: system.manager.get_state(cid).version for cid in self.ids}
            current = system.adapter.current_id()
        elapsed = time.perf_counter() - started
        self.echo(f"  stopped after {elapsed:.2f} s (every context committed and snapshotted)")
        with self._open() as system:
            manager = system.manager
            back = {cid: manager.get_state(cid) for cid in self.ids}
            acknowledged = self.acknowledged
            self.checks.append(("every balance came back",
                                all(back[c].data["balance"] == base[c] + acknowledged[c] for c in self.ids)))
            self.checks.append(("every version came back", all(back[c].version == versions[c] for c in self.ids)))
            self.checks.append(("the recovery point came back", manager.recovery_points("account-00")[-1].id == rp))
            # the current context is a choice of the running program, not stored: a reopen starts at the default
            now = system.adapter.current_id()
            self.echo(f"  reopened: {len(manager.list_ids())} contexts; current is {now!r} (before the stop it "
                      f"was {current!r}; a reopen starts at the default context)")
            self.checks.append(("the reopen starts at the default context", now == "default"))
        self._verify()
        self._summary(versions, elapsed)
        return 0 if all(ok for _, ok in self.checks) else 1

    def _work(self, system: ContextSystem) -> dict[str, int]:
        """WORKERS threads make durable deposits on many contexts while the current context is switched;
        returns the balances before (a rerun in the same folder starts from the stored ones)."""
        adapter, manager = system.adapter, system.manager
        trackers = {cid: adapter.tracker(cid) if manager.exists(cid) else
                    adapter.create_and_activate(cid, {"balance": 0, "log": []}) for cid in self.ids}
        base = {cid: int(trackers[cid].get("balance", 0)) for cid in self.ids}
        adapter.switch("default")

        def worker(n: int) -> None:
            try:
                for r in range(ROUNDS):
                    cid = self.ids[(n * 7 + r * 5) % CONTEXTS]
                    trackers[cid].transact(functools.partial(_deposit, amount=1, who=f"w{n}r{r}"))
                    self.per_worker[n][cid] += 1
            except BaseException as exc:  # noqa: BLE001 - reported in the summary
                self.errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,), name=f"demo-worker-{n}") for n in range(WORKERS)]
        for t in threads:
            t.start()
        for cid in self.ids[:6]:  # meanwhile, the "UI thread" switches the current context around
            adapter.switch(cid)
        for t in threads:
            t.join(120)
        self.checks.append(("all worker calls succeeded", not self.errors))
        self.echo(f"  {sum(self.acknowledged.values())} deposits acknowledged; active now: "
                  f"{len(adapter.list_active())}")
        return base

    def _bonus(self, system: ContextSystem) -> int:
        """A recovery point, a change, a restore to it; returns the recovery point's id."""
        vip = system.adapter.switch("account-00")
        before = vip.get("balance")
        rp = vip.create_recovery_point(label="before-bonus")
        vip.set("balance", before + 1_000_000)
        vip.restore(rp.id)
        self.checks.append(("restore brought the balance back", vip.get("balance") == before))
        self.echo(f"  recovery point {rp.id} of 'account-00' at v{rp.version}; bonus applied, then restored "
                  f"(balance {before})")
        return rp.id

    def _verify(self) -> None:
        store = SQLiteStore(self.db, readonly=True)
        store.open()
        try:
            problems = store.verify()
        finally:
            store.close()
        self.checks.append(("store verifies clean", problems == []))

    def _summary(self, versions: dict[str, int], elapsed: float) -> None:
        echo, deposits = self.echo, sum(self.acknowledged.values())
        echo("")
        echo("summary")
        echo(f"  contexts             {CONTEXTS} (+ 'default')")
        echo(f"  changes acknowledged {deposits} deposits, all durable before each call returned")
        echo(f"  newest version       {max(versions.values())} ({min(versions.values())} at the least)")
        echo(f"  throughput           {deposits / elapsed:,.0f} durable transactions/s with {WORKERS} threads "
             "(incl. start, evictions, stop)")
        for name, ok in self.checks:
            echo(f"  [{'ok' if ok else 'FAILED'}] {name}")
        for exc in self.errors[:3]:
            echo(f"  error: {exc!r}")


def _deposit(d: Any, amount: int, who: str) -> int:
    d["balance"] = d.get("balance", 0) + amount
    d["log"] = [*d.get("log", []), who][-5:]
    return int(d["balance"])
