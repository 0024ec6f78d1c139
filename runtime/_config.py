"""User-facing configuration: `ContextManagerConfig` (storage, durability, limits) and
`ContextAdapterConfig` (activation, capacity, the default context). Both are frozen; every field is
checked when the object is built and a bad one raises `ConfigError` naming it."""

from __future__ import annotations

import datetime
import math
import os
import time
from collections.abc import Callable
from typing import Any

import attrs

from hoard.storage import MAX_SECONDS, ConfigError, HistoryPolicy, Store, validate_id
from hoard.storage import InvalidContextIdError as _BadId

__all__ = ["ContextAdapterConfig", "ContextManagerConfig"]


def _choice(*options: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value not in options:
            raise ConfigError(f"{attr.name} must be one of {', '.join(map(repr, options))}, not {value!r}")
    return check


def _number(minimum: float, *, integer: bool = False, optional: bool = False,
            maximum: float | None = None) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{attr.name} must be {'an int' if integer else 'a number'}"
                              f"{' or None' if optional else ''}, not {value!r}")
        nan = isinstance(value, float) and math.isnan(value)
        if nan or value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{attr.name} must be {bound}, not {value!r}")
    return check


def _store(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, (str, os.PathLike, Store)):
        return
    raise ConfigError(f"{attr.name} must be a path, a Store or None, not {type(value).__name__}")


def _bool(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attr.name} must be True or False, not {value!r}")


