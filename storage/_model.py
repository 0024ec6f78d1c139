"""The persistent models: `ContextState`, `RecoveryPoint`, and `Change` (one journal entry).

All are frozen attrs classes. `data` and `metadata` are `immutables.Map` (a hash array mapped trie):
a change costs O(log n) and shares structure with the previous state, so publishing a new immutable
state after each change never copies the whole mapping, and any number of readers can hold old ones.

`apply_change` is the one function that turns a state and a change into the next state; the context
actor uses it for live writes and the stores use it to replay the journal, so both always agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import immutables

from ._values import FrozenDict

__all__ = ["EMPTY", "Change", "ChangeFields", "ContextState", "RecoveryPoint", "apply_change", "apply_changes",
           "apply_fields", "change_fields", "new_state"]

EMPTY: immutables.Map[str, Any] = immutables.Map()


@attrs.frozen(slots=True, eq=True)
class ContextState:
    """One context's state at one version. Immutable and safe to share between threads.

    Attributes:
        id: the context id.
        version: starts at 1 on creation; every change adds exactly 1.
        data: key -> frozen JSON value (a read-only `Mapping`; ``dict(state.data)`` for a dict).
        metadata: key -> frozen JSON value, versioned together with `data`.
        created_at: seconds since the epoch (``time.time()``) when the context was created.
        updated_at: seconds since the epoch of the change that made this version.
        requests: the idempotency record: ``request_id -> (version, at)`` of the recent changes made
            with a ``request_id=`` (see `Change.request_id`). Stored with the state (snapshot) and
            rebuilt by replaying the journal, so it holds across restarts, kill -9 and a move to
            another process; kept to the configured window by the context actor (`Change.forget`).
    """

    id: str
    version: int
    data: immutables.Map[str, Any] = EMPTY
    metadata: immutables.Map[str, Any] = EMPTY
    created_at: float = 0.0
    updated_at: float = 0.0
    requests: immutables.Map[str, tuple[int, float]] = EMPTY

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`."""
        return self.data.get(key, default)

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - convenience
        return iter(self.data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (data and metadata as dicts; values stay frozen)."""
        return {
            "id": self.id,
            "version": self.version,
            "data": dict(self.data),
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def new_state(context_id: str, data: Mapping[str, Any] | None = None,
              metadata: Mapping[str, Any] | None = None, now: float | None = None) -> ContextState:
    """A freshly created context at version 1 (values must already be frozen)."""
    now = time.time() if now is None else now
    return ContextState(context_id, 1, immutables.Map(data or {}), immutables.Map(metadata or {}), now, now)


@attrs.frozen(slots=True)
class RecoveryPoint:
    """A durable copy of one context's state at one version.

    Attributes:
        id: per-context sequence number, increasing, never reused (even after deletion).
        context_id: the context it belongs to.
        version: the context version it copies.
        label: an optional name given when it was made.
        created_at: seconds since the epoch when it was made.
        state: the copied state.
    """

    id: int
    context_id: str
    version: int
    label: str | None
    created_at: float
    state: ContextState


_NO_CHANGES: Mapping[str, Any] = FrozenDict()  # immutable, and orjson encodes it (a dict subclass)


@attrs.frozen(slots=True)
class Change:
    """One journal entry: what one mutating call did to a context, producing `version`.

    `replace` (restore) means: data and metadata become exactly `data_set` / `meta_set`. Otherwise the
    keys in `data_set` are set and those in `data_del` removed (likewise for metadata).

    `request_id` (the caller's idempotency key, or None) is recorded in the state's `requests` with
    this version; `forget` names request ids that leave the record with this change (the window is
    the context actor's decision; recording it here keeps replay exact). `by` says who made the
    change (``"user:ana"``, ``"svc:billing"``; None: nobody said): an audit field, stored with the
    change and shown in events, history and the change feed; it does not affect the state.
    """

    version: int
    at: float
    data_set: Mapping[str, Any] = _NO_CHANGES  # shared read-only default: no factory call per change
    data_del: tuple[str, ...] = ()
    meta_set: Mapping[str, Any] = _NO_CHANGES
    meta_del: tuple[str, ...] = ()
    replace: bool = False
    request_id: str | None = None
    forget: tuple[str, ...] = ()
    by: str | None = None


#: a `Change`'s fields as a tuple, in its order: ``(version, at, data_set, data_del, meta_set, meta_del,
#: replace, request_id, forget, by)`` (a journal entry decoded straight from its blob, for replay and the feed)
ChangeFields = tuple[int, float, Mapping[str, Any], Iterable[str], Mapping[str, Any], Iterable[str], bool,
                     str | None, Iterable[str], str | None]


def change_fields(change: Change) -> ChangeFields:
    """The fields of `change` as `ChangeFields`."""
    return (change.version, change.at, change.data_set, change.data_del, change.meta_set, change.meta_del,
            change.replace, change.request_id, change.forget, change.by)


def apply_changes(state: ContextState, changes: Iterable[Change]) -> ContextState:
    """The state after each of `changes` in turn (see `apply_fields`)."""
    return apply_fields(state, map(change_fields, changes))


def apply_fields(state: ContextState, changes: Iterable[ChangeFields]) -> ContextState:  # noqa: PLR0912 - one replay loop, read top to bottom
    """The state after each of `changes` (as `ChangeFields`) in turn: the same result as folding
    `apply_change` over them, built with one mutation per mapping instead of a new persistent map and
    state per change (journal replay at activation and `state_at`; they decode a journal entry
    straight into its fields, without a `Change`). Each change's version must be one past the one
    before (checked by callers). The mappings handed in are only read."""
    data = state.data.mutate()
    meta = state.metadata.mutate()
    requests = None
    # data sets not yet in `data`, merged in a plain dict (a later set of a key replaces the earlier) and
    # put in with one MapMutation.update: a dict update per change is cheaper than a map mutation's
    # (callgrind: about 0.4M of the 1,000 one-key entries' replay of the bench's activation)
    pending: dict[str, Any] | None = None
    version, updated = state.version, state.updated_at
    for version, updated, data_set, data_del, meta_set, meta_del, replace, request_id, forget, _by in changes:
        if replace:
            pending = None
            data = immutables.Map(data_set).mutate()
            meta = immutables.Map(meta_set).mutate()
        else:
            if data_del:
                if pending:
                    data.update(pending)
                    pending = None
                for k in data_del:
                    data.pop(k, None)
            if data_set:
                if pending is None:
                    pending = dict(data_set)  # a copy: the mappings handed in are only read
                else:
                    pending.update(data_set)
            for k in meta_del:
                meta.pop(k, None)
            if meta_set:
                meta.update(meta_set)
        if request_id is not None or forget:
            if requests is None:
                requests = state.requests.mutate()
            for rid in forget:
                requests.pop(rid, None)
            if request_id is not None:
                requests[request_id] = (version, updated)
    if version == state.version:
        return state
    if pending:
        data.update(pending)  # one C loop (immutables' MapMutation.update)
    return ContextState(state.id, version, data.finish(), meta.finish(), state.created_at, updated,
                        state.requests if requests is None else requests.finish())


def _patch(m: immutables.Map[str, Any], sets: Mapping[str, Any], dels: tuple[str, ...]) -> immutables.Map[str, Any]:
    if not sets and not dels:
        return m
    if len(sets) + len(dels) == 1:
        if sets:
            (k, v), = sets.items()
            return m.set(k, v)
        return m.delete(dels[0]) if dels[0] in m else m
    mm = m.mutate()
    for k in dels:
        mm.pop(k, None)
    if sets:
        mm.update(sets)  # one C loop: an update of 1,000 keys spends no Python step per key here
    return mm.finish()


def apply_change(state: ContextState, change: Change) -> ContextState:
    """The state after `change`. `change.version` must be ``state.version + 1`` (checked by callers)."""
    if change.replace:
        data = immutables.Map(change.data_set)
        meta = immutables.Map(change.meta_set)
    else:
        data = _patch(state.data, change.data_set, change.data_del)
        meta = _patch(state.metadata, change.meta_set, change.meta_del)
    requests = state.requests
    if change.request_id is not None or change.forget:
        mm = requests.mutate()
        for rid in change.forget:
            mm.pop(rid, None)
        if change.request_id is not None:
            mm[change.request_id] = (change.version, change.at)
        requests = mm.finish()
    return ContextState(state.id, change.version, data, meta, state.created_at, change.at, requests)
