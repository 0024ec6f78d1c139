"""The hoard error hierarchy.

Every error hoard raises on purpose derives from `HoardError`, so a caller can catch them all with one
class. Each subclass means exactly one situation; its docstring says how it differs from its siblings.
Errors carry the fields a caller needs to act (`context_id`, `expected`, `actual`, `key`, `path`), and
their message says what to do next. Library errors from below (pykka, sqlite3, zstandard, OSError)
are translated into these at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "CallNotStartedError",
    "CallOutcomeUnknownError",
    "CapacityError",
    "ConfigError",
    "ContextCrashedError",
    "ContextExistsError",
    "ContextFailedError",
    "ContextNotFoundError",
    "ContextOwnedElsewhereError",
    "ContextTimeoutError",
    "CorruptStateError",
    "FeedTruncatedError",
    "FencedOffError",
    "HoardError",
    "InvalidContextIdError",
    "InvalidMessageError",
    "InvalidValueError",
    "NoCurrentContextError",
    "OwnerIdInUseError",
    "PersistenceError",
    "RecoveryPointNotFoundError",
    "StoreLockedError",
    "SystemStoppedError",
    "VersionConflictError",
    "VersionNotStoredError",
]


def shown_repr(obj: object, width: int | None = None) -> str:
    """``repr(obj)`` for an error message; an object whose own ``__repr__`` raises (or returns a
    non-str) is shown by its type, so that reporting bad input never fails in turn. With `width`, a
    longer repr is cut to its first ``width - 3`` characters and ``...`` (a key or id of a megabyte
    is named by its start, not repeated whole)."""
    try:
        shown = repr(obj)
    except Exception:  # noqa: BLE001 - a hostile __repr__: whatever it raised, the report must be made
        return f"<{type(obj).__name__} object whose repr() raised>"
    if type(shown) is not str:
        return f"<{type(obj).__name__} object>"
    return shown if width is None or len(shown) <= width else shown[:width - 3] + "..."


class HoardError(Exception):
    """Base class of every error hoard raises on purpose."""


class ConfigError(HoardError, ValueError):
    """A configuration value is invalid (wrong type, out of range, unknown choice).

    Raised when a config object is built or a system is opened, before anything starts.
    """


class InvalidContextIdError(HoardError, ValueError):
    """A context id is malformed: not a str, empty, over 255 UTF-8 bytes, or with control characters.

    Differs from `ContextNotFoundError`: the id could never name a context at all.
    """

    def __init__(self, context_id: object, reason: str) -> None:
        self.context_id = context_id
        self.reason = reason
        super().__init__(f"invalid context id {shown_repr(context_id, 80)}: {reason}")


class InvalidValueError(HoardError, ValueError):
    """A key or value cannot be stored: not JSON-compatible, not finite, too deep, or too large.

    `key` names the top-level key (or None when the whole mapping is at fault), `path` the place inside
    the value, `reason` why. Nothing was changed.
    """

    def __init__(self, key: object, reason: str, *, path: str = "", context_id: str | None = None) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        self.context_id = context_id
        where = f"key {shown_repr(key, 80)}" if key is not None else "value"
        if path:
            where += f" at {path if len(path) <= 80 else '...' + path[-77:]}"
        ctx = f" in context {context_id!r}" if context_id is not None else ""
        super().__init__(f"{where}{ctx}: {reason}")


class InvalidMessageError(InvalidValueError, TypeError):
    """A message to a context actor is malformed: a field of the wrong type (``Get(["x"])``,
    ``Restore(1)``, ``SetMetadata({...}, remove=True)``). Raised when the message is built, and again
    by the actor for a message that got past construction. Nothing was changed, and the context keeps
    running (this is the sender's error, never counted as a crash).

    `message` names the message class, `field` the bad field, `reason` what is wrong with it; `key`
    (as in `InvalidValueError`, which this refines) is the bad value of a key field, else None.
    """

    def __init__(self, message: str, field: str, reason: str, *, key: object = None) -> None:
        super().__init__(key, reason)
        self.message = message
        self.field = field
        self.args = (f"malformed {message} message: field {field!r} {reason}; fix the message and send it again",)

    def __str__(self) -> str:
        return str(self.args[0])


class ContextNotFoundError(HoardError, LookupError):
    """The context does not exist (never created, or deleted), and creating it was not asked for.

    Raised by calls that never create (`adapter.tracker`, `deactivate`, manager reads, a tracker of a
    deleted context) and by `activate` / `switch` when ``auto_create_contexts`` is off. `hint` replaces
    the default advice (the command line names its own commands).
    """

    def __init__(self, context_id: str, *, hint: str | None = None) -> None:
        self.context_id = context_id
        advice = hint or (f"create it with manager.create({context_id!r}) or adapter.create_and_activate("
                          f"{context_id!r}), or activate it with adapter.activate({context_id!r}), which creates "
                          "a missing context unless auto_create_contexts is off")
        super().__init__(f"context {context_id!r} does not exist (never created, or deleted); {advice}")


class ContextExistsError(HoardError):
    """A create was asked for a context id that already exists. Nothing was changed."""

    def __init__(self, context_id: str) -> None:
        self.context_id = context_id
        super().__init__(f"context {context_id!r} already exists")


class VersionConflictError(HoardError):
    """An optimistic write named `expected` but the context is at `actual`. Nothing was changed.

    Re-read the state (``tracker.state()``), re-apply the change and retry with the new version.
    """

    def __init__(self, context_id: str, expected: int, actual: int) -> None:
        self.context_id = context_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"version conflict on context {context_id!r}: expected version {expected}, "
            f"but it is at {actual}; re-read and retry"
        )


class CapacityError(HoardError):
    """A limit was reached: `max_active_contexts` with ``capacity_policy="reject"`` (or nothing left
    that may be evicted), or `max_contexts` on create. Nothing was changed."""

    def __init__(self, message: str, *, limit: int, context_id: str | None = None) -> None:
        self.limit = limit
        self.context_id = context_id
        super().__init__(message)


class ContextTimeoutError(HoardError, TimeoutError):
    """A blocking call did not get its answer within its timeout. Also a builtin `TimeoutError`.

    A call to a context actor raises one of two subclasses that say what became of it:
    `CallNotStartedError` (cancelled in the mailbox, nothing applied) or `CallOutcomeUnknownError`
    (the actor had started it). Other waits (the supervisor, the store, waiting for a version) raise
    this class itself: the operation may still complete afterwards; read the state to find out.
    """

    outcome = "it may still complete afterwards; read the state to find out"

    def __init__(self, what: str, timeout: float | None, context_id: str | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.context_id = context_id
        super().__init__(f"{what} did not complete within {timeout} s; {self.outcome}")


class CallNotStartedError(ContextTimeoutError):
    """The caller's timeout ran out before the context's actor started the call, so the call was
    cancelled in the mailbox: **nothing was applied**, and it never will be. Retrying is safe.

    Differs from `CallOutcomeUnknownError`, where the actor had already started the call.
    """

    outcome = "it had not started and was cancelled: nothing was applied; retrying is safe"


class CallOutcomeUnknownError(ContextTimeoutError):
    """The caller's timeout ran out after the context's actor had started the call (a long
    ``transact``, or a commit still in flight): it **may or may not** be applied. Retry it with the
    same ``request_id=`` (applied at most once), or read the state to find out.

    Differs from `CallNotStartedError`, which guarantees that nothing was applied.
    """

    outcome = ("it had started, so its outcome is unknown: retry with the same request_id= (applied at "
               "most once) or read the state")


class PersistenceError(HoardError):
    """The store failed to read or write (I/O error, disk full, read-only file, lost connection).

    A write that raised this was not committed, and the context is back at its last durable state.
    """

    def __init__(self, message: str, *, context_id: str | None = None) -> None:
        self.context_id = context_id
        super().__init__(message)


class CorruptStateError(PersistenceError):
    """Stored data failed verification (bad checksum, truncated, unknown format, too large once
    decompressed, not a hoard store). It was not loaded."""

    def __init__(self, message: str, *, context_id: str | None = None, what: str = "") -> None:
        self.what = what
        super().__init__(message, context_id=context_id)


class StateNotSavedError(PersistenceError):
    """The final snapshot of a ``durability="none"`` context (on deactivation or stop) failed, and
    that snapshot was the only copy of its changes. Nothing was lost: the context stays active with
    its state (and a failed `stop()` leaves the system running); free the store's space (or fix what
    the message names) and call `deactivate()` / `stop()` again.

    Differs from a plain `PersistenceError`: the changes it is about were acknowledged and are kept
    in memory, not rolled back."""


class ContextLockedError(PersistenceError):
    """Another database session held a lock on the store rows of `context_ids` (e.g. their lease rows)
    for longer than the store's ``lock_timeout``: their changes in this commit were not written. The
    commit was rolled back as a whole; the changes of other contexts may be committed again without
    them (the persistence actor does so). Retry once the other session lets go."""

    def __init__(self, message: str, *, context_ids: tuple[str, ...]) -> None:
        self.context_ids = context_ids
        super().__init__(message, context_id=context_ids[0] if len(context_ids) == 1 else None)


class StoreLockedError(PersistenceError):
    """The store is already open for writing, in this process or another. Only one writer at a time."""

    def __init__(self, path: str, *, hint: str | None = None) -> None:
        self.path = path
        super().__init__(
            f"store {path!r} is already open for writing by another system or process; "
            f"{hint or 'stop that one first'}"
        )


class RecoveryPointNotFoundError(HoardError, LookupError):
    """No recovery point with that id exists for that context (never made, trimmed or deleted)."""

    def __init__(self, context_id: str, rp_id: object) -> None:
        self.context_id = context_id
        self.rp_id = rp_id
        super().__init__(f"context {context_id!r} has no recovery point {rp_id!r}")


class VersionNotStoredError(HoardError, LookupError):
    """A stored context exists but the store cannot rebuild the asked version: no kept snapshot or
    recovery point with the journal after it reaches it (older versions are dropped once newer
    snapshots cover them), or it is newer than the acknowledged version. (`ContextNotFoundError`: the
    context itself is absent; `RecoveryPointNotFoundError`: a recovery point id is unknown.)

    Attributes:
        oldest: the oldest version from which every later one up to `newest` can be rebuilt (the
            oldest kept snapshot, normally), or None when nothing can be.
        newest: the newest version that can be rebuilt (the acknowledged one, normally), or None.
        also: other versions that can be rebuilt, all older than `oldest`, as inclusive
            ``(first, last)`` ranges, oldest first: typically a recovery point's own version, whose
            journal was dropped.
    """

    def __init__(self, context_id: str, version: object, *, oldest: int | None, newest: int | None,
                 also: tuple[tuple[int, int], ...] = ()) -> None:
        self.context_id = context_id
        self.version = version
        self.oldest = oldest
        self.newest = newest
        self.also = also
        span = "nothing" if oldest is None or newest is None else f"v{oldest}..v{newest}"
        if also:
            span += ", and only " + ", ".join(f"v{lo}" if lo == hi else f"v{lo}..v{hi}" for lo, hi in also)
        super().__init__(f"context {context_id!r}: version {version!r} is not stored (the store can rebuild "
                         f"{span}); use snapshot_versions(), recovery_points() and journal() to see what it "
                         "keeps")


class FeedTruncatedError(HoardError, LookupError):
    """A reader of the change feed asked for entries after `after`, but the store no longer keeps
    them: retention (the configured bound, ``feed_retention``) removed every entry up to `floor`.
    Never a silent gap: the reader must decide how to catch up (rebuild from the contexts' current
    state, then follow the feed from `floor`). `consumer` names the consumer that fell behind (None
    for a plain ``changes(after=...)`` reader). (`VersionNotStoredError`: one context's history.)"""

    def __init__(self, after: int, floor: int, *, consumer: str | None = None) -> None:
        self.after = after
        self.floor = floor
        self.consumer = consumer
        who = f"consumer {consumer!r} is at offset {after}" if consumer is not None else \
            f"entries after offset {after} were asked for"
        super().__init__(f"{who}, but the feed keeps only entries after offset {floor} (older ones fell out of "
                         f"the retention bound, feed_retention); rebuild from the current state and follow on "
                         f"from offset {floor}")


class SystemStoppedError(HoardError):
    """The system was stopped (or is stopping); no more calls are served. Open a new one."""

    def __init__(self, what: str = "the hoard system") -> None:
        super().__init__(f"{what} is stopped; open a new system to continue")


class ContextFailedError(HoardError):
    """The context's actor crashed more often than its restart limit allows; it is FAILED.

    Calls raise this until ``adapter.reset(context_id)``.
    """

    def __init__(self, context_id: str, reason: str = "") -> None:
        self.context_id = context_id
        self.reason = reason
        extra = f": {reason}" if reason else ""
        super().__init__(f"context {context_id!r} has failed{extra}; call adapter.reset({context_id!r})")


class NoCurrentContextError(HoardError, LookupError):
    """No context is current: the default context was deactivated or deleted, or could not load.

    Call ``adapter.switch(id)`` to make one current.
    """

    def __init__(self) -> None:
        super().__init__("no context is current; call adapter.switch(context_id) first")


class ContextOwnedElsewhereError(HoardError):
    """Another process holds the context's ownership lease and it has not expired, so this process
    cannot take the context (PostgreSQL store, single activation). Nothing was written.

    Differs from `FencedOffError`: this one refuses to *take* ownership; `FencedOffError` refuses a
    write from an owner that has *lost* it. `owner` names the holder; `expires_in` is how many seconds
    its lease still runs by the database clock (None if unknown). Retry after that, deactivate the
    context in the owning process, or address it through that process.
    """

    def __init__(self, context_id: str, owner: str, *, expires_in: float | None = None) -> None:
        self.context_id = context_id
        self.owner = owner
        self.expires_in = expires_in
        when = f" for another {expires_in:.3g} s" if expires_in is not None else ""
        super().__init__(
            f"context {context_id!r} is owned by {owner!r}{when}; deactivate it there, "
            "or retry once its lease has expired"
        )


class OwnerIdInUseError(ConfigError):
    """Another live process uses this store's ``owner_id`` on the same PostgreSQL schema, so this one
    refuses to open (or, having lost its claim to the id, to take leases). Two live processes with one
    owner id would share every lease and defeat fencing.

    Differs from `ContextOwnedElsewhereError` (one context held by a *different* owner): this one is
    about the identity itself. `owner_id` names it. Give each live process its own owner id; reuse
    one only to restart the same node after its previous process has died (a SIGKILLed process's
    claim ends with its database session, and the restart then takes its leases back at once).
    """

    def __init__(self, owner_id: str, location: str) -> None:
        self.owner_id = owner_id
        self.location = location
        super().__init__(
            f"owner id {owner_id!r} is in use by another live process on {location}; give each process "
            "its own owner_id (reuse one only to restart a node whose previous process has ended)"
        )


class FencedOffError(PersistenceError):
    """A write was refused because this store does not own the context any more: another owner has
    taken its lease over (the fencing token in the store is newer than `token`, the one held here),
    or this store holds no lease (`token` is None) while `owner` holds a live one. Nothing of the batch
    was written.

    Differs from its parent `PersistenceError`: the store is healthy, and retrying the same write can
    never succeed. Differs from `ContextOwnedElsewhereError`, which refuses to *take* ownership. It
    typically follows a pause longer than the lease (GC, SIGSTOP, a network partition). Drop the
    context here without writing, and activate it again to read the current state.
    """

    def __init__(self, context_id: str, *, token: int | None, current_token: int | None,
                 owner: str | None) -> None:
        self.token = token
        self.current_token = current_token
        self.owner = owner
        held = f"lease token {token}" if token is not None else "no lease"
        super().__init__(
            f"write to context {context_id!r} refused: this store holds {held}, but {owner!r} owns it "
            f"now (token {current_token}); drop the context here and activate it again",
            context_id=context_id,
        )


class ContextCrashedError(HoardError):
    """The context's actor crashed (a bug, not bad input) while handling this call, which was not
    applied. The supervisor restarted it from its last durable state; retry the call.

    Differs from `ContextFailedError`: the context still works; it has not exceeded its restart limit.
    """

    def __init__(self, context_id: str, cause: BaseException) -> None:
        self.context_id = context_id
        self.cause = cause
        super().__init__(f"context {context_id!r} crashed handling this call ({cause!r}); it was restarted "
                         "from its last durable state and the call was not applied; retry it")
