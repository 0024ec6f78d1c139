"""One host of the multi-host tests (tests/distributed/test_hosts.py): a process, usually inside a
network namespace of its own, running ``open_system(PostgresStore(...), forward_via=...)`` and
driven by JSON commands on stdin. Reports JSON lines on stdout, each one ``os.write`` (never torn).

Config (argv[1], JSON): ``dsn``, ``schema``, ``nats``, ``owner``, ``lease_ttl``, ``default`` (the
default context id, activated at start, or null).

Commands (one JSON object per line):

``{"op": "own", "ids": [...]}``        get_or_create each here (or, owned elsewhere, reach it there);
                                        reports ``owned``.
``{"op": "loop", "cid", "tag", "timeout"}``  in a thread: ``set(f"{tag}-{i}", i)`` on `cid` until
                                        ``halt``; reports ``ack`` (key, version) or ``err`` (key, type)
                                        per write.
``{"op": "write", "ids", "n", "tag", "timeout"}``  n rounds of one set per context; ``ack``/``err``
                                        each, then ``wrote``.
``{"op": "transact", "cid", "by", "request_id"}``  the registered transaction ``add`` (``n += by``)
                                        on `cid`; reports ``transacted`` (value, version, duplicate)
                                        or ``err``.
``{"op": "halt"}``                      ends the loops; reports ``halted``.
``{"op": "state", "cid"}``              reports ``state`` (the version and keys this host reads).
``{"op": "exit"}``                      stops the system, reports ``bye``, exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root, without installing

from hoard import (
    ContextAdapterConfig,
    ContextManagerConfig,
    HoardError,
    PostgresStore,
    open_system,
)


def emit(**event: Any) -> None:
    os.write(1, json.dumps(event, separators=(",", ":")).encode() + b"\n")


def add(draft: Any, by: int = 1) -> int:
    """The transaction every process of the tests registers as ``add``."""
    draft["n"] = draft.get("n", 0) + by
    return int(draft["n"])


def transact(system: Any, cmd: dict[str, Any]) -> None:
    adding = system.register_transaction(add, name="add")  # registered at start: the same record
    try:
        done = system.adapter.get_or_create(cmd["cid"]).transact(
            adding.bind(by=cmd["by"]), with_version=True, request_id=cmd.get("request_id"))
    except HoardError as exc:
        emit(e="err", cid=cmd["cid"], type=type(exc).__name__, msg=str(exc)[:200])
    else:
        emit(e="transacted", value=done.value, v=done.version, duplicate=done.duplicate)


def open_host(config: dict[str, Any]) -> Any:
    ttl = float(config["lease_ttl"])
    # short network timeouts: a host cut off notices within a few seconds, not TCP's minutes
    store = PostgresStore(config["dsn"], schema=config["schema"], owner_id=config["owner"], lease_ttl=ttl,
                          connect_timeout=2.0, statement_timeout=max(1.0, ttl))
    system = open_system(store, forward_via=config["nats"],
                         manager_config=ContextManagerConfig(call_timeout=ttl * 3),
                         adapter_config=ContextAdapterConfig(
                             auto_activate_default=config.get("default") is not None,
                             default_context_id=config.get("default") or "default"))
    system.register_transaction(add, name="add")
    return system


def main() -> None:
    config = json.loads(sys.argv[1])
    system = open_host(config)
    emit(e="ready", owner=config["owner"], pid=os.getpid())
    halt = threading.Event()
    loops: list[threading.Thread] = []

    def write(cid: str, key: str, i: int, timeout: float) -> None:
        try:
            version = system.adapter.get_or_create(cid, timeout=timeout).set(key, i, timeout=timeout)
        except HoardError as exc:
            emit(e="err", cid=cid, key=key, type=type(exc).__name__, msg=str(exc)[:200])
        else:
            emit(e="ack", cid=cid, key=key, v=version)

    def loop(cid: str, tag: str, timeout: float) -> None:
        i = 0
        while not halt.is_set():
            write(cid, f"{tag}-{i}", i, timeout)
            i += 1

    def halt_loops(_cmd: dict[str, Any]) -> None:
        halt.set()
        for thread in loops:
            thread.join()
        loops.clear()
        halt.clear()
        emit(e="halted")

    def run_loop(cmd: dict[str, Any]) -> None:
        thread = threading.Thread(target=loop, args=(cmd["cid"], cmd["tag"], float(cmd["timeout"])))
        loops.append(thread)
        thread.start()

    def write_rounds(cmd: dict[str, Any]) -> None:
        for i in range(int(cmd["n"])):
            for cid in cmd["ids"]:
                write(cid, f"{cmd['tag']}-{i}", i, float(cmd["timeout"]))
        emit(e="wrote")

    def own(cmd: dict[str, Any]) -> None:
        for cid in cmd["ids"]:
            system.adapter.get_or_create(cid)
        emit(e="owned", ids=cmd["ids"])

    def state(cmd: dict[str, Any]) -> None:
        st = system.manager.get_state(cmd["cid"])
        emit(e="state", cid=cmd["cid"], v=st.version, keys=sorted(st.data))

    handlers = {"own": own, "loop": run_loop, "write": write_rounds, "state": state, "halt": halt_loops,
                "transact": lambda cmd: transact(system, cmd)}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            break
        handlers[cmd["op"]](cmd)
    halt.set()
    for thread in loops:
        thread.join()
    try:
        system.stop()
    except HoardError as exc:  # a host that lost its contexts may not snapshot them: said, not fatal
        emit(e="stop_error", type=type(exc).__name__)
    emit(e="bye")


if __name__ == "__main__":
    main()
