"""The real brokers of the bridge tests, what each one received, and a TCP proxy that cuts them off.

Each broker is used for real at 127.0.0.1 (NATS with JetStream 4222, Mosquitto 1883, RabbitMQ 5672
guest/guest, Redis 6379). A test that needs one takes the `broker` fixture (tests/bridges/conftest.py):
skipped with the reason when it does not answer, failed under ``CI=true``. Every name a test uses
(stream, subject prefix, queue, topic) is unique to that test, and removed afterwards where the
broker keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import orjson

HOST = "127.0.0.1"
PORTS = {"nats": 4222, "mqtt": 1883, "amqp": 5672, "redis": 6379}
KINDS = tuple(PORTS)


def broker_problem(kind: str, port: int | None = None) -> str | None:
    """Why the broker `kind` cannot be used, or None if it answers at its port."""
    port = port or PORTS[kind]
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return None
    except OSError as exc:
        return f"no {kind} broker answers at {HOST}:{port} ({exc})"


_RABBITMQ_3_DEFAULT = 134_217_728  # max_message_size (128 MiB)


def _rabbitmqctl_eval(expression: str) -> str:
    done = subprocess.run(["rabbitmqctl", "eval", expression],  # noqa: S603, S607 - the broker's own tool, our text
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@contextlib.contextmanager
def rabbitmq_max_message_size(size: int) -> Iterator[None]:
    """RabbitMQ's ``max_message_size`` set to `size` bytes (channels opened from now on refuse a
    larger body: the channel is closed with 406 PRECONDITION_FAILED), restored afterwards. Needs
    ``rabbitmqctl`` on this machine (as root): skipped without it, failed under ``CI=true``."""
    import pytest  # noqa: PLC0415 - only the tests that change the broker use it

    if shutil.which("rabbitmqctl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true requires rabbitmqctl to set RabbitMQ's max_message_size")
        pytest.skip("no rabbitmqctl here to set RabbitMQ's max_message_size (these tests run in CI)")
    found = re.fullmatch(r"\{ok,(\d+)\}", _rabbitmqctl_eval("application:get_env(rabbit, max_message_size)."))
    # under 1 MiB it can only be what such a test set and a run stopped before restoring (or two runs
    # at once on this broker): put RabbitMQ 3's default back then, not that
    old = int(found.group(1)) if found is not None and int(found.group(1)) >= 1 << 20 else _RABBITMQ_3_DEFAULT
    _rabbitmqctl_eval(f"application:set_env(rabbit, max_message_size, {int(size)}).")
    try:
        yield
    finally:
        _rabbitmqctl_eval(f"application:set_env(rabbit, max_message_size, {old}).")


def url(kind: str, port: int | None = None, **query: Any) -> str:
    port = port or PORTS[kind]
    base = {"nats": f"nats://{HOST}:{port}", "mqtt": f"mqtt://{HOST}:{port}",
            "amqp": f"amqp://guest:guest@{HOST}:{port}/%2F", "redis": f"redis://{HOST}:{port}/0"}[kind]
    if query:
        base += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return base


@attrs.define
class Target:
    """Where a test's relay publishes on broker `kind`, and how to read back what arrived there."""

    kind: str
    tag: str
    subject: str  # the relay's template
    options: dict[str, Any]  # the relay's URL query
    collected: list[dict[str, Any]] = attrs.field(factory=list)  # MQTT: filled as messages arrive
    closers: list[Callable[[], None]] = attrs.field(factory=list)  # run by close(), last first

    def url(self, port: int | None = None) -> str:
        return url(self.kind, port, **self.options)

    def received(self) -> list[dict[str, Any]]:
        """Every payload the broker holds (or delivered to the test's subscriber), in its order."""
        return {"nats": self._nats, "mqtt": self._mqtt, "amqp": self._amqp, "redis": self._redis}[self.kind]()

    # -- per broker ----------------------------------------------------------------------------------
    def _nats(self) -> list[dict[str, Any]]:
        import nats  # noqa: PLC0415 - the broker's client, only where its tests run

        async def read() -> list[dict[str, Any]]:
            nc = await nats.connect(url("nats"))
            try:
                js = nc.jetstream()
                info = await js.stream_info(self.options["stream"])
                out = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    msg = await js.get_msg(self.options["stream"], seq)
                    out.append(orjson.loads(msg.data))
                return out
            finally:
                await nc.close()
        return asyncio.run(read())

    def _mqtt(self) -> list[dict[str, Any]]:
        return list(self.collected)

    def _amqp(self) -> list[dict[str, Any]]:
        import pika  # noqa: PLC0415

        conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
        try:
            ch = conn.channel()
            out = []
            while True:
                method, _props, body = ch.basic_get(self.tag, auto_ack=True)
                if method is None:
                    return out
                out.append(orjson.loads(body))
        finally:
            conn.close()

    def _redis(self) -> list[dict[str, Any]]:
        import redis  # noqa: PLC0415

        client = redis.Redis.from_url(url("redis"))
        try:
            return [orjson.loads(fields[b"body"]) for _id, fields in client.xrange(self.tag)]
        finally:
            client.close()

    def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()


