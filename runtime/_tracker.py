"""`ContextTracker`: the caller's handle to one context, and `ContextTrackerFactory`.

Reads (`get`, `state`, `version`, `keys`) never enter a mailbox: they read the newest *committed*
state the context published, a single reference read, in the calling thread. Writes are messages to
the context's actor; the call blocks until the actor (and, in ``immediate`` mode, the store) has
answered, at most `timeout` seconds (default: the manager's ``call_timeout``), then raises
`ContextTimeoutError`. A thread always reads its own acknowledged writes.

A tracker stays valid when its context is passivated (evicted, deactivated): its next call, reads
included, activates it again (without making it current). Trackers are cheap and thread-safe; any
number may point at one context.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pykka

from hoard.actors import (
    EPOCH,
    Activate,
    ContextCell,
    CreateRecoveryPoint,
    Delete,
    Reply,
    Restore,
    Set,
    SetMetadata,
    SetPinned,
    StateChanged,
    StoreCall,
    StoreWrite,
    Transact,
    Update,
    fresh_mark,
)
from hoard.storage import (
    ContextOwnedElsewhereError,
    ContextState,
    ContextTimeoutError,
    DeleteRecoveryPoint,
    HoardError,
    InvalidValueError,
    RecoveryPoint,
    RecoveryPointNotFoundError,
    SystemStoppedError,
)

from ._core import SystemCore
from ._events import subscribe

__all__ = ["ContextTracker", "ContextTrackerFactory"]

_MISSING: Any = object()
_ATTEMPTS = 5  # a call that meets a passivating actor re-activates and retries (it was not applied)


def activate_waiting(system: SystemCore, message: Activate, timeout: float | None, what: str) -> ContextCell:
    """Ask the supervisor to activate; while another process owns the context (shared store: its
    lease is live), retry in the caller's thread with a short backoff (20 ms doubling to 250 ms, never
    past the lease's remaining time) until `timeout` (default: call_timeout) is spent; then raise the
    last `ContextOwnedElsewhereError`, which names the owner. A lease that expires or is released
    meanwhile is taken over by the next attempt. No actor ever waits: the supervisor answers each
    attempt at once."""
    t = system.call_timeout if timeout is None else timeout
    deadline = time.monotonic() + t
    delay = 0.02
    refused: ContextOwnedElsewhereError | None = None
    while True:
        try:
            cell: ContextCell = system.ask(message, t if refused is None else max(0.001, deadline - time.monotonic()),
                                           what)
            return cell
        except ContextOwnedElsewhereError as exc:
            refused = exc
        except ContextTimeoutError:
            if refused is None:
                raise
            raise refused from None  # the time ran out while it was owned elsewhere: say by whom
        remaining = deadline - time.monotonic()
        if remaining < 0.02:
            raise refused
        pause = min(delay, remaining - 0.01)
        if refused.expires_in is not None:
            pause = min(pause, max(0.005, refused.expires_in))
        threading.Event().wait(pause)  # a backoff in the caller's thread (an Event, not a lock)
        delay = min(delay * 2, 0.25)


def _rp_id(rp_id: object, context_id: str) -> int:
    if isinstance(rp_id, RecoveryPoint):
        return rp_id.id
    if isinstance(rp_id, bool) or not isinstance(rp_id, int):
        raise RecoveryPointNotFoundError(context_id, rp_id)
    return rp_id


# Recovery points live in the store only, so these need no context actor (and work on inactive contexts).
def list_recovery_points(system: SystemCore, context_id: str, timeout: float | None) -> list[RecoveryPoint]:
    result: list[RecoveryPoint] = system.ask_persistence(
        StoreCall("recovery_points", (context_id,)), timeout, f"listing recovery points of {context_id!r}")
    return result


def read_recovery_point(system: SystemCore, context_id: str, rp_id: object,
                        timeout: float | None) -> RecoveryPoint:
    rid = _rp_id(rp_id, context_id)
    rp: RecoveryPoint | None = system.ask_persistence(
        StoreCall("recovery_point", (context_id, rid)), timeout, f"reading recovery point {rid} of {context_id!r}")
    if rp is None:
        raise RecoveryPointNotFoundError(context_id, rid)
    return rp


def delete_recovery_point(system: SystemCore, context_id: str, rp_id: object, timeout: float | None) -> None:
    rp = read_recovery_point(system, context_id, rp_id, timeout)
    system.ask_persistence(StoreWrite((DeleteRecoveryPoint(context_id, rp.id),)), timeout,
                           f"deleting recovery point {rp.id} of {context_id!r}")


#: the future a ``*_async`` call returns: a pykka future (``pykka.get_all`` works) that asyncio can
#: await; `get` raises the call's error, or `ContextTimeoutError` after its timeout
Pending = Reply


class ContextTracker:
    """Handle to one context. See the module docstring for the concurrency contract."""

    __slots__ = ("__weakref__", "_cell", "_id", "_system", "_timeout")

    def __init__(self, system: SystemCore, cell: ContextCell, timeout: float | None = None) -> None:
        self._system = system
        self._cell = cell
        self._id = cell.id
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<ContextTracker {self._id!r} v{self._cell.state.version}>"

    # -- plumbing ------------------------------------------------------------------------------------
    def _live_cell(self, timeout: float | None = None, *, write: bool = False) -> ContextCell:
        """The open cell (re-activating a passivated context), marked as used: a write gets an exact,
        fresh LRU mark, a read the current epoch."""
        cell = self._cell
        if cell.closed:
            cell = self._reactivate(timeout)
        cell.touched = fresh_mark() if write else EPOCH[0]
        return cell

    def _reactivate(self, timeout: float | None) -> ContextCell:
        """The context was passivated: activate it again (not as current). Blocks up to `timeout`."""
        cell = activate_waiting(self._system, Activate(self._id, create=False, make_current=False),
                                timeout if timeout is not None else self._timeout, f"activating {self._id!r}")
        self._cell = cell
        return cell

    def _call(self, message: Any, timeout: float | None, what: str) -> Any:
        t = timeout if timeout is not None else self._timeout
        if t is None:
            t = self._system.call_timeout
        for _ in range(_ATTEMPTS):
            if self._system.stopped:
                raise SystemStoppedError()
            cell = self._live_cell(t, write=True)
            try:
                return cell.actor_ref.ask(message, block=False).get(timeout=t)
            except ContextTimeoutError as exc:
                raise ContextTimeoutError(what, t, self._id) from exc
            except pykka.ActorDeadError:
                # the actor stopped before handling the message (passivated): it was not applied
                if self._cell is cell and not cell.closed:
                    cell.closed = True  # dead without being closed: let the supervisor decide
                continue
        raise HoardError(f"{what}: context {self._id!r} was passivated {_ATTEMPTS} times during the call")

    def _submit(self, message: Any, what: str) -> Pending:
        """Send `message` without waiting; the actor's own reply future is returned (no second future,
        no forwarding). A call that meets a stopping actor (not applied) is redone by its `get`."""
        if self._system.stopped:
            raise SystemStoppedError()
        cell = self._live_cell(write=True)
        reply: Reply = cell.actor_ref.ask(message, block=False)
        reply.retry = functools.partial(self._call, message, None, what)
        reply.what = what
        return reply

    # -- non-blocking forms: each returns a `Pending` future at once (await it, or .get()) ---------------
    def set_async(self, key: str, value: Any, *, expected_version: int | None = None) -> Pending:
        """`set` without waiting: returns a future of the new version."""
        return self._submit(Set(key, value, expected_version), f"set on {self._id!r}")

    def update_async(self, values: Mapping[str, Any], *, expected_version: int | None = None) -> Pending:
        """`update` without waiting: returns a future of the new version."""
        return self._submit(Update(values, expected_version), f"update on {self._id!r}")

    def delete_async(self, keys: str | Iterable[str], *, expected_version: int | None = None) -> Pending:
        """`delete` without waiting: returns a future of the new version."""
        ks = (keys,) if isinstance(keys, str) else tuple(keys)
        return self._submit(Delete(ks, expected_version), f"delete on {self._id!r}")

    def set_metadata_async(self, values: Mapping[str, Any], *, remove: Iterable[str] = (),
                           expected_version: int | None = None) -> Pending:
        """`set_metadata` (mapping form) without waiting: returns a future of the new version."""
        rm = (remove,) if isinstance(remove, str) else tuple(remove)
        return self._submit(SetMetadata(values, rm, expected_version), f"set_metadata on {self._id!r}")

    def transact_async(self, fn: Callable[[Any], Any], *, expected_version: int | None = None) -> Pending:
        """`transact` without waiting: returns a future of what `fn` returns."""
        return self._submit(Transact(fn, expected_version), f"transact on {self._id!r}")

    def create_recovery_point_async(self, label: str | None = None) -> Pending:
        """`create_recovery_point` without waiting: returns a future of the `RecoveryPoint`."""
        return self._submit(CreateRecoveryPoint(label), f"recovery point of {self._id!r}")

    def restore_async(self, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                      timeout: float | None = None) -> Pending:
        """`restore` without waiting for the change (it reads the recovery point first, blocking up to
        `timeout` on that store read): returns a future of the new version."""
        rp = read_recovery_point(self._system, self._id, rp_id, timeout)
        return self._submit(Restore(rp, expected_version), f"restore of {self._id!r}")

    # -- reads: no message, no wait -----------------------------------------------------------------
    @property
    def id(self) -> str:
        """The context id."""
        return self._id

    @property
    def version(self) -> int:
        """The newest committed version. Lock-free; re-activates a passivated context."""
        return self._live_cell().state.version

    def state(self) -> ContextState:
        """The newest committed `ContextState` (immutable). Lock-free; re-activates if passivated."""
        return self._live_cell().state

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` (frozen: a read-only dict/list), or `default`. Lock-free, no message.

        Like ``dict.get``: a key that cannot be present (an int, say) gives `default`; an unhashable
        key raises `InvalidValueError`. This is the hot read path: one attribute check, one LRU tick,
        one persistent-map lookup.
        """
        cell = self._cell
        if cell.closed:
            cell = self._reactivate(None)
        cell.touched = EPOCH[0]
        try:
            return cell.state.data.get(key, default)
        except TypeError:
            raise InvalidValueError(key, f"keys are str, not {type(key).__name__}", context_id=self._id) from None

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return type(key) is str and key in self._live_cell().state.data

    def keys(self) -> list[str]:
        """The keys of the newest committed state (a list, a snapshot)."""
        return list(self._live_cell().state.data.keys())

    def items(self) -> list[tuple[str, Any]]:
        """Key/value pairs of the newest committed state (a list, a snapshot)."""
        return list(self._live_cell().state.data.items())

    def typed(self) -> Any:
        """The newest committed data as an instance of the context's schema class (lock-free read plus
        one cattrs structure). Raises `HoardError` if the context is not bound to a schema."""
        cell = self._live_cell()
        if cell.schema is None:
            raise HoardError(f"context {self._id!r} is not bound to a schema; activate it with schema=...")
        return cell.schema.structure(cell.state.data, self._id)

    def metadata(self) -> Mapping[str, Any]:
        """The newest committed metadata (read-only mapping)."""
        return self._live_cell().state.metadata

    def wait_for_version(self, version: int, *, timeout: float | None = None) -> ContextState:
        """Block until the context's committed version is at least `version`; return that state.

        Returns at once if it already is. Raises `ContextTimeoutError` after `timeout` seconds
        (default: call_timeout). Waits on an event subscription, not by polling.
        """
        state = self.state()
        if state.version >= version:
            return state
        t = timeout if timeout is not None else (self._timeout or self._system.call_timeout)
        reached: pykka.ThreadingFuture[None] = pykka.ThreadingFuture()

        def check(event: Any) -> None:
            if event.version >= version:
                with contextlib.suppress(queue.Full):
                    reached.set(None)

        sub = subscribe(self._system, check, context_id=self._id, kinds=[StateChanged], inline=True)
        try:
            if self.state().version < version:  # a change may have landed while subscribing
                reached.get(timeout=t)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(f"waiting for version {version} of {self._id!r}", t, self._id) from exc
        finally:
            sub.cancel()
        return self.state()

    # -- writes: one message each, atomic, version-checked ---------------------------------------------
    def set(self, key: str, value: Any, *, expected_version: int | None = None,
            timeout: float | None = None) -> int:
        """Set one key. Returns the new version (the old one + 1).

        Blocks until applied (``immediate``: committed), at most `timeout` s. Raises
        `VersionConflictError` if `expected_version` is given and differs, `InvalidValueError` for a
        bad key or value; in both cases nothing changes.
        """
        return self._call(Set(key, value, expected_version), timeout, f"set on {self._id!r}")  # type: ignore[no-any-return]

    def update(self, values: Mapping[str, Any], *, expected_version: int | None = None,
               timeout: float | None = None) -> int:
        """Set several keys in one atomic change (one version). Returns the new version."""
        if not isinstance(values, Mapping):
            raise InvalidValueError(None, f"update takes a mapping, not {type(values).__name__}", context_id=self._id)
        return self._call(Update(values, expected_version), timeout, f"update on {self._id!r}")  # type: ignore[no-any-return]

    def delete(self, keys: str | Iterable[str], *, expected_version: int | None = None,
               timeout: float | None = None) -> int:
        """Remove one key or several in one atomic change; absent keys are allowed. Returns the new
        version (raised by exactly 1 even when nothing was present)."""
        if isinstance(keys, str):
            ks: tuple[Any, ...] = (keys,)
        else:
            try:
                ks = tuple(keys)
            except TypeError:
                raise InvalidValueError(keys, "delete takes a key or an iterable of keys",
                                        context_id=self._id) from None
        return self._call(Delete(ks, expected_version), timeout, f"delete on {self._id!r}")  # type: ignore[no-any-return]

    def set_metadata(self, key: str | Mapping[str, Any], value: Any = _MISSING, *, remove: Iterable[str] = (),
                     expected_version: int | None = None, timeout: float | None = None) -> int:
        """Set metadata: ``set_metadata("k", v)`` or ``set_metadata({"k": v, ...})``; `remove` names keys to
        drop. One atomic change; returns the new version."""
        if isinstance(key, Mapping):
            if value is not _MISSING:
                raise InvalidValueError(None, "give a mapping or a key and a value, not both", context_id=self._id)
            values: Mapping[str, Any] = key
        else:
            if value is _MISSING:
                raise InvalidValueError(key, "set_metadata(key, value) needs a value", context_id=self._id)
            values = {key: value}
        rm = (remove,) if isinstance(remove, str) else tuple(remove)
        return self._call(SetMetadata(values, rm, expected_version), timeout,  # type: ignore[no-any-return]
                          f"set_metadata on {self._id!r}")

    def transact(self, fn: Callable[[Any], Any], *, expected_version: int | None = None,
                 timeout: float | None = None) -> Any:
        """Run ``fn(draft)`` inside the context's actor and apply the draft's changes atomically.

        `draft` is a mutable mapping of the data (with ``draft.metadata``, a dict, and
        ``draft.version``). No other change to the context happens while `fn` runs. If `fn` raises,
        nothing changes and the exception reaches the caller. Returns what `fn` returned. The version
        rises by 1 even if `fn` changed nothing. `fn` runs in the actor's thread: keep it short and
        never call this context's tracker from inside it (that would wait for itself until timeout).
        """
        if not callable(fn):
            raise InvalidValueError(None, f"transact takes a callable, not {type(fn).__name__}", context_id=self._id)
        return self._call(Transact(fn, expected_version), timeout, f"transact on {self._id!r}")

    # -- recovery points ---------------------------------------------------------------------------
    def create_recovery_point(self, label: str | None = None, *, timeout: float | None = None) -> RecoveryPoint:
        """Store a durable, compressed copy of the current state; returns it. Its id is the next of
        this context's sequence. Keeps at most ``max_recovery_points`` (the oldest go first, never
        this one). Does not change the version."""
        return self._call(CreateRecoveryPoint(label), timeout, f"recovery point of {self._id!r}")  # type: ignore[no-any-return]

    def recovery_points(self, *, timeout: float | None = None) -> list[RecoveryPoint]:
        """This context's recovery points, oldest first. Blocks on one store read."""
        return list_recovery_points(self._system, self._id, timeout)

    def restore(self, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                timeout: float | None = None) -> int:
        """Make data and metadata equal to recovery point `rp_id`'s, as a new version (returned).

        Raises `RecoveryPointNotFoundError` if it does not exist; nothing changes then.
        """
        rp = read_recovery_point(self._system, self._id, rp_id, timeout)
        return self._call(Restore(rp, expected_version), timeout, f"restore of {self._id!r}")  # type: ignore[no-any-return]

    def delete_recovery_point(self, rp_id: int | RecoveryPoint, *, timeout: float | None = None) -> None:
        """Delete one recovery point (`RecoveryPointNotFoundError` if there is none with that id)."""
        delete_recovery_point(self._system, self._id, rp_id, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------
    def pin(self, *, timeout: float | None = None) -> None:
        """Never evict this context (until `unpin`). Blocks briefly (a supervisor message)."""
        self._system.ask(SetPinned(self._id, True), timeout, f"pinning {self._id!r}")

    def unpin(self, *, timeout: float | None = None) -> None:
        """Let this context be evicted again."""
        self._system.ask(SetPinned(self._id, False), timeout, f"unpinning {self._id!r}")

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The context actor's ref, for pykka users who message it directly (see `actors`)."""
        ref: pykka.ActorRef[Any] = self._live_cell().actor_ref
        return ref


class ContextTrackerFactory:
    """Builds trackers with preset options.

    Args:
        adapter: the adapter whose contexts the trackers reach.
        timeout: default timeout of the trackers' blocking calls (None: the manager's call_timeout).
        make_current: whether `create` also makes the context current (default False).
        schema: an attrs class (or `Schema`) every tracker's context is bound to (see `activate`).
    """

    def __init__(self, adapter: Any, *, timeout: float | None = None, make_current: bool = False,
                 schema: Any = None) -> None:
        self.adapter = adapter
        self.timeout = timeout
        self.make_current = make_current
        self.schema = schema

    def create(self, context_id: str) -> ContextTracker:
        """A tracker for `context_id`, activating (and, if configured, creating) it."""
        tracker: ContextTracker = self.adapter._tracker(  # noqa: SLF001
            context_id, make_current=self.make_current, create=None, timeout=self.timeout, schema=self.schema,
            tracker_timeout=self.timeout)
        return tracker
