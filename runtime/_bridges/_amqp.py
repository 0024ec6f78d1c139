"""AMQP 0-9-1 backend (pika, blocking connection; ``pip install 'hoard-contexts[amqp]'``), for RabbitMQ.

Both halves run pika in the caller's thread (the bridge's): no thread of their own.

Out: publisher confirms on, persistent messages (delivery mode 2) with ``message_id`` set to
``<context id>:<version>@<offset>``, to the exchange ``?exchange=NAME`` (a durable topic exchange, declared;
default ``hoard``) with the rendered subject as routing key. A batch is published on one channel
without waiting in between (pika's `SelectConnection`, its I/O loop driven by `send` and `wait`),
and `wait` returns once the broker acked every message of it (confirms arrive in order on one
channel, several at once with ``multiple``); the relay sends the next batch before it waits. A
nack, a closed channel or connection, or no confirm within the timeout raises
`BrokerUnavailableError`: the relay does not commit the batch's offset and publishes it again on a
new connection. (pika's blocking channel waits for each message's confirm
before sending the next: the broker's round trip and pika's blocking wait per message, which the
bench's bare loop does.)

In: the durable queue named by the subject (declared), manual acks, a prefetch of the batch size.
Messages unacked when the connection ends (a killed bridge) are requeued by the broker at once and
delivered again. Answers go to a message's ``reply_to`` queue; dead letters to the queue named by
``--dead-letter`` (declared durable), both through the default exchange with confirms.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pika
import pika.exceptions

from ._broker import Incoming, Outgoing, check_usable, public_url, size_option, url_options
from ._errors import BrokerUnavailableError

__all__ = ["AmqpCommandSource", "AmqpPublisher"]

_PERSISTENT = 2
#: an AMQP short string (a routing key, a message id) holds at most this many bytes
_SHORT_BYTES = 255
_SHORT_CHARS = _SHORT_BYTES // 4


#: RabbitMQ's refusal of a body over its max_message_size (the channel is closed with 406)
_TOO_LARGE = re.compile(r"message size \d+ is larger than (?:configured )?max size (\d+)")


def _check_name(name: str, what: str, url: str, *, queue: bool = False) -> None:
    """`ConfigError` for a queue or exchange name AMQP or RabbitMQ never takes (each declare would be
    refused, which the bridge would retry as an unavailable broker)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    problem = (f"it is {size} bytes, and AMQP names hold at most {_SHORT_BYTES}" if size > _SHORT_BYTES else
               "names starting with 'amq.' are RabbitMQ's own (declaring one is refused)"
               if queue and name.startswith("amq.") else
               "of RabbitMQ's own exchanges only amq.topic is a durable topic exchange, as the relay declares"
               if name.startswith("amq.") and name != "amq.topic" else None)
    check_usable(name, what, url, problem)


def _never() -> bool:
    return False


class _BodyLimit:
    """The largest body the broker takes, as far as is known: the URL's ``max_message_size``, or
    what RabbitMQ named when it refused one. A learned limit is kept across the reconnection that
    follows the refusal, and forgotten at any other failure: RabbitMQ reads its limit at boot, and a
    restart (to change it) drops every connection. Read and written by the bridge's thread only."""

    def __init__(self, url: str) -> None:
        self.told = size_option(url)
        self.learned: int | None = None

    def learn(self, failure: object) -> None:
        """Keep the limit a failure (a channel's close reason, an exception) names; a failure that
        names none forgets the one learned."""
        found = _TOO_LARGE.search(str(failure))
        self.learned = int(found.group(1)) if found is not None else None

    @property
    def value(self) -> int | None:
        known = [n for n in (self.told, self.learned) if n is not None]
        return min(known) if known else None

    def why(self, size: int, limit: int) -> str:
        """Why a body of `size` bytes, over `limit` (the `value`), cannot go."""
        source = "the URL's" if limit == self.told else "the broker's (learned from its refusal)"
        return f"its body is {size} bytes, over {source} max_message_size of {limit}"