def make_target(kind: str) -> Target:
    """Declare what a relay of one test publishes into, and start listening there (MQTT)."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    if kind == "nats":
        # the stream is created by the relay (?stream=); removed here afterwards
        target = Target(kind, tag, f"{tag}.{{context_id}}", {"stream": tag.upper()})
        target.closers.append(lambda: _nats_delete_stream(tag.upper()))
        return target
    if kind == "redis":
        target = Target(kind, tag, tag, {})  # one stream for every context: arrival order across them too

        def drop() -> None:
            import redis  # noqa: PLC0415
            client = redis.Redis.from_url(url("redis"))
            client.delete(tag)
            client.close()
        target.closers.append(drop)
        return target
    if kind == "amqp":
        import pika  # noqa: PLC0415

        conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
        ch = conn.channel()
        ch.exchange_declare(tag, exchange_type="topic", durable=True)
        ch.queue_declare(tag, durable=True)
        ch.queue_bind(tag, tag, routing_key=f"{tag}.#")
        conn.close()
        target = Target(kind, tag, f"{tag}.{{context_id}}", {"exchange": tag})

        def drop_amqp() -> None:
            c = pika.BlockingConnection(pika.URLParameters(url("amqp")))
            c.channel().queue_delete(tag)
            c.channel().exchange_delete(tag)
            c.close()
        target.closers.append(drop_amqp)
        return target
    # MQTT keeps nothing: a subscriber of the test collects what arrives, from before the relay starts
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    target = Target(kind, tag, f"{tag}/{{context_id}}", {})
    subscribed: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{tag}-sub")
    client.on_message = lambda _c, _u, msg: target.collected.append(orjson.loads(msg.payload))
    client.on_subscribe = lambda *_args: subscribed.put(1)
    client.connect(HOST, PORTS["mqtt"])
    client.loop_start()
    client.subscribe(f"{tag}/#", qos=1)
    subscribed.get(timeout=10)

    def stop_mqtt() -> None:
        client.disconnect()
        client.loop_stop()
    target.closers.append(stop_mqtt)
    return target


def _nats_delete_stream(name: str) -> None:
    import nats  # noqa: PLC0415
    import nats.js.errors  # noqa: PLC0415

    async def drop() -> None:
        nc = await nats.connect(url("nats"))
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)
        await nc.close()
    asyncio.run(drop())


def check_in_order(received: list[dict[str, Any]], written: dict[str, int], *,
                   exactly_once: bool) -> dict[str, list[int]]:
    """Every (context id, version) of `written` (context -> newest version, from 1) arrived, each one's
    first arrival after that of every lower version of its context; with `exactly_once`, none twice.
    Returns the versions as they arrived, by context."""
    by_context: dict[str, list[int]] = {}
    for doc in received:
        assert doc["type"] == "hoard.change" and doc["format"] == 1
        assert doc["message_id"] == f"{doc['context_id']}:{doc['version']}@{doc['offset']}"
        by_context.setdefault(doc["context_id"], []).append(doc["version"])
    assert set(by_context) == set(written), (sorted(by_context), sorted(written))
    for context_id, versions in by_context.items():
        newest = 0
        for v in versions:
            if v > newest:
                assert v == newest + 1, f"{context_id}: version {v} arrived before {newest + 1} ({versions})"
                newest = v
        assert newest == written[context_id], f"{context_id}: {newest} arrived, {written[context_id]} written"
        if exactly_once:
            assert versions == list(range(1, written[context_id] + 1)), f"{context_id}: {versions}"
    return by_context


class TcpProxy:
    """A TCP proxy in front of a broker that a test cuts off and restores.

    `cut()` closes every connection through it and refuses new ones (accepted, then closed at once:
    what a client sees of a broker that went away); `restore()` lets connections through again.
    Threads: one accepting, two per connection (one per direction); all ended by `close()`.
    """

    def __init__(self, port: int) -> None:
        self._target = (HOST, port)
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), name="test-proxy-pump", daemon=True)
                self._threads.append(t)
                t.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._accepting.join(5)
        for t in self._threads:
            t.join(5)


@contextlib.contextmanager
def proxy_for(port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


# -- commands in ----------------------------------------------------------------------------------------
@attrs.define
class CommandChannel:
    """Where a test sends commands to an applier on broker `kind`, and where its dead letters go."""

    kind: str
    tag: str
    subject: str
    dead_letter: str
    stream: str | None
    dead: list[dict[str, Any]] = attrs.field(factory=list)  # MQTT: dead letters as they arrive
    closers: list[Callable[[], None]] = attrs.field(factory=list)

    def url(self) -> str:
        return url(self.kind, ack_wait=1) if self.kind == "nats" else url(self.kind)

    def cli_args(self, store: str, name: str) -> list[str]:
        args = ["apply", store, "--from", self.url(), "--subject", self.subject, "--dead-letter", self.dead_letter,
                "--name", name]
        return [*args, "--stream", self.stream] if self.stream else args

    def send(self, bodies: list[bytes]) -> None:
        """Publish `bodies` in order, each confirmed by the broker."""
        if self.kind == "nats":
            import nats  # noqa: PLC0415

            async def send() -> None:
                nc = await nats.connect(url("nats"))
                js = nc.jetstream()
                for body in bodies:
                    await js.publish(self.subject, body)
                await nc.close()
            asyncio.run(send())
        elif self.kind == "amqp":
            import pika  # noqa: PLC0415

            conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
            ch = conn.channel()
            ch.confirm_delivery()
            for body in bodies:
                ch.basic_publish("", self.subject, body, pika.BasicProperties(delivery_mode=2))
            conn.close()
        else:
            client = _mqtt_client(f"{self.tag}-pub")
            for body in bodies:
                client.publish(self.subject, body, qos=1).wait_for_publish(10)
            client.disconnect()
            client.loop_stop()

    def dead_letters(self) -> list[dict[str, Any]]:
        if self.kind == "nats":
            import nats  # noqa: PLC0415

            async def read() -> list[dict[str, Any]]:
                nc = await nats.connect(url("nats"))
                js = nc.jetstream()
                info = await js.stream_info(self.stream)
                out = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    msg = await js.get_msg(self.stream, seq)
                    if msg.subject == self.dead_letter:
                        out.append(orjson.loads(msg.data))
                await nc.close()
                return out
            return asyncio.run(read())
        if self.kind == "amqp":
            import pika  # noqa: PLC0415

            conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
            ch = conn.channel()
            out = []
            while True:
                method, _props, body = ch.basic_get(self.dead_letter, auto_ack=False)
                if method is None:
                    break
                out.append(orjson.loads(body))
            conn.close()  # not acked: they stay for a second look
            return out
        return list(self.dead)

    def unfinished(self, name: str) -> int:
        """Commands the broker still holds for applier `name` (not acknowledged); NATS and AMQP."""
        if self.kind == "nats":
            import nats  # noqa: PLC0415

            async def info() -> int:
                nc = await nats.connect(url("nats"))
                ci = await nc.jetstream().consumer_info(self.stream, name)
                await nc.close()
                return int(ci.num_ack_pending + ci.num_pending)
            return asyncio.run(info())
        import pika  # noqa: PLC0415

        conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
        count = int(conn.channel().queue_declare(self.subject, passive=True).method.message_count)
        conn.close()
        return count

    def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()


def _mqtt_client(client_id: str, *, persistent: bool = False) -> Any:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    connected: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
    client.on_connect = lambda *_args: connected.put(1)
    client.connect(HOST, PORTS["mqtt"])
    client.loop_start()
    connected.get(timeout=10)
    return client


def _subscribe(client: Any, topic: str) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK."""
    done: queue.Queue[int] = queue.Queue()
    client.on_subscribe = lambda *_args: done.put(1)
    client.subscribe(topic, qos=1)
    done.get(timeout=10)


