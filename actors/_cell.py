"""`ContextCell`: the shared, lock-free meeting point of one active context and its readers.

A cell is created by the supervisor when it activates a context and *closed* (never reopened) when
it passivates it. Its fields are each written by exactly one party, one reference assignment at a
time, so readers need no lock:

* `state`: the newest committed `ContextState`. Written by the context's actor (``none``/``deferred``
  durability) or by the persistence actor after the commit (``immediate``), never by both.
* `touched`: a global tick, written by any caller on each call; the supervisor reads it for LRU.
* `closed`: set once by the supervisor before it passivates or deletes the context.
"""

from __future__ import annotations

import itertools
from typing import Any

from storage import ContextState

__all__ = ["TICK", "ContextCell"]

#: a process-wide logical clock for LRU order (``next`` on it is atomic under the GIL)
TICK = itertools.count(1)


class ContextCell:
    __slots__ = ("actor_ref", "closed", "id", "pinned", "schema", "state", "touched")

    def __init__(self, context_id: str, state: ContextState) -> None:
        self.id = context_id
        self.state = state
        self.actor_ref: Any = None
        self.closed = False
        self.pinned = False
        self.schema: Any = None  # the storage.Schema the context is bound to, once bound
        self.touched = next(TICK)

    def __repr__(self) -> str:
        return f"ContextCell({self.id!r}, v{self.state.version}{', closed' if self.closed else ''})"
