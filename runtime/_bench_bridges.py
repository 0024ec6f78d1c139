"""The broker bridge rows of ``hoard bench`` (issue 16): relay throughput per broker against the same
broker client publishing the same messages in a bare loop with the same acknowledgement settings,
and commit-to-broker latency under a steady load against the same client's bare publish-to-receipt
latency at the same rate.

Runs against the brokers of ``HOARD_BENCH_BROKERS`` (default: the local ones, NATS 4222, MQTT 1883,
RabbitMQ 5672 guest/guest, Redis 6379); a broker that does not answer, or whose client extra is not
installed, gives a skipped row with the reason. Every name used on a broker (stream, exchange,
queue, key, topic) is unique to the run and removed afterwards. Threads and connections started here
are stopped before a function returns. Tooling, not imported by ``import hoard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import queue
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from hoard.storage import HoardError

from ._bridges import Outgoing, Relay, make_publisher
from ._system import ContextSystem

__all__ = ["BROKERS", "broker_problem", "latency_sides", "plain_xadd_side", "publisher_side", "throughput_sides"]

BROKERS: dict[str, str] = {
    "nats": "nats://127.0.0.1:4222", "mqtt": "mqtt://127.0.0.1:1883",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/%2F", "redis": "redis://127.0.0.1:6379/0",
}
_CLIENTS = {"nats": "nats", "mqtt": "paho", "amqp": "pika", "redis": "redis"}
_BATCH = 256


def broker_url(kind: str) -> str:
    override = os.environ.get("HOARD_BENCH_BROKERS")
    if override:
        for item in override.split(","):
            if item.split("://", 1)[0] == kind:
                return item
    return BROKERS[kind]


def broker_problem(kind: str) -> str | None:
    """Why broker `kind` cannot be measured, or None."""
    if importlib.util.find_spec(_CLIENTS[kind]) is None:
        return f"its client is not installed: pip install 'hoard-contexts[{kind}]'"
    parts = urlsplit(broker_url(kind))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return None
    except OSError as exc:
        return f"no {kind} broker answers at {parts.hostname}:{parts.port} ({exc})"


# -- where a side publishes, unique per round --------------------------------------------------------
def _place(kind: str, tag: str) -> tuple[str, dict[str, Any], Callable[[], None]]:
    """(subject template, publisher options, cleanup) for one round."""
    url = broker_url(kind)
    if kind == "nats":
        stream = tag.upper()

        def drop() -> None:
            import nats  # noqa: PLC0415 - the extra's client, only when measured

            async def run() -> None:
                nc = await nats.connect(url)
                with contextlib.suppress(Exception):
                    await nc.jetstream().delete_stream(stream)
                await nc.close()
            asyncio.run(run())
        return f"{tag}.{{context_id}}", {"stream": stream}, drop
    if kind == "amqp":
        def drop_amqp() -> None:
            import pika  # noqa: PLC0415

            conn = pika.BlockingConnection(pika.URLParameters(url))
            conn.channel().exchange_delete(tag)
            conn.close()
        return f"{tag}.{{context_id}}", {"exchange": tag}, drop_amqp
    if kind == "redis":
        def drop_redis() -> None:
            import redis  # noqa: PLC0415

            client = redis.Redis.from_url(url)
            client.delete(tag)
            client.close()
        return tag, {}, drop_redis
    return f"{tag}/{{context_id}}", {}, lambda: None


def _bare_publish(kind: str, options: dict[str, Any], messages: Sequence[Outgoing]) -> None:
    """The floor: the broker's client itself, connect + publish every message + close, with the relay's
    acknowledgement settings and batches (JetStream acks with message ids, QoS 1 PUBACKs, publisher
    confirms, pipelined XADD replies)."""
    url = broker_url(kind)
    chunks = [messages[i:i + _BATCH] for i in range(0, len(messages), _BATCH)]
    if kind == "nats":
        import nats  # noqa: PLC0415

        async def run() -> None:
            nc = await nats.connect(url)
            js = nc.jetstream()
            with contextlib.suppress(Exception):
                await js.add_stream(name=options["stream"], subjects=[f"{messages[0].subject.split('.')[0]}.>"])
            for chunk in chunks:
                futures = [await js.publish_async(m.subject, m.body, headers={"Nats-Msg-Id": m.message_id})
                           for m in chunk]
                await nc.flush()
                for f in futures:
                    await f
            await nc.close()
        asyncio.run(run())
    elif kind == "mqtt":
        import paho.mqtt.client as mqtt  # noqa: PLC0415
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        parts = urlsplit(url)
        connected: queue.Queue[int] = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.max_inflight_messages_set(1000)
        client.on_connect = lambda *_a: connected.put(1)
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        client.loop_start()
        connected.get(timeout=10)
        for chunk in chunks:
            infos = [client.publish(m.subject, m.body, qos=1) for m in chunk]
            for info in infos:
                info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
    elif kind == "amqp":
        import pika  # noqa: PLC0415

        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(options["exchange"], exchange_type="topic", durable=True)
        for m in messages:
            ch.basic_publish(options["exchange"], m.subject, m.body,
                             pika.BasicProperties(delivery_mode=2, message_id=m.message_id,
                                                  content_type="application/json"))
        conn.close()
    else:
        import redis  # noqa: PLC0415

        rclient = redis.Redis.from_url(url)
        for chunk in chunks:
            pipe = rclient.pipeline(transaction=False)
            for m in chunk:
                pipe.xadd(m.subject, {"message_id": m.message_id, "body": m.body})
            pipe.execute()
        rclient.close()


def throughput_sides(kind: str, system: ContextSystem, messages: Callable[[str], list[Outgoing]],
                     entries: int, retries: list[int]) -> tuple[Callable[[], float], Callable[[], float]]:
    """(relay, bare loop): each a callable running one round and returning messages per second. The
    relay follows `system`'s feed (holding `entries` entries) from offset 0 under a new consumer name;
    `messages(template)` gives the floor the same payloads and subjects. Each relay round appends its
    broker failures (batches published again) to `retries`."""
    def relay_side() -> float:
        tag = f"hb{uuid.uuid4().hex[:10]}"
        subject, options, drop = _place(kind, tag)
        try:
            t0 = time.perf_counter()
            relay = Relay(system, broker_url(kind), subject=subject, name=tag, batch=_BATCH, **options).start()
            try:
                relay.wait_caught_up(timeout=300)
            finally:
                relay.stop()
            elapsed = time.perf_counter() - t0
            lag = relay.lag()
            if lag.published < entries or (lag.published > entries and not lag.failures):
                # more: the feed held entries the floor does not publish (the round would be unfair)
                raise HoardError(f"the {kind} relay published {lag.published} entries, not {entries}")
            retries.append(lag.failures)
            return entries / elapsed
        finally:
            drop()

    return relay_side, lambda: _bare_round(kind, messages, _bare_publish)


def _bare_round(kind: str, messages: Callable[[str], list[Outgoing]],
                send: Callable[[str, dict[str, Any], Sequence[Outgoing]], None]) -> float:
    """One round of a reference side: `send(kind, options, messages)` timed (connect included) on
    names unique to the round, removed afterwards; messages per second."""
    tag = f"hb{uuid.uuid4().hex[:10]}"
    subject, options, drop = _place(kind, tag)
    try:
        batch = messages(subject)
        t0 = time.perf_counter()
        send(kind, options, batch)
        return len(batch) / (time.perf_counter() - t0)
    finally:
        drop()


def plain_xadd_side(messages: Callable[[str], list[Outgoing]]) -> Callable[[], float]:
    """A second Redis reference, shown in the row's note (the row's floor stays the pipelined loop):
    redis-py sending one ``XADD`` per message and waiting for its reply before the next, the plain
    loop a user writes. Same client, same acknowledgement (every reply awaited); no pipelining."""
    def send(kind: str, _options: dict[str, Any], batch: Sequence[Outgoing]) -> None:
        import redis  # noqa: PLC0415

        rclient = redis.Redis.from_url(broker_url(kind))
        for m in batch:
            rclient.xadd(m.subject, {"message_id": m.message_id, "body": m.body})
        rclient.close()
    return lambda: _bare_round("redis", messages, send)


def publisher_side(kind: str, messages: Callable[[str], list[Outgoing]]) -> Callable[[], float]:
    """A reference publishing the pre-encoded messages in the relay's batches, connect included. For
    AMQP it is the row's floor: pika itself (`_pika_batches`), a batch of confirms in flight and all
    awaited before the next batch, where `_bare_publish`'s blocking channel waits for each. Any other
    broker: the relay's own backend (`make_publisher`) alone."""
    def send(kind: str, options: dict[str, Any], batch: Sequence[Outgoing]) -> None:
        if kind == "amqp":
            _pika_batches(broker_url(kind), options["exchange"], batch)
            return
        publisher = make_publisher(broker_url(kind), subject=batch[0].subject, **options)
        publisher.connect(5.0)
        try:
            for i in range(0, len(batch), _BATCH):
                publisher.publish(batch[i:i + _BATCH], 5.0)
        finally:
            publisher.close()
    return lambda: _bare_round(kind, messages, send)


