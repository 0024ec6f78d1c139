"""`Reply`: a pykka future that a context actor can answer later, from another thread.

pykka answers an ``ask`` with whatever ``on_receive`` returns. A write in ``immediate`` mode must be
answered only after the persistence actor has committed it, so the context actor returns `DEFERRED`,
which `Reply.set` ignores, and the persistence actor calls `resolve` after the commit. Because the reply
still travels as the envelope's ``reply_to``, pykka fails it with ``ActorDeadError`` if the actor stops
before handling the message: no caller is ever left waiting for a reply that cannot come.

Cancellation in the mailbox: each reply carries one *start token*. The context actor takes it when it
starts the call; a caller whose timeout runs out tries to take it first (`cancel`). Exactly one side
gets it (``list.pop`` is atomic), so a call is either started, or cancelled and never run: the caller
then gets `CallNotStartedError` ("nothing applied"), and otherwise `CallOutcomeUnknownError`.

A reply may carry a `deadline` (``time.monotonic()``): `get()` without a timeout and ``await`` both
end there, with the same errors, so a future honours the call timeout however it is waited for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, cast

import pykka

from hoard.storage import MAX_SECONDS, CallNotStartedError, CallOutcomeUnknownError, ContextTimeoutError, check_timeout

__all__ = ["DEFERRED", "Reply"]


class _Deferred:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Any = _Deferred()

#: a message as pykka's actor loop reads it from a mailbox (``message``, ``reply_to``; what pykka's
#: `Envelope` holds), put there without pykka's ask or tell: by `Reply.send` (made with
#: ``tuple.__new__``: one C call, where an `Envelope` is a Python ``__init__``) and as the one `Flush`
#: letter of `PersistenceInbox.commit_now` (tests/actors/test_hot_path.py pins what the loop reads)
Letter = collections.namedtuple("Letter", ("message", "reply_to"))
_new_letter = tuple.__new__


class Reply(pykka.ThreadingFuture[Any]):
    """A future whose `set(DEFERRED)` is a no-op; `resolve`/`fail` answer it for real.

    It also runs done-callbacks (`add_done_callback`) and can be awaited from asyncio without blocking
    the event loop. Callbacks are kept lock-free: each side pops them with ``list.pop`` (atomic), so
    every callback runs exactly once, in the thread that completes the future or in the one that
    adds the callback after completion. Callbacks must be quick and must not block. One that raises
    is logged and the others still run; a BaseException that is not an Exception (SystemExit,
    KeyboardInterrupt) is raised again after them only in the main thread (never in an actor's).
    """

    # defaults read from the class until a sender sets them (an instance store each costs every call)
    _get_hook: Any = None  # pykka.Future's: set (with Future.__init__) by map/join/filter/reduce
    _answered: tuple[Any, Any] | None = None  # (value, exc_info) once answered
    _finished = False
    #: set by the caller that sent the message: ``retry(reply)`` redoes the call synchronously if the
    #: actor stopped before handling it (it was not applied), e.g. a tracker's ``*_async`` call
    retry: Callable[[Reply], Any] | None = None
    what = "a call"
    context_id: str | None = None
    deadline: float | None = None  # time.monotonic() after which waiting raises a timeout
    timeout: float | None = None  # the timeout that deadline came from (for the message)
    inner: Reply | None = None  # a forwarded call: the reply of the message actually sent

    def __init__(self) -> None:
        # Neither ThreadingFuture.__init__ nor Future.__init__: the Condition of the first (an RLock,
        # a waiter lock per wait, notify_all) cost a third of a call's caller-side CPU. A reply is
        # answered once (`_settle` takes the answer token), so a C `SimpleQueue` holding one wake-up
        # token is all a waiter needs.
        self._answer = [True]  # taken once, by whoever answers first (later answers are ignored)
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token once answered
        self._callbacks: list[Callable[[Reply], Any]] = []
        self._token = [True]  # taken once: by the actor starting the call, or by a caller cancelling it

    @classmethod
    def send(cls, ref: pykka.ActorRef[Any], message: Any) -> Reply:
        """``ref.ask(message, block=False)`` for an actor whose futures are replies (a context actor):
        the same envelope, the same `ActorDeadError` (in the reply) for an actor that has stopped,
        without pykka's frames around it (its ask, ``_create_future``, the envelope's ``__init__``:
        a tracker's every call). Any thread; never blocks."""
        reply = cls()
        if ref.is_alive():
            cast(Any, ref.actor_inbox).put(_new_letter(Letter, (message, reply)))  # (typed for pykka's Envelope)
        else:
            reply.fail(pykka.ActorDeadError(f"{ref} not found"))
        return reply

    # -- the start token -----------------------------------------------------------------------------
    def start(self) -> bool:
        """Take the start token (the actor, as it starts the call). False: the call was cancelled."""
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    def cancel(self) -> bool:
        """Cancel the call if no actor has started it: True means it will never run. A forwarded
        reply cancels the call it forwarded, if that one has not started."""
        if self.start():
            return True
        inner = self.inner
        return inner is not None and inner.cancel()

    def timed_out(self, timeout: float | None) -> ContextTimeoutError:
        """The error for a caller whose wait of `timeout` s ran out: cancels the call if it had not
        started (`CallNotStartedError`, and the reply fails with it), else `CallOutcomeUnknownError`."""
        if self.cancel():
            error: ContextTimeoutError = CallNotStartedError(self.what, timeout, self.context_id)
            self.fail(error)
            return error
        return CallOutcomeUnknownError(self.what, timeout, self.context_id)

    def set_deadline(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def get(self, *, timeout: float | None = None) -> Any:
        """The answer (or its exception raised). After `timeout` seconds (default: until the reply's
        deadline, if it has one) `CallNotStartedError` or `CallOutcomeUnknownError`. A call that met
        a stopping actor is redone through `retry` when the sender set one. A `timeout` that is not
        a number of seconds (finite, >= 0) raises `ConfigError`, and the call goes on."""
        if timeout is not None and (type(timeout) is not float or not 0.0 <= timeout <= MAX_SECONDS):
            timeout = check_timeout(timeout)  # (the float check inline: every call waits here)
        if timeout is None and self.deadline is not None:
            timeout = max(0.0, self.deadline - time.monotonic())
            shown = self.timeout
        else:
            shown = timeout
        if self._answered is None and self._get_hook is None:
            # the usual case (a caller waiting for its call): `outcome`'s wait and its plain answer
            # inline, a call less on every call; anything else goes by `outcome` below
            try:
                self._wake.get(True, timeout if timeout is None or timeout > 0 else 0.0)
            except queue.Empty:
                pass  # `outcome(0)` raises the timeout below (or finds an answer that came just now)
            else:
                self._wake.put(None)  # the token stays for every other waiter
                result = self._answered
                if result is not None and result[1] is None and self._get_hook is None:
                    return result[0]
            timeout = 0
        try:
            return self.outcome(timeout)
        except pykka.Timeout as exc:
            error = self.timed_out(shown)
            if isinstance(error, CallOutcomeUnknownError) and self._finished:
                return self.get(timeout=0)  # answered just now, after all
            raise error from exc
        except pykka.ActorDeadError:
            if self.retry is None:
                raise
            return self.retry(self)

    def outcome(self, timeout: float | None = 0) -> Any:
        """The bare answer, as `pykka.ThreadingFuture.get` gives it: the value, or its exception
        raised; `pykka.Timeout` after `timeout` seconds (None: no limit). No deadline, no retry."""
        if self._get_hook is not None:
            return pykka.Future.get(self, timeout=timeout)
        result = self._answered
        if result is None:
            try:
                self._wake.get(timeout=None if timeout is None else max(0.0, timeout))
            except queue.Empty:
                raise pykka.Timeout(f"{timeout} seconds") from None
            self._wake.put(None)  # the token stays for every other waiter
            if self._get_hook is not None:
                return pykka.Future.get(self, timeout=timeout)
            result = self._answered
            assert result is not None
        value, exc_info = result
        if exc_info is not None:
            exc_type, exc_value, tb = exc_info
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not tb:
                raise exc_value.with_traceback(tb)
            raise exc_value
        return value

    def _settle(self, result: tuple[Any, Any]) -> None:
        """Answer once: the first answer wins (`queue.Full` for any later one, as pykka's futures)."""
        try:
            self._answer.pop()
        except IndexError:
            raise queue.Full from None
        self._answered = result
        self._wake.put(None)
        self._finished = True
        if self._callbacks:
            self._run_callbacks()

    def set(self, value: Any = None) -> None:
        if value is not DEFERRED:
            try:  # (not contextlib.suppress: this answers every call, and that builds an object each time)
                self._settle((value, None))
            except queue.Full:  # already failed by a caller that cancelled it
                return

    def set_exception(self, exc_info: Any = None) -> None:
        with contextlib.suppress(queue.Full):
            self._settle((None, exc_info if exc_info is not None else sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        try:
            self._answer.pop()
        except IndexError:
            raise queue.Full from None
        pykka.Future.__init__(self)  # its get-hook slots (not made for the replies that never use them)
        pykka.Future.set_get_hook(self, func)
        self._wake.put(None)

    def resolve(self, value: Any) -> None:
        """Answer with `value`; a reply already answered keeps its first answer."""
        # `_settle` inline: this answers every durable write (a call less each, and no raise for a
        # reply answered already)
        try:
            self._answer.pop()
        except IndexError:
            return
        self._answered = (value, None)
        self._wake.put(None)
        self._finished = True
        if self._callbacks:
            self._run_callbacks()

    def fail(self, exc: BaseException) -> None:
        """Answer with `exc` raised; a reply already answered keeps its first answer."""
        with contextlib.suppress(queue.Full):
            self._settle((None, (type(exc), exc, exc.__traceback__)))

    @property
    def done(self) -> bool:
        return self._finished

    def add_done_callback(self, fn: Callable[[Reply], Any]) -> None:
        """Call ``fn(self)`` once the reply is answered (at once if it already is)."""
        self._callbacks.append(fn)
        if self._finished:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        interrupted: BaseException | None = None
        while callbacks:  # the common case, no callback at all, costs this one check
            try:
                fn = callbacks.pop()
            except IndexError:  # another thread took the last one meanwhile
                break
            try:
                fn(self)
            except Exception:
                logging.getLogger(__name__).exception("reply callback %r raised", fn)
            except BaseException as exc:
                # SystemExit, KeyboardInterrupt, a user's own: in the main thread the program's, raised
                # there once the other callbacks ran; in any other (the actor answering: raised there,
                # pykka would stop every actor of the process) logged like any other error
                if threading.current_thread() is not threading.main_thread():
                    logging.getLogger(__name__).exception("reply callback %r raised", fn)
                elif interrupted is None:
                    interrupted = exc
        if interrupted is not None:
            raise interrupted

    def __await__(self) -> Generator[Any, None, Any]:
        """Await the reply from asyncio without blocking the event loop. Ends at the reply's deadline
        (if it has one) with the same timeout errors as `get`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        if self.deadline is not None:
            def expire() -> None:
                if waiter.done():
                    return
                error = self.timed_out(self.timeout)
                if isinstance(error, CallOutcomeUnknownError) and self._finished:
                    return  # answered just now: settle() is on its way
                waiter.set_exception(error)

            timer = loop.call_later(max(0.0, self.deadline - time.monotonic()), expire)
            waiter.add_done_callback(lambda _w: timer.cancel())

        def settle(_reply: Reply) -> None:
            if waiter.done():
                return
            try:
                waiter.set_result(self.outcome(0))
            except pykka.ActorDeadError as exc:
                if self.retry is None:
                    waiter.set_exception(exc)
                    return
                # redo the call off the event loop (it blocks while the context re-activates)
                redo = loop.run_in_executor(None, self.retry, self)

                def redone(done: asyncio.Future[Any]) -> None:
                    if not waiter.done():
                        _transfer(done, waiter)

                redo.add_done_callback(redone)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                waiter.set_exception(exc)

        def wake(_reply: Reply) -> None:
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(settle, self)

        self.add_done_callback(wake)
        return (yield from waiter.__await__())


def _transfer(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
