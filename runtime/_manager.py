"""`ContextManager`: create, read, update, delete and list contexts, active or not; recovery points.

Reads of an inactive context load it from the store without activating it. Writes go through the
context's actor (activating it, not as current), so a manager write can never race a tracker's:
there is one writer per context, always. Every call blocks until answered, at most `timeout`
seconds (default: ``call_timeout``). Thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hoard.actors import (
    Activate,
    AddContext,
    Configure,
    Exists,
    ListIds,
    RemoveContext,
    StateOf,
    StoreWrite,
    current_by,
)
from hoard.storage import (
    ConfigError,
    ContextNotFoundError,
    ContextState,
    HoardError,
    InvalidValueError,
    RecoveryPoint,
    SetTTL,
    validate_by,
    validate_id,
)

from . import _history
from ._adapter import ContextAdapter
from ._config import ContextAdapterConfig, ContextManagerConfig
from ._core import SystemCore
from ._feed import FeedReaders
from ._history import Diff, HistoryEntry
from ._tracker import ContextTracker, delete_recovery_point, list_recovery_points

__all__ = ["ContextManager"]


class ContextManager:
    """Context CRUD and recovery points by context id. See the module docstring."""

    def __init__(self, system: SystemCore) -> None:
        self._system = system
        self._adapter: ContextAdapter | None = None
        #: read-only stores, one per reading thread: history and the change feed read there
        self.readers = FeedReaders(system.store)

    def __repr__(self) -> str:
        return f"<ContextManager {self._system.store.location!r}>"

    @property
    def system(self) -> SystemCore:
        """The system this manager belongs to (at run time, its `ContextSystem`)."""
        return self._system

    @property
    def config(self) -> ContextManagerConfig:
        return self._system.config

    @property
    def adapter(self) -> ContextAdapter:
        """This manager's adapter (`HoardError` if `create_adapter` was not called yet)."""
        if self._adapter is None:
            raise HoardError("this system has no adapter; call create_adapter(manager) first")
        return self._adapter

    def attach_adapter(self, config: ContextAdapterConfig) -> ContextAdapter:
        """Create this manager's one adapter (a second raises `HoardError`), as `create_adapter` does.

        Runs in the caller's thread; blocks until the supervisor has the new settings and, when
        `auto_activate_default` asks for it, the default context is active. Starts the maintenance
        ticker when ``idle_timeout``, ``ttl`` or ``maintenance_interval`` needs one.
        """
        if not isinstance(config, ContextAdapterConfig):
            raise ConfigError(f"adapter config must be a ContextAdapterConfig, not {type(config).__name__}")
        if self._adapter is not None:
            raise HoardError("this manager already has an adapter; a manager has exactly one")
        self._system.ask(Configure(self._system.supervisor_settings(config)), None, "configuring the adapter")
        self._adapter = ContextAdapter(self._system, config)
        self._system.maintenance_interval = config.maintenance_interval
        timeouts = [t for t in (config.idle_timeout, config.ttl) if t is not None]
        if config.maintenance_interval is not None or timeouts:
            self._system.ensure_maintenance(config.maintenance_interval or min(30.0, max(0.05, min(timeouts) / 4)))
        return self._adapter

    def tracker(self, context_id: str, *, timeout: float | None = None) -> ContextTracker:
        """A tracker for an existing context (activated, not made current)."""
        validate_id(context_id)
        cell = self._system.ask(Activate(context_id, create=False, make_current=False, timeout=timeout), timeout,
                                f"activating {context_id!r}")
        return ContextTracker(self._system, cell)

    def create(self, context_id: str, data: Mapping[str, Any] | None = None,
               metadata: Mapping[str, Any] | None = None, *, by: str | None = None,
               timeout: float | None = None) -> ContextState:
        """Create a context at version 1 (durably) without activating it. Returns its state.

        `by`: who creates it (default: the `acting_as` in force), recorded in the change feed and the
        `ContextCreated` event. Raises `ContextExistsError` if it exists, `InvalidValueError` for bad
        data or `by`, `CapacityError` at ``max_contexts``; nothing is created then.
        """
        validate_id(context_id)
        who = current_by() if by is None else validate_by(by)
        result: ContextState = self._system.ask(AddContext(context_id, data, metadata, who), timeout,
                                                f"creating {context_id!r}")
        return result

    def get_state(self, context_id: str, *, timeout: float | None = None) -> ContextState:
        """The newest committed state of a context, active or not (`ContextNotFoundError` if absent)."""
        validate_id(context_id)
        result: ContextState = self._system.ask(StateOf(context_id), timeout, f"reading {context_id!r}")
        return result

    def update(self, context_id: str, values: Mapping[str, Any], *, expected_version: int | None = None,
               request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> int:
        """Set several keys of an existing context in one atomic, version-checked change; returns the
        new version. Goes through the context's actor (activating it). `request_id`, `by`: see
        `ContextTracker.update` (applied at most once; who made it)."""
        return self.tracker(context_id, timeout=timeout).update(values, expected_version=expected_version,
                                                               request_id=request_id, by=by, timeout=timeout)

    def delete(self, context_id: str, *, timeout: float | None = None) -> None:
        """Delete a context with its recovery points (`ContextNotFoundError` if absent). An active one
        is stopped first; if it was current, the default becomes current."""
        validate_id(context_id)
        self._system.ask(RemoveContext(context_id), timeout, f"deleting {context_id!r}")

    def exists(self, context_id: str, *, timeout: float | None = None) -> bool:
        validate_id(context_id)
        return bool(self._system.ask(Exists(context_id), timeout, f"checking {context_id!r}"))

    def list_ids(self, prefix: str = "", *, timeout: float | None = None) -> list[str]:
        """Ids of every stored context (sorted), optionally only those starting with `prefix`."""
        if not isinstance(prefix, str):
            raise InvalidValueError("prefix", f"must be a str, not {type(prefix).__name__}")
        result: list[str] = self._system.ask(ListIds(prefix), timeout, "listing contexts")
        return result

    def set_ttl(self, context_id: str, ttl: float | None, *, timeout: float | None = None) -> None:
        """Give a context its own time to live: once it is inactive and its last change is older than
        `ttl` seconds, the maintenance sweep deletes it (``ContextDeleted(reason="expired")``). None
        falls back to ``ContextAdapterConfig.ttl``. Durable; not a change of the context (its version
        stays). Blocks on one store write."""
        validate_id(context_id)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise InvalidValueError("ttl", f"must be a positive number of seconds or None, not {ttl!r}",
                                    context_id=context_id)
        if not self.exists(context_id, timeout=timeout):
            raise ContextNotFoundError(context_id)
        self._system.ask_persistence(StoreWrite((SetTTL(context_id, None if ttl is None else float(ttl)),)),
                                     timeout, f"setting the ttl of {context_id!r}")
        self._system.ensure_maintenance()

    # -- history: read from the store, never through the context's actor ----------------------------
    def history(self, context_id: str, since_version: int | None = None,
                until_version: int | None = None) -> Iterator[HistoryEntry]:
        """The stored changes of a context with ``since_version <= version <= until_version``
        (None: from the oldest kept, to the newest stored), oldest first, as `HistoryEntry` records:
        version, time, `by`, keys changed and removed, their values before and after.

        Reads a read-only store of the caller's thread: no lock on the context, no message to its
        actor, so it never delays the context's writer and never activates it; it sees committed
        changes (``deferred``: those flushed). How far back it reaches is the store's ``history``
        policy (default: what recovery keeps, back to the older of the two newest snapshots).
        Raises `ContextNotFoundError`, `VersionNotStoredError` (naming the oldest version kept) for
        a `since_version` older than that, `InvalidValueError` for a bad version.
        """
        return _history.history(self.readers.get(), context_id, since_version, until_version)

    def state_at(self, context_id: str, version: int) -> ContextState:
        """The context's state at `version`, rebuilt from the store (a kept snapshot or recovery
        point plus the journal), without a lock and without its actor (see `history`). Raises
        `ContextNotFoundError`, or `VersionNotStoredError` naming the oldest version kept."""
        return _history.state_at(self.readers.get(), context_id, version)

    def diff(self, context_id: str, a: int | RecoveryPoint, b: int | RecoveryPoint) -> Diff:
        """What differs between two versions of a context, or a recovery point and a version: data
        and metadata keys added, changed (before and after) and removed. `Diff.to_json_patch()`
        gives RFC 6902 operations. Reads like `state_at` (no lock, no actor)."""
        return _history.diff(self.readers.get(), context_id, a, b)

    # -- recovery points by context id -------------------------------------------------------------
    def create_recovery_point(self, context_id: str, label: str | None = None, *,
                              timeout: float | None = None) -> RecoveryPoint:
        return self.tracker(context_id, timeout=timeout).create_recovery_point(label, timeout=timeout)

    def recovery_points(self, context_id: str, *, timeout: float | None = None) -> list[RecoveryPoint]:
        """Recovery points of a context, active or not, oldest first."""
        validate_id(context_id)
        if not self.exists(context_id, timeout=timeout):
            raise ContextNotFoundError(context_id)
        return list_recovery_points(self._system, context_id, timeout)

    def restore(self, context_id: str, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                request_id: str | None = None, by: str | None = None, timeout: float | None = None) -> int:
        """`ContextTracker.restore` on `context_id` (activating it)."""
        return self.tracker(context_id, timeout=timeout).restore(rp_id, expected_version=expected_version,
                                                                request_id=request_id, by=by, timeout=timeout)

    def delete_recovery_point(self, context_id: str, rp_id: int | RecoveryPoint, *,
                              timeout: float | None = None) -> None:
        validate_id(context_id)
        if not self.exists(context_id, timeout=timeout):
            raise ContextNotFoundError(context_id)
        delete_recovery_point(self._system, context_id, rp_id, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Stop the whole system this manager belongs to (see `ContextSystem.stop`). Idempotent."""
        self._system.stop(timeout)

    def __enter__(self) -> ContextManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
