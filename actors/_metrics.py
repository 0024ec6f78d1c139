"""Metric accumulators owned by actors: `Histogram` and `Counters`, and their frozen snapshots.

No locks, by design (DESIGN.md: no mutex anywhere): each accumulator is written by exactly one
actor, on that actor's thread, as a plain attribute of the actor. Snapshots are frozen values that
can be merged (`HistogramSnapshot.merge`, `Counters.add`), so totals over many actors, or over
actors that have stopped, are built by the reader, never by sharing an accumulator.

Reading without asking (`MetricsBoard`): a reader in another thread takes `snapshot()` of an
accumulator directly. Each copy it makes is one C-level operation that holds the GIL throughout
(``dict(d)``, ``tuple(list)``), so it sees every counter either before or after an increment, never
half of one, and no counter it reads ever goes backwards. A histogram's count is the sum of the
bucket counts it copied, so a snapshot is always self-consistent (its sum may miss the observation
being made at that instant). Which context actors exist is published by the supervisor as one
frozen `Census`, replaced by a single reference assignment, so a reader sees one membership: an
actor that stopped is either still live in it or already in the retired totals, never both or
neither, and a counter read twice never decreases.

An `observe` or `inc` costs a few hundred ns: cheap enough for every call and every commit.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sized
from functools import cache
from typing import Any

import attrs

from hoard.storage import InvalidValueError

__all__ = [
    "LATENCY_BOUNDS",
    "SIZE_BOUNDS",
    "Census",
    "Counters",
    "Histogram",
    "HistogramSnapshot",
    "Meter",
    "MetricsBoard",
    "kind_of",
]


def _log_bounds(low_exp: int, high_exp: int, steps: tuple[float, ...] = (1.0, 2.0, 5.0)) -> tuple[float, ...]:
    """1-2-5 steps per decade from ``10**low_exp`` up to and including ``10**high_exp``."""
    out = [float(f"{s}e{e}") for e in range(low_exp, high_exp) for s in steps]  # exact decimal values
    return (*out, float(f"1e{high_exp}"))


LATENCY_BOUNDS: tuple[float, ...] = _log_bounds(-6, 1)
"""Upper bounds, in seconds, of the latency buckets: 1 µs, 2 µs, 5 µs, 10 µs ... 5 s, 10 s (22)."""

SIZE_BOUNDS: tuple[float, ...] = tuple(float(2**i) for i in range(13))
"""Upper bounds of the size buckets (changes per commit): 1, 2, 4 ... 4096 (13)."""


@attrs.frozen
class HistogramSnapshot:
    """The distribution of a histogram at one moment. Immutable; safe to share between threads.

    Attributes:
        bounds: the buckets' upper bounds, increasing; a value ``v`` is counted in the first bucket
            with ``v <= bound`` (Prometheus' ``le``).
        counts: observations per bucket (not cumulative), ``len(bounds) + 1`` of them: the last
            counts values above the highest bound (the ``+Inf`` bucket).
        sum: the sum of all observed values.
        count: the number of observations (the sum of `counts`).
        max: the largest observed value (0.0 when empty).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0
    count: int = 0
    max: float = 0.0

    def __attrs_post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.bounds)} bounds need {len(self.bounds) + 1} counts, "
                             f"got {len(self.counts)}")
        if any(b >= c for b, c in zip(self.bounds, self.bounds[1:], strict=False)) or any(
                math.isnan(b) for b in self.bounds):
            raise ValueError("histogram bounds must be strictly increasing")

    @classmethod
    def empty(cls, bounds: Iterable[float] = LATENCY_BOUNDS) -> HistogramSnapshot:
        """A snapshot with no observations over `bounds`."""
        b = tuple(float(x) for x in bounds)
        return cls(b, (0,) * (len(b) + 1))

    @property
    def mean(self) -> float:
        """The mean observed value; NaN when empty."""
        return self.sum / self.count if self.count else math.nan

    def cumulative(self) -> tuple[int, ...]:
        """Cumulative counts, one per bound and then the total (Prometheus' ``_bucket`` series)."""
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return tuple(out)

    def quantile(self, q: float) -> float:
        """An estimate of the `q` quantile (0 <= q <= 1, else `InvalidValueError`); NaN when empty.

        As Prometheus' ``histogram_quantile``: find the bucket holding the rank ``q * count`` and
        interpolate linearly inside it (from 0, for the first bucket), then cap at the largest value
        observed. Values above the highest bound are estimated as that bound (or `max`, if lower),
        so the estimate is at most one bucket's width off, and never above `max`.
        """
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
            raise InvalidValueError("q", f"a quantile is a number between 0 and 1, not {q!r}")
        if self.count == 0:
            return math.nan
        rank = q * self.count
        below = 0
        for i, c in enumerate(self.counts):
            if c and below + c >= rank:
                if i == len(self.bounds):  # the +Inf bucket: no upper bound to interpolate to
                    return min(self.bounds[-1], self.max) if self.bounds else self.max
                lower = self.bounds[i - 1] if i > 0 else 0.0
                estimate = lower + (self.bounds[i] - lower) * ((rank - below) / c)
                return min(estimate, self.max)
            below += c
        return self.max  # pragma: no cover - rank <= count always lands in a bucket

    def merge(self, other: HistogramSnapshot) -> HistogramSnapshot:
        """The distribution of both (for totals over actors). Both must have the same bounds."""
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        return HistogramSnapshot(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
                                 self.sum + other.sum, self.count + other.count, max(self.max, other.max))


