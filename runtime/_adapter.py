"""`ContextAdapter`: activation, deactivation, switching, status, the current and default context.

Every call is one message to the supervisor actor, which decides alone; calls block until it has
answered, at most `timeout` seconds (default: the manager's ``call_timeout``). Thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hoard.actors import (
    Activate,
    ContextStatus,
    CurrentId,
    Deactivate,
    ListActive,
    Reply,
    Reset,
    StatusOf,
    current_by,
)
from hoard.storage import NoCurrentContextError, as_schema, validate_by, validate_id

from ._config import ContextAdapterConfig
from ._core import SystemCore, check_timeout
from ._ref import ContextRef
from ._tracker import ContextTracker, Pending, activate_tracker, offload_into

__all__ = ["ContextAdapter"]


class ContextAdapter:
    """Which contexts are active, and which one is current. See the module docstring.

    Attributes:
        default_context_id: the context current falls back to.
        config: the `ContextAdapterConfig` it runs with.
    """

    def __init__(self, system: SystemCore, config: ContextAdapterConfig) -> None:
        self._system = system
        self.config = config
        self.default_context_id: str = config.default_context_id

    def __repr__(self) -> str:
        return f"<ContextAdapter default={self.default_context_id!r}>"

    @property
    def system(self) -> SystemCore:
        """The system this adapter belongs to (at run time, its `ContextSystem`)."""
        return self._system

    def _tracker(self, context_id: str, *, make_current: bool, create: bool | None,
                 timeout: float | None, data: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None, must_create: bool = False,
                 schema: Any = None, tracker_timeout: float | None = None, wait: bool = True,
                 by: str | None = None) -> ContextTracker:
        validate_id(context_id)
        bound = as_schema(schema) if schema is not None else None
        return activate_tracker(self._system, Activate(
            context_id, create=create, make_current=make_current, data=data, metadata=metadata,
            must_create=must_create, schema=bound, by=current_by() if by is None else validate_by(by)),
            timeout, tracker_timeout, wait=wait)

    def activate(self, context_id: str, *, schema: Any = None, by: str | None = None, timeout: float | None = None,
                 wait: bool = True) -> ContextTracker:
        """Activate `context_id` (loading it, or creating it when ``auto_create_contexts``) and make it
        current. Returns its tracker. Raises `ContextNotFoundError` (no auto-create), `CapacityError`
        (policy "reject", or nothing evictable), `InvalidContextIdError`. Concurrent calls for one id
        yield one actor.

        On a shared (PostgreSQL) store a context active in another process cannot be activated here.
        With forwarding (``open_system(..., forward_via=...)``) the tracker returned reaches it there
        (every call is forwarded; it does not become current here). Without, this waits up to
        `timeout` for the other owner's lease to end, as manager writes do; ``wait=False`` raises
        `ContextOwnedElsewhereError` at once instead (and so do the tracker's later re-activations).

        `schema` (an attrs class or a `Schema`) binds the context to it, persisted with the context:
        every later change is validated (`SchemaValidationError` lists every bad field, nothing changes);
        stored data of an older schema version is migrated now. Binding a context whose data does not
        fit raises `SchemaValidationError` and leaves it unbound.

        `by`: who creates the context if this activation creates it (default: the `acting_as` in
        force), recorded in the change feed's creation entry and the `ContextCreated` event;
        `InvalidValueError` if not a short str."""
        return self._tracker(context_id, make_current=True, create=None, timeout=timeout, schema=schema, wait=wait,
                             by=by)

    def switch(self, context_id: str, *, schema: Any = None, timeout: float | None = None) -> ContextTracker:
        """Make `context_id` current, activating it if needed (also when it is already active)."""
        return self._tracker(context_id, make_current=True, create=None, timeout=timeout, schema=schema)

    def tracker(self, context_id: str, *, schema: Any = None, timeout: float | None = None) -> ContextTracker:
        """A tracker for an existing context, activating it without making it current
        (`ContextNotFoundError` if it does not exist; `get_or_create` creates it)."""
        return self._tracker(context_id, make_current=False, create=False, timeout=timeout, schema=schema)

    def create_and_activate(self, context_id: str, data: Mapping[str, Any] | None = None,
                            metadata: Mapping[str, Any] | None = None, *, schema: Any = None,
                            by: str | None = None, timeout: float | None = None) -> ContextTracker:
        """Create a new context (`ContextExistsError` if it exists), activate it, make it current.

        One supervisor step: either all of it happens or (on error) nothing does. `by`: who creates
        it (default: the `acting_as` in force), as for `activate`.
        """
        return self._tracker(context_id, make_current=True, create=True, timeout=timeout, data=data,
                             metadata=metadata, must_create=True, schema=schema, by=by)

    def deactivate(self, context_id: str, *, timeout: float | None = None) -> bool:
        """Commit and snapshot the context, stop its actor. If it was current, the default becomes
        current (or nothing, if the default itself was deactivated). Returns False if it was not
        active; raises `ContextNotFoundError` if it does not exist."""
        validate_id(context_id)
        return bool(self._system.ask(Deactivate(context_id), timeout, f"deactivating {context_id!r}"))

    def current_id(self, *, timeout: float | None = None) -> str | None:
        """The current context's id (None if no context is current)."""
        result: str | None = self._system.ask(CurrentId(), timeout, "reading the current context")
        return result

    def current(self, *, timeout: float | None = None) -> ContextTracker:
        """A tracker for the current context (`NoCurrentContextError` if there is none)."""
        cid = self.current_id(timeout=timeout)
        if cid is None:
            raise NoCurrentContextError()
        return self._tracker(cid, make_current=False, create=False, timeout=timeout)

    def status(self, context_id: str, *, timeout: float | None = None) -> ContextStatus:
        """ACTIVE, INACTIVE (stored only) or NONEXISTENT. `InvalidContextIdError` for a malformed id."""
        validate_id(context_id)
        result: ContextStatus = self._system.ask(StatusOf(context_id), timeout, f"status of {context_id!r}")
        return result

    def reset(self, context_id: str, *, timeout: float | None = None) -> bool:
        """Clear a FAILED context so that it can be activated again (from its durable state).

        Returns True if it was FAILED. Blocks on one supervisor message."""
        validate_id(context_id)
        return bool(self._system.ask(Reset(context_id), timeout, f"resetting {context_id!r}"))

    def is_active(self, context_id: str, *, timeout: float | None = None) -> bool:
        return self.status(context_id, timeout=timeout) is ContextStatus.ACTIVE

    def list_active(self, *, timeout: float | None = None) -> list[str]:
        """Ids of the active contexts."""
        result: list[str] = self._system.ask(ListActive(), timeout, "listing active contexts")
        return result

    def actor_ref(self, context_id: str, *, timeout: float | None = None) -> ContextRef:
        """A stable address of `context_id` for direct messaging with the messages of `hoard.actors`:
        a `ContextRef` with pykka's ``ask(message, block=True, timeout=None)`` / ``tell(message)``
        shape, valid for the life of the system (a message to a passivated context re-activates it).

        Activates the context now (not as current; creating it when ``auto_create_contexts``), so a
        missing one raises `ContextNotFoundError` here. Blocks up to `timeout` for that."""
        return ContextRef(self._system, self._tracker(context_id, make_current=False, create=None, timeout=timeout))

    def get_or_create(self, context_id: str, *, data: Mapping[str, Any] | None = None,
                      metadata: Mapping[str, Any] | None = None, schema: Any = None, by: str | None = None,
                      timeout: float | None = None, wait: bool = True) -> ContextTracker:
        """A tracker for `context_id`, creating the context (with `data` and `metadata`) if it does
        not exist, **without** making it current: the call for servers that touch many contexts from
        many threads (the current context is one per process). `auto_create_contexts` does not
        matter here; `max_contexts` does (`CapacityError`). Concurrent calls for one id yield one
        context and one actor (the supervisor decides alone). Blocks up to `timeout` (default
        call_timeout) while the context is loaded or created; for a context active in another
        process, see `activate` (forwarded, or waited for, or ``wait=False``). `by`: who creates it
        if it does not exist (default: the `acting_as` in force), as for `activate`."""
        return self._tracker(context_id, make_current=False, create=True, timeout=timeout, data=data,
                             metadata=metadata, schema=schema, wait=wait, by=by)

    def activate_async(self, context_id: str, *, schema: Any = None, by: str | None = None,
                       timeout: float | None = None) -> Pending:
        """`activate` without waiting: returns at once a future of the tracker (await it, or
        ``.get()``); the activation runs on a system worker thread, never in the caller's (an event
        loop's). Errors, `ContextNotFoundError` and timeouts included, arrive through the future.
        `by` (default: the `acting_as` of the calling thread or task, taken now) as for `activate`.
        A bad `timeout` raises `ConfigError` here, at once (as the trackers' ``*_async`` methods)."""
        who = current_by() if by is None else validate_by(by)
        t = self._system.call_timeout if timeout is None else check_timeout(timeout)
        future = Reply()
        future.what, future.context_id = f"activating {context_id!r}", context_id
        future.set_deadline(t)
        return offload_into(self._system, future,
                            lambda remaining: self.activate(context_id, schema=schema, by=who, timeout=remaining))
