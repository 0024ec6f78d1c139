"""`ContextManager`: create, read, update, delete and list contexts, active or not; recovery points.

Reads of an inactive context load it from the store without activating it. Writes go through the
context's actor (activating it, not as current), so a manager write can never race a tracker's:
there is one writer per context, always. Every call blocks until answered, at most `timeout`
seconds (default: ``call_timeout``). Thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from hoard.actors import (
    Activate,
    AddContext,
    Configure,
    Exists,
    ListIds,
    RemoveContext,
    StateOf,
    StoreCall,
    StoreWrite,
    current_by,
)
from hoard.storage import (
    ConfigError,
    ContextNotFoundError,
    ContextState,
    HoardError,
    InvalidValueError,
    PostgresStore,
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
from ._tracker import ContextTracker, activate_tracker, delete_recovery_point, list_recovery_points, run_anywhere

__all__ = ["ContextManager", "Ownership"]


@attrs.frozen
class Ownership:
    """Who owns a context on a shared store (`ContextManager.owner`).

    Attributes:
        context_id: the context.
        owner: the owner id of the process holding its lease (``PostgresStore.owner_id``).
        expires_in: seconds its lease still runs, by the database clock, when it was read (the owner
            renews it every ``lease_ttl / 3`` while it is alive).
        token: the lease's fencing token (it grows with every change of hands).
        here: the owner is this process.
    """

    context_id: str
    owner: str
    expires_in: float
    token: int
    here: bool


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

    def tracker(self, context_id: str, *, timeout: float | None = None, wait: bool = True) -> ContextTracker:
        """A tracker for an existing context (activated, not made current).

        A context active in another process (shared store) follows the adapter's rule (see
        `ContextAdapter.activate`): with forwarding, the tracker's calls are forwarded there;
        without, this waits up to `timeout` for that lease, or raises `ContextOwnedElsewhereError`
        at once with ``wait=False``. Every manager write goes through here, so they behave alike."""
        validate_id(context_id)
        return activate_tracker(self._system, Activate(context_id, create=False, make_current=False), timeout,
                                wait=wait)

    def owner(self, context_id: str, *, timeout: float | None = None) -> Ownership | None:
        """Who owns `context_id` now, without activating it: an `Ownership` (the owner id, the seconds
        its lease still runs by the database clock, its fencing token, and whether it is this
        process), or None when nobody holds a live lease (the context is inactive everywhere; the
        next activation anywhere takes it). Only a shared (PostgreSQL) store has owners: on the
        others this is always None. One store read through the persistence actor; blocks up to
        `timeout`."""
        validate_id(context_id)
        store = self._system.store
        if not isinstance(store, PostgresStore):
            return None
        held: tuple[str, int, float] | None = self._system.ask_persistence(
            StoreCall("lease_holder", (context_id,)), timeout, f"reading the owner of {context_id!r}")
        if held is None:
            return None
        return Ownership(context_id, held[0], held[2], held[1], held[0] == store.owner_id)

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
               request_id: str | None = None, by: str | None = None, timeout: float | None = None,
               wait: bool = True) -> int:
        """Set several keys of an existing context in one atomic, version-checked change; returns the
        new version. Goes through the context's actor (activating it; for a context active in another
        process see `tracker`: forwarded, waited for, or ``wait=False``). `request_id`, `by`: see
        `ContextTracker.update` (applied at most once; who made it)."""
        return self.tracker(context_id, timeout=timeout, wait=wait).update(
            values, expected_version=expected_version, request_id=request_id, by=by, timeout=timeout)

    def delete(self, context_id: str, *, by: str | None = None, timeout: float | None = None) -> None:
        """Delete a context with its recovery points (`ContextNotFoundError` if absent). An active one
        is stopped first; if it was current, the default becomes current. The change feed gets an
        entry for the deletion (``deleted=True``, one version past the context's last) made `by`
        whom (default: the `acting_as` in force; `InvalidValueError` if not a short str). Blocks
        until the deletion is committed (at most `timeout`, default call_timeout)."""
        validate_id(context_id)
        who = current_by() if by is None else validate_by(by)
        run_anywhere(self._system, context_id, "delete", [who], timeout,
                     lambda t: self.delete_here(context_id, t, by=who), f"deleting {context_id!r}")

    def delete_here(self, context_id: str, timeout: float | None, *, by: str | None = None) -> None:
        """`delete` in this process only (what a forwarded delete runs in the owner)."""
        self._system.ask(RemoveContext(context_id, by), timeout, f"deleting {context_id!r}")

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
        stays). Blocks on one store write; with forwarding, made by the process that owns the context."""
        validate_id(context_id)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise InvalidValueError("ttl", f"must be a positive number of seconds or None, not {ttl!r}",
                                    context_id=context_id)
        run_anywhere(self._system, context_id, "set_ttl", [ttl], timeout,
                     lambda t: self.set_ttl_here(context_id, ttl, t), f"setting the ttl of {context_id!r}")

    def set_ttl_here(self, context_id: str, ttl: float | None, timeout: float | None) -> None:
        """`set_ttl` in this process only (what a forwarded one runs in the owner)."""
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
                              timeout: float | None = None, wait: bool = True) -> RecoveryPoint:
        """`ContextTracker.create_recovery_point` on `context_id` (see `tracker` for ``wait``)."""
        return self.tracker(context_id, timeout=timeout, wait=wait).create_recovery_point(label, timeout=timeout)

    def recovery_points(self, context_id: str, *, timeout: float | None = None) -> list[RecoveryPoint]:
        """Recovery points of a context, active or not, oldest first."""
        validate_id(context_id)
        if not self.exists(context_id, timeout=timeout):
            raise ContextNotFoundError(context_id)
        return list_recovery_points(self._system, context_id, timeout)

    def restore(self, context_id: str, rp_id: int | RecoveryPoint, *, expected_version: int | None = None,
                request_id: str | None = None, by: str | None = None, timeout: float | None = None,
                wait: bool = True) -> int:
        """`ContextTracker.restore` on `context_id` (activating it; see `tracker` for ``wait``)."""
        return self.tracker(context_id, timeout=timeout, wait=wait).restore(
            rp_id, expected_version=expected_version, request_id=request_id, by=by, timeout=timeout)

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