class Histogram:
    """A fixed-bucket histogram written by one actor's thread (see the module docstring).

    Args:
        bounds: increasing bucket upper bounds; `LATENCY_BOUNDS` (seconds) by default, `SIZE_BOUNDS`
            for batch sizes.
    """

    __slots__ = ("_bounds", "_counts", "_max", "_sum", "count")

    def __init__(self, bounds: Iterable[float] = LATENCY_BOUNDS) -> None:
        self._bounds = HistogramSnapshot.empty(bounds).bounds  # checks they increase
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._max = 0.0
        self.count = 0

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe(self, value: float) -> None:
        """Count one observation (seconds for latencies). NaN is ignored; negative values land in the
        first bucket. Runs on the owning actor's thread; never blocks."""
        if value != value:  # noqa: PLR0124 - NaN would poison the sum; the cheapest test on a hot path
            return
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value
        self.count += 1
        if value > self._max:
            self._max = float(value)

    def add(self, snapshot: HistogramSnapshot) -> None:
        """Fold a snapshot in (an actor that stopped handing over its totals). Same bounds only."""
        if snapshot.bounds != self._bounds:
            raise ValueError("cannot add a histogram snapshot with different bucket bounds")
        for i, c in enumerate(snapshot.counts):
            self._counts[i] += c
        self._sum += snapshot.sum
        self.count += snapshot.count
        self._max = max(self._max, snapshot.max)

    def snapshot(self) -> HistogramSnapshot:
        """A frozen copy of the current distribution."""
        counts = tuple(self._counts)  # one copy, atomic under the GIL; count follows from it
        return HistogramSnapshot(self._bounds, counts, self._sum, sum(counts), self._max)


