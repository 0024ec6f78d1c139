"""The relay against the real brokers: at least once and in order per context across SIGKILLs of its
process, exactly once on JetStream; a broker cut off mid-run loses nothing and the lag recovers."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pykka
import pytest

from hoard import ConfigError, ContextAdapterConfig, ContextSystem, HoardError, Relay, open_system
from hoard.bridges import BrokerUnavailableError, Outgoing, make_publisher
from tests.bridges.brokers import KINDS, PORTS, Target, check_in_order, proxy_for
from tests.bridges.brokers import url as broker_url
from tests.bridges.conftest import require_broker
from tests.bridges.kids import Zygote
from tests.helpers import wait_for
from tests.pg import url_for

CONTEXTS = 5
NAME = "relay-under-test"
#: writes granted to the writer thread per relay run: the relay is still killed amid new changes, but
#: each run (and the last one, catching up) has tens of entries to publish, not hundreds
WRITES_PER_RUN = 25


def _system(store: object) -> ContextSystem:
    return open_system(store, adapter_config=ContextAdapterConfig(auto_activate_default=False))  # type: ignore[arg-type]


def _head(system: ContextSystem, after: int) -> int:
    entries = list(system.changes(after=after, timeout=0))
    return entries[-1].offset if entries else after


def _relay_killed(target: Target, kids: Zygote, pg_dsn: str, pg_schema: str, kills: int, seed: int) -> None:  # noqa: PLR0917 - the test's fixtures, then its size
    rng = random.Random(seed)  # noqa: S311 - seeded, reproducible kill moments, not a secret
    store = url_for(pg_dsn, pg_schema)
    args = ["relay", store, "--to", target.url(), "--subject", target.subject, "--name", NAME, "--batch", "8"]
    with _system(store) as system:
        consumer = system.consumer(NAME)  # registered before any write: the relay starts at offset 0
        trackers = [system.adapter.get_or_create(f"ctx {i}/{kind_safe(target)}") for i in range(CONTEXTS)]
        stop = threading.Event()
        errors: list[BaseException] = []
        budget: queue.Queue[None] = queue.Queue()  # one item per write the writer may make

        def write() -> None:
            i = 0
            try:
                while not stop.is_set():
                    try:
                        budget.get(timeout=0.05)  # bounded, so that it sees `stop`
                    except queue.Empty:
                        continue
                    trackers[i % CONTEXTS].set("n", i)
                    i += 1
            except BaseException as exc:
                errors.append(exc)
                raise

        writer = threading.Thread(target=write, name="test-writer")
        writer.start()
        pause = threading.Event()
        try:
            for _ in range(kills):
                for _write in range(WRITES_PER_RUN):
                    budget.put(None)
                position = consumer.position  # read now: the relay killed last may have committed after the last look
                pid = kids.fork(args)
                # a random moment while it publishes: once this run committed an offset, within 0-150 ms
                wait_for(lambda p=position: consumer.position > p, 60, "the relay to publish",
                         pause=0.01)  # each look is a store read
                pause.wait(rng.uniform(0.0, 0.15))
                kids.kill(pid)
            stop.set()
            writer.join(30)
            assert not errors, errors
            written = {t.id: t.version for t in trackers}
            assert sum(written.values()) > CONTEXTS * 5, written  # the writer made progress during the kills
            head = _head(system, consumer.position)
            pid = kids.fork([*args[:-1], "256"])  # the last one catches up in big batches
            wait_for(lambda: consumer.position >= head, 60, f"the last relay to reach offset {head}", pause=0.05)
            kids.kill(pid, signal.SIGTERM)
        finally:
            stop.set()
            writer.join(30)
    check_in_order(target.received(), written, exactly_once=target.kind == "nats")


def _change(doc: dict[str, Any]) -> str:
    """``<context id>:<version>`` of a received change (its message id without the feed offset)."""
    return f"{doc['context_id']}:{doc['version']}"


def kind_safe(target: Target) -> str:
    """A context id part with characters every broker's subject syntax treats specially (. / + #)."""
    return {"nats": "a.b*>", "mqtt": "a/b+#", "amqp": "a.b#*", "redis": "a b"}[target.kind]


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_relay_killed_at_random_moments_publishes_every_change_in_order(target: Target, kids: Zygote, pg_dsn: str,
                                                                         pg_schema: str) -> None:
    _relay_killed(target, kids, pg_dsn, pg_schema, kills=10, seed=16)


@pytest.mark.slow
@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_relay_killed_fifty_times_publishes_every_change_in_order(target: Target, kids: Zygote, pg_dsn: str,
                                                                   pg_schema: str) -> None:
    _relay_killed(target, kids, pg_dsn, pg_schema, kills=50, seed=1616)


