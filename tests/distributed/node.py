"""One hoard node of the multi-process tests: an OS process running ``open_system(url)`` on the shared
PostgreSQL store, driven by its parent test.

Run as ``python node.py '<json config>'``. Reports JSON lines on stdout, each written with a single
``os.write`` (a line is never torn by a SIGKILL between two writes); reads one command per line on
stdin. Every write goes through the public API (trackers), and each is a `transact` that stores
one key per version (``v<version>``: a tag saying who wrote it), so the data itself shows every
version that was committed, and by whom.

Modes (``mode`` in the config):

``hammer``  until ``duration`` has passed and it had ``min_turns`` turns on each context: activate a
            random one of ``ids`` (waiting at most 0.3 s if another node owns it), claim it in the
            ``occupancy`` table (a separate record of who works on what, written outside hoard), make
            1-4 writes, release the claim, deactivate. Reports ``ack`` per acknowledged write,
            ``violation`` if a claim finds the context taken, and ``done`` with the number of refused
            activations.
``writer``  activate ``cid``, report ``ready``; on ``go`` write ``count`` times (forever if None),
            reporting each ``ack``; then stop the system and report ``done``.
``owner``   open as owner id ``owner`` (shared with other nodes on purpose) and take ``cid``; then
            ``write`` / ``activate`` / ``quit`` commands, each reported (see `owner`).
``paused``  activate ``cid``, write once, then start a `transact` whose function blocks until the
            ``go`` command (``in_fn``): the parent SIGSTOPs this node there, takes the context over,
            SIGCONTs it and sends ``go``; the late write's outcome is reported (``late``), then a
            second write's (``later``). On ``reactivate`` it activates ``cid`` again and reports what
            it reads (``reactivated``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, without installing

import psycopg

from hoard import (
    ContextAdapterConfig,
    ContextManagerConfig,
    ContextOwnedElsewhereError,
    ContextTimeoutError,
    HoardError,
    PostgresStore,
    open_system,
)


def emit(**event: Any) -> None:
    os.write(1, json.dumps(event, separators=(",", ":")).encode() + b"\n")


def command() -> str:
    return sys.stdin.readline().strip()


def next_key(draft: Any, tag: Any) -> int:
    """The transact function: one key per version, holding who wrote it. Returns the new version."""
    version = int(draft.version) + 1
    draft[f"v{version}"] = tag
    return version


def open_node(cfg: dict[str, Any]) -> Any:
    return open_system(cfg["url"], manager_config=ContextManagerConfig(call_timeout=cfg.get("call_timeout", 5.0)),
                       adapter_config=ContextAdapterConfig(auto_activate_default=False))


def hammer(cfg: dict[str, Any]) -> None:
    system = open_node(cfg)
    me = system.store.owner_id
    occupancy = psycopg.connect(cfg["dsn"], autocommit=True, options=f"-c search_path={cfg['schema']}")
    rng = random.Random(os.getpid())  # noqa: S311 - picks contexts, not secrets
    emit(e="ready", owner=me)
    command()  # go
    # Runs for ``duration`` and then on until it has had ``min_turns`` turns on every context (within
    # ``limit`` seconds): on a loaded machine a fixed duration alone left some contexts with one owner.
    end = time.monotonic() + cfg["duration"]
    limit = time.monotonic() + cfg.get("limit", 60.0)
    mine = dict.fromkeys(cfg["ids"], 0)
    refused = turns = 0
    while time.monotonic() < limit and (time.monotonic() < end or min(mine.values()) < cfg.get("min_turns", 0)):
        cid = rng.choice(cfg["ids"])
        try:
            tracker = system.adapter.activate(cid, timeout=0.3)
        except ContextOwnedElsewhereError:
            refused += 1
            continue
        except ContextTimeoutError:  # a slow turn on a busy machine (it may still activate): pick again
            continue
        if occupancy.execute("UPDATE occupancy SET holder = %s WHERE id = %s AND holder IS NULL",
                             (me, cid)).rowcount != 1:
            emit(e="violation", what=f"{me} activated {cid} while another node had it claimed")
        for i in range(rng.randint(1, 4)):
            tag = [me, turns, i]
            version = tracker.transact(lambda d, tag=tag: next_key(d, tag))
            emit(e="ack", c=cid, v=version, tag=tag)
        if occupancy.execute("UPDATE occupancy SET holder = NULL WHERE id = %s AND holder = %s",
                             (cid, me)).rowcount != 1:
            emit(e="violation", what=f"{me} found {cid} claimed by another node before deactivating")
        system.adapter.deactivate(cid)
        turns += 1
        mine[cid] += 1
    occupancy.close()
    system.stop()
    emit(e="done", refused=refused, turns=turns)


def writer(cfg: dict[str, Any]) -> None:
    system = open_node(cfg)
    tracker = system.adapter.activate(cfg["cid"])
    emit(e="ready", owner=system.store.owner_id, v=tracker.version)
    command()  # go
    count = cfg.get("count")
    i = 0
    while count is None or i < count:
        version = tracker.transact(lambda d, i=i: next_key(d, i))
        emit(e="ack", v=version)
        i += 1
    system.stop()
    emit(e="done")


def paused(cfg: dict[str, Any]) -> None:
    system = open_node(cfg)
    cid = cfg["cid"]
    tracker = system.adapter.activate(cid)
    emit(e="ack", v=tracker.transact(lambda d: next_key(d, "before the pause")))
    go = threading.Event()

    def blocked(draft: Any) -> int:
        emit(e="in_fn", owner=system.store.owner_id)
        go.wait(60)
        return next_key(draft, "late")

    def late_write() -> None:
        try:
            emit(e="late", ok=True, v=tracker.transact(blocked))
        except HoardError as exc:
            emit(e="late", ok=False, err=type(exc).__name__, msg=str(exc))

    writing = threading.Thread(target=late_write)
    writing.start()
    command()  # go: sent after the parent took the context over and resumed this process
    go.set()
    writing.join(30)
    try:
        emit(e="later", ok=True, v=tracker.transact(lambda d: next_key(d, "later"), timeout=0.5))
    except HoardError as exc:
        emit(e="later", ok=False, err=type(exc).__name__, msg=str(exc))
    command()  # reactivate
    try:
        state = system.adapter.activate(cid, timeout=5).state()
        emit(e="reactivated", v=state.version, keys=sorted(state.data))
    except HoardError as exc:
        emit(e="reactivated", err=type(exc).__name__, msg=str(exc))
    system.stop()
    emit(e="done")


def owner(cfg: dict[str, Any]) -> None:
    """Open the store as ``owner`` (an owner id that other nodes may share) and take ``cid``; report
    ``refused`` if the open fails, else ``ready`` with the lease token. Then, per command: ``write``
    (one transact: ``wrote``), ``activate`` (``activated``), ``quit``."""
    store = PostgresStore(cfg["dsn"], schema=cfg["schema"], owner_id=cfg["owner"], lease_ttl=cfg["lease_ttl"])
    try:
        system = open_system(store, adapter_config=ContextAdapterConfig(auto_activate_default=False))
    except HoardError as exc:
        emit(e="refused", err=type(exc).__name__, owner_id=getattr(exc, "owner_id", None), msg=str(exc))
        return
    cid = cfg["cid"]
    tracker = system.adapter.get_or_create(cid, timeout=cfg.get("activate_timeout", 5.0))
    emit(e="ready", token=system.manager.owner(cid).token, v=tracker.version)  # type: ignore[union-attr]
    while (cmd := command()) not in ("quit", ""):
        try:
            if cmd == "write":
                emit(e="wrote", ok=True, v=tracker.transact(lambda d: next_key(d, os.getpid()), timeout=5))
            else:
                emit(e="activated", ok=True, v=system.adapter.activate(cid, timeout=5).version)
        except HoardError as exc:
            emit(e="wrote" if cmd == "write" else "activated", ok=False, err=type(exc).__name__, msg=str(exc))
    system.stop()
    emit(e="done")


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    {"hammer": hammer, "writer": writer, "paused": paused, "owner": owner}[config["mode"]](config)
