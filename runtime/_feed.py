"""The change feed seen from a running system: `ContextSystem.changes()` and named consumers.

Every committed change of every context of the store has an offset in one feed (see
`hoard.storage`'s `FeedEntry`): it only grows, in commit order across contexts, with no gap, also on
PostgreSQL with several processes writing. This module reads it for the caller:

- `ChangeStream` (what `system.changes(after=...)` returns) iterates entries after an offset and
  waits for new ones, with ``for`` or ``async for``. Reads go to a read-only store of the caller's
  own thread (`Store.reader()`): they take no lock on any context, never pass through an actor's
  mailbox and never block a writer. Waiting is woken by the system's own commits (an inline event
  subscription) and, for commits of other processes, by a bounded poll (`POLL_INTERVAL`).
- `FeedConsumer` (`system.consumer("billing")`) keeps a named position in the same store:
  `commit(offset)` is a store write (through the persistence actor, like every write of this
  system), so a consumer killed at any moment and started again goes on from its last committed
  offset: every entry is delivered at least once, per context in version order, none skipped.
  A context's deletion is an entry too (``deleted=True``, one version past its last).

Readers are opened lazily, one per thread that reads, and closed when the system stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from hoard.actors import ContextCreated, ContextDeleted, StateChanged, StoreCall
from hoard.storage import (
    MAX_STORED_INT,
    FeedEntry,
    FeedTruncatedError,
    InvalidValueError,
    PersistenceError,
    Store,
    SystemStoppedError,
)

from ._core import SystemCore
from ._events import subscribe

__all__ = ["POLL_INTERVAL", "ChangeStream", "FeedConsumer", "FeedReaders", "check_offset", "check_timeout"]

#: the longest a waiting stream goes without looking at the store (commits of other processes are
#: seen at most this late; this system's own commits wake it at once)
POLL_INTERVAL = 0.2
#: entries read from the store at a time. Few enough that the decoded entries a consumer has not taken
#: yet die young: with 1,000 they outlived the young GC generations and cost a full collection every
#: ~25,000 entries (~1.3 of the ~11 us an entry cost, the bench's feed_read workload, gc.callbacks).
#: With 250, the ~4 tracked objects each entry keeps (the entry, its attribute dict, `values`,
#: `changed`) still filled the youngest generation (700) before the consumer freed them: 184 young,
#: 16 middle and 1 full collection per 50,000 entries; with 128 (~550 such objects) none
#: (gc.callbacks, the bench's feed_read workload). A read's own cost (its transaction and the feed's
#: bounds, ~40 us on SQLite) is then 0.3 us an entry; in all, 57.6k -> 56.3k instructions an entry
#: (callgrind) and less time in the collector's cache misses
_BATCH = 128
#: readers given back (`FeedReaders.give_back`) kept open for the next `lend`
_IDLE_KEPT = 4


class FeedReaders:
    """One read-only store per reading thread, opened on first use, all closed by `close()`.

    A store is single-threaded (see `Store`), so each thread gets its own (a SQLite connection, a
    PostgreSQL session); the memory store is its own reader."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local = threading.local()
        self._opened: list[Store] = []  # list.append is atomic: no lock needed
        self._idle: list[Store] = []  # lent and given back, open, for the next `lend`
        self._closed = False

    def get(self) -> Store:
        """This thread's reader (opened now if new). `SystemStoppedError` once closed."""
        if self._closed:
            raise SystemStoppedError()
        reader: Store | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._store.reader()
            if reader is not self._store:
                reader.open()
                self._opened.append(reader)
            self._local.reader = reader
        return reader

    def lend(self) -> Store:
        """A reader for a thread that reads for a while and then ends (a relay's read-ahead thread):
        one given back earlier if there is one, else a new one (opening one builds its codec: ~4 ms
        of CPU, about a twentieth of a relay round of 5,000 entries). `give_back` it when done, from
        whichever thread; it must not be used after that. `SystemStoppedError` once closed."""
        if self._closed:
            raise SystemStoppedError()
        with contextlib.suppress(IndexError):  # list.pop is atomic: no lock needed
            return self._idle.pop()
        reader = self._store.reader()
        if reader is not self._store:
            reader.open()
            self._opened.append(reader)
        return reader

    def give_back(self, reader: Store) -> None:
        """Return a reader from `lend` (kept open for the next `lend`, at most `_IDLE_KEPT` of them,
        the rest closed; closed at once when the readers are)."""
        if reader is self._store:
            return
        if self._closed or len(self._idle) >= _IDLE_KEPT:
            with contextlib.suppress(ValueError):  # closed with the readers meanwhile: not listed
                self._opened.remove(reader)  # a reader closed here is not kept for `close`
            with contextlib.suppress(PersistenceError):
                reader.close()
            return
        self._idle.append(reader)

    def close(self) -> None:
        """Close every reader (idempotent). A read under way in another thread fails with our error."""
        self._closed = True
        opened, self._opened, self._idle = self._opened, [], []
        for reader in opened:
            with contextlib.suppress(PersistenceError):
                reader.close()


def check_offset(name: str, value: object) -> int:
    """`value` if it can be a feed offset: an int from 0 to 2**63 - 1 (what every store holds);
    `InvalidValueError` naming `name` otherwise."""
    if type(value) is not int or not 0 <= value <= MAX_STORED_INT:
        raise InvalidValueError(name, f"a feed offset is an int from 0 to 2**63 - 1, not {value!r}")
    return value


def check_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidValueError("timeout", f"must be None (wait for ever) or seconds >= 0, not {value!r}")
    return float(value)