@pytest.mark.parametrize("target", KINDS, indirect=True)
def test_a_broker_cut_off_mid_run_loses_nothing_and_the_lag_recovers(target: Target, tmp_path: Path) -> None:
    with proxy_for(PORTS[target.kind]) as proxy, _system(tmp_path / "s.db") as system:
        relay = Relay(system, target.url(proxy.port), subject=target.subject, name="cut", publish_timeout=1.0,
                      max_backoff=0.2).start()
        a, b = system.adapter.get_or_create("a"), system.adapter.get_or_create("b")
        for i in range(20):
            (a, b)[i % 2].set("n", i)
        relay.wait_caught_up(timeout=20)
        proxy.cut()
        for i in range(30):
            (a, b)[i % 2].update({"n": i, "m": -i})
        lag = wait_for(lambda: (lag := relay.lag()).failures > 0 and lag.entries > 0 and lag.seconds > 0.2 and lag,
                       20, "the relay to notice the broker is away, and its lag to age")
        assert lag.entries > 0 and not lag.connected
        metrics = system.metrics()
        assert metrics.relay_lag_entries["cut"] > 0
        assert 'hoard_relay_lag_entries{relay="cut"}' in metrics.to_prometheus()
        proxy.restore()
        relay.wait_caught_up(timeout=30)
        lag = relay.lag()
        assert (lag.entries, lag.seconds, lag.error) == (0, 0.0, None) and lag.connected
        assert system.metrics().relay_lag_entries["cut"] == 0
        written = {"a": a.version, "b": b.version}
        relay.stop()
        assert not relay.running
    check_in_order(target.received(), written, exactly_once=target.kind == "nats")


@pytest.mark.parametrize("target", ["redis", "nats"], indirect=True)
def test_a_relay_whose_broker_is_away_from_the_start_shows_its_lag_then_catches_up(target: Target,
                                                                                   tmp_path: Path) -> None:
    with proxy_for(PORTS[target.kind]) as proxy, _system(tmp_path / "s.db") as system:
        proxy.cut()
        a = system.adapter.get_or_create("a")
        for i in range(3):
            a.set("n", i)
        relay = Relay(system, target.url(proxy.port), subject=target.subject, name="late", publish_timeout=1.0,
                      max_backoff=0.2).start()
        lag = wait_for(lambda: (lag := relay.lag()).failures > 1 and lag.seconds > 0.2 and lag, 20,
                       "the relay's lag to age while it cannot connect")
        assert (lag.entries, lag.published, lag.connected) == (4, 0, False)  # created + 3 sets
        assert system.metrics().relay_lag_seconds["late"] > 0.2
        proxy.restore()
        assert relay.wait_caught_up(timeout=30).entries == 0
        written = {"a": a.version}
        relay.stop()
    check_in_order(target.received(), written, exactly_once=target.kind == "nats")


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_redis_relay_with_maxlen_trims_its_stream_and_names_each_entry(target: Target, tmp_path: Path) -> None:
    import redis  # noqa: PLC0415 - this test only

    target.options["maxlen"] = 10
    with _system(tmp_path / "s.db") as system:
        a = system.adapter.get_or_create("a")
        for i in range(300):
            a.set("n", i)
        with Relay(system, target.url(), subject=target.subject, name="trim", batch=64) as relay:
            assert relay.wait_caught_up(timeout=30).published == 301  # created + 300 sets
    client = redis.Redis.from_url(target.url().split("?", 1)[0])
    try:
        entries = client.xrange(target.tag)
    finally:
        client.close()
    # MAXLEN ~ 10 trims whole stream nodes: far fewer than 301 are left, the newest last
    assert 10 <= len(entries) < 301
    fields = [fields for _id, fields in entries]
    assert all(set(f) == {b"message_id", b"body"} for f in fields)
    assert [f[b"message_id"].decode() for f in fields] == [orjson.loads(f[b"body"])["message_id"] for f in fields]
    assert fields[-1][b"message_id"] == b"a:301@301"


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_refused_xadd_fails_the_batch_and_leaves_the_connection_in_step(target: Target) -> None:
    import redis  # noqa: PLC0415 - this test only

    client = redis.Redis.from_url(target.url())
    publisher = make_publisher(target.url(), subject=target.subject)
    try:
        client.set(f"{target.tag}-str", b"not a stream")  # an XADD to it is refused (WRONGTYPE)
        publisher.connect(5.0)
        batch = [Outgoing(target.tag, b"1", "a:1"), Outgoing(f"{target.tag}-str", b"2", "a:2"),
                 Outgoing(target.tag, b"3", "a:3")]
        with pytest.raises(BrokerUnavailableError, match="WRONGTYPE"):
            publisher.publish(batch, 5.0)
        publisher.publish([Outgoing(target.tag, b"4", "a:4")], 5.0)  # every reply was read: the next is its own
        assert [f[b"body"] for _id, f in client.xrange(target.tag)] == [b"1", b"3", b"4"]
    finally:
        publisher.close()
        client.delete(f"{target.tag}-str")
        client.close()


