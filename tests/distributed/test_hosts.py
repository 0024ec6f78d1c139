"""Issue 15 on real hosts: three processes, each in a network namespace of its own (made here with
``ip netns`` and veth pairs), reaching PostgreSQL and NATS over its own link. PostgreSQL and NATS
listen on 127.0.0.1 only, so each link's host side runs a small TCP relay (socat) from its address
to them. Addresses: 10.213.57.0/24, one /30 per link, only on the links. Everything made here
(namespaces, links, relays, host processes) is removed at teardown, also after a failure.

Proven: a call made on any host reaches the context's owner and is answered (every acknowledged
write is stored, versions gapless: each write adds one key, so version == 1 + keys); a host whose
link goes down loses its leases, the others take its contexts over after ``lease_ttl``, its own
writes fail with typed errors meanwhile, and once the link is back its stale writes are fenced off
and it serves again; a SIGKILLed host's contexts are served by the others within ``lease_ttl`` + 1 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hoard.storage import PostgresStore
from tests.distributed.conftest import NATS_URL, Node
from tests.helpers import wait_for, wait_until
from tests.pg import PG_DSN

pytestmark = pytest.mark.postgres

HOST = Path(__file__).with_name("host.py")
SUBNET = "10.213.57"
TTL = 2.0
_SOCAT = shutil.which("socat") or "socat"
_IP = shutil.which("ip") or "ip"
# the relay notices a dead namespace side as a server would a dead client (keepalives, and a TCP user
# timeout of 1.5 s for unacknowledged data) and then closes the local side, so that PostgreSQL ends the
# cut host's session as it would across a real network (its session settings: PostgresStore._configure)
_LIKE_A_WIRE = "keepalive,keepidle=1,keepintvl=1,keepcnt=2,setsockopt-int=6:18:1500"


def _run(*cmd: str) -> None:
    """An ``ip ...`` command (iproute2, by its full path)."""
    assert cmd[0] == "ip"
    subprocess.run([_IP, *cmd[1:]], check=True, capture_output=True, timeout=20)  # noqa: S603 - fixed commands


def _ports() -> tuple[int, int]:
    pg = int(dict(p.split("=") for p in PG_DSN.split()).get("port", "5432"))
    return pg, int(NATS_URL.rpartition(":")[2])


class Link:
    """Network namespace `ns` with a veth pair to the root namespace: host side `outer` (address
    `gateway`), namespace side `inner` (address `address`), and relays on `gateway` to the local
    PostgreSQL and NATS ports."""

    def __init__(self, n: int, tag: str) -> None:
        self.ns = f"hoard-{tag}-{n}"
        self.outer, self.inner = f"hq{tag}{n}o", f"hq{tag}{n}i"
        self.gateway, self.address = f"{SUBNET}.{4 * n + 1}", f"{SUBNET}.{4 * n + 2}"
        self.relays: list[subprocess.Popen[bytes]] = []
        self.made = False

    def make(self) -> None:
        _run("ip", "netns", "add", self.ns)
        self.made = True
        _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _run("ip", "link", "set", self.inner, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        for cmd in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{self.address}/30", "dev", self.inner),
                    ("ip", "link", "set", self.inner, "up")):
            _run("ip", "netns", "exec", self.ns, *cmd)
        for port in _ports():
            self.relays.append(subprocess.Popen(  # noqa: S603 - fixed command
                [_SOCAT, f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr,{_LIKE_A_WIRE}",
                 f"TCP:127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in _ports():
            wait_until(lambda port=port: _answers(self.gateway, port), 10, f"relay on {self.gateway}:{port}")

    def down(self) -> None:
        _run("ip", "link", "set", self.outer, "down")

    def up(self) -> None:
        _run("ip", "link", "set", self.outer, "up")

    def remove(self) -> None:
        for relay in self.relays:
            relay.kill()
            relay.wait(10)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", self.outer)  # takes its peer along
        if self.made:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "del", self.ns)


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Host(Node):
    """A host process in namespace `link.ns` (or, without a link, in this one), with `Node`'s report
    reading, killing and reaping."""

    def __init__(self, link: Link | None, config: dict[str, Any]) -> None:
        self.link: Link = link  # type: ignore[assignment] # only the namespace tests use it
        self.owner = config["owner"]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this method
        self.proc = subprocess.Popen(  # noqa: S603 - our own script, run by this interpreter
            ([_IP, "netns", "exec", link.ns] if link is not None else []) + [sys.executable, str(HOST),
                                                                          json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="host-reader")
        self._reader.start()

    def command(self, **cmd: Any) -> None:
        self.send(json.dumps(cmd))

    def acks(self) -> list[dict[str, Any]]:
        return [r for r in self.drain() if r.get("e") == "ack"]

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.drain() if r.get("e") == "err"]


@pytest.fixture
def hosts(pg_schema: str, nats_url: str) -> Iterator[Callable[..., list[Host]]]:
    """``hosts(3)``: three host processes, each in a namespace of its own; all removed at teardown."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("socat") is None:
        _cannot("network namespaces need root, iproute2 and socat")
    tag = uuid.uuid4().hex[:4]
    links: list[Link] = []
    started: list[Host] = []

    def start(count: int, **config: Any) -> list[Host]:
        pg_port, nats_port = _ports()
        for n in range(count):
            link = Link(n, tag)
            links.append(link)
            try:
                link.make()
            except (subprocess.CalledProcessError, OSError) as exc:
                _cannot(f"cannot make network namespace {link.ns}: {exc!r} "
                        f"{getattr(exc, 'stderr', b'').decode(errors='replace')}")
            cfg = {"dsn": f"host={link.gateway} port={pg_port} user=postgres dbname=test", "schema": pg_schema,
                   "nats": f"nats://{link.gateway}:{nats_port}", "owner": f"host-{n}", "lease_ttl": TTL,
                   "default": None, **config}
            started.append(Host(link, cfg))
        for host in started:
            host.expect("ready", 60)
        return started

    try:
        yield start
    finally:
        for host in started:
            host.kill()
        for link in links:
            link.remove()


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires network namespaces: {reason}")
    pytest.skip(reason)