class ChangeStream:
    """Feed entries after an offset, in offset order, waiting for new ones: ``for entry in stream``
    or ``async for entry in stream``. See `ContextSystem.changes`.

    The iteration ends when no new entry arrived for `timeout` seconds (None: it waits until the
    system stops), or at `close()`. A reader whose position fell out of the feed's retention gets
    `FeedTruncatedError` (never a silent gap). Not thread-safe: one consumer of the stream at a time.
    """

    def __init__(self, system: SystemCore, readers: FeedReaders, after: int, timeout: float | None,
                 consumer: str | None = None) -> None:
        self._system = system
        self._readers = readers
        self.position = after  # the offset of the newest entry handed out
        self._timeout = timeout
        self._consumer = consumer
        self._buffer: collections.deque[FeedEntry] = collections.deque()
        self._wake: queue.Queue[None] | None = None
        self._subscription: Any = None
        self._closed = False

    # -- the blocking form -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[FeedEntry]:
        # a generator, not `self`: resuming it costs less than a call of `__next__` per entry; the
        # same steps as `__next__` (which `next(stream)` still takes)
        buffer = self._buffer
        while buffer or self._fill():
            entry = buffer.popleft()
            self.position = entry.offset
            yield entry
        self.close()

    def __next__(self) -> FeedEntry:
        if not self._buffer and not self._fill():
            self.close()
            raise StopIteration
        entry = self._buffer.popleft()
        self.position = entry.offset
        return entry

    # -- the asyncio form: the waiting runs on a worker thread, never on the loop --------------------
    def __aiter__(self) -> AsyncIterator[FeedEntry]:
        return self

    async def __anext__(self) -> FeedEntry:
        if not self._buffer and not await asyncio.to_thread(self._fill):
            self.close()
            raise StopAsyncIteration
        entry = self._buffer.popleft()
        self.position = entry.offset
        return entry

    def close(self) -> None:
        """End the stream (idempotent): the next step ends the iteration."""
        self._closed = True
        sub, self._subscription = self._subscription, None
        if sub is not None:
            with contextlib.suppress(SystemStoppedError):
                sub.cancel()

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _read(self) -> list[FeedEntry]:
        try:
            return self._readers.get().feed(self.position, _BATCH)
        except FeedTruncatedError as exc:
            if self._consumer is None:
                raise
            raise FeedTruncatedError(exc.after, exc.floor, consumer=self._consumer) from None

    def _fill(self) -> bool:
        """Read the next batch into the buffer, waiting for one up to the timeout. False: the
        stream ends (idle timeout, closed, or the system stopped)."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not self._closed and not self._system.stopped:
            try:
                batch = self._read()
            except SystemStoppedError:
                return False
            except PersistenceError:
                if self._system.stopped:  # its reader was closed under it by stop(): the stream ends
                    return False
                raise
            if batch:
                self._buffer.extend(batch)
                return True
            remaining = POLL_INTERVAL if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._wake is None:
                self._subscribe()  # then read again: a commit may have landed before it
                continue
            with contextlib.suppress(queue.Empty):
                self._wake.get(timeout=min(remaining, POLL_INTERVAL))
        return False

    def _subscribe(self) -> None:
        """The wake-up queue, fed by this system's commits (subscribed on the first wait)."""
        wake: queue.Queue[None] = queue.Queue(maxsize=1)

        def poke(_event: Any) -> None:
            with contextlib.suppress(queue.Full):
                wake.put_nowait(None)
        self._wake = wake
        with contextlib.suppress(SystemStoppedError):
            self._subscription = subscribe(self._system, poke, kinds=(StateChanged, ContextCreated, ContextDeleted),
                                           inline=True)


class FeedConsumer:
    """A named reader of the change feed whose position is kept in the store. See
    `ContextSystem.consumer`.

    Registering it (on creation) makes retention keep every entry it has not committed past (within
    ``feed_retention``). Thread-safe: `position` is a lock-free read, `commit` a store write.
    """

    def __init__(self, system: SystemCore, readers: FeedReaders, name: str, timeout: float | None) -> None:
        self._system = system
        self._readers = readers
        self.name = name
        system.ask_persistence(StoreCall("set_consumer", (name, None)), timeout, f"registering consumer {name!r}")

    @property
    def position(self) -> int:
        """The offset this consumer committed last (its registration: the feed's floor then). Read
        from the store in the caller's thread, without a lock."""
        pos = self._readers.get().consumers().get(self.name)
        if pos is None:
            raise InvalidValueError("name", f"feed consumer {self.name!r} was removed; get it again with "
                                            "system.consumer(name)")
        return pos

    def commit(self, offset: int, *, timeout: float | None = None) -> None:
        """Record that every entry up to `offset` is processed: durable when this returns (a store
        write through the persistence actor, after the writes before it; blocks at most `timeout`,
        default call_timeout). A restart goes on after it. `InvalidValueError` for an offset behind
        the committed one or past the feed's newest; nothing changes then."""
        check_offset("offset", offset)
        self._system.ask_persistence(StoreCall("set_consumer", (self.name, offset)), timeout,
                                     f"committing consumer {self.name!r}")

    def changes(self, *, timeout: float | None = None) -> ChangeStream:
        """The entries after this consumer's committed position (see `ContextSystem.changes`); a
        consumer behind the retention bound gets `FeedTruncatedError` naming it. Committing is the
        caller's choice (after processing an entry, or a batch)."""
        return ChangeStream(self._system, self._readers, self.position, check_timeout(timeout), self.name)

    def remove(self, *, timeout: float | None = None) -> None:
        """Unregister: retention no longer waits for this consumer. A store write."""
        self._system.ask_persistence(StoreCall("remove_consumer", (self.name,)), timeout,
                                     f"removing consumer {self.name!r}")

    def __repr__(self) -> str:
        return f"<FeedConsumer {self.name!r}>"
