"""NATS JetStream backend (nats-py; ``pip install 'hoard-contexts[nats]'``).

nats-py is asyncio-only: each backend object runs one event loop on a thread of its own
("hoard-nats"), started by `connect` and stopped by `close`; the bridge's thread hands it coroutines
and waits for them with its timeout (`asyncio.run_coroutine_threadsafe`).

Out: every message is published with ``Nats-Msg-Id: <context id>:<version>@<offset>``; JetStream drops a
message whose id it stored within the stream's duplicate window (default 2 minutes), so a relay that
publishes a batch again after a crash or a cut stores each change once. A batch is pipelined (every
message sent in order on the one connection, each with a reply subject on the publisher's inbox
where JetStream acks it, as ``publish_async`` does; see `NatsPublisher`) and returns when every
ack came. With
``?stream=NAME`` the stream is created when missing, over the subjects of the template (``{context_id}``
becomes ``>``).

In: a durable pull consumer (``?durable=NAME``, default the bridge's name) on the stream
(``--stream``), explicit acks; a message not acked within ``ack_wait`` (``?ack_wait=SECONDS``, default
30) is delivered again (also after the consumer was killed).

The client's own reconnection is off: a failure closes the connection and the bridge connects again
with back-off, so a batch is never half in one connection's buffers and half in the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.api
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS

from hoard.storage import ConfigError, shown_repr

from ._broker import Incoming, Outgoing, check_usable, public_url, url_options
from ._errors import BrokerUnavailableError
from ._format import render_subject

__all__ = ["NatsCommandSource", "NatsPublisher"]

T = TypeVar("T")
_STOP_WAIT = 5.0
#: a message's header without its id's bytes: b"NATS/1.0\r\n" b"Nats-Msg-Id: " <id> b"\r\n" b"\r\n"
_HEADER_BYTES = 10 + 13 + 2 + 2


def _subject_problem(subject: str, *, filter_: bool) -> str | None:
    """What makes `subject` unusable on NATS (None: nothing): a subject published to (a subject
    template: its literal text; the context ids go in percent-encoded, one token each) or, with
    `filter_`, a consumer's filter. The server refuses the rest, or reads a space as the end of it."""
    if not subject or any(c in " \t\r\n\x00" for c in subject):
        return "a NATS subject is not empty and holds no whitespace or NUL"
    tokens = subject.split(".")
    if "" in tokens:
        return "a NATS subject has no empty token (a leading, trailing or doubled '.')"
    if filter_:
        return "a NATS filter's '>' is its last token" if ">" in tokens[:-1] else None
    return "a NATS subject published to holds no wildcard token ('*', '>')" if {"*", ">"} & set(tokens) else None


def _check_subject(subject: str, what: str, url: str, *, filter_: bool = False, template: bool = False) -> None:
    """`ConfigError` naming `subject` if `_subject_problem` finds one (a `template` with a 1-byte id)."""
    check_usable(subject, what, url,
                 _subject_problem(render_subject(subject, "c") if template else subject, filter_=filter_))


def _check_name(name: str | None, what: str, url: str) -> None:
    """`ConfigError` for a JetStream stream or durable consumer name the server refuses: empty, or
    with whitespace, ``.``, ``*``, ``>``, a path separator or NUL. None passes (no name given)."""
    if name is not None and (not name or any(c in " \t\r\n\x00.*>/\\" for c in name)):
        check_usable(name, what, url, "a JetStream name is not empty and holds no whitespace, '.', '*', '>', "
                                      "'/', '\\' or NUL")


def _seconds(raw: object, what: str, url: str) -> float:
    """`raw` (a number, or the URL's text) as a finite number of seconds > 0; else `ConfigError`."""
    try:
        value = float(raw)  # type: ignore[arg-type]  # anything float() refuses is reported below
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{what} on {public_url(url)} must be a finite number of seconds > 0, "
                          f"not {shown_repr(raw, 80)}")
    return value


def _stream_subject(template: str) -> str:
    head, sep, _ = template.partition("{context_id}")
    return f"{head}>" if sep else template


