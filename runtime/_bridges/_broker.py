"""What a broker backend is (`Publisher`, `CommandSource`) and how a URL chooses one.

A backend is the broker's own well-kept client configured for the bridge's guarantees, and nothing
else: the relay and apply loops (`_relay`, `_apply`) are written once over these two protocols.
Every call of a backend blocks its caller (the bridge's own thread) for at most the `timeout` it is
given, and reports any failure of the broker or the network as `BrokerUnavailableError` (after which
the bridge closes the backend and connects it again with back-off).

URLs (the scheme picks the backend; credentials are never shown in errors or metrics):

==============================  ==========================================================  ==========
``nats://host:4222?stream=S``   NATS JetStream; ``stream`` is created when missing           ``[nats]``
``mqtt://host:1883``            MQTT 3.1.1, QoS 1; ``?max_message_size=N`` (see below)      ``[mqtt]``
``amqp://user:pw@host:5672/vh`` AMQP 0-9-1 (RabbitMQ); ``?exchange=E`` (topic, durable),     ``[amqp]``
                                ``?max_message_size=N`` (see below)
``redis://host:6379/0``         Redis Streams (``XADD``; the subject is the stream key)     ``[redis]``
==============================  ==========================================================  ==========

``max_message_size`` (AMQP, MQTT): the largest message body the broker takes, in bytes (RabbitMQ's
``max_message_size``, 128 MiB in RabbitMQ 3 and 16 MiB in RabbitMQ 4 by default; Mosquitto's
``message_size_limit``). Neither broker tells its clients: given, a relay names a change over it as
unpublishable before sending it, and an applier cuts a dead letter to fit it. Without it, an AMQP
backend learns RabbitMQ's limit from its first refusal (the channel closed with 406
PRECONDITION_FAILED, which names the limit): that batch or dead letter fails once and the next
attempt keeps to the limit; any other failure (a restarted broker, maybe with a new limit) forgets
it. Mosquitto drops a larger PUBLISH without an error an MQTT 3.1.1 client
could see: give the option when it has a ``message_size_limit``.

A subject, queue, topic or exchange the broker can never use is a `ConfigError` when the backend is
made, naming it and why (rather than a connect or publish that fails forever, retried as an
unavailable broker, or a thread stopped by the client's ValueError): on NATS whitespace, an empty
token, a ``>`` before the last token, or a wildcard token in a subject published to, a stream or
durable consumer name with whitespace, ``.``, ``*``, ``>`` or a path separator, an ``ack_wait`` that
is not a finite number of seconds > 0; on MQTT a topic over 65,535 bytes, a wildcard in a topic
published to, a ``#`` or ``+`` that is not a whole level of a filter; on AMQP a name over 255 bytes,
a queue named ``amq.*``, an exchange named ``amq.*`` but ``amq.topic`` (RabbitMQ's own). A template
is checked with a one-byte context id. (A wrong password, virtual host or Redis database number is
retried: it may be put right while the bridge runs.)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol
from urllib.parse import SplitResult, parse_qs, urlsplit, urlunsplit

import attrs

from hoard.storage import ConfigError, shown_repr

__all__ = [
    "CommandSource",
    "Incoming",
    "Outgoing",
    "PipelinedPublisher",
    "Publisher",
    "check_usable",
    "make_publisher",
    "make_source",
    "public_url",
    "size_option",
    "url_options",
]


class Outgoing(NamedTuple):
    """One message to publish: where, what, and its identity (``<context id>:<version>@<offset>``). Immutable;
    a named tuple, not an attrs class: the relay builds one per entry, and a frozen attrs instance
    costs twice as much to make (about 0.8 against 0.4 us here)."""

    subject: str
    body: bytes
    message_id: str


@attrs.frozen(eq=False)
class Incoming:
    """One message received: its body, where to answer (None: nowhere), and the backend's handle
    (what `CommandSource.ack` needs)."""

    body: bytes
    reply_to: str | None
    handle: Any = attrs.field(repr=False)


class Publisher(Protocol):
    """The outbound half of a backend.

    A backend may also have ``unpublishable(messages) -> tuple[int, str] | None``: the index of the
    first message the broker can never take as it is (a routing key or message id over AMQP's 255
    bytes, a message over the NATS server's ``max_payload`` or its stream's ``max_msg_size``), and
    why; None when it takes them all.
    The relay asks it for every batch, after `connect`, before `send` (see `UnpublishableChangeError`).
    """

    url: str

    def connect(self, timeout: float) -> None:
        """Connect (and declare what publishing needs: a stream, an exchange)."""

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        """Publish `messages` in order; return only when the broker confirmed every one (JetStream
        ack, PUBACK, publisher confirm, XADD reply). Raises `BrokerUnavailableError` otherwise: then
        any of them may or may not have arrived, but those that arrived are a prefix (one ordered
        connection)."""

    def close(self) -> None:
        """Disconnect (idempotent, never raises, returns within a few seconds)."""


class PipelinedPublisher(Publisher, Protocol):
    """A publisher that can have a batch on its way while the caller prepares the next: `publish`
    split in two. The relay uses `send` / `wait` when a publisher has them (every built-in one does),
    else `publish`."""

    def send(self, messages: Sequence[Outgoing], timeout: float) -> Any:
        """Start publishing `messages` after every batch sent before (same connection, in order) and
        return without waiting for the broker; the result is what `wait` takes. Raises
        `BrokerUnavailableError` when the connection is known broken."""

    def wait(self, sent: Any, timeout: float) -> None:
        """Return when the broker confirmed every message of `sent`, the oldest batch sent and not
        waited for yet (batches are waited for in the order they were sent), at most `timeout`;
        `BrokerUnavailableError` otherwise (as `Publisher.publish`; later batches are then lost with
        the connection, which the caller closes)."""


class CommandSource(Protocol):
    """The inbound half of a backend: a durable subscription whose messages stay with the broker
    until acknowledged (a JetStream durable consumer, an AMQP queue, an MQTT persistent session).

    A backend may also have ``message_limit(subject, timeout) -> int | None``: the largest answer or
    dead letter `subject` takes (on NATS the server's ``max_payload``, or the ``max_msg_size`` of the
    stream that keeps `subject`); the applier cuts a rejected command's body to fit it. None, or no
    such method: no limit a command's result could reach."""

    url: str

    def connect(self, timeout: float) -> None:
        """Connect and subscribe (declaring the consumer / queue / session when missing)."""

    def fetch(self, max_messages: int, timeout: float) -> list[Incoming]:
        """Up to `max_messages`, waiting at most `timeout` for the first; [] when none came."""

    def ack(self, message: Incoming) -> None:
        """Tell the broker `message` is done with: it is not delivered again."""

    def send(self, subject: str, body: bytes, timeout: float) -> None:
        """Publish an answer or a dead letter, confirmed like `Publisher.publish`."""

    def close(self) -> None:
        """Disconnect (idempotent, never raises). Unacknowledged messages are delivered again."""