@pytest.mark.parametrize("target", ["nats"], indirect=True)
def test_a_jetstream_publish_that_no_stream_takes_or_that_the_stream_refuses_fails_the_batch(target: Target) -> None:
    import nats  # noqa: PLC0415 - the extra's client
    import nats.js.api  # noqa: PLC0415

    stream = target.tag.upper()

    async def small_stream() -> None:  # one message at most, and a new one refused when full
        nc = await nats.connect(target.url().split("?", 1)[0])
        await nc.jetstream().add_stream(name=stream, subjects=[f"{target.tag}.>"], max_msgs=1,
                                        discard=nats.js.api.DiscardPolicy.NEW)
        await nc.close()

    asyncio.run(small_stream())
    publisher = make_publisher(target.url().split("?", 1)[0], subject=target.subject)
    try:
        publisher.connect(5.0)
        with pytest.raises(BrokerUnavailableError, match="no JetStream stream"):
            publisher.publish([Outgoing(f"{target.tag}x.a", b"1", "a:1")], 5.0)  # no stream has this subject
        publisher.close()
        publisher.connect(5.0)
        publisher.publish([Outgoing(f"{target.tag}.a", b"1", "a:1")], 5.0)
        publisher.publish([Outgoing(f"{target.tag}.a", b"1", "a:1")], 5.0)  # a repeat: acked as a duplicate
        with pytest.raises(BrokerUnavailableError, match="refused"):
            publisher.publish([Outgoing(f"{target.tag}.a", b"2", "a:2"), Outgoing(f"{target.tag}.a", b"3", "a:3")],
                              5.0)
    finally:
        publisher.close()
    assert target.received() == [1]  # the first message, once; neither the repeat nor the refused ones


class _Recorder:
    """An in-memory pipelined publisher: `send` records a batch as sent, `wait` confirms the oldest
    one (appending it to `confirmed`); `failures` waits fail before any succeeds. No broker."""

    url = "memory://"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[list[Outgoing]] = []  # every batch sent, repeats included
        self.confirmed: list[Outgoing] = []
        self.in_flight_at_failure: list[int] = []
        self._open: list[list[Outgoing]] = []  # sent on this connection, not yet waited for

    def connect(self, timeout: float) -> None:
        self._open = []

    def send(self, messages: list[Outgoing], timeout: float) -> int:
        self.sent.append(list(messages))
        self._open.append(self.sent[-1])
        return len(self.sent)

    def wait(self, sent: int, timeout: float) -> None:
        assert self._open and self._open[0] is self.sent[sent - 1], "not the oldest batch sent on this connection"
        if self.failures:
            self.failures -= 1
            self.in_flight_at_failure.append(len(self._open))
            raise BrokerUnavailableError(self.url, "the broker went away (test)")
        self.confirmed += self._open.pop(0)  # batches are waited for in the order they were sent

    def publish(self, messages: list[Outgoing], timeout: float) -> None:
        self.wait(self.send(messages, timeout), timeout)

    def close(self) -> None:
        self._open = []


class _PlainRecorder:
    """A publisher with `publish` only (no `send` / `wait`): the relay publishes batch by batch."""

    url = "memory://"

    def __init__(self) -> None:
        self.batches: list[list[Outgoing]] = []

    def connect(self, timeout: float) -> None:
        pass

    def publish(self, messages: list[Outgoing], timeout: float) -> None:
        self.batches.append(list(messages))

    def close(self) -> None:
        pass


def _ids(messages: list[Outgoing]) -> list[str]:
    return [m.message_id for m in messages]


def test_a_relay_sends_the_next_batch_before_the_first_is_confirmed_and_resends_both_after_a_failure(
        tmp_path: Path) -> None:
    publisher = _Recorder(failures=1)
    with _system(tmp_path / "s.db") as system:
        a = system.adapter.get_or_create("a")
        for i in range(11):
            a.set("n", i)  # 12 entries: created + 11 sets
        relay = Relay(system, "memory://", name="pipelined", batch=4, max_backoff=0.05, publisher=publisher).start()
        try:
            assert relay.wait_caught_up(timeout=20).failures == 1
        finally:
            relay.stop()
        assert relay.lag().position == 12
    every = [f"a:{v}@{v}" for v in range(1, 13)]
    # the first wait failed with two batches on their way; both were sent again, from the first entry
    assert publisher.in_flight_at_failure == [2]
    assert _ids(publisher.sent[0] + publisher.sent[1]) == every[:8]
    assert _ids(publisher.sent[2] + publisher.sent[3] + publisher.sent[4]) == every
    assert _ids(publisher.confirmed) == every


def test_a_relay_publishes_batch_by_batch_through_a_publisher_without_send_and_wait(tmp_path: Path) -> None:
    publisher = _PlainRecorder()
    with _system(tmp_path / "s.db") as system:
        a = system.adapter.get_or_create("a")
        for i in range(9):
            a.set("n", i)
        with Relay(system, "memory://", name="plain", batch=4, publisher=publisher) as relay:
            assert relay.wait_caught_up(timeout=20).position == 10
    assert [len(b) for b in publisher.batches] == [4, 4, 2]
    assert _ids([m for b in publisher.batches for m in b]) == [f"a:{v}@{v}" for v in range(1, 11)]


