"""`Relay`: the change feed out to a broker, at least once, in order per context.

A relay is a named feed consumer (`ContextSystem.consumer`) with one thread of its own. Its loop:

1. read the entries after the consumer's committed offset (at most `batch` at a time; when there are
   none, wait for the next commit);
2. publish them in offset order through the broker's backend, which returns only once the broker
   confirmed every one (JetStream ack, MQTT PUBACK, AMQP publisher confirm, the XADD reply);
3. commit the consumer's offset to the last entry published (a store write). The commit runs on a
   thread of its own while the next batches are published: it never waits for the broker and the
   broker never waits for the disk. A commit asked for while one is under way is folded into the next:
   each commit writes the newest offset the broker confirmed when it starts (so a disk slower than the
   broker costs fewer commits, not throughput), and at most `_COMMITS_PENDING` commits are queued
   before the relay waits for the oldest. The offset committed is only ever one the broker confirmed
   all of, so it never passes an unconfirmed entry.

A relay killed between 2 and 3 (SIGKILL, power loss) publishes those entries again when it starts
over: every change reaches the broker at least once; one context's changes are in version order
because the feed is in commit order and a batch is published in order on one connection. On
JetStream the message id header (``Nats-Msg-Id: <context id>:<version>``) makes the stream drop the
repeats within its duplicate window: exactly once there. A broker that fails or is cut off makes the
relay close the connection, wait (exponential back-off, up to `max_backoff`) and publish the same
entries again; nothing is skipped, and `lag()` shows how far behind it is meanwhile.

Threads: `start()` and `stop()` may be called from any thread; the loop runs on the relay's thread
("hoard-relay-<name>"), the only one that touches the backend; the next batch is read and encoded on
"hoard-relay-ahead", and offsets are committed on "hoard-relay-commit". The counters read by `lag()`
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
from typing import TYPE_CHECKING, Any

import attrs

from hoard.actors import ContextCreated, StateChanged
from hoard.storage import ConfigError, FeedTruncatedError, HoardError, Store, SystemStoppedError

from .._events import subscribe
from ._broker import Outgoing, Publisher, make_publisher, public_url
from ._errors import BrokerUnavailableError
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


@attrs.frozen
class RelayLag:
    """How far a relay is behind the feed, at one moment.

    Attributes:
        name: the relay's consumer name.
        url: the broker (without password).
        entries: feed entries committed but not yet confirmed by the broker.
        seconds: age of the oldest of them (0.0 when caught up).
        published: entries confirmed by the broker since the relay started (repeats included).
        failures: times the broker failed or was unreachable since the relay started.
        connected: whether the relay has a connection now.
        position: the consumer's committed offset.
        error: why the relay stopped on its own (None while it runs or after `stop()`).
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


def _default_name(url: str, subject: str) -> str:
    return f"relay {public_url(url)} {subject}"[:128]


