"""How much history a store keeps: the ``history`` policy, recorded in the store.

A context's rows are snapshots and the journal after the oldest kept one. Recovery needs the newest
snapshot and the journal after it, and keeps the one before as a fallback; that is the ``"recovery"``
policy (the default, and what every store did before policies existed). A longer policy keeps older
snapshots and the journal after them, so `Store.state_at` and history reach further back:

- ``"recovery"``: the two newest snapshots and the journal after the older one;
- ``"all"``: every snapshot and every journal entry, back to the creation;
- ``HistoryPolicy.versions(n)``: at least the newest `n` versions can be rebuilt (and listed): the
  newest snapshot at or below ``version - n + 1`` is kept, with everything after it (so at most
  ``n + snapshot_every`` versions are kept);
- ``HistoryPolicy.seconds(s)``: every version made in the last `s` seconds, and the one current when
  that window began: the newest snapshot made at or before the window's start is kept, with
  everything after it.

Compaction applies the policy when a snapshot is written (and `Store.compact_history()` applies it
to every context at once, e.g. after the policy was shortened). `history_base` is the one rule every
backend follows.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence

import attrs

from ._errors import ConfigError

__all__ = ["RECOVERY", "HistoryPolicy", "history_base", "rebuildable"]


@attrs.frozen
class HistoryPolicy:
    """A history policy (see the module docstring). Build it with `parse`; `text` is how a store
    records it (``"recovery"``, ``"all"``, ``"versions:100"``, ``"seconds:86400"``)."""

    kind: str  # "recovery", "all", "versions", "seconds"
    amount: float = 0

    @classmethod
    def parse(cls, value: object) -> HistoryPolicy:
        """A policy from what `ContextManagerConfig(history=...)` takes: ``"recovery"``, ``"all"``, an
        int >= 1 (versions), a positive `datetime.timedelta`, or a recorded `text`. `ConfigError`
        for anything else."""
        if isinstance(value, HistoryPolicy):
            return value
        if value in ("recovery", "all"):
            return cls(str(value))
        if type(value) is int and value >= 1:
            return cls("versions", value)
        if isinstance(value, datetime.timedelta) and value.total_seconds() > 0:
            return cls("seconds", value.total_seconds())
        if isinstance(value, str) and ":" in value:
            kind, _, amount = value.partition(":")
            try:
                number = float(amount)
            except ValueError:
                number = 0.0
            # (not infinity: "versions:inf" would be an OverflowError, not a policy)
            if kind == "versions" and math.isfinite(number) and number >= 1 and number == int(number):
                return cls(kind, int(number))
            if kind == "seconds" and number > 0:
                return cls(kind, number)
        raise ConfigError(f"history must be 'recovery', 'all', a number of versions (int >= 1) or a positive "
                          f"datetime.timedelta, not {value!r}")

    @property
    def text(self) -> str:
        if self.kind in ("recovery", "all"):
            return self.kind
        return f"{self.kind}:{int(self.amount) if self.kind == 'versions' else self.amount!r}"

    def __str__(self) -> str:
        return self.text


RECOVERY = HistoryPolicy("recovery")


def history_base(policy: HistoryPolicy, snapshots: Sequence[int], top: int, now: float,
                 snapshot_time: Callable[[int], float]) -> int:
    """The oldest snapshot version to keep (older snapshots, and journal entries at or below it, go).

    `snapshots`: the context's snapshot versions, ascending, non-empty; `top`: its stored version;
    `now`: seconds since the epoch; `snapshot_time(v)`: the ``updated_at`` of snapshot `v` (called
    only by the ``seconds`` policy, newest first, until one is old enough)."""
    recovery = snapshots[-2] if len(snapshots) >= 2 else snapshots[-1]
    if policy.kind == "recovery":
        return recovery
    if policy.kind == "all":
        return snapshots[0]
    if policy.kind == "versions":
        floor = top - int(policy.amount) + 1
        base = max((v for v in snapshots if v <= floor), default=snapshots[0])
        return min(base, recovery)
    cutoff = now - policy.amount
    for v in reversed(snapshots):
        if snapshot_time(v) <= cutoff:
            return min(v, recovery)
    return snapshots[0]


def rebuildable(bases: Iterable[int], journaled: Callable[[int], bool], top: int) -> list[tuple[int, int]]:
    """The versions a context can be rebuilt at, as inclusive ``(first, last)`` ranges, oldest first
    and merged: each usable base (the version of a valid snapshot or recovery point, at most `top`),
    and from it every following version whose journal entry is kept (`journaled(v)`), up to `top`.
    What `VersionNotStoredError` names. Costs one `journaled` call per kept journal entry, at most."""
    ranges: list[tuple[int, int]] = []
    for base in sorted({v for v in bases if 1 <= v <= top}):
        if ranges and base <= ranges[-1][1] + 1:  # inside the last range, or right after it
            lo, hi = ranges.pop()
            hi = max(hi, base)
        else:
            lo, hi = base, base
        while hi < top and journaled(hi + 1):
            hi += 1
        ranges.append((lo, hi))
    return ranges