class _CountingSystem:
    """The system, except that its feed consumers note every offset they commit (in `commits`)."""

    def __init__(self, system: ContextSystem) -> None:
        self._system = system
        self.commits: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._system, name)

    def consumer(self, name: str) -> Any:
        consumer = self._system.consumer(name)
        commits = self.commits

        class Counting:
            position = property(lambda _self: consumer.position)

            def commit(self, offset: int, **kwargs: Any) -> None:
                consumer.commit(offset, **kwargs)
                commits.append(offset)
        return Counting()


def test_a_relay_working_through_a_backlog_commits_ten_times_a_second_not_once_a_batch(tmp_path: Path) -> None:
    publisher = _Recorder()
    with _system(tmp_path / "s.db") as system:
        a = system.adapter.get_or_create("a")
        pykka.get_all([a.set_async("n", i) for i in range(399)], timeout=60)  # 400 entries: created + 399 sets
        counting = _CountingSystem(system)
        started = time.monotonic()
        relay = Relay(counting, "memory://", name="backlog", batch=2, publisher=publisher).start()  # type: ignore[arg-type]
        try:
            assert relay.wait_caught_up(timeout=60).position == 400
        finally:
            relay.stop()
        elapsed = time.monotonic() - started
    assert _ids(publisher.confirmed) == [f"a:{v}@{v}" for v in range(1, 401)]
    # 200 batches; a commit when the last is confirmed, and at most one each 0.1 s before that
    assert counting.commits[-1] == 400
    assert counting.commits == sorted(set(counting.commits))
    assert len(counting.commits) <= 2 + elapsed * 10, (len(counting.commits), elapsed)