def _stored(pg_schema: str, cid: str) -> tuple[int, set[str]]:
    store = PostgresStore(PG_DSN, schema=pg_schema, readonly=True)
    store.open()
    try:
        state = store.load(cid)
    finally:
        store.close()
    assert state is not None
    return state.version, set(state.data)


def _owner(pg_schema: str, cid: str) -> str | None:
    store = PostgresStore(PG_DSN, schema=pg_schema, readonly=True)
    store.open()
    try:
        held = store.lease_holder(cid)
    finally:
        store.close()
    return None if held is None else held[0]


@pytest.mark.parametrize("rounds", [8, pytest.param(150, marks=pytest.mark.slow)])
def test_a_call_on_any_host_reaches_the_owner_and_every_acknowledged_write_is_stored(
        hosts: Callable[..., list[Host]], pg_schema: str, rounds: int) -> None:
    three = hosts(3)
    ids = {h.owner: [f"{h.owner}-a", f"{h.owner}-b"] for h in three}
    for h in three:
        h.command(op="own", ids=ids[h.owner])
        h.expect("owned", 30)
    every = [cid for group in ids.values() for cid in group]
    for h in three:  # each host writes to all six: four of them owned elsewhere, so forwarded
        h.command(op="write", ids=every, n=rounds, tag=h.owner, timeout=10)
    for h in three:
        h.expect("wrote", 120 + rounds * 6)
    acked: dict[str, set[str]] = {cid: set() for cid in every}
    for h in three:
        assert h.errors() == []
        for a in h.acks():
            acked[a["cid"]].add(a["key"])
    for owner, group in ids.items():
        for cid in group:
            version, keys = _stored(pg_schema, cid)
            assert keys == acked[cid] and len(keys) == 3 * rounds  # every write of the 3 hosts acknowledged
            assert version == 1 + len(keys)  # one version per write: none applied twice
            assert _owner(pg_schema, cid) == owner  # answered by the owner: nothing moved
    for h in three:
        h.command(op="exit")
        h.finish(30)


