"""`Relay`: the change feed out to a broker, at least once, in order per context.

A relay is a named feed consumer (`ContextSystem.consumer`) with one thread of its own. Its loop:

1. read the entries after the last one sent (at most `batch` at a time; when there are none and
   nothing is on its way, wait for the next commit) and encode them;
2. send them, in offset order, through the broker's backend without waiting (`send`), and, while
   the broker stores and confirms them, read, encode and send the next batch: at most
   `_IN_FLIGHT` batches are on their way at once, all on one connection, in order;
3. wait for the oldest batch's confirmations (`wait`: JetStream acks, MQTT PUBACKs, AMQP publisher
   confirms, the XADD replies), then commit the consumer's offset to its last entry (a store write)
   when nothing else is on its way (the relay caught up with what it read) or `_COMMIT_EVERY`
   seconds passed since the last commit: while it works through a backlog it commits ten times a
   second, not once a batch (each commit is a durable write and three thread hand-offs: a
   5,000-entry Redis round made 200-450 voluntary context switches committing per batch, 46-79
   now, and its process CPU went from 10.2 to 8.6 us an entry). A crash re-publishes at most what
   was confirmed since the last commit, plus what was on its way. The commit runs on a thread of its own while
   the next batches are published: it never waits for the broker and the broker never waits for
   the disk. A commit asked for while one is under way is folded into the next: each commit writes
   the newest offset the broker confirmed when it starts (so a disk slower than the broker costs
   fewer commits, not throughput), and at most `_COMMITS_PENDING` commits are queued before the
   relay waits for the oldest. The offset committed is only ever one the broker confirmed all of,
   so it never passes an unconfirmed entry; a relay that stops commits the newest one first.

Reading and encoding run on the relay's thread, overlapped with the broker's work by sending ahead
(not on a second thread: under a busy CPU every hand-off between threads, and every wait for the GIL
while another thread decodes, costs the relay a scheduler slice the bare client never pays).
A backend without `send` / `wait` (one of the caller's own) is published to batch by batch.

A relay killed between 2 and 3 (SIGKILL, power loss) publishes those entries again when it starts
over: every change reaches the broker at least once; one context's changes are in version order
because the feed is in commit order and a batch is published in order on one connection. On
JetStream the message id header (``Nats-Msg-Id: <context id>:<version>@<offset>``) makes the stream drop the
repeats within its duplicate window: exactly once there. A broker that fails or is cut off makes the
relay close the connection (dropping every batch on its way), wait (exponential back-off, up to
`max_backoff`) and publish again from the last confirmed entry; nothing is skipped, and `lag()` shows
how far behind it is meanwhile. A store that fails a read or an offset commit (PostgreSQL away, a
full disk: `PersistenceError`, or a `ContextTimeoutError`) is retried the same way, the broker's
connection closed only when batches were on their way; a damaged feed entry (`CorruptStateError`)
stops the relay with its error.

Threads: `start()` and `stop()` may be called from any thread; the loop runs on the relay's thread
("hoard-relay-<name>"), the only one that touches the backend and the relay's store reader; offsets
are committed on "hoard-relay-commit". The counters read by `lag()`
are plain attributes, each written by one of these threads (lock-free reads of single references).
The relay waits for new entries on a wake-up queue fed by this system's commits (and by `stop()`, so
a stop never waits out an idle poll). A relay is stopped
with its system (`ContextSystem.stop` stops every bridge first, so the last confirmed offset is
committed before the store closes).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from hoard.actors import ContextCreated, StateChanged
from hoard.storage import (
    ConfigError,
    ContextTimeoutError,
    CorruptStateError,
    FeedTruncatedError,
    HoardError,
    PersistenceError,
    Store,
    SystemStoppedError,
)

from .._events import subscribe
from ._broker import Outgoing, Publisher, make_publisher, public_url
from ._errors import BrokerUnavailableError, UnpublishableChangeError
from ._format import change_body_of, render_subject
from ._thread import BridgeThread

if TYPE_CHECKING:

    from .._system import ContextSystem

__all__ = ["Relay", "RelayLag"]

log = logging.getLogger(__name__)

#: the longest the relay waits for a new entry before looking at the store again (and at `stop()`)
_IDLE_POLL = 0.25
#: how often, at most, the relay reads the feed's newest offset for `lag()` while it cannot keep up
_HEAD_EVERY = 0.1
#: rendered subjects remembered (by context id) before the memo starts over
_SUBJECTS_KEPT = 10_000
#: the longest `wait_caught_up` goes without checking that the relay still runs
_CHECK_EVERY = 0.1
#: offset commits queued (each then writes the newest confirmed offset) before the relay waits for one
_COMMITS_PENDING = 4
#: batches sent and not yet confirmed, at most (two: the broker confirms one while the next is read,
#: encoded and sent; more only adds entries to publish again after a failure)
_IN_FLIGHT = 2
#: a batch's `sent` when it had nothing left to send (every change skipped): nothing to wait for
_NOTHING = object()
#: what `Relay(unpublishable=)` takes
_UNPUBLISHABLE = ("stop", "skip")
#: seconds between two offset commits, at least, while batches are still on their way (a relay with
#: nothing else on its way commits at once: `wait_caught_up` and a stop never wait for this)
_COMMIT_EVERY = 0.1


#: what the relay's store may raise and later not (PostgreSQL away, a full disk, a slow commit); a
#: `CorruptStateError` among them stops the relay (`_store_failed`)
_STORE_AWAY = (PersistenceError, ContextTimeoutError)


class _Flight(NamedTuple):
    """A batch sent to the broker and not yet confirmed."""

    last: int  # the offset of its last entry
    at: float  # the time of its first entry
    size: int  # entries
    messages: int  # of them published (the others skipped: ``unpublishable="skip"``)
    sent: Any  # what the backend's `wait` takes


@attrs.frozen
class RelayLag:
    """How far a relay is behind the feed, at one moment.

    Attributes:
        name: the relay's consumer name.
        url: the broker (without password).
        entries: feed entries committed but not yet confirmed by the broker.
        seconds: age of the oldest of them (0.0 when caught up).
        published: entries confirmed by the broker since the relay started (repeats included).
        failures: times the broker or the store failed or was unreachable since the relay started.
        connected: whether the relay has a connection now.
        position: the consumer's committed offset.
        error: why the relay stopped on its own (None while it runs or after `stop()`).
        skipped: changes the broker can never take that the relay skipped since it started
            (``unpublishable="skip"``; each is logged; one read again after a broker failure counts again).
    """

    name: str
    url: str
    entries: int
    seconds: float
    published: int
    failures: int
    connected: bool
    position: int
    error: str | None = None
    skipped: int = 0


def _default_name(url: str, subject: str) -> str:
    return f"relay {public_url(url)} {subject}"[:128]


class Relay(BridgeThread):
    """Publishes every change of `system`'s feed to the broker at `to`. See the module docstring.

    Args:
        system: the running system whose feed is relayed.
        to: the broker URL (``nats://``, ``mqtt://``, ``amqp://``, ``redis://``: see `hoard._bridges._broker`).
        subject: the subject / topic / routing key / stream key template; ``{context_id}`` is replaced by
            the context id (percent-encoded outside ``[A-Za-z0-9_-~]``, so it is one token). On MQTT a
            template with a wildcard (``+``, ``#``), as no topic published to may have, is a `ConfigError`.
        name: the feed consumer's name (default: from the URL and subject). Two relays with one name
            share one position: run one relay per name.
        batch: the most entries read and published at once (one read of the feed; the broker confirms
            a batch before its offset can be committed).
        publish_timeout: seconds the broker has to confirm a batch (and to accept a connection).
        max_backoff: the longest wait between two attempts while the broker is away.
        unpublishable: what to do with a change the broker can never take as it is (an AMQP routing
            key or message id over 255 bytes, a message over the NATS server's ``max_payload`` or the
            ``max_msg_size`` of the relay's stream, a body over the broker's ``max_message_size``; see
            `UnpublishableChangeError`): ``"stop"`` (default) publishes every entry before it,
            commits that offset and stops, the error in `lag()`; ``"skip"`` logs it, counts it in
            `lag().skipped` and goes on. Either way it is never retried.
        publisher: a backend to use instead of the one `to` names (tests, or a broker of one's own).
        **options: passed to the backend (e.g. ``stream="HOARD"`` for NATS, ``exchange="hoard"`` for AMQP).
    """

    def __init__(self, system: ContextSystem, to: str, *, subject: str = "hoard.{context_id}", name: str | None = None,
                 batch: int = 256, publish_timeout: float = 5.0, max_backoff: float = 2.0,
                 unpublishable: str = "stop", publisher: Publisher | None = None, **options: Any) -> None:
        if not isinstance(subject, str) or not subject:
            raise ConfigError(f"subject must be a non-empty str template, not {subject!r}")
        if type(batch) is not int or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, not {batch!r}")
        for label, value in (("publish_timeout", publish_timeout), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{label} must be seconds > 0, not {value!r}")
        if unpublishable not in _UNPUBLISHABLE:
            raise ConfigError(f"unpublishable must be one of {', '.join(map(repr, _UNPUBLISHABLE))}, "
                              f"not {unpublishable!r}")
        self._publisher = publisher if publisher is not None else make_publisher(to, subject=subject, **options)
        self._system = system
        self.url = public_url(to)
        self.subject = subject
        self.name = name if name is not None else _default_name(to, subject)
        self._batch = batch
        self._timeout = float(publish_timeout)
        self._max_backoff = float(max_backoff)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._reader: Store | None = None  # lent on first use; used on the relay's thread only
        self._subjects: dict[str, str] = {}  # context id -> rendered subject (the relay's thread only)
        send, wait = getattr(self._publisher, "send", None), getattr(self._publisher, "wait", None)
        pipelined = callable(send) and callable(wait)  # a `PipelinedPublisher`
        self._send: Any = send if pipelined else self._publish_now
        self._wait_sent: Any = wait if pipelined else _confirmed_already
        self._refused: Any = getattr(self._publisher, "unpublishable", None)  # None: the backend checks nothing
        self._skip = unpublishable == "skip"
        self._halt_at: UnpublishableChangeError | None = None  # what stops the relay once nothing is on its way
        # commits the newest confirmed offset while the next batches are published
        self._committer = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                thread_name_prefix="hoard-relay-commit")
        self._commits: collections.deque[concurrent.futures.Future[None]] = collections.deque()  # oldest first
        self._wake: queue.Queue[None] = queue.Queue(maxsize=1)  # a commit happened, or stop()
        self._subscription: Any = None
        self._waiters: list[tuple[int, threading.Event]] = []  # wait_caught_up: (offset, set when committed)
        # written by the committer thread only; read anywhere (lag())
        self._position = 0
        # written by the relay's thread only; read anywhere (lag())
        self._sent = 0  # the offset of the last entry the broker confirmed
        self._head = 0
        self._head_read = 0.0
        self._oldest: float | None = None
        self._published = 0
        self._asked = 0  # the newest offset a commit was queued for
        self._asked_at = 0.0  # when (time.monotonic())
        self._failures = 0
        self._skipped = 0
        self._connected = False
        self._error: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Relay:
        """Register the feed consumer (a store write: its errors reach the caller) and start the
        relay's thread; returns at once after that (the broker is connected on the relay's thread,
        so a broker that is away does not fail the start: the relay retries). Starting twice, or
        after `stop()`, raises `HoardError`."""
        if self._thread is not None:
            raise HoardError(f"relay {self.name!r} was started already; make a new Relay to start again")
        self._consumer = self._system.consumer(self.name)
        self._position = self._head = self._sent = self._asked = self._consumer.position
        self._subscription = subscribe(self._system, self._poke, kinds=(StateChanged, ContextCreated), inline=True)
        try:
            self._system.attach_bridge(self)
        except BaseException:
            self._subscription.cancel()
            raise
        self._thread = threading.Thread(target=self._run, name=f"hoard-relay-{self.name}"[:60], daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the relay's thread and close the broker connection; blocks until then, at most
        `timeout` (default: ``publish_timeout`` + 5 s). A batch being published is finished or
        abandoned (then published again by the next relay of this name); the consumer's position is
        what the broker confirmed. Idempotent; also called by the system's `stop()`."""
        self._stop.set()
        self._poke(None)  # the loop may be waiting for an entry: wake it now
        self._halt(self._timeout + 5 if timeout is None else timeout)

    def __enter__(self) -> Relay:
        return self.start()

    def lag(self) -> RelayLag:
        """How far behind the relay is now (lock-free; any thread)."""
        entries = max(0, self._head - self._sent)
        oldest = self._oldest
        seconds = 0.0 if oldest is None or entries == 0 else max(0.0, time.time() - oldest)
        return RelayLag(self.name, self.url, entries, seconds, self._published, self._failures, self._connected,
                        self._position, self._error, self._skipped)

    def wait_caught_up(self, *, timeout: float) -> RelayLag:
        """Block until the relay confirmed every entry committed before this call (checked against
        the feed's newest offset then), at most `timeout` s; returns the lag then. Raises
        `ContextTimeoutError` when it did not catch up in time."""
        from hoard.storage import ContextTimeoutError  # noqa: PLC0415 - only this waiting call needs it

        # the caller thread's feed reader of the system (kept open: no new connection per call)
        target = int(self._system.manager.readers.get().feed_bounds()[1])
        deadline = time.monotonic() + timeout
        waiter = (target, threading.Event())
        self._waiters.append(waiter)  # list.append / remove are atomic: no lock needed
        try:
            while self._position < target:
                if self._error is not None or not self.running:
                    raise HoardError(f"relay {self.name!r} is not running: {self._error or 'stopped'}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ContextTimeoutError(f"relay {self.name!r} catching up to offset {target}", timeout)
                # set by the commit that reaches `target`; bounded to notice a relay that stopped
                waiter[1].wait(min(remaining, _CHECK_EVERY))
        finally:
            self._waiters.remove(waiter)
        return self.lag()

    # -- the loop (the relay's thread) -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except (SystemStoppedError, FeedTruncatedError, UnpublishableChangeError) as exc:
            if not isinstance(exc, SystemStoppedError):
                self._error = str(exc)
                log.error("relay %r stopped: %s", self.name, exc)
        except Exception as exc:  # a bug must be seen (logged, in lag().error), not kill silently
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("relay %r stopped by an unexpected error", self.name)
        finally:
            self._connected = False
            self._publisher.close()
            self._settle_last()
            self._committer.shutdown(wait=True)
            with contextlib.suppress(HoardError):
                self._close_reader()
            sub, self._subscription = self._subscription, None
            if sub is not None:
                with contextlib.suppress(HoardError):
                    sub.cancel()
            for _target, event in list(self._waiters):
                event.set()

    def _loop(self) -> None:
        backoff = 0.0
        flights: collections.deque[_Flight] = collections.deque()  # sent, not yet confirmed; oldest first
        read_from = self._sent  # the offset after which the next batch is read
        while not self._stop.is_set():
            if backoff and not self._back_off(backoff):
                return
            if not self._connected:
                try:
                    self._publisher.connect(self._timeout)
                except BrokerUnavailableError as exc:
                    backoff = self._failed(exc, backoff)
                    continue
                self._connected = True
                log.info("relay %r connected to %s", self.name, self.url)
            try:
                flight, read_from = self._advance(flights, read_from)
                if flight is None:
                    continue
                backoff = 0.0
                self._sent = flight.last
                if flights:
                    self._oldest = flights[0].at
                self._published += flight.messages
                if not flights or time.monotonic() - self._asked_at >= _COMMIT_EVERY:
                    self._commit()
                if flight.size == self._batch:
                    self._refresh_head()
            except BrokerUnavailableError as exc:
                self._drop_flights(flights)
                read_from = self._sent
                try:
                    self._commit()  # what the broker confirmed before it failed
                except _STORE_AWAY as store_exc:
                    self._store_failed(store_exc)
                backoff = self._failed(exc, backoff)
            except _STORE_AWAY as exc:
                self._store_failed(exc)
                if flights:  # their confirmations would come to batches no longer waited for
                    self._drop_flights(flights)
                read_from = self._sent
                backoff = self._failed(exc, backoff)

    def _drop_flights(self, flights: collections.deque[_Flight]) -> None:
        """Close the broker's connection and forget what was on its way: published again from the
        last confirmed entry."""
        self._publisher.close()
        self._connected = False
        flights.clear()

    def _store_failed(self, exc: HoardError) -> None:
        """After a read or commit failed: a damaged entry stops the relay (raised again); otherwise
        the reader is dropped (the next read opens a new one) and the offset is asked to be
        committed again (a failed commit may not have written it)."""
        if isinstance(exc, CorruptStateError):
            raise exc
        reader, self._reader = self._reader, None
        if reader is not None and reader is not self._system.store:
            with contextlib.suppress(Exception):  # a broken reader: nothing left to report
                reader.close()
        while self._commits and self._commits[0].done():
            with contextlib.suppress(Exception):  # reported by the error being handled, or passed
                self._commits.popleft().result()
        self._asked = self._position

    def _advance(self, flights: collections.deque[_Flight], read_from: int) -> tuple[_Flight | None, int]:
        """One step: read, encode and send the batch after `read_from` while fewer than `_IN_FLIGHT` are
        on their way (a full one: return, to send the next before waiting), else wait for the oldest;
        nothing on its way and nothing new: wait for a commit. Returns (the batch the broker confirmed
        or None, the offset the next batch is read after). `BrokerUnavailableError` from the backend."""
        if len(flights) < _IN_FLIGHT:
            batch, messages = self._load(read_from)
            if batch:
                read_from = batch[-1]["offset"]
                sent = self._send(messages, self._timeout) if messages else _NOTHING  # all skipped
                flights.append(_Flight(read_from, batch[0]["at"], len(batch), len(messages), sent))
                self._head = max(self._head, read_from)
                if len(flights) == 1:
                    self._oldest = batch[0]["at"]
                if len(batch) == self._batch and len(flights) < _IN_FLIGHT:
                    return None, read_from  # more may follow: read and send it before waiting for this one
            elif not flights:
                if self._halt_at is not None:  # every entry before it is confirmed (and committed as the loop ends)
                    raise self._halt_at
                self._oldest = None
                self._commit()
                self._wait()
                return None, read_from
        flight = flights.popleft()
        if flight.sent is not _NOTHING:
            self._wait_sent(flight.sent, self._timeout)
        return flight, read_from

    def _commit(self) -> None:
        """Queue a commit of the newest offset the broker confirmed, unless one was queued for it
        already; first take the commits that are done (a failed one's error is raised here, also
        while the relay is idle: the loop retries it, see `_store_failed`) and, when too many are
        queued, wait for the oldest."""
        self._settle(keep=_COMMITS_PENDING - 1)
        if self._sent <= self._asked:
            return
        self._asked, self._asked_at = self._sent, time.monotonic()
        self._commits.append(self._committer.submit(self._committed))

    def _back_off(self, backoff: float) -> bool:
        """Wait `backoff` s before connecting again (the lag kept up to date meanwhile, when the store
        answers); False when the relay was stopped."""
        try:
            self._refresh_head(force=True)
            if self._oldest is None and self._head > self._sent:  # away since before the first batch
                first = self._store_reader().feed(self._sent, 1)
                self._oldest = first[0].at if first else None
        except _STORE_AWAY as exc:
            self._store_failed(exc)  # the lag shown stays as last known
        self._stop.wait(backoff)
        return not self._stop.is_set()

    def _publish_now(self, messages: list[Outgoing], timeout: float) -> None:
        """`send` for a backend without it: publish the batch and wait for its confirmations now."""
        self._publisher.publish(messages, timeout)

    def _committed(self) -> None:
        """On the committer thread: commit the newest offset the broker confirmed (every entry up to it
        is), unless a commit queued before this one wrote it already; then wake whoever waits for it."""
        offset = self._sent  # set by the relay's thread after the broker confirmed, before queueing this
        if offset <= self._position:
            return
        self._consumer.commit(offset)
        self._position = offset
        for target, event in list(self._waiters):
            if target <= offset:
                event.set()

    def _settle(self, keep: int = 0) -> None:
        """Take the commits that are done (an error is raised), and wait for the oldest ones (each at
        most the store's call timeout) until at most `keep` are still queued."""
        commits = self._commits
        while commits and (len(commits) > keep or commits[0].done()):
            commits.popleft().result()

    def _settle_last(self) -> None:
        """As the loop ends: commit the newest offset the broker confirmed (if not queued yet) and wait
        for the commits; a failure is shown (log, `lag().error`), not raised."""
        try:
            self._commit()
            self._settle()
        except SystemStoppedError:
            pass
        except Exception as exc:
            if self._error is None:
                self._error = f"{type(exc).__name__}: {exc}"
                log.exception("relay %r could not commit its last offset", self.name)

    def _poke(self, _event: object) -> None:
        """Wake the loop (from the event bus on a commit, or from `stop()`); never blocks."""
        with contextlib.suppress(queue.Full):
            self._wake.put_nowait(None)

    def _failed(self, exc: HoardError, backoff: float) -> float:
        self._failures += 1
        log.warning("relay %r: %s", self.name, exc)
        return min(self._max_backoff, max(0.05, backoff * 2))

    def _load(self, after: int) -> tuple[list[dict[str, Any]], list[Outgoing]]:
        """The entries after `after`, at most `batch` (one read of the relay's store reader), in their
        `to_dict()` form, and their messages. A SQLite or PostgreSQL store reads them with
        ``feed_dicts`` (verified like `Store.feed`, without building `FeedEntry` objects the relay
        would only re-encode: a third of the decoding time); any other store through `Store.feed`."""
        reader = self._store_reader()
        read_dicts = getattr(reader, "feed_dicts", None)
        entries: list[dict[str, Any]] = (read_dicts(after, self._batch) if read_dicts is not None
                                         else [e.to_dict() for e in reader.feed(after, self._batch)])
        subjects = self._subjects
        if len(subjects) > _SUBJECTS_KEPT:
            subjects.clear()
        out = []
        for e in entries:
            context_id = e["context_id"]
            subject = subjects.get(context_id)
            if subject is None:
                subject = subjects[context_id] = render_subject(self.subject, context_id)
            msg_id = f"{context_id}:{e['version']}@{e['offset']}"  # message_id(): <context id>:<version>@<offset>
            out.append(Outgoing(subject, change_body_of(e, msg_id), msg_id))
        self._halt_at = None
        if self._refused is not None and out:
            return self._screen(entries, out)
        return entries, out

    def _screen(self, entries: list[dict[str, Any]],
                out: list[Outgoing]) -> tuple[list[dict[str, Any]], list[Outgoing]]:
        """Take out what the broker can never take: skipped (logged, counted; its entry stays in the
        batch, so its offset is passed) or, by default, the batch cut just before it and the relay
        told to stop there (`_halt_at`) once the entries before it are confirmed."""
        kept: list[Outgoing] = []
        start = 0
        while (refused := self._refused(out[start:] if start else out)) is not None:
            index, reason = start + refused[0], refused[1]
            error = UnpublishableChangeError(out[index].message_id, entries[index]["offset"], self.url, reason)
            if not self._skip:
                self._halt_at = error
                return entries[:index], out[:index]  # (nothing was skipped: `kept` is empty)
            log.error("relay %r skipped a change: %s", self.name, error)
            self._skipped += 1
            kept += out[start:index]
            start = index + 1
        if not start:
            return entries, out
        kept += out[start:]
        return entries, kept

    def _close_reader(self) -> None:
        """Give the reader back to the system's feed readers (the next relay's read-ahead takes it
        instead of opening one), unless the relay stopped on an error (then it is closed)."""
        reader, self._reader = self._reader, None
        if reader is None or reader is self._system.store:
            return
        if self._error is None:
            self._system.manager.readers.give_back(reader)
        else:
            reader.close()

    def _wait(self) -> None:
        """Wait for a new entry: woken by this system's commits and by `stop()`; bounded by
        `_IDLE_POLL` for the commits of other processes (PostgreSQL), which raise no event here."""
        with contextlib.suppress(queue.Empty):
            self._wake.get(timeout=_IDLE_POLL)

    def _store_reader(self) -> Store:
        """The relay thread's read-only store (a store is single-threaded), lent by the system's
        feed readers on first use (one a relay stopped before gave back, else a new one)."""
        if self._reader is None:
            self._reader = self._system.manager.readers.lend()
        return self._reader

    def _read_head(self) -> int:
        """The feed's newest offset (the relay's thread, which owns the reader)."""
        return int(self._store_reader().feed_bounds()[1])

    def _refresh_head(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._head_read >= _HEAD_EVERY:
            self._head_read = now
            self._head = max(self._head, self._read_head())


def _confirmed_already(_sent: None, _timeout: float) -> None:
    """`wait` for a backend without it: `_publish_now` waited already."""