class _Trickle:
    """A socket that hands out what it was given a few bytes per `recv`."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:min(size, self.step)], self.data[min(size, self.step):]
        return chunk


@pytest.mark.parametrize("step", [1, 4, 7, 1000])
def test_the_redis_reply_reader_takes_replies_split_anywhere_and_keeps_what_follows(step: int) -> None:
    pytest.importorskip("redis")
    from hoard._bridges._redis import read_replies  # noqa: PLC0415 - the backend's own reader, alone

    replies = b"$15\r\n1764650000000-0\r\n-WRONGTYPE no stream here\r\n$-1\r\n$3\r\n1-0\r\n" + b"$3\r\n2-0\r\n"
    sock: Any = _Trickle(replies, step)
    inbox = bytearray()
    assert read_replies(sock, inbox, 4) == "WRONGTYPE no stream here"
    assert read_replies(sock, inbox, 1) is None  # the next batch's reply (maybe received already)
    assert not inbox and not sock.data
    with pytest.raises(ConnectionError):  # nothing more comes: the server closed the connection
        read_replies(sock, inbox, 1)
    sock.data, inbox[:] = b"+OK\r\n", b""
    with pytest.raises(ValueError, match="unexpected reply"):
        read_replies(sock, inbox, 1)


def test_an_amqp_batch_that_fails_before_the_io_loop_runs_still_closes_its_connection() -> None:
    # pika refuses a routing key over 255 bytes in basic_publish, before the I/O loop runs; the stop
    # that failure asks for made the loop of the next close() return at once, and the connection was
    # left "closing", its socket open (found by the amqp helper)
    require_broker("amqp")
    publisher = make_publisher(broker_url("amqp", exchange="hoard-test-close"), subject="{context_id}")
    try:
        publisher.connect(5.0)
        connection = publisher._connection  # noqa: SLF001 - the connection close() must end
        with pytest.raises(BrokerUnavailableError, match="ShortStringTooLong"):
            publisher.publish([Outgoing("k" * 300, b"{}", "c:1")], 5.0)
    finally:
        publisher.close()
    assert connection.is_closed


#: per broker: a context id and a value whose changes that broker can never take, and a word of the
#: reason the relay gives. AMQP: every change of the context (its routing key is over 255 bytes);
#: JetStream: the set (a message over the server's max_payload, 1 MiB by default), not the creation
_POISON = {"amqp": ("x" * 250, {"v": 1}, "routing key"),
           "nats": ("big", {"v": "v" * 600_000, "w": "w" * 600_000}, "max_payload")}  # each under max_value_bytes


def _poisoned(system: ContextSystem, kind: str) -> tuple[list[str], int]:
    """a: created, set; then a context whose changes a broker of `kind` cannot take (all or some);
    then a: set again. Returns the message ids that broker cannot take, in feed order, and the
    offset of the last entry before the first of them."""
    a = system.adapter.get_or_create("a")
    a.set("n", 1)
    context_id, value, _reason = _POISON[kind]
    poison = system.adapter.get_or_create(context_id)
    created = _head(system, 0)
    poison.update(value)
    a.set("n", 2)
    if kind == "amqp":
        return [f"{context_id}:1", f"{context_id}:2"], created - 1
    return [f"{context_id}:2"], created


@pytest.mark.parametrize("target", ["amqp", "nats"], indirect=True)
def test_a_change_the_broker_can_never_take_stops_the_relay_just_before_it_with_a_typed_error(
        target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the relay retried such a change forever, with back-off, and committed nothing after it
    with _system(tmp_path / "s.db") as system:
        refused, before = _poisoned(system, target.kind)
        relay = Relay(system, target.url(), subject=target.subject, name="poison", publish_timeout=2.0,
                      max_backoff=0.2).start()
        wait_for(lambda: not relay.running, 30, "the relay to stop at the change it cannot publish")
        lag = relay.lag()
        assert lag.error is not None and refused[0] in lag.error and _POISON[target.kind][2] in lag.error, lag.error
        assert (lag.failures, lag.position, lag.connected) == (0, before, False)  # never retried
        assert any(r.levelname == "ERROR" and refused[0] in r.getMessage() for r in caplog.records)
        with pytest.raises(HoardError, match="not running"):
            relay.wait_caught_up(timeout=5)
        relay.stop()
        assert system.consumer("poison").position == before
    received = [_change(m) for m in target.received()]
    assert received == (["a:1", "a:2"] if target.kind == "amqp" else ["a:1", "a:2", "big:1"])


@pytest.mark.parametrize("target", ["amqp", "nats"], indirect=True)
def test_a_relay_told_to_skip_what_the_broker_can_never_take_logs_and_counts_it_and_goes_on(
        target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _system(tmp_path / "s.db") as system:
        refused, _before = _poisoned(system, target.kind)
        with Relay(system, target.url(), subject=target.subject, name="skip", publish_timeout=2.0,
                   unpublishable="skip") as relay:
            lag = relay.wait_caught_up(timeout=30)
        assert (lag.error, lag.failures, lag.entries, lag.skipped) == (None, 0, 0, len(refused))
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert all(any(m in line for line in logged) for m in refused), logged
    received = [_change(m) for m in target.received()]
    assert not set(refused) & set(received)
    assert received[:2] == ["a:1", "a:2"] and received[-1] == "a:3"


def test_a_relay_refuses_an_unknown_policy_for_changes_the_broker_cannot_take(tmp_path: Path) -> None:
    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match="unpublishable"):
        Relay(system, "redis://127.0.0.1:6379/0", unpublishable="retry")


def test_an_amqp_publisher_names_a_routing_key_or_message_id_over_255_bytes_before_sending() -> None:
    pytest.importorskip("pika")
    publisher: Any = make_publisher("amqp://guest:guest@127.0.0.1:5672/%2F", subject="{context_id}")
    ok = Outgoing("k" * 255, b"{}", "m" * 253 + ":1")
    assert publisher.unpublishable([ok, ok]) is None
    index, reason = publisher.unpublishable([ok, Outgoing("é" * 128, b"{}", "c:1"), ok])
    assert index == 1 and "routing key" in reason and "256 bytes" in reason
    index, reason = publisher.unpublishable([Outgoing("k", b"{}", "m" * 254 + ":1")])
    assert index == 0 and "message id" in reason


@pytest.mark.parametrize("target", ["nats"], indirect=True)
def test_a_nats_publisher_takes_a_message_of_exactly_max_payload_and_names_one_byte_more(target: Target) -> None:
    publisher: Any = make_publisher(target.url(), subject=target.subject, stream=target.options["stream"])
    try:
        publisher.connect(5.0)
        limit = publisher.max_payload()
        assert limit >= 1 << 16
        subject, message_id = target.subject.format(context_id="a"), "a:1"
        room = limit - publisher.overhead(message_id)
        fits = Outgoing(subject, b'"' + b"x" * (room - 2) + b'"', message_id)  # JSON: the test's reader decodes it
        over = Outgoing(subject, b'"' + b"x" * (room - 1) + b'"', "a:2")
        assert publisher.unpublishable([fits]) is None
        index, reason = publisher.unpublishable([fits, over])
        assert index == 1 and "max_payload" in reason
        publisher.publish([fits], 5.0)  # the server takes what was judged to fit
        with pytest.raises(BrokerUnavailableError):  # and refuses one byte more (the connection fails)
            publisher.publish([over], 5.0)
    finally:
        publisher.close()
    assert len(target.received()) == 1


def test_an_mqtt_publisher_names_a_topic_over_65535_bytes_before_sending() -> None:
    pytest.importorskip("paho.mqtt")
    publisher: Any = make_publisher("mqtt://127.0.0.1:1883")
    ok = Outgoing("t" * 65_535, b"{}", "c:1")
    assert publisher.unpublishable([ok]) is None
    index, reason = publisher.unpublishable([ok, Outgoing("t" * 65_534 + "é", b"{}", "c:2")])
    assert index == 1 and "65536 bytes" in reason


def _queued(queue_name: str) -> int:
    """Messages waiting in an AMQP queue (read without taking them)."""
    import pika  # noqa: PLC0415 - the broker's client, only where its tests run

    conn = pika.BlockingConnection(pika.URLParameters(broker_url("amqp")))
    try:
        return int(conn.channel().queue_declare(queue_name, passive=True).method.message_count)
    finally:
        conn.close()


@pytest.mark.parametrize("target", ["amqp"], indirect=True)
def test_hoard_relay_exits_1_naming_a_change_the_broker_can_never_take(target: Target, tmp_path: Path) -> None:
    # the command went on running with its relay stopped: a supervisor never saw the failure
    store = tmp_path / "s.db"
    with _system(store) as system:
        refused, before = _poisoned(system, target.kind)
        head = _head(system, 0)
    r = subprocess.run([sys.executable, "-m", "hoard", "relay", str(store), "--to", target.url(),  # noqa: S603 - our own CLI
                        "--subject", target.subject, "--name", "cli", "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    started, stopped = (orjson.loads(line) for line in r.stdout.splitlines())
    assert started["position"] == 0
    assert (stopped["position"], stopped["published"], stopped["skipped"]) == (before, 2, 0)
    assert refused[0] in stopped["error"] and refused[0] in r.stderr
    with subprocess.Popen([sys.executable, "-m", "hoard", "relay", str(store), "--to", target.url(),  # noqa: S603 - our own CLI
                           "--subject", target.subject, "--name", "cli", "--unpublishable", "skip", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as kid:
        try:
            assert kid.stdout is not None
            assert orjson.loads(kid.stdout.readline())["position"] == before
            wait_for(lambda: _queued(target.tag) == 3, 30, "the relay to skip and go on", pause=0.05)
            kid.send_signal(signal.SIGTERM)
            out, err = kid.communicate(timeout=30)
        finally:
            if kid.poll() is None:
                kid.kill()
    assert kid.returncode == 0, err
    stopped = orjson.loads(out)
    assert (stopped["skipped"], stopped["position"], stopped["error"]) == (2, head, None)
    assert all(m in err for m in refused)
    assert [_change(m) for m in target.received()] == ["a:1", "a:2", "a:3"]  # on from where it stopped


@pytest.mark.parametrize("target", ["nats"], indirect=True)
def test_a_nats_publisher_holds_messages_to_the_max_msg_size_of_a_stream_made_before_it(target: Target) -> None:
    """A stream's max_msg_size under the server's max_payload refused such a message at publish
    (err_code 10054), which the relay took as "broker unavailable" and retried forever."""
    import asyncio  # noqa: PLC0415

    import nats  # noqa: PLC0415

    from tests.bridges.brokers import url  # noqa: PLC0415

    stream, limit = target.options["stream"], 4096

    async def make() -> None:
        nc = await nats.connect(url("nats"))
        subject = target.subject.replace("{context_id}", ">")
        await nc.jetstream().add_stream(name=stream, subjects=[subject], max_msg_size=limit)
        await nc.close()
    asyncio.run(make())
    publisher: Any = make_publisher(target.url(), subject=target.subject, stream=stream)
    try:
        publisher.connect(5.0)
        subject, message_id = target.subject.format(context_id="a"), "a:1"
        room = limit - publisher.overhead(message_id)
        fits = Outgoing(subject, b'"' + b"x" * (room - 2) + b'"', message_id)
        over = Outgoing(subject, b'"' + b"x" * (room - 1) + b'"', "a:2")
        assert publisher.unpublishable([fits]) is None
        index, reason = publisher.unpublishable([fits, over])
        assert index == 1 and "max_msg_size" in reason and stream in reason
        publisher.publish([fits], 5.0)  # the stream takes what was judged to fit
        with pytest.raises(BrokerUnavailableError):  # and refuses one byte more
            publisher.publish([over], 5.0)
    finally:
        publisher.close()
    assert len(target.received()) == 1


@pytest.mark.parametrize("target", ["amqp"], indirect=True)
@pytest.mark.parametrize("told", [True, False], ids=["url-max_message_size", "learned-from-the-refusal"])
def test_an_amqp_publisher_holds_messages_to_the_broker_max_message_size(target: Target, told: bool) -> None:
    """RabbitMQ refuses a body over its max_message_size by closing the channel (406): the relay took
    it as "broker unavailable" and retried that change forever. The limit comes from the URL
    (``?max_message_size=``) or from the refusal, and `unpublishable()` names a message over it."""
    from tests.bridges.brokers import rabbitmq_max_message_size  # noqa: PLC0415

    limit = 4_096
    options = {**target.options, **({"max_message_size": limit} if told else {})}
    subject = target.subject.format(context_id="a")
    fits = Outgoing(subject, b'"' + b"x" * (limit - 2) + b'"', "a:1")
    over = Outgoing(subject, b'"' + b"x" * (limit - 1) + b'"', "a:2")
    with rabbitmq_max_message_size(limit):
        publisher: Any = make_publisher(broker_url("amqp", **options), subject=target.subject)
        try:
            publisher.connect(5.0)
            if not told:
                assert publisher.unpublishable([fits, over]) is None  # nothing says so yet
                with pytest.raises(BrokerUnavailableError, match="larger than configured max size"):
                    publisher.publish([over], 5.0)
                publisher.connect(5.0)  # as the relay does after a failure
            index, reason = publisher.unpublishable([fits, over])
            assert index == 1 and f"max_message_size of {limit}" in reason and f"{limit + 1} bytes" in reason
            publisher.publish([fits], 5.0)  # the broker takes what was judged to fit
        finally:
            publisher.close()
    assert target.received() == ["x" * (limit - 2)]  # the message that fits, once


@pytest.mark.parametrize("target", ["amqp"], indirect=True)
def test_an_amqp_relay_stops_at_a_change_over_the_broker_limit_after_one_refusal(target: Target,
                                                                                 tmp_path: Path) -> None:
    # the relay published the change, lost its channel, connected again and published it again, forever
    from tests.bridges.brokers import rabbitmq_max_message_size  # noqa: PLC0415

    with rabbitmq_max_message_size(4_096), _system(tmp_path / "s.db") as system:
        a = system.adapter.get_or_create("a")
        a.set("n", 1)
        before = _head(system, 0)
        a.set("big", "x" * 8_000)
        a.set("n", 2)
        relay = Relay(system, target.url(), subject=target.subject, name="limit", publish_timeout=2.0,
                      max_backoff=0.2).start()
        wait_for(lambda: not relay.running, 30, "the relay to stop at the change the broker refuses")
        lag = relay.lag()
        assert lag.error is not None and "a:3" in lag.error and "max_message_size of 4096" in lag.error, lag
        assert (lag.failures, lag.position) == (1, before)  # refused once, which named the limit
        relay.stop()
    # at least once: what went before the refused change may come twice (its batch was sent again)
    assert {_change(m) for m in target.received()} == {"a:1", "a:2"}


@pytest.mark.parametrize("subject", ["hoard/#/{context_id}", "hoard/+/{context_id}", "{context_id}/#", ""])
def test_an_mqtt_relay_refuses_a_topic_template_no_publish_can_use(tmp_path: Path, subject: str) -> None:
    # MQTT forbids wildcards in a topic published to: paho raised ValueError on the first batch and
    # the relay's thread died with it ("stopped by an unexpected error")
    pytest.importorskip("paho.mqtt")
    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match=r"MQTT|subject") as raised:
        Relay(system, "mqtt://127.0.0.1:1883", subject=subject, name="topic")
    assert repr(subject) in str(raised.value)


@pytest.mark.parametrize(("to", "subject", "problem"), [
    ("nats://127.0.0.1:4222?stream=NEVERMADE", "hoard {context_id}", "whitespace"),
    ("nats://127.0.0.1:4222?stream=NEVERMADE", "hoard..{context_id}", "empty token"),
    ("nats://127.0.0.1:4222?stream=NEVERMADE", "hoard.*.{context_id}", "wildcard"),
    ("mqtt://127.0.0.1:1883", "t/" + "x" * 65_533 + "{context_id}", "65536 bytes"),  # with a 1-byte id
    ("amqp://guest:guest@127.0.0.1:5672/%2F?exchange=" + "e" * 256, "hoard.{context_id}", "256 bytes"),
    ("amqp://guest:guest@127.0.0.1:5672/%2F?exchange=amq.direct", "hoard.{context_id}", "amq."),
    ("amqp://guest:guest@127.0.0.1:5672/%2F?exchange=amq.mine", "hoard.{context_id}", "amq."),
    ("nats://127.0.0.1:4222?stream=bad.name", "hoard.{context_id}", "stream"),
    ("nats://127.0.0.1:4222?stream=bad%20name", "hoard.{context_id}", "stream"),
])
def test_a_relay_refuses_a_subject_or_exchange_the_broker_can_never_use(tmp_path: Path, to: str, subject: str,
                                                                       problem: str) -> None:
    pytest.importorskip({"amqp": "pika", "mqtt": "paho.mqtt", "nats": "nats"}[to.split(":", 1)[0]])
    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match=problem):
        Relay(system, to, subject=subject, name="never")


@pytest.mark.parametrize("target", ["amqp"], indirect=True)
def test_an_amqp_publisher_forgets_a_learned_limit_when_its_connection_is_lost_otherwise(target: Target) -> None:
    """RabbitMQ reads max_message_size at boot: a broker restarted with a larger one drops every
    connection. A limit learned before it would have gone on naming (and, with unpublishable="skip",
    skipping) changes the broker now takes."""
    from tests.bridges.brokers import rabbitmq_max_message_size  # noqa: PLC0415

    limit = 4_096
    over = Outgoing(target.subject.format(context_id="a"), b'"' + b"x" * (limit - 1) + b'"', "a:1")
    with rabbitmq_max_message_size(limit), proxy_for(PORTS["amqp"]) as proxy:
        publisher: Any = make_publisher(broker_url("amqp", proxy.port, **target.options), subject=target.subject)
        try:
            publisher.connect(5.0)
            with pytest.raises(BrokerUnavailableError, match="larger than configured max size"):
                publisher.publish([over], 5.0)
            publisher.connect(5.0)
            assert publisher.unpublishable([over]) is not None  # learned
            proxy.cut()  # the connection lost, as in a broker restart
            with pytest.raises(BrokerUnavailableError):
                publisher.publish([over], 5.0)
            proxy.restore()
            publisher.connect(5.0)
            assert publisher.unpublishable([over]) is None  # forgotten: asked of the broker again
        finally:
            publisher.close()


@contextlib.contextmanager
def _relay_on_postgres(target: Target, store: Any, name: str) -> Iterator[tuple[ContextSystem, Any, Relay]]:
    """A system on `store` with context "a" at n=1, and a relay caught up with it; afterwards, the
    relay's every change checked in order at the broker."""
    with open_system(store, adapter_config=ContextAdapterConfig(auto_activate_default=False)) as system:
        a = system.adapter.get_or_create("a")
        a.set("n", 1)
        relay = Relay(system, target.url(), subject=target.subject, name=name, publish_timeout=2.0,
                      max_backoff=0.2).start()
        relay.wait_caught_up(timeout=20)
        yield system, a, relay
        lag = relay.wait_caught_up(timeout=30)
        assert lag.error is None and lag.failures > 0 and relay.running and lag.position == _head(system, 0)
        written = {"a": a.version}
        relay.stop()
    check_in_order(target.received(), written, exactly_once=False)


