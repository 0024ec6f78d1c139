"""`ContextTracker`: the caller's handle to one context, and `ContextTrackerFactory`.

Reads (`get`, `state`, `version`, `keys`) never enter a mailbox: they read the newest *committed*
state the context published, a single reference read, in the calling thread. Writes are messages to
the context's actor; the call blocks until the actor (and, in ``immediate`` mode, the store) has
answered, at most `timeout` seconds (default: the manager's ``call_timeout``), then raises
`CallNotStartedError` (the actor had not started the call: it is cancelled in the mailbox and never
applied) or `CallOutcomeUnknownError` (it had). Every write takes ``request_id=`` (applied at most
once). A thread always reads its own acknowledged writes. Each ``*_async`` form returns a `Pending`
future at once and never waits in the caller's thread (see `ContextTracker._submit`).

A tracker stays valid when its context is passivated (evicted, deactivated): its next call, reads
included, activates it again (without making it current). It holds the context's cell while the
context's actor runs and lets go of it when the actor stops (see `hoard.actors.ContextCell`), so a
tracker of a passivated context keeps nothing but its id and system. Trackers are cheap,
thread-safe read-only `Mapping`s; any number may point at one context.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any

import attrs
import pykka

from hoard.actors import (
    EPOCH,
    Activate,
    ContextCell,
    CreateRecoveryPoint,
    Delete,
    GetState,
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
    current_by,
    fresh_mark,
)
from hoard.storage import (
    MAX_STORED_INT,
    CallNotStartedError,
    CallOutcomeUnknownError,
    ContextOwnedElsewhereError,
    ContextState,
    ContextTimeoutError,
    DeleteRecoveryPoint,
    HoardError,
    InvalidValueError,
    RecoveryPoint,
    RecoveryPointNotFoundError,
    SystemStoppedError,
    validate_by,
)

from ._core import SystemCore, check_timeout
from ._events import subscribe
from ._forward import Forwarder, Retry, check_forwardable, encode_message, with_request_id

__all__ = ["ContextTracker", "ContextTrackerFactory"]

_MISSING: Any = object()

#: how a tracker meets a context that another process owns (shared store)
WAIT = 0  # wait up to the timeout for the lease (or, with forwarding, forward the call to the owner)
NO_WAIT = 1  # raise `ContextOwnedElsewhereError` at once (or forward, with forwarding)
LOCAL = 2  # serving a forwarded call: never wait, never forward on (the caller re-routes)


#: the cell of a tracker without one: no cell yet, or let go of (always closed, never written)
_NO_CELL = ContextCell("", ContextState("", 1))
_NO_CELL.closed = True


def activate_waiting(system: SystemCore, message: Activate, timeout: float | None, what: str, *,
                     wait: bool = True) -> ContextCell:
    """Ask the supervisor to activate; while another process owns the context (shared store: its
    lease is live), retry in the caller's thread with a short backoff (20 ms doubling to 250 ms, never
    past the lease's remaining time) until `timeout` (default: call_timeout) is spent; then raise the
    last `ContextOwnedElsewhereError`, which names the owner. A lease that expires or is released
    meanwhile is taken over by the next attempt. No actor ever waits: the supervisor answers each
    attempt at once. ``wait=False``: one attempt; `ContextOwnedElsewhereError` at once."""
    t = system.call_timeout if timeout is None else check_timeout(timeout)
    deadline = time.monotonic() + t
    message = attrs.evolve(message, timeout=t)  # the supervisor waits for the load as long as the caller
    delay = 0.02
    refused: ContextOwnedElsewhereError | None = None
    while True:
        try:
            cell: ContextCell = system.ask(message, t if refused is None else max(0.001, deadline - time.monotonic()),
                                           what)
            return cell
        except ContextOwnedElsewhereError as exc:
            if not wait:
                raise
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


def activate_tracker(system: SystemCore, message: Activate, timeout: float | None,
                     tracker_timeout: float | None = None, *, wait: bool = True) -> ContextTracker:
    """A tracker of the context `message` activates. Owned by another process: with forwarding, a
    tracker without a cell whose calls are forwarded; else wait as `activate_waiting` does (or not,
    ``wait=False``). Blocks up to `timeout` (default call_timeout)."""
    fwd = system.forwarder
    mode = WAIT if wait else NO_WAIT
    try:
        cell = activate_waiting(system, message, timeout, f"activating {message.context_id!r}",
                                wait=wait and fwd is None)
    except ContextOwnedElsewhereError as exc:
        if fwd is None:
            raise
        fwd.remember(message.context_id, exc.owner, exc.expires_in)
        return ContextTracker(system, None, tracker_timeout, context_id=message.context_id, mode=mode)
    return ContextTracker(system, cell, tracker_timeout, mode=mode)


def _request(context_id: str, message: Any, fwd: Forwarder) -> dict[str, Any]:
    """The forwarded form of `message` (a restore is served on a worker: it reads the store first)."""
    return {"k": "restore" if isinstance(message, Restore) else "msg", "id": context_id,
            "m": encode_message(message, fwd.transactions)}


def _failed(exc: BaseException) -> Reply:
    """A future that already holds `exc` (``*_async`` calls hand every error through their future)."""
    future = Reply()
    future.fail(exc)
    return future


def _rp_id(rp_id: object, context_id: str) -> int:
    if isinstance(rp_id, RecoveryPoint):
        return rp_id.id
    if isinstance(rp_id, bool) or not isinstance(rp_id, int) or not 0 < rp_id <= MAX_STORED_INT:
        raise RecoveryPointNotFoundError(context_id, rp_id)  # ids are positive 64-bit store integers
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
    """Delete one recovery point; with forwarding, in the process that owns the context."""
    rid = _rp_id(rp_id, context_id)
    run_anywhere(system, context_id, "delete_recovery_point", [rid], timeout,
                 lambda t: delete_recovery_point_here(system, context_id, rid, t),
                 f"deleting recovery point {rid} of {context_id!r}")


def delete_recovery_point_here(system: SystemCore, context_id: str, rp_id: object, timeout: float | None) -> None:
    rp = read_recovery_point(system, context_id, rp_id, timeout)
    system.ask_persistence(StoreWrite((DeleteRecoveryPoint(context_id, rp.id),)), timeout,
                           f"deleting recovery point {rp.id} of {context_id!r}")


def run_anywhere(system: SystemCore, context_id: str, op: str, args: list[Any], timeout: float | None,  # noqa: PLR0917 - an operation and where it runs
                 here: Callable[[float], Any], what: str) -> Any:
    """``here(remaining)`` in this process; with forwarding, while another process owns the context
    (`ContextOwnedElsewhereError`), the operation `op` with `args` runs there instead (see
    `hoard._forward`). All within `timeout` (default call_timeout). For the manager's writes that
    need no context actor (delete, set_ttl, deleting a recovery point); they carry no request id, so
    a re-send after an unknown outcome may find the work done (e.g. `ContextNotFoundError`)."""
    t = system.call_timeout if timeout is None else timeout
    fwd = system.forwarder
    if fwd is None:
        return here(t)
    deadline = time.monotonic() + t
    pause = 0.02
    while True:
        try:
            return here(max(0.001, deadline - time.monotonic()))
        except ContextOwnedElsewhereError as exc:
            result = fwd.send(context_id, {"k": "op", "op": op, "id": context_id, "a": args}, exc.owner,
                              deadline=deadline, what=what, timeout=t)
            if not isinstance(result, Retry):
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                raise (CallOutcomeUnknownError if result.sent else CallNotStartedError)(what, t, context_id) from exc
            threading.Event().wait(max(0.001, min(pause, remaining, exc.expires_in or pause)))
            pause = min(pause * 2, 0.25)


#: the future a ``*_async`` call returns: a pykka future (``pykka.get_all`` works) that asyncio can
#: await. It carries the call's deadline: `get()` and ``await`` both raise `CallNotStartedError` or
#: `CallOutcomeUnknownError` once the call's timeout (default call_timeout) has run out; other errors
#: (the call's own, and activation errors) arrive through it as well, never from the ``*_async`` call.
Pending = Reply


def _key_tuple(keys: Any, what: str, context_id: str) -> tuple[Any, ...]:
    """One key or an iterable of keys, as a tuple; `InvalidValueError` for anything else (also for
    an iterable whose own code raises). Runs in the caller's thread."""
    if isinstance(keys, str):
        return (keys,)
    try:
        return tuple(keys)
    except Exception as exc:  # noqa: BLE001 - not iterable, or its own __iter__ raised
        raise InvalidValueError(None, f"{what} takes a key or an iterable of keys; iterating this "
                                f"{type(keys).__name__} raised {type(exc).__name__}", context_id=context_id) from None



