"""`ContextAdapter`: activation, deactivation, switching, status, the current and default context.

Every call is one message to the supervisor actor, which decides alone; calls block until it has
answered, at most `timeout` seconds (default: the manager's ``call_timeout``). Thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pykka

from hoard.actors import Activate, ContextCell, ContextStatus, CurrentId, Deactivate, ListActive, Reset, StatusOf
from hoard.storage import NoCurrentContextError, as_schema, validate_id

from ._config import ContextAdapterConfig
from ._core import SystemCore
from ._tracker import ContextTracker, activate_waiting

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
                 schema: Any = None, tracker_timeout: float | None = None) -> ContextTracker:
        validate_id(context_id)
        bound = as_schema(schema) if schema is not None else None
        # owned by another process (shared store): waits up to `timeout` for it, see activate_waiting
        cell: ContextCell = activate_waiting(self._system, Activate(
            context_id, create=create, make_current=make_current, data=data, metadata=metadata,
            must_create=must_create, schema=bound), timeout, f"activating {context_id!r}")
        return ContextTracker(self._system, cell, tracker_timeout)

    def activate(self, context_id: str, *, schema: Any = None, timeout: float | None = None) -> ContextTracker:
        """Activate `context_id` (loading it, or creating it when ``auto_create_contexts``) and make it
        current. Returns its tracker. Raises `ContextNotFoundError` (no auto-create), `CapacityError`
        (policy "reject", or nothing evictable), `InvalidContextIdError`. Concurrent calls for one id
        yield one actor.

        `schema` (an attrs class or a `Schema`) binds the context to it, persisted with the context:
        every later change is validated (`SchemaValidationError` lists every bad field, nothing changes);
        stored data of an older schema version is migrated now. Binding a context whose data does not
        fit raises `SchemaValidationError` and leaves it unbound."""
        return self._tracker(context_id, make_current=True, create=None, timeout=timeout, schema=schema)

    def switch(self, context_id: str, *, schema: Any = None, timeout: float | None = None) -> ContextTracker:
        """Make `context_id` current, activating it if needed (also when it is already active)."""
        return self._tracker(context_id, make_current=True, create=None, timeout=timeout, schema=schema)

    def tracker(self, context_id: str, *, schema: Any = None, timeout: float | None = None) -> ContextTracker:
        """A tracker for an existing context, activating it without making it current."""
        return self._tracker(context_id, make_current=False, create=False, timeout=timeout, schema=schema)

    def create_and_activate(self, context_id: str, data: Mapping[str, Any] | None = None,
                            metadata: Mapping[str, Any] | None = None, *, schema: Any = None,
                            timeout: float | None = None) -> ContextTracker:
        """Create a new context (`ContextExistsError` if it exists), activate it, make it current.

        One supervisor step: either all of it happens or (on error) nothing does.
        """
        return self._tracker(context_id, make_current=True, create=True, timeout=timeout, data=data,
                             metadata=metadata, must_create=True, schema=schema)

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

    def actor_ref(self, context_id: str, *, timeout: float | None = None) -> pykka.ActorRef[Any]:
        """Activate `context_id` (not as current) and return its actor's ref for direct messaging."""
        return self._tracker(context_id, make_current=False, create=None, timeout=timeout).actor_ref
