"""The durable change feed: one global, only-growing offset over every committed change of a store.

Every `Append` (a change) and every `CreateContext` (a creation, recorded as a change that replaces
nothing with the initial data, ``created=True``) a batch commits gets a row in the store's feed, in
the same transaction: offsets are assigned in commit order, so a reader that has seen offset n has
seen every entry below it. Each backend keeps the rows in its own table; this module holds what they
share: the record a reader gets (`FeedEntry`), the rows a batch adds (`feed_rows`), and the retention
rule (`prune_floor`).

A row holds the change's encoded blob (the journal's own bytes: no second encoding on the write
path). Retention: entries are kept until every registered consumer has committed past them, and
never more than `retention` entries back from the newest (a consumer behind that bound gets
`FeedTruncatedError` when it reads: never a silent gap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._errors import ConfigError, InvalidValueError
from ._model import Change
from ._store import Append, CreateContext, Op

__all__ = [
    "DEFAULT_FEED_RETENTION",
    "PRUNE_EVERY",
    "FeedEntry",
    "check_retention",
    "consumer_position",
    "creation_change",
    "feed_rows",
    "prune_floor",
]

#: entries kept back from the newest, at most (the bound on what a slow consumer can hold back)
DEFAULT_FEED_RETENTION = 1_000_000
#: a writer prunes the feed once per this many entries it appended (pruning is one ranged DELETE)
PRUNE_EVERY = 1024


@attrs.frozen
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
        values: the new value of every key in `changed`.
        metadata: metadata keys set, with their new values.
        metadata_removed: metadata keys removed.
        replaced: data and metadata became exactly `values` / `metadata` (a restore or a creation).
        created: this entry is the context's creation (version 1).
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

    @classmethod
    def of(cls, offset: int, context_id: str, change: Change) -> FeedEntry:
        """The entry for `change` of `context_id` at `offset` (a creation when it is version 1)."""
        return cls(offset, context_id, change.version, change.at, change.by, tuple(sorted(change.data_set)),
                   tuple(sorted(change.data_del)), change.data_set, change.meta_set, tuple(change.meta_del),
                   change.replace, change.version == 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped form (values stay frozen; ``orjson`` and ``json`` encode them)."""
        return {"offset": self.offset, "context_id": self.context_id, "version": self.version, "at": self.at,
                "by": self.by, "changed": list(self.changed), "removed": list(self.removed),
                "values": dict(self.values), "metadata": dict(self.metadata),
                "metadata_removed": list(self.metadata_removed), "replaced": self.replaced, "created": self.created}


def creation_change(op: CreateContext) -> Change:
    """A creation as the feed records it: version 1 replacing nothing with the initial state."""
    st = op.state
    return Change(st.version, st.created_at, data_set=dict(st.data), meta_set=dict(st.metadata), replace=True,
                  by=op.by)


def feed_rows(ops: Sequence[Op], encoded: Sequence[bytes | None], encode_change: Any
              ) -> list[tuple[str, int, bytes]]:
    """``(context_id, version, blob)`` of every op of a batch that goes to the feed, in batch order:
    an append reuses its journal blob; a creation is encoded here (`creation_change`)."""
    rows: list[tuple[str, int, bytes]] = []
    for op, blob in zip(ops, encoded, strict=True):
        if isinstance(op, Append):
            assert blob is not None
            rows.append((op.context_id, op.change.version, blob))
        elif isinstance(op, CreateContext):
            rows.append((op.state.id, op.state.version, encode_change(creation_change(op))))
    return rows


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
