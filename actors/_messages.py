"""Typed messages of the three actors.

Context messages (`Get`, `GetState`, `Set`, `Update`, `Delete`, `SetMetadata`, `Transact`, `Restore`,
`CreateRecoveryPoint`) are public: another pykka actor may ``ask`` a context actor directly, e.g.
``ref.ask(Set("k", 1))`` returns the new version. Every mutating message takes `expected_version`
(None: no check) and `request_id` (an idempotency key: a change whose id the context already applied
is not applied again, and the reply is the version it made then) and `by` (who makes the change, a
short str stored with it; by default the one `acting_as` set in the sender's thread or task). The rest
are internal to hoard.

Public messages check their fields when they are built: a field of the wrong type raises
`InvalidMessageError` at once (``Get(["x"])``, ``Restore(1)``, ``SetMetadata({...}, remove=True)``).
A str where keys are expected is one key (``Delete("ab")`` deletes "ab"). The context actor checks
each message again (a message can be built around its checks), and answers a malformed one with that
error; nothing changes, and the context keeps running.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import attrs

from hoard.storage import (
    Change,
    ContextState,
    InvalidMessageError,
    InvalidValueError,
    RecoveryPoint,
    shown_repr,
    validate_by,
)

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
    "Transacted",
    "Update",
    "acting_as",
    "current_by",
]

#: the longest request id accepted: a short key (a UUID is 36 characters), stored with each change
MAX_REQUEST_ID = 128


def _fail(instance: Any, attribute: Any, reason: str, key: object = None) -> InvalidMessageError:
    return InvalidMessageError(type(instance).__name__, attribute.name, reason, key=key)


def _shown(value: Any) -> str:
    text = shown_repr(value)  # a hostile __repr__ must not turn a refusal into a crash
    return text if len(text) <= 60 else text[:57] + "..."


def _is_str(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not str:
        raise _fail(instance, attribute, f"must be a str, not {type(value).__name__} {_shown(value)}", value)


def _is_version(instance: Any, attribute: Any, value: Any) -> None:
    # any int is a version to compare with (a negative one simply conflicts); only the type is checked
    if value is not None and type(value) is not int:
        raise _fail(instance, attribute, f"must be None or an int, not {_shown(value)}")


def _is_request_id(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if type(value) is not str or not value or len(value) > MAX_REQUEST_ID or not value.isprintable():
        raise _fail(instance, attribute, f"must be None or a printable str of 1 to {MAX_REQUEST_ID} characters, "
                                         f"not {_shown(value)}")


#: who is acting in this thread or asyncio task (`acting_as`); read when a write message is built
_ACTING_AS: ContextVar[str | None] = ContextVar("hoard_acting_as", default=None)


@contextlib.contextmanager
def acting_as(by: str | None) -> Iterator[str | None]:
    """Within the block, every write made from this thread or asyncio task (and every write message
    built in it) records `by` as who made the change, unless the call passes its own ``by=``.

    A `contextvars` value: other threads and tasks keep their own; a task started inside the block
    inherits it. Nests (the inner one wins, the outer returns on exit). Raises `InvalidValueError`
    for a `by` that is not None or a short printable str, before the block runs.
    """
    token = _ACTING_AS.set(validate_by(by))
    try:
        yield by
    finally:
        _ACTING_AS.reset(token)


def current_by() -> str | None:
    """The `by` that `acting_as` set for this thread or task (None outside any)."""
    return _ACTING_AS.get()


def _is_by(instance: Any, attribute: Any, value: Any) -> None:
    try:
        validate_by(value)
    except InvalidValueError as exc:
        raise _fail(instance, attribute, exc.reason) from None


def _is_mapping(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise _fail(instance, attribute, f"must be a mapping of str keys to values, not {type(value).__name__}")


def _as_keys(value: Any) -> Any:
    """One key (a str) or an iterable of keys, as a tuple; anything else is left for `_are_keys`."""
    if isinstance(value, str):
        return (value,)  # a str is one key, never an iterable of one-letter keys
    if isinstance(value, (bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        return value
    return tuple(value)


def _are_keys(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not tuple:
        raise _fail(instance, attribute, f"must be a key (str) or an iterable of keys, not {type(value).__name__} "
                                         f"{_shown(value)}")
    for k in value:
        if type(k) is not str:
            raise _fail(instance, attribute, f"holds {type(k).__name__} {_shown(k)}; keys are str", k)


def _is_callable(instance: Any, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise _fail(instance, attribute, f"must be callable, not {type(value).__name__}")


def _is_recovery_point(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, RecoveryPoint):
        raise _fail(instance, attribute, f"must be a RecoveryPoint (tracker.recovery_points() lists them), not "
                                         f"{type(value).__name__} {_shown(value)}")


def _is_label(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and type(value) is not str:
        raise _fail(instance, attribute, f"must be None or a str, not {type(value).__name__}")


def _is_bool(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not bool:
        raise _fail(instance, attribute, f"must be a bool, not {_shown(value)}")





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

    key: str = attrs.field(validator=_is_str)
    default: Any = None


@attrs.frozen
class GetState:
    """Reply: the current `ContextState` (the actor's newest, which in ``immediate`` mode may include
    changes still being committed; trackers read the committed one without a message)."""


@attrs.frozen
class Set:
    """Set one key. Reply: the new version."""

    key: str = attrs.field(validator=_is_str)
    value: Any = attrs.field()
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class Update:
    """Set several keys atomically. Reply: the new version."""

    values: Mapping[str, Any] = attrs.field(validator=_is_mapping)
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class Delete:
    """Remove keys (absent keys are allowed) atomically. Reply: the new version.

    `keys` is one key (a str: ``Delete("ab")`` removes "ab") or an iterable of keys."""

    keys: tuple[str, ...] = attrs.field(converter=_as_keys, validator=_are_keys)
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class SetMetadata:
    """Set the metadata keys of `values` and remove those named in `remove` (one key, or an iterable of
    keys), atomically: ``SetMetadata({"owner": "ana"}, remove=("draft",))``. Reply: the new version."""

    values: Mapping[str, Any] = attrs.field(validator=_is_mapping)
    remove: tuple[str, ...] = attrs.field(default=(), converter=_as_keys, validator=_are_keys)
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class Transact:
    """Run ``fn(draft)`` inside the actor; the draft's changes are applied atomically if it returns.
    Reply: what `fn` returned (or its exception, with nothing changed); with ``with_version=True`` a
    `Transacted` (what `fn` returned, and the version committed). A transaction whose `request_id` was
    already applied does not run `fn` again: its reply is ``Transacted(None, version, duplicate=True)``
    (or None without ``with_version``)."""

    fn: Callable[[Any], Any] = attrs.field(validator=_is_callable)
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    with_version: bool = attrs.field(default=False, validator=_is_bool)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class Transacted:
    """What ``transact(fn, with_version=True)`` returns.

    Attributes:
        value: what `fn` returned (None for a duplicate: `fn` did not run again).
        version: the version the transaction committed (for a duplicate: the one it committed then).
        duplicate: True when the `request_id` had already been applied and nothing was done now.
    """

    value: Any
    version: int
    duplicate: bool = False


@attrs.frozen
class Restore:
    """Make data and metadata equal to the recovery point's, as a new version. Reply: the version."""

    rp: RecoveryPoint = attrs.field(validator=_is_recovery_point)
    expected_version: int | None = attrs.field(default=None, validator=_is_version)
    request_id: str | None = attrs.field(default=None, validator=_is_request_id)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class CreateRecoveryPoint:
    """Store a durable copy of the current state. Reply: the `RecoveryPoint`."""

    label: str | None = attrs.field(default=None, validator=_is_label)


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
class Confirm:
    """To the persistence actor: answer `reply` with `version` once `context_id` is durable at it (a
    duplicate request whose original change may still be committing); fail it if that change failed."""

    context_id: str
    version: int
    result: Any
    reply: Reply | None