@pytest.mark.parametrize("cuts", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_a_host_cut_off_loses_its_contexts_to_the_others_and_serves_again_once_back(
        hosts: Callable[..., list[Host]], pg_schema: str, cuts: int) -> None:
    cut, other, third = hosts(3)
    cut.command(op="own", ids=["p"])
    cut.expect("owned", 30)
    cut.command(op="loop", cid="p", tag="cut", timeout=TTL)  # its own, local writes
    other.command(op="loop", cid="p", tag="other", timeout=3 * TTL)  # forwarded to the owner
    wait_until(lambda: len(cut.acks()) > 5 and len(other.acks()) > 5, 30, "writes before the cut")
    writers = {cut.owner: cut, other.owner: other}
    for _ in range(cuts):  # cut whichever of the two owns "p" now; the other takes over
        owner = wait_for(lambda: _owner(pg_schema, "p"), 30 * TTL, "an owner of p")
        victim = writers[owner]
        _cut_and_restore(victim, next(h for h in writers.values() if h is not victim), pg_schema)
    for h in (cut, other):
        h.command(op="halt")
        h.expect("halted", 30)
    version, keys = _stored(pg_schema, "p")
    acked = {a["key"] for h in (cut, other) for a in h.acks()}
    assert acked <= keys  # every acknowledged write, from both sides, is stored
    assert version == 1 + len(keys)  # and none twice
    for h in (cut, other, third):
        h.command(op="exit")
        h.finish(60)


def _cut_and_restore(cut: Host, other: Host, pg_schema: str) -> None:
    """Take `cut`'s link down until another host serves "p" and `cut`'s own writes fail; then up
    again until `cut`'s writes are acknowledged again (forwarded to the new owner, or its own again)."""
    errors_before = len(cut.errors())
    cut.link.down()
    try:
        # the others take the context over once its lease ran out; the cut host's writes fail, typed
        wait_until(lambda: _owner(pg_schema, "p") not in (None, cut.owner), 10 * TTL, "a takeover")
        before = len(other.acks())
        wait_until(lambda: len(other.acks()) > before + 5, 10 * TTL, "writes served by the new owner")
        wait_until(lambda: len(cut.errors()) > errors_before, 10 * TTL, "the cut host's writes failing")
        assert {e["type"] for e in cut.errors()} <= {
            "CallOutcomeUnknownError", "CallNotStartedError", "PersistenceError", "FencedOffError",
            "ContextOwnedElsewhereError", "ContextTimeoutError"}
    finally:
        cut.link.up()
    # back: its stale writes are fenced off, and its next calls reach the new owner
    acked_before = len(cut.acks())
    wait_until(lambda: len(cut.acks()) > acked_before + 5, 20 * TTL, "the cut host serving again")


def test_a_killed_hosts_contexts_are_served_by_the_others_within_lease_ttl_plus_one_second(
        hosts: Callable[..., list[Host]], pg_schema: str) -> None:
    doomed, a, b = hosts(3)
    doomed.command(op="own", ids=["k1", "k2"])
    doomed.expect("owned", 30)
    a.command(op="write", ids=["k1", "k2"], n=3, tag="a", timeout=10)  # forwarded while it lives
    a.expect("wrote", 60)
    os.kill(doomed.proc.pid, signal.SIGKILL)  # `ip netns exec` became the host's python
    doomed.proc.wait(10)
    killed = time.monotonic()
    # the next calls, with a deadline of lease_ttl + 1 s from the kill, are answered (here, or forwarded)
    a.command(op="write", ids=["k1"], n=1, tag="after", timeout=TTL + 1.0 - (time.monotonic() - killed))
    b.command(op="write", ids=["k2"], n=1, tag="after", timeout=TTL + 1.0 - (time.monotonic() - killed))
    a.expect("wrote", 30)
    b.expect("wrote", 30)
    assert a.errors() == [] and b.errors() == []
    for cid, h in (("k1", a), ("k2", b)):
        version, keys = _stored(pg_schema, cid)
        assert "after-0" in keys and version == 1 + len(keys)
        assert {x["key"] for x in h.acks() if x["cid"] == cid} <= keys
    for h in (a, b):
        h.command(op="exit")
        h.finish(60)