_BACKENDS = {
    "nats": ("._nats", "NatsPublisher", "NatsCommandSource", "nats"),
    "mqtt": ("._mqtt", "MqttPublisher", "MqttCommandSource", "mqtt"),
    "amqp": ("._amqp", "AmqpPublisher", "AmqpCommandSource", "amqp"),
    "redis": ("._redis", "RedisPublisher", None, "redis"),
}


def public_url(url: str) -> str:
    """`url` without its password (what errors, logs and metrics show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_options(url: str) -> dict[str, str]:
    """The query of `url` as single values (``?stream=S&x=1`` -> ``{"stream": "S", "x": "1"}``)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def check_usable(name: str, what: str, url: str, problem: str | None) -> None:
    """`ConfigError` naming `name` (a subject, topic, queue or exchange: `what` says which) and
    `problem`, why the broker at `url` can never use it; nothing when `problem` is None."""
    if problem is not None:
        raise ConfigError(f"{what} {shown_repr(name, 80)} cannot be used on {public_url(url)}: {problem}")


def size_option(url: str, name: str = "max_message_size") -> int | None:
    """The option `name` of `url` as a whole number of bytes >= 1 (None: not given); anything else
    raises `ConfigError` naming it."""
    raw = url_options(url).get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(f"{name} in {public_url(url)!r} must be a whole number of bytes >= 1, not {raw!r}")
    return int(raw)


def _backend(url: object, role: int) -> Any:
    if not isinstance(url, str):
        raise ConfigError(f"a broker URL is a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _BACKENDS:
        raise ConfigError(f"unknown broker URL scheme {scheme!r} in {public_url(url)!r}; use one of "
                          f"{', '.join(s + '://' for s in _BACKENDS)}")
    entry = _BACKENDS[scheme]
    name = entry[role]
    if name is None:
        raise ConfigError(f"{scheme}:// brokers can be relayed to, not consumed from; commands come from "
                          "nats://, amqp:// or mqtt://")
    try:
        module = importlib.import_module(entry[0], __package__)
    except ImportError as exc:  # the broker's client is an optional extra
        raise ConfigError(f"{scheme}:// needs its client: pip install 'hoard-contexts[{entry[3]}]' ({exc})") from exc
    return getattr(module, name)


def make_publisher(url: str, **options: Any) -> Publisher:
    """The publisher for `url` (`ConfigError`: unknown scheme, or its client extra not installed)."""
    publisher: Publisher = _backend(url, 1)(url, **options)
    return publisher


def make_source(url: str, subject: str, **options: Any) -> CommandSource:
    """The command source for `url` consuming `subject` (see each backend for the options)."""
    source: CommandSource = _backend(url, 2)(url, subject, **options)
    return source