class Counters:
    """Named int counters written by one actor's thread (see the module docstring).

    `counts` is the live dict, for that one writer to bump inline on a hot path (``counts[k] =
    counts.get(k, 0) + 1``, what `inc` does, without the call: a context actor counts every call so);
    readers copy it (`snapshot`)."""

    __slots__ = ("counts",)

    def __init__(self, initial: Mapping[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(initial or {})

    def inc(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name` (created at 0). Never blocks."""
        self.counts[name] = self.counts.get(name, 0) + n

    def add(self, counts: Mapping[str, int]) -> None:
        """Add every counter of `counts` (another actor's snapshot, e.g. one that stopped)."""
        for name, n in counts.items():
            self.counts[name] = self.counts.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        return dict(self.counts)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@cache
def kind_of(message_type: type[Any]) -> str:
    """The call kind a message class counts as: ``SetMetadata`` -> ``"set_metadata"``,
    ``GetState`` -> ``"get_state"``. Cached per class (``functools.cache`` is thread-safe)."""
    return _CAMEL.sub("_", message_type.__name__).lower()


class Meter:
    """What one context actor counts: its calls by kind, its version conflicts and its call latency.
    Written only by that actor's thread; read by any thread through `part()` (see the module
    docstring). Created by the actor and handed to the supervisor through the context's cell."""

    __slots__ = ("calls", "conflicts", "latency")

    def __init__(self) -> None:
        self.calls = Counters()
        self.latency = Histogram()
        self.conflicts = 0

    def part(self) -> dict[str, Any]:
        """A copy, as a `Metrics.from_parts` part. Any thread; never blocks."""
        return {"calls": self.calls.snapshot(), "conflicts": self.conflicts, "call_latency": self.latency.snapshot()}


@attrs.frozen
class Census:
    """The supervisor's published reading: its own counts, and the live context actors' meters with
    their mailboxes, plus what the actors that stopped had counted. Replaced whole (one reference
    assignment) by the supervisor whenever it changes; never changed in place.

    Attributes:
        stats: the supervisor's counters, ``active_contexts`` and ``failed_contexts`` included.
        meters: the `Meter` of every live context actor.
        mailboxes: their mailboxes (`ContextInbox`, never replaced), whose ``len`` is atomic.
        retired: a `Meter.part` of the totals of the context actors that stopped.
    """

    stats: Mapping[str, int] = attrs.field(factory=dict)
    meters: tuple[Meter, ...] = ()
    mailboxes: tuple[Sized, ...] = ()
    retired: Mapping[str, Any] = attrs.field(factory=lambda: Meter().part())


class MetricsBoard:
    """Where the actors of one system publish what `ContextSystem.metrics()` reads, so that reading
    sends no message and waits for nobody (not for a busy persistence actor, nor for 1,000 context
    actors in turn). No lock: every slot is written by one actor with one reference assignment.

    Slots:
        census: the supervisor's `Census`.
        persistence: a callable, safe from any thread, returning the persistence actor's part.
        subscribers: ``(subscription id, what waits for it)`` of the bus's queued subscriptions: a
            sized collection (its event queue, or its actor's mailbox) whose ``len`` is the backlog.
    """

    __slots__ = ("census", "persistence", "subscribers")

    def __init__(self) -> None:
        self.census = Census()
        self.persistence: Any = None
        self.subscribers: tuple[tuple[int, Sized], ...] = ()

    def read(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Every part for `Metrics.from_parts` (the live contexts summed into one) and the context
        mailbox depths (``contexts_total``, ``contexts_max``) and per-subscriber backlogs. Runs in
        the caller's thread; sends no message, never blocks. O(live contexts), in comprehensions
        whose steps are single C-level copies (see the module docstring)."""
        census = self.census  # one reference: one consistent membership
        retired = census.retired
        meters = census.meters
        hists = [m.latency for m in meters]
        calls: dict[str, int] = dict(retired["calls"])
        for kind, n in itertools.chain.from_iterable([m.calls.counts.copy().items() for m in meters]):
            calls[kind] = calls.get(kind, 0) + n
        old: HistogramSnapshot = retired["call_latency"]
        # zip reads the live bucket lists (fixed length; each item read is atomic): no copies
        buckets = tuple(map(sum, zip(old.counts, *[h._counts for h in hists], strict=True)))  # noqa: SLF001
        latency = HistogramSnapshot(old.bounds, buckets, old.sum + math.fsum([h._sum for h in hists]),  # noqa: SLF001
                                    sum(buckets), max([old.max, *[h._max for h in hists]]))  # noqa: SLF001
        contexts = {"calls": calls, "conflicts": retired["conflicts"] + sum([m.conflicts for m in meters]),
                    "call_latency": latency}
        parts: list[dict[str, Any]] = [dict(census.stats), contexts]
        persistence = self.persistence
        if persistence is not None:
            parts.append(persistence())
        sizes = [len(waiting) for waiting in census.mailboxes]
        depths = {"contexts_total": sum(sizes), "contexts_max": max(sizes, default=0)}
        for sub_id, waiting in self.subscribers:
            depths[f"subscriber:{sub_id}"] = len(waiting)  # a deque's len: atomic, no lock
        return parts, depths