class _Loop:
    """One asyncio loop on a thread of its own, and a NATS connection on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = public_url(url)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.nc: Any = None
        self.js: Any = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        return self.result(self.submit(coro), timeout, what)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the loop; its future (see `result`)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def result(self, future: concurrent.futures.Future[T], timeout: float, what: str) -> T:
        """`future`'s result within `timeout`, failures as `BrokerUnavailableError`."""
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise BrokerUnavailableError(self.shown, f"no answer to {what} within {timeout:g} s") from exc
        except (nats.errors.Error, OSError) as exc:
            raise BrokerUnavailableError(self.shown, f"{what}: {type(exc).__name__}: {exc}") from exc

    def open(self, timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hoard-nats", daemon=True)
        self.thread.start()
        servers = self.url.split("?", 1)[0]

        async def connect() -> Any:
            nc = NATS()
            try:
                await nc.connect(servers, connect_timeout=max(1, round(timeout)), allow_reconnect=False,
                                 max_reconnect_attempts=0)
            except BaseException:
                with contextlib.suppress(Exception):  # what a failed connect left open (its transport)
                    await nc.close()
                raise
            return nc
        try:
            self.nc = self.run(connect(), timeout + 1, "connecting")
        except BaseException:
            self.shut()
            raise
        self.js = self.nc.jetstream(timeout=timeout)

    def shut(self) -> None:
        loop, self.loop = self.loop, None
        if loop is None:
            return
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to report
                asyncio.run_coroutine_threadsafe(nc.close(), loop).result(_STOP_WAIT)
        loop.call_soon_threadsafe(loop.stop)
        if self.thread is not None:
            self.thread.join(_STOP_WAIT)
        if not loop.is_running():
            loop.close()


class _Acks:
    """The JetStream acks one batch waits for (on the loop's thread only)."""

    __slots__ = ("done", "left")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.left = count
        self.done = done


class NatsPublisher:
    """Publishes to JetStream with message ids (see the module docstring).

    Each message is a core-NATS publish with a reply subject on this publisher's own inbox, which is
    how a JetStream publish is acknowledged (nats-py's ``publish_async`` does the same), and the
    acks are counted per batch as they arrive: a PubAck is checked for an ``"error"`` (decoded only
    when it may hold one) or an empty status reply (no stream for the subject). nats-py's
    ``publish_async`` spent more per message than the relay's read of the entry (a nuid, random
    bytes, a future, a semaphore and a done-callback per publish; ``json.loads`` and a ``PubAck``
    dataclass per ack).
    """

    def __init__(self, url: str, *, subject: str = "hoard.{context_id}", stream: str | None = None) -> None:
        self.url = public_url(url)
        _check_subject(subject, "the subject template", url, template=True)
        self._loop = _Loop(url)
        self._stream = stream or url_options(url).get("stream")
        _check_name(self._stream, "the stream", url)
        self._subjects = [_stream_subject(subject)]
        self._handed: asyncio.Future[None] | None = None  # set when the last batch sent is all with the client
        self._inbox = ""  # "<inbox>." of this connection: message n's acks come to "<inbox>.n"
        self._pending: dict[str, _Acks] = {}  # reply subject -> the batch whose ack it is (the loop's thread)
        self._sequence = 0
        self._stream_limit = -1  # the max_msg_size of the stream (`stream=`) as of connect; -1: none

    def connect(self, timeout: float) -> None:
        self._handed = None
        self._pending = {}
        self._loop.open(timeout)
        try:
            if self._stream:
                self._loop.run(self._ensure_stream(), timeout, "declaring the stream")
            self._loop.run(self._listen(), timeout, "subscribing to acks")
        except BaseException:
            self._loop.shut()
            raise

    async def _ensure_stream(self) -> None:
        js = self._loop.js
        try:
            info = await js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            info = await js.add_stream(name=self._stream, subjects=self._subjects)
        self._stream_limit = int(info.config.max_msg_size or -1)

    async def _listen(self) -> None:
        nc = self._loop.nc
        self._inbox = nc.new_inbox() + "."
        await nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Any) -> None:
        acks = self._pending.pop(msg.subject, None)
        if acks is None or acks.done.done():  # a batch that failed already
            return
        data = msg.data
        if not data or b'"error"' in data:  # a status (503: no stream), or maybe an error: decode it
            problem = _ack_problem(data, msg.headers)
            if problem is not None:
                acks.done.set_exception(BrokerUnavailableError(self.url, problem))
                return
        acks.left -= 1
        if not acks.left:
            acks.done.set_result(None)

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        self.wait(self.send(messages, timeout), timeout)

    def max_payload(self) -> int:
        """The largest message, header and body, the connected server takes (its ``max_payload``,
        from the server's INFO at connect). `BrokerUnavailableError` when not connected."""
        nc = self._loop.nc
        if nc is None:
            raise BrokerUnavailableError(self.url, "not connected")
        return int(nc.max_payload)

    @staticmethod
    def overhead(message_id: str) -> int:
        """The bytes a message's header adds to its body, which the server counts against its
        ``max_payload``: ``NATS/1.0`` and ``Nats-Msg-Id: <message_id>``, each line ended by CRLF, and
        the blank line."""
        return _HEADER_BYTES + len(message_id.encode("utf-8", "surrogatepass"))

    def unpublishable(self, messages: Sequence[Outgoing]) -> tuple[int, str] | None:
        """The first message over the server's ``max_payload`` with its header (or over the
        ``max_msg_size`` of the relay's stream, as of connect, when smaller), and why; None when there
        is none or when not connected (the limit is not known then)."""
        nc = self._loop.nc
        if nc is None:
            return None
        limit, what = int(nc.max_payload), "the server's max_payload"
        if 0 < self._stream_limit < limit:  # the stream's own bound (it counts the header too)
            limit, what = self._stream_limit, f"the max_msg_size of stream {self._stream!r}"
        for index, m in enumerate(messages):
            # 4 UTF-8 bytes a character at most: only a message near the limit is measured exactly
            if len(m.body) + _HEADER_BYTES + 4 * len(m.message_id) > limit:
                size = len(m.body) + self.overhead(m.message_id)
                if size > limit:
                    return index, f"its message is {size} bytes with its header, over {what} of {limit}"
        return None

    def send(self, messages: Sequence[Outgoing], timeout: float) -> Any:
        """Start publishing the batch on the loop and return at once (what `wait` takes). Batches are
        handed to the client in the order they were sent: each waits until the one before is."""
        del timeout  # `wait` bounds it
        if self._loop.loop is None:
            raise BrokerUnavailableError(self.url, "not connected")
        return (len(messages), self._loop.submit(self._publish(messages)))

    def wait(self, sent: Any, timeout: float) -> None:
        """Wait for every ack of a batch `send` started."""
        count, future = sent
        self._loop.result(future, timeout, f"publishing {count} messages")

    async def _publish(self, messages: Sequence[Outgoing]) -> None:
        nc = self._loop.nc
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acks, pending, inbox = _Acks(len(messages), done), self._pending, self._inbox
        if not messages:
            return
        # the batch before this one may still be handing its messages to the client (publish awaits
        # when the client's buffer is full): this one starts after it, so the order holds
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before, self._handed = self._handed, mine
        try:
            if before is not None:
                await before
            publish = nc.publish
            for m in messages:
                self._sequence += 1  # counted before the publish: a reply subject is never used twice
                reply = f"{inbox}{self._sequence}"
                pending[reply] = acks
                await publish(m.subject, m.body, reply=reply, headers={"Nats-Msg-Id": m.message_id})
        finally:
            mine.set_result(None)
        await nc.flush()
        await done  # every PubAck, or the first error (raised)

    def close(self) -> None:
        self._loop.shut()
        self._pending = {}