def _pika_batches(url: str, exchange: str, messages: Sequence[Outgoing], timeout: float = 30.0) -> None:
    """The AMQP floor: pika's `SelectConnection` with publisher confirms, the exchange declared as the
    relay declares it, each batch of `_BATCH` published with ``basic_publish`` (persistent, the same
    properties as the relay's) and the I/O loop run until the broker acked every message of the batch;
    then the next batch; then close. The plain pika program with the relay's acknowledgement settings
    and batches (it used to be the relay's own publisher alone: hoard's code, so a faster publisher
    raised the floor it was measured against). Raises `HoardError` on a nack, a close, or `timeout` s
    without the batch confirmed."""
    floor = _PikaFloor(url, exchange, timeout)
    try:
        floor.run(lambda: floor.ready)
        for i in range(0, len(messages), _BATCH):
            floor.publish(messages[i:i + _BATCH])
    finally:
        floor.close()


class _PikaFloor:
    """`_pika_batches`' connection and its callbacks (the caller's thread runs the I/O loop)."""

    def __init__(self, url: str, exchange: str, timeout: float) -> None:
        import pika  # noqa: PLC0415

        self.exchange, self.timeout = exchange, timeout
        self.ready, self.problem = False, ""
        self.channel: Any = None
        self.tag = self.acked = 0
        self.singles: set[int] = set()
        self.pika: Any = pika
        self.conn = pika.SelectConnection(pika.URLParameters(url),
                                          on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
                                          on_open_error_callback=self._on_error, on_close_callback=self._on_error)

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm)
        channel.exchange_declare(self.exchange, exchange_type="topic", durable=True, callback=self._on_declared)

    def _on_declared(self, _frame: Any) -> None:
        self.ready = True
        self.conn.ioloop.stop()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, self.pika.spec.Basic.Nack):
            self.problem = f"nack {method.delivery_tag}"
        elif method.multiple:
            self.acked = max(self.acked, method.delivery_tag)
        else:
            self.singles.add(method.delivery_tag)
        while self.acked + 1 in self.singles:
            self.acked += 1
            self.singles.discard(self.acked)
        if self.acked >= self.tag or self.problem:
            self.conn.ioloop.stop()

    def _on_error(self, _conn: Any, err: Any) -> None:
        self.problem = self.problem or f"{type(err).__name__}: {err}"
        self.conn.ioloop.stop()

    def _expire(self) -> None:
        self.problem = self.problem or "timed out"
        self.conn.ioloop.stop()

    def publish(self, batch: Sequence[Outgoing]) -> None:
        channel = self.channel  # set before `ready`, which `_pika_batches` waited for
        for m in batch:
            props = self.pika.BasicProperties(delivery_mode=2, message_id=m.message_id,
                                              content_type="application/json")
            channel.basic_publish(self.exchange, m.subject, m.body, props)
            self.tag += 1
        self.run(lambda: self.acked >= self.tag)

    def run(self, done: Callable[[], bool]) -> None:
        loop = self.conn.ioloop
        timer = loop.call_later(self.timeout, self._expire)
        while not done() and not self.problem:
            loop.start()  # until a callback stops it
        loop.remove_timeout(timer)
        if self.problem:
            raise HoardError(f"the AMQP floor failed: {self.problem}")

    def close(self) -> None:
        conn = self.conn
        if not (conn.is_closed or conn.is_closing):
            conn.close()
        if not conn.is_closed:  # _on_error stops the loop once it is closed (at most 5 s)
            timer = conn.ioloop.call_later(5.0, conn.ioloop.stop)
            conn.ioloop.start()
            conn.ioloop.remove_timeout(timer)
        conn.ioloop.close()