def _params(raw_url: str, timeout: float) -> Any:
    """Connection parameters: every wait bounded by `timeout`, one attempt (the bridge retries)."""
    params = pika.URLParameters(raw_url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.stack_timeout = timeout
    params.connection_attempts = 1
    params.heartbeat = 30
    return params


class _Channel:
    def __init__(self, url: str) -> None:
        self.raw_url = url.split("?", 1)[0]
        self.url = public_url(url)
        self.limit = _BodyLimit(url)
        self.connection: Any = None
        self.channel: Any = None

    def open(self, timeout: float) -> Any:
        params = _params(self.raw_url, timeout)
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
            self.limit.learn(exc)
            raise BrokerUnavailableError(self.url, f"{what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to report
                connection.close()


class AmqpPublisher:
    """Publishes with publisher confirms, a batch in flight at once (see the module docstring).

    pika's `SelectConnection` driven in the caller's thread: each call runs the connection's I/O loop
    until what it waits for happened (the channel open and the exchange declared; every message of
    the batch confirmed), a nack, the connection's end, or `timeout`; no thread of its own."""

    def __init__(self, url: str, *, subject: str = "hoard.{context_id}", exchange: str | None = None) -> None:
        self.url = public_url(url)
        self._raw_url = url.split("?", 1)[0]
        self._exchange = exchange if exchange is not None else url_options(url).get("exchange", "hoard")
        _check_name(self._exchange, "the exchange", url)
        self._limit = _BodyLimit(url)
        self._connection: Any = None
        self._channel: Any = None
        self._problem: str | None = None  # why the connection cannot go on (a nack, a close)
        self._tag = 0  # delivery tag of the last message published on this channel
        self._confirmed = 0  # every tag up to this one is acked
        self._early: set[int] = set()  # tags acked one by one past `_confirmed`
        # what `_run`'s I/O loop waits for; outside `_run` (the pass of `send`, which its own timer
        # ends) a confirm stops nothing: each `ioloop.stop()` writes a byte to pika's wake-up socket,
        # a system call per confirm that the relay (whose confirms arrive during the next `send`) paid
        self._goal: Callable[[], bool] = _never

    def connect(self, timeout: float) -> None:
        self.close()
        params = _params(self._raw_url, timeout)
        self._problem, self._tag, self._confirmed, self._channel = None, 0, 0, None
        self._early.clear()
        declared: list[bool] = []

        def on_declared(_frame: Any) -> None:
            declared.append(True)
            self._connection.ioloop.stop()

        def on_channel(channel: Any) -> None:
            channel.add_on_close_callback(self._on_channel_closed)
            channel.confirm_delivery(self._on_confirm)
            self._channel = channel
            if self._exchange:
                channel.exchange_declare(self._exchange, exchange_type="topic", durable=True, callback=on_declared)
            else:
                on_declared(None)

        try:
            self._connection = pika.SelectConnection(
                params, on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
                on_open_error_callback=lambda _conn, err: self._fail(f"connecting: {type(err).__name__}: {err}"),
                on_close_callback=self._on_closed)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailableError(self.url, f"connecting: {type(exc).__name__}: {exc}") from exc
        try:
            self._run(lambda: bool(declared), timeout, "connecting")
        except BrokerUnavailableError:
            self.close()  # the relay connects again without closing a connection that never opened
            raise

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        self.wait(self.send(messages, timeout), timeout)

    def unpublishable(self, messages: Sequence[Outgoing]) -> tuple[int, str] | None:
        """The first message whose routing key or message id is over AMQP's 255 bytes (a short
        string: pika refuses it in `basic_publish`), or whose body is over the broker's
        ``max_message_size`` as far as it is known (the URL's, or the one its refusal named), and
        why; None when there is none."""
        limit = self._limit.value
        for index, m in enumerate(messages):
            for what, text in (("routing key", m.subject), ("message id", m.message_id)):
                # at most 4 UTF-8 bytes a character: a text of 63 or fewer cannot be over 255 bytes
                if len(text) > _SHORT_CHARS and (size := len(text.encode("utf-8", "surrogatepass"))) > _SHORT_BYTES:
                    return index, f"its {what} is {size} bytes, and AMQP takes at most {_SHORT_BYTES}"
            if limit is not None and len(m.body) > limit:
                return index, self._limit.why(len(m.body), limit)
        return None

    def send(self, messages: Sequence[Outgoing], timeout: float) -> int:
        """Publish the batch and run the I/O loop once (what the socket takes now is written; the rest
        goes while `wait` runs it); returns what `wait` takes (the batch's last delivery tag)."""
        del timeout  # one pass of the loop does not wait
        channel = self._channel
        if channel is None or self._problem is not None:
            raise BrokerUnavailableError(self.url, self._problem or "not connected")
        try:
            for m in messages:
                props = pika.BasicProperties(delivery_mode=_PERSISTENT, message_id=m.message_id,
                                             content_type="application/json")
                channel.basic_publish(self._exchange, m.subject, m.body, props)
                self._tag += 1
            loop = self._connection.ioloop
            loop.call_later(0, loop.stop)  # one pass: poll without waiting, write, read what came
            loop.start()
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._fail(f"publishing: {type(exc).__name__}: {exc}")
            raise BrokerUnavailableError(self.url, f"publishing: {type(exc).__name__}: {exc}") from exc
        if self._problem is not None:
            raise BrokerUnavailableError(self.url, self._problem)
        return self._tag

    def wait(self, sent: int, timeout: float) -> None:
        """Run the I/O loop until every message up to delivery tag `sent` is confirmed."""
        self._run(lambda: self._confirmed >= sent, timeout, "waiting for publisher confirms")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(f"the broker refused message {method.delivery_tag} (nack)")
        elif method.multiple:
            self._confirmed = max(self._confirmed, method.delivery_tag)
        else:  # usually in order; one that arrives early waits in `_early` for the tags before it
            self._early.add(method.delivery_tag)
        while self._confirmed + 1 in self._early:
            self._confirmed += 1
            self._early.discard(self._confirmed)
        if self._goal():
            self._connection.ioloop.stop()

    def _on_channel_closed(self, _channel: Any, reason: Any) -> None:
        if self._connection is not None:  # not `close()` (which forgets nothing)
            self._limit.learn(reason)
        self._fail(f"channel closed: {reason}")

    def _on_closed(self, connection: Any, reason: Any) -> None:
        if self._connection is not None:  # lost, not closed by `close()`: a restarted broker, maybe
            self._limit.learn(reason)
        self._fail(f"connection closed: {reason}")
        connection.ioloop.stop()  # also when `close()` runs the loop until now (self._connection is None then)

    def _fail(self, problem: str) -> None:
        if self._problem is None:
            self._problem = problem
        if self._connection is not None:
            self._connection.ioloop.stop()

    def _run(self, goal: Callable[[], bool], timeout: float, what: str) -> None:
        """Run the I/O loop until `goal()` (then return), a failure or `timeout` (then
        `BrokerUnavailableError`; the caller closes and connects again)."""
        if not goal() and self._problem is None:
            loop = self._connection.ioloop
            self._goal = goal
            expired: list[bool] = []

            def expire() -> None:
                expired.append(True)
                loop.stop()

            timer = loop.call_later(timeout, expire)
            try:
                while not (goal() or expired or self._problem is not None):
                    loop.start()  # until a callback stops it
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._fail(f"{what}: {type(exc).__name__}: {exc}")
            finally:
                loop.remove_timeout(timer)
                self._goal = _never
            if expired and not goal() and self._problem is None:
                self._problem = f"{what}: no answer in {timeout:g} s"
        if self._problem is not None:
            raise BrokerUnavailableError(self.url, self._problem)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        with contextlib.suppress(Exception):  # a broken connection: nothing left to report
            if not (connection.is_closed or connection.is_closing):  # open, or opening (a connect timed out)
                connection.close()
                loop = connection.ioloop
                expired: list[bool] = []

                def expire() -> None:
                    expired.append(True)
                    loop.stop()

                timer = loop.call_later(2.0, expire)
                # a stop asked while the loop was not running (`_fail` after a batch that failed in
                # basic_publish) ends pika's next start() at once: run it until the connection is
                # closed, or its socket is left open (tests/bridges/test_relay.py)
                while not (connection.is_closed or expired):
                    loop.start()  # until `_on_closed` stops it (or 2 s)
                loop.remove_timeout(timer)
        with contextlib.suppress(Exception):
            connection.ioloop.close()


class AmqpCommandSource:
    """Commands from a durable queue with manual acks (see the module docstring)."""

    def __init__(self, url: str, subject: str, *, dead_letter: str | None = None, prefetch: int = 256,
                 **_ignored: Any) -> None:
        self.url = public_url(url)
        _check_name(subject, "the queue", url, queue=True)
        if dead_letter is not None:
            _check_name(dead_letter, "the dead-letter queue", url, queue=True)
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

    def message_limit(self, subject: str, timeout: float) -> int | None:
        """The largest answer or dead letter body the broker takes, as far as is known: the URL's
        ``max_message_size``, or the one RabbitMQ named when it refused one (the same for every
        queue, `subject`). None: not known yet. No broker call."""
        del subject, timeout
        return self._channel.limit.value

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