@attrs.frozen
class Resume:
    """From the supervisor: a passivation failed and the context stays active (its final snapshot, the
    only copy of a ``durability="none"`` context's changes, could not be written); serve calls again."""


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
    #: ``deferred`` mode, on one change per `flush_interval`: resolved (None) once the change is
    #: committed or refused; the context actor waits on it before marking the next (its backlog bound)
    landed: Reply | None = None


@attrs.frozen
class Rebase:
    """From a ``deferred`` context actor after a failed commit lost acknowledged changes: `state` (the
    last durable data at a version above every acknowledged one) is what the store must hold before
    the context's next change."""

    cell: ContextCell
    state: ContextState


@attrs.frozen
class CommitsResumed:
    """From the persistence actor to a ``deferred`` context whose commits had failed: one succeeded;
    answer writes at once again."""


@attrs.frozen
class Abandon:
    """From the supervisor: it gave up waiting for the `Load` of `context_id` (told after it, so it
    is handled after it): forget the context and release its lease, unless a later load took it."""

    context_id: str


@attrs.frozen
class Flush:
    """Commit everything pending now (sent by the persistence actor to itself: group commit)."""


@attrs.frozen
class ArmFlush:
    """From a ``deferred`` context actor whose commit took the commit lane's wake-up token: commit
    everything posted within ``flush_interval`` (the persistence actor arms its flush timer, unless
    a flush is on its way already)."""


@attrs.frozen
class Load:
    """Reply: the stored state of `context_id` (creating it as `create` if absent and given, made
    `by` whom: recorded in the change feed and the `ContextCreated` event), or None."""

    context_id: str
    create: ContextState | None = None
    by: str | None = None


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
    timeout: float | None = None  # how long the caller waits: the supervisor waits at least that (and call_timeout)
    # who creates it, if this activation creates it (default: the acting_as in force where the message is made)
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


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
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


@attrs.frozen
class RemoveContext:
    """Stop a context without a snapshot and delete it from the store. Reply: None.

    Named apart from `hoard.storage.DeleteContext` (the store operation it leads to); `by` (default:
    the `acting_as` in force where the message is made) is recorded in the change feed's deletion
    entry."""

    context_id: str
    by: str | None = attrs.field(factory=current_by, validator=_is_by)


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
class DeadLetterSeen:
    """To the supervisor (told): a message for `context_id` could not be delivered or was refused with
    nobody to answer. The supervisor counts it, logs it and emits a `DeadLetter` event."""

    context_id: str
    message: str  # the message's type name
    reason: str
    undeliverable: bool  # True: never reached an actor (deleted context, capacity); False: refused by it


@attrs.frozen
class Reset:
    """Clear a FAILED context's failure so it can be activated again."""

    context_id: str


@attrs.frozen
class Sweep:
    """Passivate contexts idle for ``idle_timeout``. Reply: the ids passivated."""


@attrs.frozen
class ActivateDefault:
    """Timer: try again to activate the default context that another owner's lease kept from
    starting here (`Configure`); retried each time that lease would end. Reply: None."""


@attrs.frozen
class Shutdown:
    """Passivate every context, then close the store. Reply: None. A ``durability="none"`` context
    whose final snapshot fails is kept (`StateNotSavedError`, nothing stops) unless
    `discard_unsaved`: then it is stopped all the same and its unsaved changes are gone."""

    discard_unsaved: bool = False