# -- latency ---------------------------------------------------------------------------------------------
class _Receiver:
    """Subscribes to what one round publishes and notes the receipt time of each message."""

    def __init__(self, kind: str, tag: str, subject: str) -> None:
        self.kind, self.tag = kind, tag
        self.got: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(subject,), name="hoard-bench-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError(f"the {kind} receiver did not subscribe")

    def _note(self, body: bytes) -> None:
        self.got.put((time.time(), body))

    def _run(self, subject: str) -> None:  # one small subscriber per broker, side by side
        url = broker_url(self.kind)
        if self.kind == "nats":
            import nats  # noqa: PLC0415

            async def note(msg: Any) -> None:
                self._note(msg.data)

            async def run() -> None:
                nc = await nats.connect(url)
                await nc.subscribe(subject.replace("{context_id}", ">"), cb=note)
                await nc.flush()
                self._ready.set()
                while not self._stop.is_set():
                    await asyncio.sleep(0.05)  # the loop must run to deliver; the stop flag is checked between
                await nc.close()
            asyncio.run(run())
        elif self.kind == "mqtt":
            import paho.mqtt.client as mqtt  # noqa: PLC0415
            from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

            parts = urlsplit(url)
            client = mqtt.Client(CallbackAPIVersion.VERSION2)
            client.on_message = lambda _c, _u, m: self._note(bytes(m.payload))
            client.on_subscribe = lambda *_a: self._ready.set()
            client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
            client.subscribe(subject.replace("{context_id}", "#"), qos=1)
            while not self._stop.is_set():
                client.loop(0.05)
            client.disconnect()
        elif self.kind == "amqp":
            import pika  # noqa: PLC0415

            conn = pika.BlockingConnection(pika.URLParameters(url))
            ch = conn.channel()
            ch.exchange_declare(self.tag, exchange_type="topic", durable=True)
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.queue_bind(q, self.tag, routing_key=f"{self.tag}.#")
            self._ready.set()
            for method, _props, body in ch.consume(q, auto_ack=True, inactivity_timeout=0.05):
                if method is not None:
                    self._note(body)
                if self._stop.is_set():
                    break
            conn.close()
        else:
            import redis  # noqa: PLC0415

            rclient = redis.Redis.from_url(url)
            last: Any = "$"
            self._ready.set()
            while not self._stop.is_set():
                reply: Any = rclient.xread({self.tag: last}, block=50)
                for _key, items in reply or []:
                    for entry_id, fields in items:
                        last = entry_id
                        self._note(bytes(fields[b"body"]))
            rclient.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _collect(receiver: _Receiver, n: int, key: str, context_id: str | None = None, after: int = 0) -> list[float]:
    """Latencies (ms, receipt time minus the body's `key`) of the first `n` messages of a round; with
    `context_id`, only that context's changes past version `after` count (the catch-up before the
    round may still be arriving: counting one of those measured how old the bench's setup writes
    were, seconds)."""
    out: list[float] = []
    deadline = time.monotonic() + 60
    while len(out) < n and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            at, body = receiver.got.get(timeout=1)
            doc = orjson.loads(body)
            if context_id is not None and (doc.get("context_id") != context_id or doc.get("version", 0) <= after):
                continue
            out.append((at - doc[key]) * 1000)
    return out