def _history(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        HistoryPolicy.parse(value)  # ConfigError naming what it takes


def _callable(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ConfigError(f"{attr.name} must be callable, not {value!r}")


def _nats_url(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, str) and value.startswith(("nats://", "tls://"))):
        raise ConfigError(f"{attr.name} must be a nats:// (or tls://) URL or None, not {value!r}")


def _context_id(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    try:
        validate_id(value)
    except _BadId as exc:
        raise ConfigError(f"{attr.name}: {exc}") from None


@attrs.frozen(kw_only=True)
class ContextManagerConfig:
    """Where and how contexts are kept.

    Attributes:
        store: a path (SQLite file), a `Store`, or None (memory). `open_system`'s first argument
            overrides it.
        durability: when a write call returns.
            ``"immediate"`` (default): after the change is committed and synced; a crash (even
            ``kill -9``) loses no acknowledged change. Concurrent writers share syncs (group commit).
            ``"deferred"``: at once; the change is committed within `flush_interval`. **A crash loses
            the changes of the last `flush_interval`, plus the commit under way, plus however long the
            machine delays the persistence thread** (measured with kill -9 on a loaded 2-core VM at
            flush_interval=50 ms: at most 90-290 ms of changes). Writers are held back when the store
            falls behind: once per `flush_interval` a context waits (up to 2 s) for its change of two
            intervals before to be committed, so writers that outrun the store cannot stretch that
            window (a store that keeps up never makes them wait). A commit that fails (disk full,
            I/O error) also takes back changes that were already acknowledged.
            ``"none"``: at once; changes stay in memory and reach the store only as a snapshot when
            the context is passivated or the system stops. A crash loses every change since.
        sync: SQLite ``synchronous``: ``"full"`` (default) survives power loss; ``"normal"`` survives
            process crashes, may lose the newest commits on power loss, and is about 3x faster.
        recovery: what loading does with damaged data: ``"strict"`` raises `CorruptStateError`.
        max_contexts: most contexts the store may hold (None: no limit); create beyond raises
            `CapacityError`.
        max_recovery_points: kept per context; the oldest goes first (at most 2**31 - 1).
        snapshot_every: a snapshot is written after this many journaled changes of a context.
        flush_interval: seconds; the commit delay of ``durability="deferred"``.
        compression_level: zstd level of snapshots and recovery points (3: best trade-off measured).
        call_timeout: seconds a blocking call waits by default before `ContextTimeoutError`.
        max_value_bytes: largest value (JSON-encoded) one key may hold.
        max_state_bytes: largest context (JSON-encoded data + metadata); also the decompression bound.
        clock: returns seconds since the epoch (timestamps); injectable for tests. A time that is not a
            finite number in years 1 to 9999 refuses the change it was read for (`ConfigError`).
        monotonic: returns monotonic seconds (restart windows, idle time); injectable for tests.
        forward_via: a NATS URL (``"nats://127.0.0.1:4222"``; needs the ``nats`` extra). On a shared
            PostgreSQL store, a call on a context active in another process is then forwarded to that
            process and answered there (see `hoard._forward`), instead of waiting for its lease.
            None (default): no forwarding. `ConfigError` with a store that is not PostgreSQL.
        subscriber_backlog: most events that may wait for one subscriber (a slow or blocked one);
            beyond it `subscriber_overflow` applies. Bounds the memory a subscriber can hold.
        subscriber_overflow: ``"drop_subscriber"`` (default): its subscription is ended, its queued
            events discarded, and a `SubscriberOverflow` event and an error log line say so;
            ``"drop_events"``: events are skipped for it while it is that far behind.
        request_window: how many ``request_id=`` idempotency keys each context remembers (at least
            its newest this many; stored with its changes, so across restarts and processes).
        request_ttl: seconds an idempotency key is remembered at most (None, default: by count only).
            A retry with a forgotten key is applied again.
        history: how much journal the store keeps (see `ContextManager.history`): ``"recovery"``
            (what recovery needs: back to the older of the two newest snapshots), an int N (at least
            the newest N versions), a `datetime.timedelta` (every version of that long ago and
            since), or ``"all"``. Recorded in the store when the system opens it, so compaction, every
            later opener and ``hoard compact`` follow it. None (default): keep what the store
            recorded (``"recovery"`` for a store that recorded nothing).
        feed: record every committed change in the store's change feed (default True; see
            `ContextSystem.changes`). Every process writing to one PostgreSQL schema must agree.
        feed_retention: the most feed entries kept back from the newest (default 1,000,000):
            entries are kept until every registered consumer passed them, but never beyond this; a
            consumer behind it gets `FeedTruncatedError`. Applies to stores opened from a path or URL.
    """

    store: str | os.PathLike[str] | Store | None = attrs.field(default=None, validator=_store)
    durability: str = attrs.field(default="immediate", validator=_choice("immediate", "deferred", "none"))
    sync: str = attrs.field(default="full", validator=_choice("full", "normal"))
    recovery: str = attrs.field(default="strict", validator=_choice("strict", "fallback"))
    max_contexts: int | None = attrs.field(default=None, validator=_number(1, integer=True, optional=True))
    max_recovery_points: int = attrs.field(default=10, validator=_number(1, integer=True, maximum=2**31 - 1))
    snapshot_every: int = attrs.field(default=1000, validator=_number(1, integer=True))
    flush_interval: float = attrs.field(default=0.05, validator=_number(0.001, maximum=3600))
    compression_level: int = attrs.field(default=3, validator=_number(1, integer=True, maximum=22))
    call_timeout: float = attrs.field(default=5.0, validator=_number(0.001, maximum=MAX_SECONDS))
    max_value_bytes: int = attrs.field(default=2**20, validator=_number(16, integer=True))
    max_state_bytes: int = attrs.field(default=64 * 2**20, validator=_number(64, integer=True))
    clock: Callable[[], float] = attrs.field(default=time.time, validator=_callable, repr=False)
    monotonic: Callable[[], float] = attrs.field(default=time.monotonic, validator=_callable, repr=False)
    subscriber_backlog: int = attrs.field(default=10_000, validator=_number(1, integer=True))
    subscriber_overflow: str = attrs.field(default="drop_subscriber",
                                           validator=_choice("drop_subscriber", "drop_events"))
    request_window: int = attrs.field(default=1000, validator=_number(1, integer=True))
    request_ttl: float | None = attrs.field(default=None, validator=_number(0.001, optional=True, maximum=MAX_SECONDS))
    forward_via: str | None = attrs.field(default=None, validator=_nats_url)
    history: str | int | datetime.timedelta | None = attrs.field(default=None, validator=_history)
    feed: bool = attrs.field(default=True, validator=_bool)
    feed_retention: int = attrs.field(default=1_000_000, validator=_number(1, integer=True))


@attrs.frozen(kw_only=True)
class ContextAdapterConfig:
    """Which contexts are active and current.

    Attributes:
        default_context_id: the context current falls back to (activated at start when
            `auto_activate_default`).
        max_active_contexts: most context actors alive at once.
        auto_create_contexts: `activate`/`switch` create a missing context (else `ContextNotFoundError`).
        auto_activate_default: activate (creating if needed) the default context at start.
        capacity_policy: at `max_active_contexts`, ``"evict_lru"`` passivates the least recently used
            context (never the current, the default or a pinned one); ``"reject"`` raises `CapacityError`.
        max_restarts: a context actor that crashes (a bug, not bad input) is restarted from its durable
            state at most this many times within `restart_window`; past that it is FAILED and calls
            raise `ContextFailedError` until ``adapter.reset(id)``.
        restart_window: seconds (see `max_restarts`).
        maintenance_interval: seconds between maintenance sweeps (idle passivation, TTL expiry).
            None (default): a quarter of the smaller of `idle_timeout` and `ttl` (at least 50 ms, at
            most 30 s); 30 s when only per-context TTLs are used.
        ttl: default time to live, in seconds since a context's last change: an *inactive* context older
            than that is deleted (with a ``ContextDeleted(reason="expired")`` event) by the maintenance
            sweep. A context's own TTL (``manager.set_ttl``) overrides it. None (default): never.
        idle_timeout: seconds after which an unused context (no call through any tracker) is
            passivated, by a background sweep every ``idle_timeout / 4`` (at least 50 ms), so within
            ``idle_timeout * 1.25`` or so. Never the current, the default or a pinned context.
            None (default): off.
    """

    default_context_id: str = attrs.field(default="default", validator=_context_id)
    max_active_contexts: int = attrs.field(default=1024, validator=_number(1, integer=True))
    auto_create_contexts: bool = attrs.field(default=True, validator=_bool)
    auto_activate_default: bool = attrs.field(default=True, validator=_bool)
    capacity_policy: str = attrs.field(default="evict_lru", validator=_choice("evict_lru", "reject"))
    max_restarts: int = attrs.field(default=3, validator=_number(0, integer=True))
    restart_window: float = attrs.field(default=5.0, validator=_number(0.001, maximum=MAX_SECONDS))
    idle_timeout: float | None = attrs.field(default=None, validator=_number(0.001, optional=True, maximum=MAX_SECONDS))
    ttl: float | None = attrs.field(default=None, validator=_number(0.001, optional=True, maximum=MAX_SECONDS))
    maintenance_interval: float | None = attrs.field(default=None,
                                                     validator=_number(0.01, optional=True, maximum=MAX_SECONDS))
