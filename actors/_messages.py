"""Typed messages of the three actors.

Context messages (`Get`, `GetState`, `Set`, `Update`, `Delete`, `SetMetadata`, `Transact`, `Restore`,
`CreateRecoveryPoint`) are public: another pykka actor may ``ask`` a context actor directly, e.g.
``ref.ask(Set("k", 1))`` returns the new version. Every mutating message takes `expected_version`
(None: no check). The rest are internal to hoard.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from hoard.storage import Change, ContextState, RecoveryPoint

if TYPE_CHECKING:
    from ._cell import ContextCell
    from ._future import Reply

__all__ = [
    "Activate",
    "ContextStatus",
    "CreateRecoveryPoint",
    "DeactivationReason",
    "Delete",
    "Get",
    "GetState",
    "Restore",
    "Set",
    "SetMetadata",
    "Transact",
    "Update",
]


class ContextStatus(enum.Enum):
    """Where a context is: active (has an actor), inactive (only stored), nonexistent, or failed."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    NONEXISTENT = "nonexistent"
    FAILED = "failed"


class DeactivationReason(enum.Enum):
    EXPLICIT = "explicit"
    EVICTED = "evicted"
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    DELETED = "deleted"
    TAKEN_OVER = "taken_over"  # another process took its lease over (shared store)


# -- context actor: public ---------------------------------------------------------------------------
@attrs.frozen
class Get:
    """Reply: the value of `key`, or `default`."""

    key: str
    default: Any = None


@attrs.frozen
class GetState:
    """Reply: the current `ContextState` (the actor's newest, which in ``immediate`` mode may include
    changes still being committed; trackers read the committed one without a message)."""


@attrs.frozen
class Set:
    """Set one key. Reply: the new version."""

    key: str
    value: Any
    expected_version: int | None = None


@attrs.frozen
class Update:
    """Set several keys atomically. Reply: the new version."""

    values: Mapping[str, Any]
    expected_version: int | None = None


@attrs.frozen
class Delete:
    """Remove keys (absent keys are allowed) atomically. Reply: the new version."""

    keys: tuple[str, ...]
    expected_version: int | None = None


@attrs.frozen
class SetMetadata:
    """Set (value) or remove (``remove=True``) metadata keys atomically. Reply: the new version."""

    values: Mapping[str, Any]
    remove: tuple[str, ...] = ()
    expected_version: int | None = None


@attrs.frozen
class Transact:
    """Run ``fn(draft)`` inside the actor; the draft's changes are applied atomically if it returns.
    Reply: what `fn` returned (or its exception, with nothing changed)."""

    fn: Callable[[Any], Any]
    expected_version: int | None = None


@attrs.frozen
class Restore:
    """Make data and metadata equal to the recovery point's, as a new version. Reply: the version."""

    rp: RecoveryPoint
    expected_version: int | None = None


@attrs.frozen
class CreateRecoveryPoint:
    """Store a durable copy of the current state. Reply: the `RecoveryPoint`."""

    label: str | None = None


# -- context actor: internal -------------------------------------------------------------------------
@attrs.frozen
class BindSchema:
    """From the supervisor: bind the context to `schema` (a `hoard.storage.Schema`): validate and stamp it,
    or migrate stored data of an older version (a new version). Reply: the new or same version."""

    schema: Any


@attrs.frozen
class GetMetrics:
    """Reply: this actor's metrics part (see hoard._metrics.Metrics.from_parts)."""


@attrs.frozen
class CollectMetrics:
    """To the supervisor. Reply: (parts, mailbox depths) of itself and every context actor."""


@attrs.frozen
class Passivate:
    """From the supervisor: commit everything, write a snapshot. Reply: None once durable."""


@attrs.frozen
class Rollback:
    """From the persistence actor: commits failed; go back to `state` (the last durable one)."""

    state: ContextState


# -- persistence actor -------------------------------------------------------------------------------
@attrs.frozen
class Commit:
    """A change to make durable. Once committed: if `publish`, `state` becomes the cell's published
    state; then `reply` (if any) is answered with `result`."""

    cell: ContextCell
    change: Change
    state: ContextState
    reply: Reply | None
    result: Any
    publish: bool
    event: Any = None  # the StateChanged to emit once committed (None when nobody subscribes)
    started: float = 0.0  # perf_counter() when the context actor took the call (call latency)


@attrs.frozen
class Flush:
    """Commit everything pending now (sent by the persistence actor to itself: group commit)."""


@attrs.frozen
class Load:
    """Reply: the stored state of `context_id` (creating it as `create` if absent and given), or None."""

    context_id: str
    create: ContextState | None = None


@attrs.frozen
class SaveSnapshot:
    """Commit what is pending, then snapshot `state` (ahead of the store in ``none`` mode)."""

    state: ContextState
    reply: Reply | None


@attrs.frozen
class SaveRecoveryPoint:
    state: ContextState
    label: str | None
    reply: Reply | None


@attrs.frozen
class StoreCall:
    """Run ``store.<method>(*args)`` after committing what is pending. Reply: its result."""

    method: str
    args: tuple[Any, ...] = ()


@attrs.frozen
class StoreWrite:
    """Commit `ops` (after what is pending) in one transaction. Reply: None."""

    ops: tuple[Any, ...]


@attrs.frozen
class Close:
    """Commit everything and close the store. Reply: None."""


# -- supervisor --------------------------------------------------------------------------------------
@attrs.frozen
class Activate:
    """Reply: the context's `ContextCell`, activating it (and creating it, if `create`) as needed."""

    context_id: str
    create: bool | None = None  # None: as configured (auto_create_contexts)
    make_current: bool = True
    data: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    must_create: bool = False  # create_and_activate: fail if it exists
    schema: Any = None  # a hoard.storage.Schema to bind (and register for later activations)


@attrs.frozen
class Deactivate:
    context_id: str


@attrs.frozen
class StatusOf:
    context_id: str


@attrs.frozen
class CurrentId:
    pass


@attrs.frozen
class ListActive:
    pass


@attrs.frozen
class StateOf:
    context_id: str


@attrs.frozen
class AddContext:
    """Create a stored context (not activating it). Reply: its `ContextState`.

    Named apart from `hoard.storage.CreateContext` (the store operation it leads to)."""

    context_id: str
    data: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None


@attrs.frozen
class RemoveContext:
    """Stop a context without a snapshot and delete it from the store. Reply: None.

    Named apart from `hoard.storage.DeleteContext` (the store operation it leads to)."""

    context_id: str


@attrs.frozen
class Exists:
    context_id: str


@attrs.frozen
class ListIds:
    prefix: str = ""


@attrs.frozen
class SetPinned:
    context_id: str
    pinned: bool


@attrs.frozen
class Configure:
    """Apply an adapter configuration (a `SupervisorSettings`); activates the default if asked."""

    settings: Any


@attrs.frozen
class ContextCrashed:
    """From a context actor that crashed (told, not asked)."""

    cell: ContextCell
    reason: str


@attrs.frozen
class Reset:
    """Clear a FAILED context's failure so it can be activated again."""

    context_id: str


@attrs.frozen
class Sweep:
    """Passivate contexts idle for ``idle_timeout``. Reply: the ids passivated."""


@attrs.frozen
class Shutdown:
    """Passivate every context, then close the store. Reply: None."""
