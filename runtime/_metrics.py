"""`Metrics`: what ``system.metrics()`` returns, and its Prometheus exposition.

`Metrics` is a frozen record built by `Metrics.from_parts` from what each actor hands over (plain
counter dicts and histogram snapshots, see `hoard.actors._metrics`). It renders itself in the Prometheus
text format (`Metrics.to_prometheus`), and `register_prometheus` exposes a live system to a
Prometheus scraper through ``prometheus-client`` (the optional extra ``hoard-contexts[prometheus]``)::

    from prometheus_client import start_http_server
    from hoard import register_prometheus

    collector = register_prometheus(system.metrics)      # the default prometheus_client registry
    server, thread = start_http_server(9464, addr="127.0.0.1")
    ...                                                   # Prometheus scrapes http://127.0.0.1:9464/metrics
    server.shutdown(); server.server_close(); thread.join()

Every scrape calls ``system.metrics()`` once, in the HTTP server's thread.

Exposed series (counters end in ``_total``):

==================================  =========  =================================================
``hoard_calls_total{kind}``         counter    calls handled by context actors, by kind
``hoard_conflicts_total``           counter    writes refused with `VersionConflictError`
``hoard_activations_total`` ...     counter    activations, evictions, passivations, deactivations,
                                               restarts
``hoard_commits_total`` ...         counter    group commits, changes committed, failed commits,
                                               snapshots, recovery points
``hoard_written_bytes_total``       counter    bytes written to the store (after compression)
``hoard_payload_bytes_total``       counter    the same before compression
``hoard_active_contexts``           gauge      contexts with a live actor
``hoard_failed_contexts``           gauge      contexts FAILED until reset
``hoard_mailbox_depth{actor}``      gauge      messages waiting, per actor (one series per actor)
``hoard_compression_ratio``         gauge      payload bytes / written bytes
``hoard_call_latency_seconds``      histogram  call latency
``hoard_commit_latency_seconds``    histogram  store commit time, sync included
``hoard_commit_batch_size``         histogram  changes per group commit
==================================  =========  =================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from hoard.actors import LATENCY_BOUNDS, SIZE_BOUNDS, HistogramSnapshot
from hoard.storage import FrozenDict

__all__ = ["Metrics", "register_prometheus"]

_PREFIX = "hoard_"

# field -> (series name without the _total suffix, help): the plain counters, in exposition order
_COUNTERS: dict[str, tuple[str, str]] = {
    "conflicts": ("conflicts", "Optimistic writes refused because the context was at another version."),
    "dead_letters": ("dead_letters", "Told messages that could not be delivered or were refused (nobody to answer)."),
    "activations": ("activations", "Context activations (an actor started for a context)."),
    "evictions": ("evictions", "Contexts passivated to make room (max_active_contexts)."),
    "passivations": ("passivations", "Contexts passivated because they were idle (idle_timeout)."),
    "expired": ("expired", "Inactive contexts deleted because their time to live ran out."),
    "deactivations": ("deactivations", "Contexts deactivated (their actor stopped)."),
    "restarts": ("restarts", "Context actors restarted by the supervisor after a crash."),
    "commits": ("commits", "Group commits (store transactions) that succeeded."),
    "changes_committed": ("changes_committed", "Changes committed to the store."),
    "failed_commits": ("failed_commits", "Group commits that failed (their changes were rolled back)."),
    "snapshots": ("snapshots", "State snapshots written."),
    "recovery_points": ("recovery_points", "Recovery points written."),
    "bytes_written": ("written_bytes", "Bytes written to the store, after compression."),
    "payload_bytes": ("payload_bytes", "Bytes written to the store, before compression."),
}
_GAUGES: dict[str, tuple[str, str]] = {
    "active_contexts": ("active_contexts", "Contexts with a live actor."),
    "failed_contexts": ("failed_contexts", "Contexts that failed (restart limit reached) until reset."),
}
_HISTOGRAMS: dict[str, tuple[str, str]] = {
    "call_latency": ("call_latency_seconds", "Latency of calls to contexts, in seconds."),
    "commit_latency": ("commit_latency_seconds", "Time of one group commit (store transaction and sync), "
                                                 "in seconds."),
    "batch_sizes": ("commit_batch_size", "Changes per group commit."),
}
_CALLS = ("calls", "Calls handled by context actors, by kind.")
_MAILBOX = ("mailbox_depth", "Messages waiting in an actor's mailbox.")
_RELAY_LAG = {"relay_lag_entries": ("relay_lag_entries", "Feed entries a broker relay has not had confirmed yet."),
              "relay_lag_seconds": ("relay_lag_seconds", "Age of the oldest feed entry a broker relay has not had "
                                                         "confirmed yet (0 when caught up).")}
_RATIO = ("compression_ratio", "Bytes before compression divided by bytes written (1.0 before any write).")

_ALIASES = {"changes": "changes_committed"}  # the persistence actor's stats dict names it `changes`
_IGNORED = frozenset({"max_batch"})  # the persistence actor's stats dict; `batch_sizes.max` says it
_INT_FIELDS = frozenset(_COUNTERS) | frozenset(_GAUGES)


def _counts(value: Mapping[str, int] | None) -> FrozenDict:
    return FrozenDict({str(k): int(v) for k, v in (value or {}).items()})


def _seconds(value: Mapping[str, float] | None) -> FrozenDict:
    return FrozenDict({str(k): float(v) for k, v in (value or {}).items()})


def _latency() -> HistogramSnapshot:
    return HistogramSnapshot.empty(LATENCY_BOUNDS)


def _sizes() -> HistogramSnapshot:
    return HistogramSnapshot.empty(SIZE_BOUNDS)


@attrs.frozen
class Metrics:
    """What a system has done since it was opened, at one moment. Immutable; safe to share.

    Counters only grow while the system runs; gauges (`active_contexts`, `failed_contexts`,
    `mailbox_depths`, `compression_ratio`) say how things are now.

    Attributes:
        calls: calls handled by context actors, by kind (``"set"``, ``"update"``, ``"delete"``,
            ``"set_metadata"``, ``"transact"``, ``"restore"``, ``"get"``, ``"get_state"`` ...).
        conflicts: writes refused with `VersionConflictError`.
        dead_letters: told messages (``tell``) that could not be delivered (deleted context, capacity
            refused) or that their context refused; each is logged and emitted as a `DeadLetter` event.
        activations, evictions, passivations (idle), deactivations, restarts, expired (TTL): lifecycle counts.
        active_contexts: contexts with a live actor now.
        failed_contexts: contexts FAILED now (until ``adapter.reset``).
        mailbox_depths: messages waiting now, by actor name.
        relay_lag_entries: feed entries each running broker relay (`hoard.Relay`, by name) has not had
            confirmed by its broker yet.
        relay_lag_seconds: the age of the oldest of them, by relay (0.0 when caught up).
        commits, changes_committed, failed_commits, snapshots, recovery_points: store writes.
        bytes_written: bytes written to the store (after compression).
        payload_bytes: the same bytes before compression.
        compression_ratio: ``payload_bytes / bytes_written`` (1.0 before anything was written).
        batch_sizes: changes per group commit.
        commit_latency: seconds per group commit (the transaction and its sync).
        call_latency: seconds per call.
    """

    calls: FrozenDict = attrs.field(factory=FrozenDict, converter=_counts)
    conflicts: int = 0
    dead_letters: int = 0
    activations: int = 0
    evictions: int = 0
    passivations: int = 0
    deactivations: int = 0
    restarts: int = 0
    expired: int = 0
    active_contexts: int = 0
    failed_contexts: int = 0
    mailbox_depths: FrozenDict = attrs.field(factory=FrozenDict, converter=_counts)
    relay_lag_entries: FrozenDict = attrs.field(factory=FrozenDict, converter=_counts)
    relay_lag_seconds: FrozenDict = attrs.field(factory=FrozenDict, converter=_seconds)
    commits: int = 0
    changes_committed: int = 0
    failed_commits: int = 0
    snapshots: int = 0
    recovery_points: int = 0
    bytes_written: int = 0
    payload_bytes: int = 0
    compression_ratio: float = 1.0
    batch_sizes: HistogramSnapshot = attrs.field(factory=_sizes)
    commit_latency: HistogramSnapshot = attrs.field(factory=_latency)
    call_latency: HistogramSnapshot = attrs.field(factory=_latency)

    @classmethod
    def from_parts(cls, *parts: Mapping[str, Any], mailbox_depths: Mapping[str, int] | None = None) -> Metrics:
        """Build the record from what the actors hand over; runs in the caller's thread.

        Each part is a mapping from a field name of this class to a value, as an actor keeps it:

        * an int for a counter or gauge (``"activations": 3``, ``"active_contexts": 2``); parts add
          up, so a supervisor's ``stats``, a persistence actor's ``stats`` and the totals kept for
          stopped context actors can all be passed as they are;
        * a mapping of kind -> int for ``"calls"``; added up per kind;
        * a `HistogramSnapshot` for ``"batch_sizes"`` (over `SIZE_BOUNDS`), ``"commit_latency"`` and
          ``"call_latency"`` (over `LATENCY_BOUNDS`); merged.

        The persistence actor's existing names are accepted too: ``"changes"`` counts as
        ``"changes_committed"``, and ``"max_batch"`` is ignored (``batch_sizes.max`` says it).
        `compression_ratio` is computed from ``payload_bytes`` and ``bytes_written``.

        Example::

            Metrics.from_parts(
                supervisor.stats,      # {"activations": 3, "evictions": 1, "passivations": 1,
                                       #  "deactivations": 2, "restarts": 0, "active_contexts": 2}
                persistence.stats,     # {"commits": 9, "changes": 40, "failed_commits": 0, "snapshots": 1,
                                       #  "bytes_written": 5120, "payload_bytes": 9000,
                                       #  "batch_sizes": HistogramSnapshot, "commit_latency": HistogramSnapshot}
                *context_parts,        # {"calls": {"set": 30, "get": 5}, "conflicts": 1,
                                       #  "call_latency": HistogramSnapshot}, one per context actor
                mailbox_depths={"persistence": 0, "supervisor": 0, "context:cart-42": 3},
            )

        Raises:
            ValueError: a part names an unknown field, or histograms of different bucket bounds.
            TypeError: a value of the wrong kind.
        """
        ints: dict[str, int] = dict.fromkeys(_INT_FIELDS, 0)
        calls: dict[str, int] = {}
        hists: dict[str, HistogramSnapshot] = {}
        for part in parts:
            for raw_name, value in part.items():
                name = _ALIASES.get(raw_name, raw_name)
                if name in _IGNORED:
                    continue
                if name in _INT_FIELDS:
                    if isinstance(value, bool) or not isinstance(value, int):
                        raise TypeError(f"metrics part field {raw_name!r} must be an int, not {type(value).__name__}")
                    ints[name] += value
                elif name == "calls":
                    if not isinstance(value, Mapping):
                        raise TypeError("metrics part field 'calls' must map kinds to ints, "
                                        f"not {type(value).__name__}")
                    for kind, n in value.items():
                        calls[kind] = calls.get(kind, 0) + int(n)
                elif name in _HISTOGRAMS:
                    if not isinstance(value, HistogramSnapshot):
                        raise TypeError(f"metrics part field {raw_name!r} must be a HistogramSnapshot, "
                                        f"not {type(value).__name__}")
                    hists[name] = hists[name].merge(value) if name in hists else value
                else:
                    raise ValueError(f"unknown metrics field {raw_name!r}")
        written, payload = ints["bytes_written"], ints["payload_bytes"]
        ratio = payload / written if written else 1.0
        return cls(calls=calls, mailbox_depths=mailbox_depths or {}, compression_ratio=ratio,
                   **ints, **hists)  # type: ignore[arg-type]

    # -- exposition ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-encodable form (histograms as dicts of their fields)."""
        out: dict[str, Any] = attrs.asdict(self, recurse=False)
        for name in ("calls", "mailbox_depths", "relay_lag_entries", "relay_lag_seconds"):
            out[name] = dict(out[name])
        for name in _HISTOGRAMS:
            h: HistogramSnapshot = out[name]
            out[name] = {"bounds": list(h.bounds), "counts": list(h.counts), "sum": h.sum, "count": h.count,
                         "max": h.max}
        return out

    def to_prometheus(self) -> str:
        """This record in the Prometheus text exposition format (version 0.0.4).

        Generated by ``prometheus-client`` when it is installed (the same families that
        `register_prometheus` serves), else written here in the same format.
        """
        try:
            from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415 - optional
        except ImportError:
            return _exposition(self)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(lambda: self))
        return generate_latest(registry).decode("utf-8")