def _drain(receiver: _Receiver, offset: int) -> None:
    """Take what `receiver` got until the message of feed offset `offset` (a relay's catch-up, all
    confirmed by the broker but maybe not all delivered to the subscriber yet), at most 60 s."""
    deadline = time.monotonic() + 60
    while offset > 0 and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            _at, body = receiver.got.get(timeout=1)
            if orjson.loads(body).get("offset", 0) >= offset:
                return


def latency_sides(kind: str, system: ContextSystem, writes: int, rate: float, failures: list[int]
                  ) -> tuple[Callable[[], tuple[float, float, float]], Callable[[], tuple[float, float]]]:
    """(relay, bare): each runs one round of `writes` messages at `rate` per second and returns
    (median, p99) in ms. Relay: a durable write's change time (``at``, taken as it is applied, before
    its commit) to receipt by a subscriber, with the relay running; it also returns the p99 of the
    write's own commit (``at`` to the write's return), the part of the relay's latency spent before
    the relay can see the change. Bare: the client's publish (same acknowledgement settings, one
    message at a time) to receipt by the same subscriber. The relay's broker failures of the round
    are appended to `failures`."""
    tracker = system.adapter.get_or_create(f"latency-{kind}")
    pace = threading.Event()  # paces the steady load: one write per 1/rate s (a timer, not a wait for a result)

    def summary(ms: list[float]) -> tuple[float, float]:
        return statistics.median(ms), _percentile(ms, 0.99)

    def relay_side() -> tuple[float, float, float]:
        tag = f"hl{uuid.uuid4().hex[:10]}"
        subject, options, drop = _place(kind, tag)
        receiver = _Receiver(kind, tag, subject)
        try:
            relay = Relay(system, broker_url(kind), subject=subject, name=tag, **options).start()
            try:
                # the subscriber takes the catch-up first: a backlog of its own would delay the first
                # samples of the steady load (AMQP p99 107 ms in one run, bare 6.7 ms)
                _drain(receiver, relay.wait_caught_up(timeout=60).position)
                start = tracker.version  # what the catch-up published is not part of the steady load
                committed = []  # ms from each write's change time to its return (its durable commit)
                for i in range(writes):
                    tracker.set("n", i)
                    committed.append((time.time() - tracker.state().updated_at) * 1000)
                    pace.wait(1 / rate)
                result = (*summary(_collect(receiver, writes, "at", tracker.id, start)), _percentile(committed, 0.99))
            finally:
                relay.stop()
            failures.append(relay.lag().failures)
            return result
        finally:
            receiver.close()
            drop()

    def bare_side() -> tuple[float, float]:
        tag = f"hl{uuid.uuid4().hex[:10]}"
        subject, options, drop = _place(kind, tag)
        receiver = _Receiver(kind, tag, subject)
        publisher = make_publisher(broker_url(kind), subject=subject, **options)
        try:
            publisher.connect(5.0)
            for i in range(writes):
                sent = orjson.dumps({"sent": time.time(), "i": i})
                publisher.publish([Outgoing(subject.replace("{context_id}", "bare"), sent, f"bare:{i}")], 5.0)
                pace.wait(1 / rate)
            return summary(_collect(receiver, writes, "sent"))
        finally:
            publisher.close()
            receiver.close()
            drop()
    return relay_side, bare_side
