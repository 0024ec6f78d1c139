"""History and diffs of one context, read from the store: `ContextManager.history`, `state_at` and
`diff`.

Everything here reads a read-only store of the calling thread (`Store.reader()`, opened once per
thread by `FeedReaders`): no message to the context's actor, no lock, so a reader never delays the
context's writer, and an inactive context is not activated. What can be read is what the store keeps:
the journal back to the oldest kept snapshot (the ``history`` policy of the store decides how far
that is), plus recovery points for `diff`. An older version raises `VersionNotStoredError`, which
names the oldest version from which every later one can be rebuilt, and older ones that can be
(a recovery point's own version).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import jsonpatch

from hoard.storage import (
    MAX_STORED_INT,
    ContextState,
    InvalidValueError,
    JournalEntry,
    ReadView,
    RecoveryPoint,
    VersionNotStoredError,
    apply_change,
    thaw,
    validate_id,
)

__all__ = ["Diff", "HistoryEntry", "diff", "history", "state_at"]

_MISSING: Any = object()


@attrs.frozen
class HistoryEntry:
    """One stored change of a context, with the values it replaced.

    Attributes:
        context_id: the context.
        version: the version the change made.
        at: seconds since the epoch of the change.
        by: who made it (the write's ``by=``; None if nobody said).
        changed: data keys set (sorted); a restore lists every key of the restored data.
        removed: data keys removed (sorted), a restore's included.
        before: the value each key of `changed` and `removed` had before (absent: it had none).
        after: the new value of each key of `changed`.
        metadata_changed: metadata keys set (sorted); a restore lists every key of the restored
            metadata. metadata_removed: metadata keys removed.
        replaced: the change replaced data and metadata wholesale (a restore).
        request_id: the write's idempotency key, if it had one.
    """

    context_id: str
    version: int
    at: float
    by: str | None
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    metadata_changed: tuple[str, ...]
    metadata_removed: tuple[str, ...]
    replaced: bool
    request_id: str | None

    @classmethod
    def of(cls, old: ContextState, entry: JournalEntry, new: ContextState) -> HistoryEntry:
        ch = entry.change
        if ch.replace:
            # a restore sets every key of the restored data and metadata, as its feed entry says,
            # also those whose value happens to be the one they had
            changed, meta_changed = tuple(sorted(new.data)), tuple(sorted(new.metadata))
            removed = tuple(sorted(k for k in old.data if k not in new.data))
            meta_removed = tuple(sorted(k for k in old.metadata if k not in new.metadata))
        else:
            changed, removed = tuple(sorted(ch.data_set)), tuple(sorted(k for k in ch.data_del if k in old.data))
            meta_changed = tuple(sorted(ch.meta_set))
            meta_removed = tuple(sorted(k for k in ch.meta_del if k in old.metadata))
        before = {k: old.data[k] for k in (*changed, *removed) if k in old.data}
        return cls(new.id, new.version, ch.at, ch.by, changed, removed, before, {k: new.data[k] for k in changed},
                   meta_changed, meta_removed, ch.replace, ch.request_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped form (what ``hoard history --json`` prints, one per line)."""
        return {"context_id": self.context_id, "version": self.version, "at": self.at, "by": self.by,
                "changed": list(self.changed), "removed": list(self.removed), "before": thaw(dict(self.before)),
                "after": thaw(dict(self.after)), "metadata_changed": list(self.metadata_changed),
                "metadata_removed": list(self.metadata_removed), "replaced": self.replaced,
                "request_id": self.request_id}


@attrs.frozen
class Diff:
    """What differs between two states of a context (`ContextManager.diff`): data and metadata keys
    added (with the new value), changed (``(before, after)``) and removed (with the old value).

    `a` and `b` name the two sides as given (a version, or ``"rp:<id>"`` for a recovery point);
    `before` and `after` are the two states.
    """

    context_id: str
    a: str
    b: str
    added: Mapping[str, Any]
    changed: Mapping[str, tuple[Any, Any]]
    removed: Mapping[str, Any]
    metadata_added: Mapping[str, Any]
    metadata_changed: Mapping[str, tuple[Any, Any]]
    metadata_removed: Mapping[str, Any]
    before: ContextState = attrs.field(repr=False)
    after: ContextState = attrs.field(repr=False)

    @classmethod
    def between(cls, context_id: str, a: str, before: ContextState, b: str, after: ContextState) -> Diff:
        def parts(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                           dict[str, Any]]:
            added = {k: new[k] for k in sorted(new) if k not in old}
            changed = {k: (old[k], new[k]) for k in sorted(new) if k in old and old[k] != new[k]}
            removed = {k: old[k] for k in sorted(old) if k not in new}
            return added, changed, removed
        return cls(context_id, a, b, *parts(before.data, after.data), *parts(before.metadata, after.metadata),
                   before, after)

    @property
    def empty(self) -> bool:
        """True when data and metadata are the same on both sides."""
        return not (self.added or self.changed or self.removed or self.metadata_added or self.metadata_changed
                    or self.metadata_removed)

    def to_json_patch(self) -> list[dict[str, Any]]:
        """RFC 6902 operations that turn ``{"data": ..., "metadata": ...}`` of `before` into that of
        `after` (made by the `jsonpatch` library: nested values get nested operations, and keys are
        escaped as JSON Pointer requires: ``a/b`` is ``/data/a~1b``)."""
        def doc(st: ContextState) -> dict[str, Any]:
            return {"data": thaw(dict(st.data)), "metadata": thaw(dict(st.metadata))}
        ops: list[dict[str, Any]] = jsonpatch.make_patch(doc(self.before), doc(self.after)).patch
        return ops

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped form (what ``hoard diff --json`` prints)."""
        def pairs(m: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
            return {k: {"before": thaw(v[0]), "after": thaw(v[1])} for k, v in m.items()}
        return {"context_id": self.context_id, "a": self.a, "b": self.b, "added": thaw(dict(self.added)),
                "changed": pairs(self.changed), "removed": thaw(dict(self.removed)),
                "metadata_added": thaw(dict(self.metadata_added)), "metadata_changed": pairs(self.metadata_changed),
                "metadata_removed": thaw(dict(self.metadata_removed)), "json_patch": self.to_json_patch()}


def _version(name: str, value: object, *, optional: bool = False) -> int | None:
    """`value` if it can be a version: an int from 1 to 2**63 - 1 (what every store holds: SQLite
    INTEGER, PostgreSQL bigint); `InvalidValueError` naming `name` otherwise."""
    if value is None and optional:
        return None
    if type(value) is not int or not 1 <= value <= MAX_STORED_INT:
        raise InvalidValueError(name, f"a version is an int from 1 to 2**63 - 1{' or None' if optional else ''}, "
                                      f"not {value!r}")
    return value


def state_at(store: ReadView, context_id: str, version: int) -> ContextState:
    """See `ContextManager.state_at`."""
    validate_id(context_id)
    return store.state_at(context_id, _version("version", version))  # type: ignore[arg-type]


def history(store: ReadView, context_id: str, since_version: int | None = None,
            until_version: int | None = None) -> Iterator[HistoryEntry]:
    """See `ContextManager.history`. Every read is made here, in one `read_view()` (the journal, the
    snapshots it starts from and the state before its first entry agree, whatever commits
    meanwhile); the entries are then replayed lazily, without the store."""
    validate_id(context_id)
    since = _version("since_version", since_version, optional=True)
    until = _version("until_version", until_version, optional=True)
    with store.read_view() as view:
        entries = view.journal(context_id, after=0 if since is None else since - 1, upto=until)
        oldest = min(view.snapshot_versions(context_id), default=1)  # the journal goes on from there
        if since is not None and oldest > 1 and since <= oldest:
            info = view.info(context_id)
            raise VersionNotStoredError(context_id, since, oldest=oldest + 1,
                                        newest=None if info is None else info.version)
        base = view.state_at(context_id, entries[0].version - 1) if entries else None
    return _replay(base, entries)


def _replay(state: ContextState | None, entries: list[JournalEntry]) -> Iterator[HistoryEntry]:
    for entry in entries:
        assert state is not None  # there is a base whenever there are entries
        new = apply_change(state, entry.change)
        yield HistoryEntry.of(state, entry, new)
        state = new


def diff(store: ReadView, context_id: str, a: int | RecoveryPoint, b: int | RecoveryPoint) -> Diff:
    """See `ContextManager.diff`."""
    validate_id(context_id)

    def side(name: str, value: object) -> tuple[str, ContextState]:
        if isinstance(value, RecoveryPoint):
            if value.context_id != context_id:
                raise InvalidValueError(name, f"recovery point {value.id} belongs to {value.context_id!r}, not "
                                              f"{context_id!r}")
            return f"rp:{value.id}", value.state
        return str(value), view.state_at(context_id, _version(name, value))  # type: ignore[arg-type]
    with store.read_view() as view:  # both sides from one snapshot
        (an, before), (bn, after) = side("a", a), side("b", b)
    return Diff.between(context_id, an, before, bn, after)
