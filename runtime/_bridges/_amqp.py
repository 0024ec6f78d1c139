"""AMQP 0-9-1 backend (pika, blocking connection; ``pip install 'hoard-contexts[amqp]'``), for RabbitMQ.

pika's `BlockingConnection` runs in the caller's thread (the bridge's): no thread of its own.

Out: publisher confirms on, persistent messages (delivery mode 2) with ``message_id`` set to
``<context id>:<version>``, to the exchange ``?exchange=NAME`` (a durable topic exchange, declared;
default ``hoard``) with the rendered subject as routing key. pika's blocking channel waits for each
message's confirm before the next (``basic_publish`` returns on the broker's ack and raises on a nack or
an unroutable message); a batch is therefore confirmed message by message, in order.

In: the durable queue named by the subject (declared), manual acks, a prefetch of the batch size.
Messages unacked when the connection ends (a killed bridge) are requeued by the broker at once and
delivered again. Answers go to a message's ``reply_to`` queue; dead letters to the queue named by
``--dead-letter`` (declared durable), both through the default exchange with confirms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pika
import pika.exceptions

from ._broker import Incoming, Outgoing, public_url, url_options
from ._errors import BrokerUnavailableError

__all__ = ["AmqpCommandSource", "AmqpPublisher"]

_PERSISTENT = 2


class _Channel:
    def __init__(self, url: str) -> None:
        self.raw_url = url.split("?", 1)[0]
        self.url = public_url(url)
        self.connection: Any = None
        self.channel: Any = None

    def open(self, timeout: float) -> Any:
        params = pika.URLParameters(self.raw_url)
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.stack_timeout = timeout
        params.connection_attempts = 1
        params.heartbeat = 30
        try:
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerUnavailableError(self.url, f"connecting: {type(exc).__name__}: {exc}") from exc
        return self.channel

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.channel is None:
            raise BrokerUnavailableError(self.url, "not connected")
        try:
            return fn(*args, **kwargs)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailableError(self.url, f"{what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to report
                connection.close()


class AmqpPublisher:
    """Publishes with publisher confirms (see the module docstring)."""

    def __init__(self, url: str, *, subject: str = "hoard.{context_id}", exchange: str | None = None) -> None:
        self.url = public_url(url)
        self._channel = _Channel(url)
        self._exchange = exchange if exchange is not None else url_options(url).get("exchange", "hoard")

    def connect(self, timeout: float) -> None:
        channel = self._channel.open(timeout)
        if self._exchange:
            self._channel.call("declaring the exchange", channel.exchange_declare, self._exchange,
                               exchange_type="topic", durable=True)

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:  # socket_timeout bounds it
        channel = self._channel.channel
        for m in messages:
            props = pika.BasicProperties(delivery_mode=_PERSISTENT, message_id=m.message_id,
                                         content_type="application/json")
            self._channel.call("publishing", channel.basic_publish, self._exchange, m.subject, m.body, props)

    def close(self) -> None:
        self._channel.close()


class AmqpCommandSource:
    """Commands from a durable queue with manual acks (see the module docstring)."""

    def __init__(self, url: str, subject: str, *, dead_letter: str | None = None, prefetch: int = 256,
                 **_ignored: Any) -> None:
        self.url = public_url(url)
        self._channel = _Channel(url)
        self._queue = subject
        self._dead_letter = dead_letter
        self._prefetch = prefetch
        self._deliveries: Iterator[Any] | None = None

    def connect(self, timeout: float) -> None:
        channel = self._channel.open(timeout)
        for queue in (self._queue, self._dead_letter):
            if queue:
                self._channel.call("declaring a queue", channel.queue_declare, queue, durable=True)
        self._channel.call("setting the prefetch", channel.basic_qos, prefetch_count=self._prefetch)
        self._deliveries = None

    def fetch(self, max_messages: int, timeout: float) -> list[Incoming]:
        channel = self._channel.channel
        if self._deliveries is None:
            self._deliveries = self._channel.call("consuming", channel.consume, self._queue, auto_ack=False,
                                                  inactivity_timeout=timeout)
        out: list[Incoming] = []
        # the first message waits up to the inactivity timeout; the rest only if already received
        while len(out) < max_messages and (not out or channel.get_waiting_message_count()):
            method, props, body = self._channel.call("receiving", next, self._deliveries)
            if method is None:  # the inactivity timeout: nothing now
                break
            out.append(Incoming(body, props.reply_to or None, method.delivery_tag))
        return out

    def ack(self, message: Incoming) -> None:
        channel = self._channel.channel
        self._channel.call("acknowledging", channel.basic_ack, message.handle)

    def send(self, subject: str, body: bytes, timeout: float) -> None:  # socket_timeout bounds it
        channel = self._channel.channel
        props = pika.BasicProperties(delivery_mode=_PERSISTENT, content_type="application/json")
        self._channel.call(f"publishing to {subject!r}", channel.basic_publish, "", subject, body, props)

    def close(self) -> None:
        self._deliveries = None
        self._channel.close()
