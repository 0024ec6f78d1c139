"""Redis Streams backend (redis-py; ``pip install 'hoard-contexts[redis]'``), outbound only.

Every message is one ``XADD`` to the stream named by the rendered subject (a template without
``{context_id}`` puts every context in one stream), with the fields ``message_id``
(``<context id>:<version>@<offset>``) and ``body`` (the JSON). A batch is pipelined (no MULTI): the XADDs are
sent in order on one connection, in one write (`send`), and `wait` reads every reply (the relay
sends the next batch before it reads this one's replies: Redis answers in order); Redis
has no id it de-duplicates on, so a batch published again after a crash arrives again
(``message_id`` lets a reader drop repeats). ``?maxlen=N`` trims each stream to about N entries
(``MAXLEN ~``).

The batch's commands are packed here, with one bytes format per XADD (every argument but the
stream key, the id and the body is a constant), and go through redis-py's own connection
(``send_packed_command``) and reply parser (``read_response``): redis-py's generic packer
(``Pipeline.execute`` -> ``pack_commands``), which encodes and measures each argument in Python,
was about 40 % of the publisher's CPU per message. The replies are read the same way: off the
connection's socket, each XADD's bulk string (its id) skipped or its error kept, instead of
redis-py's generic reply parser per reply (2.5 us a reply here, ~70 % of the publisher's CPU; the
parser is used only on a redis-py whose connection does not expose its socket as ``_sock``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.exceptions

from hoard.storage import ConfigError

from ._broker import Outgoing, public_url, url_options
from ._errors import BrokerUnavailableError

__all__ = ["RedisPublisher", "pack_xadds", "read_replies"]

_BULK, _ERROR = ord("$"), ord("-")
_READ_SIZE = 65536


def _bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def pack_xadds(messages: Sequence[Outgoing], trim: tuple[bytes, ...] = ()) -> bytes:
    """The RESP bytes of one ``XADD <subject> [trim] * message_id <id> body <body>`` per message,
    in order: what redis-py's packer makes of the same arguments."""
    head = b"*%d\r\n$4\r\nXADD\r\n$%%d\r\n%%b\r\n" % (7 + len(trim))
    tail = b"".join(map(_bulk, trim)) + b"$1\r\n*\r\n$10\r\nmessage_id\r\n$%d\r\n%b\r\n$4\r\nbody\r\n$%d\r\n%b\r\n"
    form = head + tail
    out = []
    for subject, body, msg_id in messages:
        key, mid = subject.encode(), msg_id.encode()
        out.append(form % (len(key), key, len(mid), mid, len(body), body))
    return b"".join(out)


def read_replies(sock: socket.socket, inbox: bytearray, count: int) -> str | None:
    """Read `count` XADD replies (bulk strings, or errors) from `sock`, starting with what `inbox`
    holds already; what comes after them stays in `inbox` (the next batch's replies). The first
    error's message, or None. Raises `OSError` (the socket's timeout included), `ConnectionError`
    when the server closed the connection, `ValueError` for anything but a bulk string or an error."""
    buf, pos, failed = inbox, 0, None
    while count:
        end = buf.find(b"\r\n", pos)
        if end >= 0:
            kind = buf[pos]
            if kind == _BULK:
                size = int(buf[pos + 1:end])
                stop = end + 2 + (size + 2 if size >= 0 else 0)  # $-1: a null reply, nothing follows
                if stop <= len(buf):
                    pos, count = stop, count - 1
                    continue
            elif kind == _ERROR:
                failed = failed or bytes(buf[pos + 1:end]).decode("utf-8", "replace")
                pos, count = end + 2, count - 1
                continue
            else:
                raise ValueError(f"unexpected reply to XADD: {bytes(buf[pos:end])[:80]!r}")
        chunk = sock.recv(_READ_SIZE)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    del buf[:pos]
    return failed


class RedisPublisher:
    """Publishes with XADD in pipelined batches (see the module docstring)."""

    def __init__(self, url: str, *, subject: str = "hoard.{context_id}", maxlen: int | None = None) -> None:
        del subject  # the stream key is rendered per message
        self.url = public_url(url)
        self._raw = url.split("?", 1)[0]
        option = url_options(url).get("maxlen")
        self._maxlen = maxlen if maxlen is not None else (int(option) if option and option.isdigit() else option)
        if self._maxlen is not None and (type(self._maxlen) is not int or self._maxlen < 1):
            raise ConfigError(f"maxlen must be an int >= 1 (entries kept per stream), not {self._maxlen!r}")
        # XADD's trimming arguments, the same for every message: MAXLEN ~ N (approximate), or none
        self._trim: tuple[bytes, ...] = () if self._maxlen is None else (b"MAXLEN", b"~", b"%d" % self._maxlen)
        self._client: redis.Redis | None = None
        self._connection: Any = None  # the client's connection this publisher holds (redis-py leaves it untyped)
        self._inbox = bytearray()  # replies received and not yet read (the next batch's may follow this one's)

    def connect(self, timeout: float) -> None:
        client = redis.Redis.from_url(self._raw, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry_on_timeout=False)
        try:
            client.ping()
            pool: Any = client.connection_pool
            try:
                connection = pool.get_connection()
            except TypeError:  # redis-py before 5.3 wants a command name (5.3 deprecated it)
                connection = pool.get_connection("XADD")
        except (redis.exceptions.RedisError, OSError) as exc:
            client.close()
            raise BrokerUnavailableError(self.url, f"connecting: {type(exc).__name__}: {exc}") from exc
        self._client, self._connection = client, connection
        self._inbox = bytearray()

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        self.wait(self.send(messages, timeout), timeout)

    def send(self, messages: Sequence[Outgoing], timeout: float) -> int:  # socket_timeout bounds it
        """Write the batch's XADDs (one write) without reading their replies; returns what `wait` takes
        (the number of replies to read). Replies come in the order the batches were sent."""
        connection = self._connection
        if connection is None:
            raise BrokerUnavailableError(self.url, "not connected")
        try:
            connection.send_packed_command([pack_xadds(messages, self._trim)])  # a list of writes: one here
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BrokerUnavailableError(self.url, f"XADD: {type(exc).__name__}: {exc}") from exc
        return len(messages)

    def wait(self, sent: int, timeout: float) -> None:  # socket_timeout bounds it
        """Read the replies of the oldest batch `send` wrote and not waited for yet."""
        connection = self._connection
        if connection is None:
            raise BrokerUnavailableError(self.url, "not connected")
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            try:
                refused = read_replies(sock, self._inbox, sent)
            except (OSError, ValueError) as exc:
                raise BrokerUnavailableError(self.url, f"XADD: {type(exc).__name__}: {exc}") from exc
            if refused is not None:
                raise BrokerUnavailableError(self.url, f"XADD: ResponseError: {refused}")
            return
        read: Callable[[], Any] = connection.read_response
        failed: redis.exceptions.ResponseError | None = None
        try:
            for _ in range(sent):  # every reply is read, so the connection stays in step
                try:
                    read()
                except redis.exceptions.ResponseError as exc:  # a refused XADD (e.g. the key holds no stream)
                    failed = failed or exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BrokerUnavailableError(self.url, f"XADD: {type(exc).__name__}: {exc}") from exc
        if failed is not None:
            raise BrokerUnavailableError(self.url, f"XADD: {type(failed).__name__}: {failed}")

    def close(self) -> None:
        client, self._client = self._client, None
        connection, self._connection = self._connection, None
        if client is not None:
            if connection is not None:
                client.connection_pool.release(connection)
            client.close()