def _store_failure_met(relay: Relay, what: str) -> None:
    wait_for(lambda: relay.lag().failures > 0 or not relay.running, 30, what)
    assert relay.running and relay.lag().error is None, relay.lag()


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_relay_rides_out_its_store_being_away_and_publishes_every_change(target: Target, pg_dsn: str,
                                                                          pg_schema: str) -> None:
    """The relay stopped for good ("stopped by an unexpected error: PersistenceError: cannot reach
    ...") when its PostgreSQL store was away longer than the store's connect timeout, and stayed
    stopped once it came back; it now retries the store as it retries the broker."""
    from hoard.storage import PostgresStore  # noqa: PLC0415

    port = re.search(r"port=(\d+)", pg_dsn)
    assert port is not None, pg_dsn
    with proxy_for(int(port.group(1))) as proxy:
        store = PostgresStore(pg_dsn.replace(port.group(0), f"port={proxy.port}", 1), schema=pg_schema,
                              connect_timeout=1.0)
        with _relay_on_postgres(target, store, "store-away") as (_system, a, relay):
            proxy.cut()  # every store connection dropped, new ones refused
            _store_failure_met(relay, "the relay to meet its store's absence")
            proxy.restore()
            wait_for(lambda: _set_when_back(a), 30, "the store back for writes")