def offload_into(system: Any, future: Reply, work: Callable[[float], Any]) -> Pending:
    """Run ``work(remaining_time)`` on one of `system`'s worker threads and settle `future` with its
    result or error; return `future` at once. Skipped if the future's caller gave up (and was told
    "not started") before a worker got to it; a system that no longer takes work fails it at once."""
    def run() -> None:
        if not future.start():
            return
        try:
            result = work(max(0.001, (future.deadline or 0.0) - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.fail(exc)
        else:
            future.resolve(result)

    try:
        system.offload(run)
    except HoardError as exc:
        future.fail(exc)
    return future


class ContextTracker(Mapping[str, Any]):
    """Handle to one context: a read-only `Mapping` of its committed data, plus writes. See the
    module docstring for the concurrency contract.

    ``t["k"]`` (`KeyError` if absent), ``"k" in t``, ``len(t)``, ``list(t)``, ``dict(t)`` read the
    newest committed state without a message. Equality is a mapping's (same keys and values); a
    tracker is therefore not hashable.
    """

    __slots__ = ("__weakref__", "_cell", "_id", "_mode", "_set_what", "_system", "_timeout")

    def __init__(self, system: SystemCore, cell: ContextCell | None, timeout: float | None = None, *,
                 context_id: str | None = None, mode: int = WAIT) -> None:
        self._system = system
        # held strongly while the context's actor runs: the hot read path then costs no weak
        # reference call. The actor, as it stops, has every holder let go (`let_go`), so a tracker of
        # a passivated context keeps only its id and system (measured in tests/runtime/
        # test_messaging.py). No cell: the context is active in another process (forwarding), or not
        # activated yet (a served call's tracker).
        self._cell: ContextCell = _NO_CELL
        self._id: str = cell.id if cell is not None else str(context_id)
        self._timeout = timeout
        self._mode = mode
        self._set_what: str | None = None
        if cell is not None:
            self._hold(cell)

    def _hold(self, cell: ContextCell) -> None:
        self._cell = cell
        cell.add_holder(self)
        if cell.closed:  # closed meanwhile: its actor may have stopped before this tracker registered
            self._cell = _NO_CELL

    def let_go(self, cell: ContextCell) -> None:
        """Drop `cell` (its actor stopped; called in the actor's thread). The next call re-activates."""
        if self._cell is cell:
            self._cell = _NO_CELL

    def __repr__(self) -> str:
        cell = self._cell
        if cell.closed:
            return f"<ContextTracker {self._id!r} (inactive)>"
        return f"<ContextTracker {self._id!r} v{cell.state.version}>"

    # -- plumbing ------------------------------------------------------------------------------------
    def _t(self, timeout: float | None) -> float:
        t = check_timeout(timeout) if timeout is not None else self._timeout
        return self._system.call_timeout if t is None else t

    def _live_cell(self, timeout: float | None = None, *, write: bool = False) -> ContextCell:
        """The open cell (re-activating a passivated context), marked as used: a write gets an exact,
        fresh LRU mark, a read the current epoch."""
        cell = self._cell
        if cell.closed:
            cell = self._reactivate(timeout)
        cell.touched = fresh_mark() if write else EPOCH[0]
        return cell

    def _reactivate(self, timeout: float | None) -> ContextCell:
        """The context was passivated: activate it again (not as current). Blocks up to `timeout`
        (not at all for another owner's lease when forwarding, or when made with ``wait=False``)."""
        wait = self._mode == WAIT and self._forwarder() is None
        cell = activate_waiting(self._system, Activate(self._id, create=False, make_current=False),
                                timeout if timeout is not None else self._timeout, f"activating {self._id!r}",
                                wait=wait)
        self._hold(cell)
        return cell

    def _message(self, cls: Callable[..., Any], *fields: Any) -> Any:
        """Build a context message in the caller's thread; a malformed one (`InvalidMessageError`, or a
        hostile value refused by the message's checks) is raised naming this context."""
        try:
            return cls(*fields)
        except InvalidValueError as exc:
            if exc.context_id is None:
                exc.context_id = self._id
            raise

    def _forwarder(self) -> Forwarder | None:
        return None if self._mode == LOCAL else self._system.forwarder

    def _call(self, message: Any, timeout: float | None, what: str, outer: Reply | None = None) -> Any:
        """Send `message` and wait for the reply, all within one deadline of `timeout` (default: the
        tracker's, else call_timeout). A call that meets a stopping actor was not applied: it is
        re-activated and sent again. `outer`: the future of an ``*_async`` call this one serves."""
        if timeout is None:  # `_t` and `_forwarder` inline: every call comes this way
            t = self._timeout
            if t is None:
                t = self._system.call_timeout
        else:
            t = self._t(timeout)
        deadline = time.monotonic() + t
        fwd = None if self._mode == LOCAL else self._system.forwarder
        if fwd is not None:
            return self._call_anywhere(fwd, message, t, deadline, what, outer)
        return self._call_here(message, t, deadline, what, outer)

    def _call_anywhere(self, fwd: Forwarder, message: Any, t: float, deadline: float, what: str,  # noqa: PLR0917 - _call_here's, plus the forwarder
                       outer: Reply | None) -> Any:
        """`_call_here`, or, while another process owns the context, forwarded to it (see
        `hoard._forward`): all within `deadline`. Once a call may be re-sent it carries a request id,
        so no attempt applies it twice."""
        pause = 0.02
        sent = False  # a request may have reached an owner: running out of time then is "outcome unknown"
        while True:
            cell = self._cell
            owner = fwd.known_owner(self._id) if cell.closed else None
            expires: float | None = None
            if owner is None:
                try:
                    return self._call_here(message, t, deadline, what, outer)
                except ContextOwnedElsewhereError as exc:
                    fwd.remember(self._id, exc.owner, exc.expires_in)
                    owner, expires = exc.owner, exc.expires_in
            message = with_request_id(message)
            check_forwardable(message, self._id, what, owner, fwd.transactions)
            result = fwd.send(self._id, _request(self._id, message, fwd), owner, deadline=deadline, what=what,
                              timeout=t)
            if not isinstance(result, Retry):
                return result
            sent = sent or result.sent
            # the owner is gone, let go or did not answer: its lease runs out by itself (or is released
            # already); try here again after a short backoff, never past that lease's end
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                raise (CallOutcomeUnknownError if sent else CallNotStartedError)(what, t, self._id)
            threading.Event().wait(max(0.001, min(pause, remaining, pause if expires is None else expires)))
            pause = min(pause * 2, 0.25)

    def _call_here(self, message: Any, t: float, deadline: float, what: str, outer: Reply | None) -> Any:
        """`message` to this process's actor of the context (re-activated if need be)."""
        system = self._system
        while True:  # each round that meets a stopping actor did not apply it: bounded by the deadline
            if system._stopped:  # noqa: SLF001 - one package; `stopped` without the property call
                raise SystemStoppedError()
            cell = self._cell
            if cell.closed:  # re-activate first, within the deadline (an open cell costs no clock read)
                try:
                    cell = self._live_cell(max(0.001, deadline - time.monotonic()), write=True)
                except ContextTimeoutError as exc:  # the time ran out activating: the call was never sent
                    raise CallNotStartedError(what, t, self._id) from exc
                if time.monotonic() >= deadline:
                    raise CallNotStartedError(what, t, self._id)
            else:
                cell.touched = fresh_mark()
            reply = Reply.send(cell.actor_ref, message)  # ask(message, block=False), fewer frames
            # the reply's own timeout names this call; a ContextTimeoutError that is the answer
            # (raised inside a transact fn) reaches the caller as it was raised
            reply.what, reply.context_id, reply.timeout, reply.deadline = what, self._id, t, deadline
            if outer is not None:
                outer.inner = reply
            try:
                return reply.get()
            except pykka.ActorDeadError:
                # the actor stopped before handling the message (passivated): it was not applied
                if self._cell is cell and not cell.closed:
                    cell.closed = True  # dead without being closed: let the supervisor decide
                continue

    def _submit(self, message: Any, what: str, timeout: float | None = None) -> Pending:
        """Send `message` without waiting and return its future at once. With the actor running this
        is one message (the actor's own reply future, no thread); a passivated context is
        re-activated on a worker thread of the system, never in the caller's (an event loop's)
        thread. Errors, timeouts included, arrive through the future."""
        t = self._t(timeout)
        cell = self._cell
        if not cell.closed and not self._system.stopped:
            cell.touched = fresh_mark()
            reply: Reply = cell.actor_ref.ask(message, block=False)
            reply.what, reply.context_id = what, self._id
            reply.set_deadline(t)
            reply.retry = functools.partial(self._retry, message)  # no cycle through the reply: no GC work
            return reply
        def work(remaining: float, outer: Reply) -> Any:
            return self._call(message, remaining, what, outer)

        return self._offload(work, what, t)

    def _retry(self, message: Any, reply: Reply) -> Any:
        """Redo a submitted call that met a stopping actor, within what is left of its deadline."""
        remaining = (reply.deadline or 0.0) - time.monotonic()
        if remaining <= 0:
            raise CallNotStartedError(reply.what, reply.timeout, self._id)
        return self._call(message, remaining, reply.what)

    def _offload(self, work: Callable[[float, Reply], Any], what: str, t: float) -> Pending:
        """Run ``work(remaining_time, future)`` on a system worker thread; return `future` at once."""
        future = Reply()
        future.what, future.context_id = what, self._id
        future.set_deadline(t)
        return offload_into(self._system, future, lambda remaining: work(remaining, future))

    # -- non-blocking forms: each returns a `Pending` future at once (await it, or .get()) ---------------
    def set_async(self, key: str, value: Any, *, expected_version: int | None = None,
                  request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> Pending:
        """`set` without waiting: returns a future of the new version at once (see `Pending`)."""
        try:
            msg = self._message(Set, key, value, expected_version, request_id, _by(by))
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"set on {self._id!r}", timeout)

    def update_async(self, values: Mapping[str, Any], *, expected_version: int | None = None,
                     request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> Pending:
        """`update` without waiting: returns a future of the new version at once."""
        try:
            msg = self._message(Update, values, expected_version, request_id, _by(by))
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"update on {self._id!r}", timeout)

    def delete_async(self, keys: str | Iterable[str], *, expected_version: int | None = None,
                     request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> Pending:
        """`delete` without waiting: returns a future of the new version at once."""
        try:
            msg = self._message(Delete, _key_tuple(keys, "delete", self._id), expected_version, request_id, _by(by))
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"delete on {self._id!r}", timeout)

    def set_metadata_async(self, values: Mapping[str, Any], *, remove: str | Iterable[str] = (),
                           expected_version: int | None = None, request_id: str | None = None,
                           by: str | None = None, timeout: float | None = None) -> Pending:
        """`set_metadata` (mapping form) without waiting: returns a future of the new version at once."""
        try:
            rm = _key_tuple(remove, "remove", self._id)
            msg = self._message(SetMetadata, values, rm, expected_version, request_id, _by(by))
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"set_metadata on {self._id!r}", timeout)

    def transact_async(self, fn: Callable[[Any], Any], *, expected_version: int | None = None,
                       request_id: str | None = None, with_version: bool = False,
                       by: str | None = None, timeout: float | None = None) -> Pending:
        """`transact` without waiting: returns a future of what `fn` returns (a `Transacted` with
        ``with_version=True``) at once."""
        try:
            msg = self._message(Transact, fn, expected_version, request_id, with_version, _by(by))
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"transact on {self._id!r}", timeout)

    def create_recovery_point_async(self, label: str | None = None, *, timeout: float | None = None) -> Pending:
        """`create_recovery_point` without waiting: returns a future of the `RecoveryPoint` at once."""
        try:
            msg = self._message(CreateRecoveryPoint, label)
        except HoardError as exc:
            return _failed(exc)
        return self._submit(msg, f"recovery point of {self._id!r}", timeout)

    def restore_async(self, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                      request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> Pending:
        """`restore` without waiting: returns a future of the new version at once (the recovery point
        is read from the store on a worker thread, then the change is sent)."""
        what = f"restore of {self._id!r}"

        try:
            who = _by(by)  # taken in the caller's thread or task: the work runs on a worker thread
        except HoardError as exc:
            return _failed(exc)

        def work(remaining: float, outer: Reply) -> Any:
            return self._restore(rp_id, expected_version, request_id, remaining, outer, who)

        return self._offload(work, what, self._t(timeout))

    # -- reads: no message, no wait -----------------------------------------------------------------
    @property
    def id(self) -> str:
        """The context id."""
        return self._id

    @property
    def version(self) -> int:
        """The newest committed version. Lock-free; re-activates a passivated context."""
        return self._state().version

    def state(self) -> ContextState:
        """The newest committed `ContextState` (immutable). Lock-free; re-activates if passivated.
        A context active in another process (forwarding) is asked there: one round trip."""
        return self._state()

    def _state(self) -> ContextState:
        cell = self._cell
        if not cell.closed:
            cell.touched = EPOCH[0]
            return cell.state
        if self._forwarder() is not None:
            state: ContextState = self._call(GetState(), None, f"reading {self._id!r}")
            return state
        return self._live_cell().state

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` (frozen: a read-only dict/list), or `default`. Lock-free, no message.

        Like ``dict.get``: a key that cannot be present (an int, say) gives `default`; an unhashable
        key raises `InvalidValueError`. This is the hot read path: one attribute check, one LRU tick,
        one persistent-map lookup. It is tuned for present keys (what a hot path reads most): an
        absent key costs a raised and caught `KeyError`, about four times a present one.
        """
        cell = self._cell
        if cell.closed:
            if self._forwarder() is not None:
                data: Any = self._state().data
                try:
                    return data.get(key, default)
                except TypeError:
                    raise InvalidValueError(key, f"keys are str, not {type(key).__name__}",
                                            context_id=self._id) from None
            cell = self._reactivate(None)
        cell.touched = EPOCH[0]
        try:
            # `[]` is a C slot; Map.get is a METH_VARARGS call that costs more than the lookup itself
            return cell.state.data[key]
        except KeyError:
            return default
        except TypeError:
            raise InvalidValueError(key, f"keys are str, not {type(key).__name__}", context_id=self._id) from None

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return type(key) is str and key in self._state().data

    def __iter__(self) -> Iterator[str]:
        """The keys of the newest committed state (one snapshot: later changes do not affect it)."""
        return iter(self._state().data)

    def __len__(self) -> int:
        return len(self._state().data)

    def keys(self) -> KeysView[str]:
        """The keys of the newest committed state (a view of one snapshot)."""
        return KeysView(self._state().data)

    def items(self) -> ItemsView[str, Any]:
        """Key/value pairs of the newest committed state (a view of one snapshot)."""
        return ItemsView(self._state().data)

    def values(self) -> ValuesView[Any]:
        """The values of the newest committed state (a view of one snapshot)."""
        return ValuesView(self._state().data)

    def typed(self) -> Any:
        """The newest committed data as an instance of the context's schema class (lock-free read plus
        one cattrs structure). Raises `HoardError` if the context is not bound to a schema."""
        cell = self._live_cell()
        if cell.schema is None:
            raise HoardError(f"context {self._id!r} is not bound to a schema; activate it with schema=...")
        return cell.schema.structure(cell.state.data, self._id)

    def metadata(self) -> Mapping[str, Any]:
        """The newest committed metadata (read-only mapping)."""
        return self._state().metadata

    def wait_for_version(self, version: int, *, timeout: float | None = None) -> ContextState:
        """Block until the context's committed version is at least `version`; return that state.

        Returns at once if it already is. `InvalidValueError` if `version` is not an int, `ConfigError`
        for a bad `timeout`. Raises `ContextTimeoutError` after `timeout` seconds
        (default: call_timeout), and `SystemStoppedError` as soon as the system stops (a wait under
        way ends then too: no version comes after). Any thread. Waits on an event subscription, not
        by polling.
        """
        if type(version) is not int:
            raise InvalidValueError("version", f"must be an int, not {version!r}", context_id=self._id)
        state = self.state()
        if state.version >= version:
            return state
        t = check_timeout(timeout) if timeout is not None else (self._timeout or self._system.call_timeout)
        reached: pykka.ThreadingFuture[bool] = pykka.ThreadingFuture()

        def settle(stopped: bool) -> None:
            with contextlib.suppress(queue.Full):
                reached.set(stopped)

        def check(event: Any) -> None:
            if event.version >= version:
                settle(False)

        sub = subscribe(self._system, check, context_id=self._id, kinds=[StateChanged], inline=True,
                        on_stop=lambda: settle(True))
        try:
            if self.state().version < version and reached.get(timeout=t):  # (a change may have landed
                raise SystemStoppedError()  # while subscribing)
        except pykka.Timeout as exc:
            raise ContextTimeoutError(f"waiting for version {version} of {self._id!r}", t, self._id) from exc
        finally:
            sub.cancel()
        return self.state()

    # -- writes: one message each, atomic, version-checked ---------------------------------------------
    # Every write takes `request_id=`, an idempotency key (a short str, e.g. a UUID or a broker's
    # message id): a write whose request id this context already applied is not applied again and
    # returns the version it made then. The record is stored with the changes, so it holds across
    # stop, kill -9 and a move to another process, for the newest `request_window` ids of the context
    # (and at most `request_ttl` seconds, if set). Retrying after `CallOutcomeUnknownError` with the
    # same request id is therefore safe.
    #
    # Every write also takes `by=`: who makes the change (a short str such as "user:ana"), stored with
    # it and shown in events, history and the change feed. Without it, the `by` that
    # `hoard.acting_as(...)` set in the calling thread or asyncio task is used (None outside any).
    # A `by` that is not a short printable str raises `InvalidValueError`; nothing changes then.
    #
    # A call whose timeout runs out raises `CallNotStartedError` if the actor had not started it (it
    # is cancelled in the mailbox: nothing applied, ever) or `CallOutcomeUnknownError` if it had.
    def set(self, key: str, value: Any, *, expected_version: int | None = None, request_id: str | None = None,
            by: str | None = None, timeout: float | None = None) -> int:
        """Set one key. Returns the new version (the old one + 1).

        Blocks until applied (``immediate``: committed), at most `timeout` s. Raises
        `VersionConflictError` if `expected_version` is given and differs, `InvalidValueError` for a
        bad key or value; in both cases nothing changes.
        """
        by = current_by() if by is None else validate_by(by)  # _by inline (every set)
        what = self._set_what
        if what is None:  # the name a timeout error gives this call, made once per tracker
            what = self._set_what = f"set on {self._id!r}"
        return self._call(self._message(Set, key, value, expected_version, request_id, by), timeout, what)  # type: ignore[no-any-return]

    def update(self, values: Mapping[str, Any], *, expected_version: int | None = None,
               request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> int:
        """Set several keys in one atomic change (one version). Returns the new version."""
        if not isinstance(values, Mapping):
            raise InvalidValueError(None, f"update takes a mapping, not {type(values).__name__}", context_id=self._id)
        return self._call(self._message(Update, values, expected_version, request_id, _by(by)), timeout,  # type: ignore[no-any-return]
                          f"update on {self._id!r}")

    def delete(self, keys: str | Iterable[str], *, expected_version: int | None = None,
               request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> int:
        """Remove one key (a str) or several (an iterable of str) in one atomic change; absent keys
        are allowed. Returns the new version (raised by exactly 1 even when nothing was present)."""
        ks = _key_tuple(keys, "delete", self._id)
        return self._call(self._message(Delete, ks, expected_version, request_id, _by(by)), timeout,  # type: ignore[no-any-return]
                          f"delete on {self._id!r}")

    def set_metadata(self, key: str | Mapping[str, Any], value: Any = _MISSING, *, remove: str | Iterable[str] = (),
                     expected_version: int | None = None, request_id: str | None = None,
                     by: str | None = None, timeout: float | None = None) -> int:
        """Set metadata: ``set_metadata("k", v)`` or ``set_metadata({"k": v, ...})``; `remove` names a key
        (a str) or keys to drop. One atomic change; returns the new version."""
        if isinstance(key, Mapping):
            if value is not _MISSING:
                raise InvalidValueError(None, "give a mapping or a key and a value, not both", context_id=self._id)
            values: Mapping[str, Any] = key
        else:
            if value is _MISSING:
                raise InvalidValueError(key, "set_metadata(key, value) needs a value", context_id=self._id)
            values = {key: value}
        rm = _key_tuple(remove, "remove", self._id)
        return self._call(self._message(SetMetadata, values, rm, expected_version, request_id, _by(by)), timeout,  # type: ignore[no-any-return]
                          f"set_metadata on {self._id!r}")

    def transact(self, fn: Callable[[Any], Any], *, expected_version: int | None = None,
                 request_id: str | None = None, with_version: bool = False, by: str | None = None,
                 timeout: float | None = None) -> Any:
        """Run ``fn(draft)`` inside the context's actor and apply the draft's changes atomically.

        `draft` is a mutable mapping of the data (with ``draft.metadata``, a dict, and
        ``draft.version``). No other change to the context happens while `fn` runs. If `fn` raises,
        nothing changes and the exception reaches the caller: any exception, a `SystemExit` or
        `KeyboardInterrupt` too, raised again in the caller's thread (the actor and every other one
        keep running). Returns what `fn` returned, or with
        ``with_version=True`` a `Transacted` (``.value``: what `fn` returned, ``.version``: the version
        committed, ``.duplicate``: the `request_id` had been applied already, so `fn` did not run and
        ``.value`` is None; the plain form returns None then). The version rises by 1 even if `fn`
        changed nothing. `fn` runs in the actor's thread: keep it short and never call this
        context's tracker from inside it (that would wait for itself until timeout).

        On a context active in another process (``forward_via``), `fn` must be a registered
        transaction (`ContextSystem.register_transaction`: the function, its record, or
        ``record.bind(**json_args)``); the owner runs its own function of that name. Any other
        callable raises `NotForwardableError` there, and nothing is applied.
        """
        if not callable(fn):
            raise InvalidValueError(None, f"transact takes a callable, not {type(fn).__name__}", context_id=self._id)
        return self._call(self._message(Transact, fn, expected_version, request_id, with_version, _by(by)), timeout,
                          f"transact on {self._id!r}")

    # -- recovery points ---------------------------------------------------------------------------
    def create_recovery_point(self, label: str | None = None, *, timeout: float | None = None) -> RecoveryPoint:
        """Store a durable, compressed copy of the current state; returns it. Its id is the next of
        this context's sequence. Keeps at most ``max_recovery_points`` (the oldest go first, never
        this one). Does not change the version."""
        return self._call(self._message(CreateRecoveryPoint, label), timeout, f"recovery point of {self._id!r}")  # type: ignore[no-any-return]

    def recovery_points(self, *, timeout: float | None = None) -> list[RecoveryPoint]:
        """This context's recovery points, oldest first. Blocks on one store read."""
        return list_recovery_points(self._system, self._id, timeout)

    def restore(self, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> int:
        """Make data and metadata equal to recovery point `rp_id`'s, as a new version (returned).

        Raises `RecoveryPointNotFoundError` if it does not exist; nothing changes then.
        """
        return self._restore(rp_id, expected_version, request_id, timeout, None, _by(by))

    def _restore(self, rp_id: int | RecoveryPoint, expected_version: int | None, request_id: str | None,  # noqa: PLR0917 - the write's parts
                 timeout: float | None, outer: Reply | None, by: str | None) -> int:
        rp = read_recovery_point(self._system, self._id, rp_id, timeout)
        return self._call(self._message(Restore, rp, expected_version, request_id, by), timeout,  # type: ignore[no-any-return]
                          f"restore of {self._id!r}", outer)

    def delete_recovery_point(self, rp_id: int | RecoveryPoint, *, timeout: float | None = None) -> None:
        """Delete one recovery point (`RecoveryPointNotFoundError` if there is none with that id)."""
        delete_recovery_point(self._system, self._id, rp_id, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------
    def pin(self, *, timeout: float | None = None) -> None:
        """Never evict this context (until `unpin`). Blocks briefly (a supervisor message).
        `ContextNotFoundError` if the context does not exist (deleted): nothing is pinned."""
        self._system.ask(SetPinned(self._id, True), timeout, f"pinning {self._id!r}")

    def unpin(self, *, timeout: float | None = None) -> None:
        """Let this context be evicted again."""
        self._system.ask(SetPinned(self._id, False), timeout, f"unpinning {self._id!r}")

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The context actor's current ref (activating it if needed). It dies when the context is
        passivated; for an address that stays valid use ``adapter.actor_ref(id)`` (a `ContextRef`)."""
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


def _by(by: str | None) -> str | None:
    """The `by` of a write: the caller's, else the one `acting_as` set in this thread or task.
    `InvalidValueError` (nothing sent) for one that is not a short printable str."""
    return current_by() if by is None else validate_by(by)