# -- the hand-written text format (no prometheus-client) ---------------------------------------------------
def _go_float(value: float) -> str:
    """A float as Prometheus (Go) writes it; the same as prometheus_client.utils.floatToGoString."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _exposition(m: Metrics) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, text: str, samples: list[tuple[str, str, float]]) -> None:
        lines.append(f"# HELP {name} {_help(text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{suffix}{labels} {_go_float(v)}" for suffix, labels, v in samples)

    family(f"{_PREFIX}{_CALLS[0]}_total", "counter", _CALLS[1],
           [("", f'{{kind="{_label(k)}"}}', n) for k, n in sorted(m.calls.items())])
    for field, (name, text) in _COUNTERS.items():
        family(f"{_PREFIX}{name}_total", "counter", text, [("", "", getattr(m, field))])
    for field, (name, text) in _GAUGES.items():
        family(f"{_PREFIX}{name}", "gauge", text, [("", "", getattr(m, field))])
    family(f"{_PREFIX}{_MAILBOX[0]}", "gauge", _MAILBOX[1],
           [("", f'{{actor="{_label(k)}"}}', n) for k, n in sorted(m.mailbox_depths.items())])
    for field, (name, text) in _RELAY_LAG.items():  # after the mailbox depths, as _families yields them
        family(f"{_PREFIX}{name}", "gauge", text,
               [("", f'{{relay="{_label(k)}"}}', n) for k, n in sorted(getattr(m, field).items())])
    family(f"{_PREFIX}{_RATIO[0]}", "gauge", _RATIO[1], [("", "", m.compression_ratio)])
    for field, (name, text) in _HISTOGRAMS.items():
        h: HistogramSnapshot = getattr(m, field)
        samples: list[tuple[str, str, float]] = [("_bucket", f'{{le="{le}"}}', n) for le, n in _buckets(h)]
        samples += [("_count", "", h.count), ("_sum", "", h.sum)]
        family(f"{_PREFIX}{name}", "histogram", text, samples)
    return "\n".join(lines) + "\n"


def _buckets(h: HistogramSnapshot) -> list[tuple[str, int]]:
    cumulative = h.cumulative()
    return [(_go_float(b), n) for b, n in zip(h.bounds, cumulative, strict=False)] + [("+Inf", cumulative[-1])]


# -- prometheus-client ---------------------------------------------------------------------------------
class _Collector:
    """A prometheus_client custom collector: each `collect()` asks `source` for a fresh `Metrics`."""

    def __init__(self, source: Callable[[], Metrics]) -> None:
        self._source = source

    def describe(self) -> Iterator[Any]:
        # the names only, so registering checks for clashes without calling `source` (the system
        # may not be serving yet)
        return _families(None)

    def collect(self) -> Iterator[Any]:
        return _families(self._source())


def _families(m: Metrics | None) -> Iterator[Any]:
    from prometheus_client.core import (  # noqa: PLC0415 - an optional dependency
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    calls = CounterMetricFamily(f"{_PREFIX}{_CALLS[0]}", _CALLS[1], labels=["kind"])
    if m is not None:
        for kind, n in sorted(m.calls.items()):
            calls.add_metric([kind], n)
    yield calls
    for field, (name, text) in _COUNTERS.items():
        yield CounterMetricFamily(f"{_PREFIX}{name}", text, value=None if m is None else getattr(m, field))
    for field, (name, text) in _GAUGES.items():
        yield GaugeMetricFamily(f"{_PREFIX}{name}", text, value=None if m is None else getattr(m, field))
    depths = GaugeMetricFamily(f"{_PREFIX}{_MAILBOX[0]}", _MAILBOX[1], labels=["actor"])
    if m is not None:
        for actor, n in sorted(m.mailbox_depths.items()):
            depths.add_metric([actor], n)
    yield depths
    for field, (name, text) in _RELAY_LAG.items():
        lag = GaugeMetricFamily(f"{_PREFIX}{name}", text, labels=["relay"])
        if m is not None:
            for relay, n in sorted(getattr(m, field).items()):
                lag.add_metric([relay], n)
        yield lag
    yield GaugeMetricFamily(f"{_PREFIX}{_RATIO[0]}", _RATIO[1], value=None if m is None else m.compression_ratio)
    for field, (name, text) in _HISTOGRAMS.items():
        if m is None:
            yield HistogramMetricFamily(f"{_PREFIX}{name}", text)
            continue
        h: HistogramSnapshot = getattr(m, field)
        yield HistogramMetricFamily(f"{_PREFIX}{name}", text, buckets=_buckets(h), sum_value=h.sum)


def register_prometheus(system_metrics_fn: Callable[[], Metrics], registry: Any = None) -> Any:
    """Expose a system's metrics to Prometheus: register a collector that calls `system_metrics_fn`
    (typically ``system.metrics``) on every scrape, in the scraping thread.

    Args:
        system_metrics_fn: a zero-argument callable returning a `Metrics`.
        registry: a ``prometheus_client.CollectorRegistry``; the default ``prometheus_client.REGISTRY``
            when None.

    Returns:
        The collector; ``registry.unregister(collector)`` removes it (do so before stopping the system,
        or scrapes get its `SystemStoppedError`).

    Raises:
        ImportError: prometheus-client is not installed (``pip install 'hoard-contexts[prometheus]'``).
        ValueError: the registry already has series of these names (a second system in the same
            registry: give each its own registry).

    Serve it with ``prometheus_client.start_http_server(port, addr=..., registry=registry)``, which
    returns ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.
    """
    try:
        import prometheus_client  # noqa: PLC0415 - an optional dependency
    except ImportError as exc:
        raise ImportError("register_prometheus needs prometheus-client: "
                          "pip install 'hoard-contexts[prometheus]'") from exc
    collector = _Collector(system_metrics_fn)
    (prometheus_client.REGISTRY if registry is None else registry).register(collector)
    return collector
