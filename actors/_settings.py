"""Settings the actors run with. `runtime` builds them from the user-facing config classes (which
validate every field); the actors only read them."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

__all__ = ["DURABILITIES", "ContextSettings", "PersistenceSettings", "SupervisorSettings"]

DURABILITIES = ("immediate", "deferred", "none")


@attrs.frozen
class ContextSettings:
    durability: str = "immediate"
    max_value_bytes: int = 2**20
    max_state_bytes: int = 64 * 2**20
    clock: Callable[[], float] = time.time
    request_window: int = 1000  # request ids remembered per context (at least this many newest)
    request_ttl: float | None = None  # seconds a request id is remembered at most (None: by count only)
    flush_interval: float = 0.05  # deferred mode: how often a change is marked to wait for (backlog bound)


@attrs.frozen
class PersistenceSettings:
    durability: str = "immediate"
    snapshot_every: int = 1000
    flush_interval: float = 0.05
    max_recovery_points: int = 10
    clock: Callable[[], float] = time.time


@attrs.frozen
class SupervisorSettings:
    default_context_id: str = "default"
    max_active_contexts: int = 1024
    auto_create_contexts: bool = True
    auto_activate_default: bool = True
    capacity_policy: str = "evict_lru"
    idle_timeout: float | None = None
    call_timeout: float = 5.0
    max_contexts: int | None = None
    ttl: float | None = None  # default time to live of inactive contexts (seconds since their last change)
    max_restarts: int = 3
    restart_window: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
