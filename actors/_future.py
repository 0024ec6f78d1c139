"""`Reply`: a pykka future that a context actor can answer later, from another thread.

pykka answers an ``ask`` with whatever ``on_receive`` returns. A write in ``immediate`` mode must be
answered only after the persistence actor has committed it, so the context actor returns `DEFERRED`,
which `Reply.set` ignores, and the persistence actor calls `resolve` after the commit. Because the reply
still travels as the envelope's ``reply_to``, pykka fails it with ``ActorDeadError`` if the actor stops
before handling the message: no caller is ever left waiting for a reply that cannot come.
"""

from __future__ import annotations

import contextlib
import queue
from typing import Any

import pykka

__all__ = ["DEFERRED", "Reply"]


class _Deferred:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Any = _Deferred()


class Reply(pykka.ThreadingFuture[Any]):
    """A future whose `set(DEFERRED)` is a no-op; `resolve`/`fail` answer it for real."""

    def set(self, value: Any = None) -> None:
        if value is not DEFERRED:
            pykka.ThreadingFuture.set(self, value)

    def resolve(self, value: Any) -> None:
        """Answer with `value`; a reply already answered keeps its first answer."""
        with contextlib.suppress(queue.Full):
            pykka.ThreadingFuture.set(self, value)

    def fail(self, exc: BaseException) -> None:
        """Answer with `exc` raised; a reply already answered keeps its first answer."""
        with contextlib.suppress(queue.Full):
            self.set_exception((type(exc), exc, exc.__traceback__))