class Relay(BridgeThread):
    """Publishes every change of `system`'s feed to the broker at `to`. See the module docstring.

    Args:
        system: the running system whose feed is relayed.
        to: the broker URL (``nats://``, ``mqtt://``, ``amqp://``, ``redis://``: see `hoard._bridges._broker`).
        subject: the subject / topic / routing key / stream key template; ``{context_id}`` is replaced by
            the context id (percent-encoded outside ``[A-Za-z0-9_-~]``, so it is one token).
        name: the feed consumer's name (default: from the URL and subject). Two relays with one name
            share one position: run one relay per name.
        batch: the most entries published before one offset commit.
        publish_timeout: seconds the broker has to confirm a batch (and to accept a connection).
        max_backoff: the longest wait between two attempts while the broker is away.
        publisher: a backend to use instead of the one `to` names (tests, or a broker of one's own).
        **options: passed to the backend (e.g. ``stream="HOARD"`` for NATS, ``exchange="hoard"`` for AMQP).
    """

    def __init__(self, system: ContextSystem, to: str, *, subject: str = "hoard.{context_id}", name: str | None = None,
                 batch: int = 256, publish_timeout: float = 5.0, max_backoff: float = 2.0,
                 publisher: Publisher | None = None, **options: Any) -> None:
        if not isinstance(subject, str) or not subject:
            raise ConfigError(f"subject must be a non-empty str template, not {subject!r}")
        if type(batch) is not int or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, not {batch!r}")
        for label, value in (("publish_timeout", publish_timeout), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{label} must be seconds > 0, not {value!r}")
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
        self._reader: Store | None = None  # opened and used on the read-ahead thread only
        self._subjects: dict[str, str] = {}  # context id -> rendered subject (read-ahead thread only)
        # reads and encodes the next batch while the broker confirms this one (the decode of feed
        # entries is most of the relay's CPU; the broker's round trip releases the GIL)
        self._ahead = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoard-relay-ahead")
        self._next: tuple[int, concurrent.futures.Future[tuple[list[dict[str, Any]], list[Outgoing]]]] | None = None
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
        self._failures = 0
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
        self._position = self._head = self._sent = self._consumer.position
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
                        self._position, self._error)

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
        except (SystemStoppedError, FeedTruncatedError) as exc:
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
            with contextlib.suppress(HoardError, concurrent.futures.TimeoutError):
                self._ahead.submit(self._close_reader).result(self._timeout)
            self._ahead.shutdown(wait=True)
            sub, self._subscription = self._subscription, None
            if sub is not None:
                with contextlib.suppress(HoardError):
                    sub.cancel()
            for _target, event in list(self._waiters):
                event.set()

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                self._refresh_head(force=True)
                if self._oldest is None and self._head > self._sent:  # away since before the first batch
                    first = self._ahead.submit(lambda: self._store_reader().feed(self._sent, 1)).result()
                    self._oldest = first[0].at if first else None
                self._stop.wait(backoff)
                if self._stop.is_set():
                    return
            if not self._connected:
                try:
                    self._publisher.connect(self._timeout)
                except BrokerUnavailableError as exc:
                    backoff = self._failed(exc, backoff)
                    continue
                self._connected = True
                log.info("relay %r connected to %s", self.name, self.url)
            batch, messages = self._take(self._sent)
            if not batch:
                self._oldest = None
                self._wait()
                continue
            last = batch[-1]["offset"]
            self._oldest = batch[0]["at"]
            self._head = max(self._head, last)
            self._read_ahead(last)
            try:
                self._publisher.publish(messages, self._timeout)
            except BrokerUnavailableError as exc:
                self._publisher.close()
                self._connected = False
                backoff = self._failed(exc, backoff)
                continue
            backoff = 0.0
            self._sent = last
            # the commits done so far: an error stops the relay here; too many queued: wait for the oldest
            self._settle(keep=_COMMITS_PENDING - 1)
            self._commits.append(self._committer.submit(self._committed))
            self._published += len(batch)
            if len(batch) == self._batch:
                self._refresh_head()

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
        """As the loop ends: wait for its last commit; a failure is shown (log, `lag().error`), not raised."""
        try:
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

    def _failed(self, exc: BrokerUnavailableError, backoff: float) -> float:
        self._failures += 1
        log.warning("relay %r: %s", self.name, exc)
        return min(self._max_backoff, max(0.05, backoff * 2))

    def _load(self, after: int) -> tuple[list[dict[str, Any]], list[Outgoing]]:
        """On the read-ahead thread: the entries after `after`, at most `batch` (one read of its own
        store reader), in their `to_dict()` form, and their messages. A SQLite or PostgreSQL store
        reads them with ``feed_dicts`` (verified like `Store.feed`, without building `FeedEntry`
        objects the relay would only re-encode: a third of the decoding time); any other store
        through `Store.feed`."""
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
            msg_id = f"{context_id}:{e['version']}"  # message_id(): <context id>:<version>
            out.append(Outgoing(subject, change_body_of(e, msg_id), msg_id))
        return entries, out

    def _read_ahead(self, after: int) -> None:
        self._next = (after, self._ahead.submit(self._load, after))

    def _take(self, after: int) -> tuple[list[dict[str, Any]], list[Outgoing]]:
        """The batch after `after`: the one read ahead if it starts there (a failed publish leaves a
        read-ahead that does not: it is dropped), else read now."""
        ahead, self._next = self._next, None
        future = ahead[1] if ahead is not None and ahead[0] == after else self._ahead.submit(self._load, after)
        return future.result()

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
        """The read-ahead thread's read-only store (a store is single-threaded), lent by the system's
        feed readers on first use (one a relay stopped before gave back, else a new one)."""
        if self._reader is None:
            self._reader = self._system.manager.readers.lend()
        return self._reader

    def _read_head(self) -> int:
        """The feed's newest offset (read on the read-ahead thread, which owns the reader)."""
        return int(self._ahead.submit(lambda: self._store_reader().feed_bounds()[1]).result())

    def _refresh_head(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._head_read >= _HEAD_EVERY:
            self._head_read = now
            self._head = max(self._head, self._read_head())
