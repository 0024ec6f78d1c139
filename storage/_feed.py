"""The durable change feed: one global, only-growing offset over every committed change of a store.

Every `Append` (a change), every `CreateContext` (a creation, recorded as a change that replaces
nothing with the initial data, ``created=True``) and every `DeleteContext` (a deletion, recorded as
a change one version past the context's last that replaces everything with nothing,
``deleted=True``) a batch commits gets a row in the store's feed, in the same transaction: offsets
are assigned in commit order, so a reader that has seen offset n has seen every entry below it. Each
backend keeps the rows in its own table; this module holds what they share: the record a reader gets
(`FeedEntry`), the rows a batch adds (`feed_rows`), and the retention rule (`prune_floor`).

A row holds the change's encoded blob (the journal's own bytes: no second encoding on the write
path). A deletion's blob is a change blob with an extra ``"deleted": true`` key (which the journal's
decoder ignores); `feed_entry` looks for it only in a change that replaces everything with nothing,
so reading the feed decodes every other entry once.

Retention: entries are kept until every registered consumer has committed past them, and never more
than `retention` entries back from the newest (a consumer behind that bound gets
`FeedTruncatedError` when it reads: never a silent gap).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ._codec import KIND_CHANGE, Codec
from ._errors import ConfigError, CorruptStateError, InvalidValueError
from ._model import Change
from ._store import Append, CreateContext, DeleteContext, Op
from ._values import FrozenDict

__all__ = [
    "DEFAULT_FEED_RETENTION",
    "PRUNE_EVERY",
    "FeedEntry",
    "check_retention",
    "consumer_position",
    "creation_change",
    "deletion_change",
    "feed_dict",
    "feed_entries",
    "feed_entry",
    "feed_rows",
    "prune_floor",
]

#: entries kept back from the newest, at most (the bound on what a slow consumer can hold back)
DEFAULT_FEED_RETENTION = 1_000_000
#: a writer prunes the feed once per this many entries it appended, and in its first commit after
#: each open (pruning is one ranged DELETE)
PRUNE_EVERY = 1024


# not slotted: a frozen attrs class with slots sets each of its 13 fields through object.__setattr__
# (13 C calls); with an instance dict its __init__ fills the dict directly, half the cost of building
# an entry (13.3 -> 7.4 k instructions, callgrind), and a feed read builds one per entry
@attrs.frozen(slots=False)
class FeedEntry:
    """One committed change, as the change feed delivers it.

    Attributes:
        offset: the global position in the store's feed (only grows; commit order across contexts).
        context_id: the context changed.
        version: the version the change made (1 for a creation).
        at: seconds since the epoch of the change.
        by: who made it (the write's ``by=``; None if nobody said).
        changed: data keys set, sorted (a creation or restore: every key of the new data).
        removed: data keys removed, sorted (a restore: none listed; compare with the state before).
        values: the new value of every key in `changed` (a `FrozenDict`: no level of an entry can be
            changed, its maps and lists are frozen).
        metadata: metadata keys set, with their new values.
        metadata_removed: metadata keys removed.
        replaced: data and metadata became exactly `values` / `metadata` (a restore, a creation, or a
            deletion: there, both empty).
        created: this entry is the context's creation (version 1).
        deleted: this entry is the context's deletion (with its snapshots, journal and recovery
            points). Its `version` is one past the context's last (0 when the deleter did not know
            it), `by` who deleted it; `changed`, `removed`, `values` and `metadata` are empty and
            `replaced` is True, so a reader that knows nothing of deletions sees the context emptied.
            A context created again afterwards starts over at version 1 (``created``).
    """

    offset: int
    context_id: str
    version: int
    at: float
    by: str | None
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    values: Mapping[str, Any]
    metadata: Mapping[str, Any]
    metadata_removed: tuple[str, ...]
    replaced: bool
    created: bool
    deleted: bool = False

    @classmethod
    def of(cls, offset: int, context_id: str, change: Change, *, deleted: bool = False) -> FeedEntry:
        """The entry for `change` of `context_id` at `offset` (a creation when it is version 1, a
        deletion when `deleted`: `change` is then `deletion_change`'s)."""
        return cls(offset, context_id, change.version, change.at, change.by, tuple(sorted(change.data_set)),
                   tuple(sorted(change.data_del)), _frozen(change.data_set), _frozen(change.meta_set),
                   tuple(change.meta_del), change.replace, change.version == 1 and not deleted, deleted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped form (values stay frozen; ``orjson`` and ``json`` encode them)."""
        return {"offset": self.offset, "context_id": self.context_id, "version": self.version, "at": self.at,
                "by": self.by, "changed": list(self.changed), "removed": list(self.removed),
                "values": dict(self.values), "metadata": dict(self.metadata),
                "metadata_removed": list(self.metadata_removed), "replaced": self.replaced, "created": self.created,
                "deleted": self.deleted}


def creation_change(op: CreateContext) -> Change:
    """A creation as the feed records it: version 1 replacing nothing with the initial state."""
    st = op.state
    return Change(st.version, st.created_at, data_set=dict(st.data), meta_set=dict(st.metadata), replace=True,
                  by=op.by)


def deletion_change(op: DeleteContext) -> Change:
    """A deletion as the feed records it: one version past the context's last (0 if unknown),
    replacing everything with nothing, made `op.by`."""
    return Change(0 if op.version is None else op.version + 1, op.at, replace=True, by=op.by)


def feed_rows(ops: Sequence[Op], encoded: Sequence[bytes | None], encode_change: Any
              ) -> list[tuple[str, int, bytes]]:
    """``(context_id, version, blob)`` of every op of a batch that goes to the feed, in batch order:
    an append reuses its journal blob; a creation and a deletion are encoded here (`creation_change`,
    `deletion_change` marked ``deleted``)."""
    rows: list[tuple[str, int, bytes]] = []
    for op, blob in zip(ops, encoded, strict=True):
        if isinstance(op, Append):
            assert blob is not None
            rows.append((op.context_id, op.change.version, blob))
        elif isinstance(op, CreateContext):
            rows.append((op.state.id, op.state.version, encode_change(creation_change(op))))
        elif isinstance(op, DeleteContext):
            change = deletion_change(op)
            rows.append((op.context_id, change.version, encode_change(change, deleted=True)))
    return rows


#: an entry's empty `values` / `metadata` (most changes set no metadata): one shared immutable map
#: instead of the decoded empty dict, which would stay alive, tracked by the GC, as long as the entry
_EMPTY: Mapping[str, Any] = FrozenDict()


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entry's `values` / `metadata`: `mapping` (a decoded dict, its containers already frozen)
    as a `FrozenDict`, so that no level of an entry can be changed (a copy of its top level only)."""
    if type(mapping) is FrozenDict:
        return mapping
    return FrozenDict(mapping) if mapping else _EMPTY


def feed_entry(codec: Codec, offset: int, context_id: str, blob: bytes) -> FeedEntry:
    """The `FeedEntry` of one stored feed row, verified (`CorruptStateError` if it is not one)."""
    fields = codec.change_fields(blob)  # the common case: an entry as this hoard writes it, not a replace
    if fields is not None and not fields[6]:
        version, at, data_set, data_del, meta_set, meta_del, _replace, _rid, _forget, by = fields
        return FeedEntry(offset, context_id, version, at, by, tuple(sorted(data_set)) if data_set else (),
                         tuple(sorted(data_del)) if data_del else (),
                         FrozenDict(data_set) if data_set else _EMPTY, FrozenDict(meta_set) if meta_set else _EMPTY,
                         tuple(meta_del) if meta_del else (), False, version == 1)
    what = f"feed entry {offset} ({context_id!r})"
    try:
        change = codec.decode_change(blob, what)
    except CorruptStateError:
        unknown = _unknown_version_deletion(codec.decode_json(KIND_CHANGE, blob, what))
        if unknown is None:
            raise
        return FeedEntry.of(offset, context_id, unknown, deleted=True)
    # only a change that replaces everything with nothing can be a deletion: look for the mark there
    deleted = change.replace and not change.data_set and not change.meta_set \
        and codec.decode_json(KIND_CHANGE, blob, what).get("deleted") is True
    return FeedEntry.of(offset, context_id, change, deleted=deleted)


def feed_entries(codec: Codec, rows: Iterable[tuple[int, str, bytes]]) -> list[FeedEntry]:
    """`feed_entry` of each ``(offset, context_id, blob)`` row, in order: the common case (an entry as
    this hoard writes it, not a replace) built in this loop, one call less per entry; anything else
    through `feed_entry` (same checks, same errors)."""
    out: list[FeedEntry] = []
    append, fields_of = out.append, codec.change_fields
    for offset, context_id, blob in rows:
        fields = fields_of(blob)
        if fields is None or fields[6]:
            append(feed_entry(codec, offset, context_id, blob))
            continue
        version, at, data_set, data_del, meta_set, meta_del, _replace, _rid, _forget, by = fields
        append(FeedEntry(offset, context_id, version, at, by,
                         (tuple(data_set) if len(data_set) == 1 else tuple(sorted(data_set))) if data_set else (),
                         tuple(sorted(data_del)) if data_del else (),
                         FrozenDict(data_set) if data_set else _EMPTY, FrozenDict(meta_set) if meta_set else _EMPTY,
                         tuple(meta_del) if meta_del else (), False, version == 1))
    return out


def feed_dict(codec: Codec, offset: int, context_id: str, blob: bytes) -> dict[str, Any]:
    """`FeedEntry.to_dict()` of one stored feed row, verified exactly as `feed_entry` verifies it,
    without building the `Change` and the `FeedEntry` (a third of the cost, for a reader that only
    re-encodes the entry: the broker relay). `values` and `metadata` are the decoded dicts
    themselves, not frozen: read or encode them, never keep or change them. A change that may be a
    deletion (it replaces everything with nothing) goes through `feed_entry`."""
    data_del: Sequence[str]
    meta_del: Sequence[str]
    fields = codec.plain_change_fields(blob)  # the common case: an entry exactly as this hoard writes it
    if fields is not None:
        version, at, data_set, data_del, meta_set, meta_del, replace, _rid, _forget, by = fields
    else:  # anything else is checked field by field (and named when it is wrong)
        try:
            scalars, data_set, meta_set = codec.decode_change_parts(blob, f"feed entry {offset} ({context_id!r})")
        except CorruptStateError:
            return feed_entry(codec, offset, context_id, blob).to_dict()  # a deletion of no version, or raises
        version, at, data_del, meta_del, _forgotten, replace, _rid, by = scalars
    if replace and not data_set and not meta_set:
        return feed_entry(codec, offset, context_id, blob).to_dict()
    return {"offset": offset, "context_id": context_id, "version": version, "at": at, "by": by,
            "changed": sorted(data_set), "removed": sorted(data_del), "values": data_set, "metadata": meta_set,
            "metadata_removed": list(meta_del), "replaced": replace, "created": version == 1, "deleted": False}


def _unknown_version_deletion(obj: Any) -> Change | None:
    """A deletion committed without its version (``DeleteContext.version`` None) is stored at version
    0, which no change has, so the journal decoder refuses it: this reads it (None: not one)."""
    if type(obj) is not dict or obj.get("deleted") is not True or type(obj.get("version")) is not int \
            or obj["version"] != 0 \
            or type(obj.get("at")) not in (int, float) or type(obj.get("by")) not in (str, type(None)):
        return None
    return Change(0, float(obj["at"]), replace=True, by=obj.get("by"))


def prune_floor(head: int, floor: int, consumers: Sequence[int], retention: int) -> int:
    """The new floor (every entry at or below it may go): past what every registered consumer has
    committed, and never more than `retention` entries behind `head`; with no consumer registered,
    only the bound applies. Never below the current `floor`."""
    bound = head - retention
    passed = min(consumers) if consumers else bound
    return max(floor, bound, passed if consumers else bound)


def check_retention(value: object) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"feed_retention must be an int >= 1 (entries kept back from the newest), not {value!r}")
    return value


def consumer_position(name: object, current: int | None, position: int | None, floor: int, head: int) -> int:
    """The position to record for consumer `name` (see `Store.set_consumer`), given its `current` one
    (None: new), the asked `position` (None: only register) and the feed's bounds; checked before
    anything is written. A new consumer starts at the floor: every kept entry is ahead of it."""
    if type(name) is not str or not name or len(name) > 128 or not name.isprintable():
        raise InvalidValueError("name", f"a feed consumer's name is a printable str of 1 to 128 characters, "
                                        f"not {name!r}")
    if position is None:
        return floor if current is None else current
    if type(position) is not int or position < 0 or position > head:
        raise InvalidValueError("offset", f"consumer {name!r} can commit an offset from 0 to the feed's newest "
                                          f"({head}), not {position!r}")
    if current is not None and position < current:
        raise InvalidValueError("offset", f"consumer {name!r} committed offset {current} already; a commit never "
                                          f"goes back (asked {position})")
    return position