def _ack_problem(data: bytes, headers: dict[str, str] | None) -> str | None:
    """What is wrong with a JetStream publish's reply (None: it is a PubAck)."""
    if not data:
        status = (headers or {}).get("Status", "")
        if status == "503":
            return "no JetStream stream takes this subject (no responders)"
        return f"JetStream answered a publish with status {status or 'none'}"
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        return f"JetStream answered a publish with {data[:80]!r}"
    if type(reply) is not dict:
        return f"JetStream answered a publish with {data[:80]!r}"
    error = reply.get("error")
    if error is None:
        return None
    return f"JetStream refused a message: {error}"


class NatsCommandSource:
    """Commands from a durable JetStream pull consumer (see the module docstring)."""

    def __init__(self, url: str, subject: str, *, stream: str | None = None, durable: str | None = None,
                 ack_wait: float | None = None, dead_letter: str | None = None, **_ignored: Any) -> None:
        options = url_options(url)
        self.url = public_url(url)
        _check_subject(subject, "the subject filter", url, filter_=True)
        if dead_letter is not None:
            _check_subject(dead_letter, "the dead-letter subject", url)
        self._loop = _Loop(url)
        self._subject = subject
        self._stream = stream or options.get("stream")
        self._durable = durable or options.get("durable") or "hoard-apply"
        _check_name(self._stream, "the stream", url)
        _check_name(self._durable, "the durable consumer", url)
        self._ack_wait = _seconds(ack_wait if ack_wait is not None else options.get("ack_wait", 30), "ack_wait", url)
        self._sub: Any = None
        self._streams: dict[str, str | None] = {}  # answer / dead-letter subject -> its stream (None: none)
        self._limits: dict[str, int] = {}  # answer / dead-letter subject -> its stream's max_msg_size (-1: none)

    def connect(self, timeout: float) -> None:
        self._streams.clear()  # asked again on this connection: a stream may have come or changed
        self._limits.clear()
        self._loop.open(timeout)
        try:
            self._sub = self._loop.run(self._subscribe(), timeout, "subscribing")
        except BaseException:
            self._loop.shut()
            raise

    async def _subscribe(self) -> Any:
        js = self._loop.js
        stream = self._stream
        if stream:
            try:
                await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(name=stream, subjects=[self._subject])
        else:  # the stream that takes the subject; none (yet): retried, and the warning says what to do
            try:
                stream = await js.find_stream_name_by_subject(self._subject)
            except nats.js.errors.NotFoundError:
                raise BrokerUnavailableError(
                    self._loop.shown, f"no JetStream stream takes subject {self._subject!r}: make one, or give "
                    "?stream=NAME (hoard apply --stream NAME) to have it made") from None
        config = nats.js.api.ConsumerConfig(ack_wait=self._ack_wait, ack_policy=nats.js.api.AckPolicy.EXPLICIT)
        return await js.pull_subscribe(self._subject, durable=self._durable, stream=stream, config=config)

    def fetch(self, max_messages: int, timeout: float) -> list[Incoming]:
        async def fetch() -> list[Any]:
            try:
                return list(await self._sub.fetch(max_messages, timeout=timeout))
            except nats.errors.TimeoutError:
                return []
        msgs = self._loop.run(fetch(), timeout + 5, "fetching commands")
        return [Incoming(m.data, None, m) for m in msgs]

    def ack(self, message: Incoming) -> None:
        self._loop.run(message.handle.ack(), 5.0, "acknowledging")

    def message_limit(self, subject: str, timeout: float) -> int | None:
        """The largest answer or dead letter `subject` takes: the connected server's ``max_payload``
        (an answer or dead letter has no header), or the ``max_msg_size`` of the stream that keeps
        `subject` when that is smaller (asked once per subject and connection); None when not
        connected. `BrokerUnavailableError` if the server does not answer within `timeout`."""
        nc = self._loop.nc
        if nc is None:
            return None
        if subject not in self._limits:
            async def stream_limit() -> int:
                stream = await self._stream_of(subject)
                if stream is None:
                    return -1
                return int((await self._loop.js.stream_info(stream)).config.max_msg_size or -1)
            self._limits[subject] = self._loop.run(stream_limit(), timeout, f"asking the limits of {subject!r}")
        limits = [n for n in (int(nc.max_payload), self._limits[subject]) if n > 0]
        return min(limits) if limits else None

    async def _stream_of(self, subject: str) -> str | None:
        """The stream that keeps `subject` (None: none), asked once per subject and connection."""
        if subject not in self._streams:
            try:
                self._streams[subject] = await self._loop.js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                self._streams[subject] = None
        return self._streams[subject]

    def send(self, subject: str, body: bytes, timeout: float) -> None:
        """An answer or dead letter: a JetStream publish (acked) when a stream covers `subject`, else a
        plain NATS message (flushed). Deciding by asking first, not by trying: a JetStream publish to
        a subject that has a plain subscriber and no stream is a request nobody answers."""
        async def send() -> None:
            if await self._stream_of(subject) is not None:
                await self._loop.js.publish(subject, body)
            else:
                await self._loop.nc.publish(subject, body)
                await self._loop.nc.flush()
        self._loop.run(send(), timeout, f"publishing to {subject!r}")

    def close(self) -> None:
        self._loop.shut()
