"""Subscriptions to the system's events (the event classes live in `hoard.actors._events`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from hoard.actors import OVERFLOW_POLICIES, ContextEvent, Subscribe, Unsubscribe
from hoard.storage import InvalidValueError, SystemStoppedError, validate_id

from ._core import SystemCore, check_timeout

__all__ = ["Subscription", "subscribe"]


class Subscription:
    """A live subscription. `cancel()` ends it (idempotent; events still queued for a callable
    subscriber are dropped). Usable as a context manager. A subscriber that falls
    ``subscriber_backlog`` events behind is dropped (or skips events): see `SubscriberOverflow`."""

    def __init__(self, system: SystemCore, sub_id: int) -> None:
        self._system = system
        self.id = sub_id
        self.cancelled = False

    def cancel(self, *, timeout: float | None = None) -> None:
        """End the subscription: no event is delivered to it once this returns. Blocks the calling
        thread (any thread; not the subscriber's own, which the bus never waits for) up to `timeout`
        (default ``call_timeout``) for the event bus. After the system's stop it returns at once (the
        stop ended every subscription).

        `cancelled` is set only once the bus has ended it: a bad `timeout` (`ConfigError`) changes
        nothing, and after `ContextTimeoutError` (the bus may still end it) calling again is safe.
        """
        if self.cancelled:
            return
        if timeout is not None:
            check_timeout(timeout)  # before anything is sent: a wrong argument changes nothing
        with contextlib.suppress(SystemStoppedError):  # the system's stop ended every subscription
            self._system.ask_bus(Unsubscribe(self.id), timeout, "cancelling a subscription")
        self.cancelled = True

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        return f"<Subscription {self.id}{' cancelled' if self.cancelled else ''}>"


def subscribe(system: SystemCore, subscriber: Callable[[ContextEvent], Any] | pykka.ActorRef[Any], *,
              context_id: str | None = None, kinds: Iterable[type[ContextEvent]] | None = None,
              timeout: float | None = None, inline: bool = False, max_backlog: int | None = None,
              overflow: str | None = None, on_stop: Callable[[], Any] | None = None) -> Subscription:
    """See `ContextSystem.subscribe`. `inline` (internal) runs a quick, thread-safe callable in
    whichever thread emits the event (a context, the persistence actor, the supervisor); `on_stop`
    (internal, quick) is called in the event bus's thread if the system stops while subscribed."""
    if max_backlog is not None and (isinstance(max_backlog, bool) or not isinstance(max_backlog, int)
                                    or max_backlog < 1):
        raise InvalidValueError("max_backlog", f"must be a positive int or None, not {max_backlog!r}")
    if overflow is not None and overflow not in OVERFLOW_POLICIES:
        raise InvalidValueError("overflow", f"must be one of {OVERFLOW_POLICIES} or None, not {overflow!r}")
    if not isinstance(subscriber, pykka.ActorRef) and not callable(subscriber):
        raise InvalidValueError("subscriber",
                                f"must be a callable or a pykka ActorRef, not {type(subscriber).__name__}")
    if context_id is not None:
        validate_id(context_id)
    kind_tuple: tuple[type, ...] | None = None
    if kinds is not None:
        try:  # as the trackers' key iterables: its own code raising is a bad argument, said as ours
            kind_tuple = (kinds,) if isinstance(kinds, type) else tuple(kinds)
        except Exception as exc:  # not iterable, or its own __iter__ raised
            raise InvalidValueError("kinds", f"must be event classes (an iterable of them, or one); iterating "
                                    f"this {type(kinds).__name__} raised {exc!r}") from exc
        bad = [k for k in kind_tuple if not (isinstance(k, type) and issubclass(k, ContextEvent))]
        if bad or not kind_tuple:
            raise InvalidValueError("kinds", f"must be event classes (subclasses of ContextEvent), not {bad!r}")
    sub_id = system.ask_bus(Subscribe(subscriber, context_id, kind_tuple, inline, max_backlog, overflow, on_stop),
                            timeout, "subscribing")
    return Subscription(system, sub_id)