def make_channel(kind: str, applier_name: str) -> CommandChannel:
    """Declare a command subject (and dead-letter subject) for one test on broker `kind`."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    if kind == "nats":
        import nats  # noqa: PLC0415

        stream = f"C{tag.upper()}"
        channel = CommandChannel(kind, tag, f"{tag}.cmd", f"{tag}.dead", stream)

        async def create() -> None:
            nc = await nats.connect(url("nats"))
            await nc.jetstream().add_stream(name=stream, subjects=[channel.subject, channel.dead_letter])
            await nc.close()
        asyncio.run(create())
        channel.closers.append(lambda: _nats_delete_stream(stream))
        return channel
    if kind == "amqp":
        import pika  # noqa: PLC0415

        channel = CommandChannel(kind, tag, f"{tag}.cmd", f"{tag}.dead", None)
        conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
        for q in (channel.subject, channel.dead_letter):
            conn.channel().queue_declare(q, durable=True)
        conn.close()

        def drop() -> None:
            c = pika.BlockingConnection(pika.URLParameters(url("amqp")))
            for q in (channel.subject, channel.dead_letter):
                c.channel().queue_delete(q)
            c.close()
        channel.closers.append(drop)
        return channel
    channel = CommandChannel(kind, tag, f"{tag}/cmd", f"{tag}/dead", None)
    # the applier's persistent session exists before any command is sent: the broker keeps them for it
    session = _mqtt_client(applier_name, persistent=True)
    _subscribe(session, channel.subject)
    session.disconnect()
    session.loop_stop()
    watcher = _mqtt_client(f"{tag}-dead")
    watcher.on_message = lambda _c, _u, msg: channel.dead.append(orjson.loads(msg.payload))
    _subscribe(watcher, channel.dead_letter)

    def stop() -> None:
        watcher.disconnect()
        watcher.loop_stop()
        cleaner = _mqtt_client(applier_name)  # a clean session ends the persistent one
        cleaner.disconnect()
        cleaner.loop_stop()
    channel.closers.append(stop)
    return channel