def _set_when_back(tracker: Any) -> bool:
    try:
        tracker.set("n", 2)
    except HoardError:
        return False
    return True


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_relay_whose_offset_commit_fails_for_a_while_commits_it_later(target: Target, pg_dsn: str,
                                                                       pg_schema: str) -> None:
    # the commit's error (here: the consumer's row locked by another session past the store's
    # statement timeout) was not looked at while the relay was idle (its position stayed behind),
    # and stopped the relay for good with the next batch
    import psycopg  # noqa: PLC0415

    from hoard.storage import PostgresStore  # noqa: PLC0415

    store = PostgresStore(pg_dsn, schema=pg_schema, statement_timeout=1.0)
    with _relay_on_postgres(target, store, "locked") as (_system, a, relay), psycopg.connect(pg_dsn) as blocker:
        # holds the consumer's row until it rolls back
        blocker.execute(f'SELECT * FROM "{pg_schema}".feed_consumers WHERE name = %s FOR UPDATE',  # noqa: S608 - the test's schema
                        ("locked",))
        a.set("n", 2)
        _store_failure_met(relay, "the offset commit to fail")
        blocker.rollback()


@pytest.mark.parametrize("target", ["nats"], indirect=True)
def test_a_context_deleted_and_made_again_is_published_whole_through_jetstream_deduplication(
        target: Target, tmp_path: Path) -> None:
    # a context made again under a deleted one's id starts again at version 1, and `hoard import
    # --replace` wrote its deletion and the imported state at one version: keyed by <id>:<version>
    # alone, JetStream took the new context's changes for repeats of the old one's and dropped them
    with _system(tmp_path / "s.db") as system:
        relay = Relay(system, target.url(), subject=target.subject, name="again").start()
        t = system.adapter.get_or_create("x")
        t.set("n", 1)
        system.manager.delete("x")
        t = system.adapter.get_or_create("x")
        t.set("n", 2)
        relay.wait_caught_up(timeout=20)
        entries = list(system.changes(timeout=0))
        relay.stop()
    received = target.received()
    assert [(d["offset"], d["version"], d["deleted"]) for d in received] == [
        (e.offset, e.version, e.deleted) for e in entries] == [(1, 1, False), (2, 2, False), (3, 3, True),
                                                                (4, 1, False), (5, 2, False)]
    assert len({d["message_id"] for d in received}) == 5
