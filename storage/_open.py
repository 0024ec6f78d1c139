"""Opening a store from what users write: a file path, ``":memory:"``, or a ``postgresql://`` URL.

`make_store(target, ...)` builds the store; `open_store(target, ...)` builds and opens it (read-only
by default: the way tools inspect a store that a running program may be writing). The system
(`hoard.open_system`) and the command line both go through here, so a target means the same thing
everywhere.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote

from ._errors import ConfigError
from ._memory import MemoryStore
from ._postgres import PostgresStore
from ._sqlite import SQLiteStore
from ._store import Store

__all__ = ["PG_SCHEMES", "make_store", "open_store"]

#: the URL schemes that name a PostgreSQL store
PG_SCHEMES = ("postgresql://", "postgres://")
_PG_OPTIONS = ("schema", "lease_ttl")  # hoard's own query options; every other one is libpq's


def make_store(target: str | os.PathLike[str], *, readonly: bool = False, recovery: str = "strict",
               sync: str = "full", compression_level: int = 3, max_state_bytes: int = 64 * 2**20,
               require_lease: bool = False) -> Store:
    """The store `target` names, not yet opened.

    Args:
        target: a SQLite file path; ``":memory:"`` or ``""`` for a `MemoryStore`; or a
            ``postgresql://`` (or ``postgres://``) URL. Two query options of the URL are hoard's and
            are taken out before it reaches libpq: ``schema`` (the PostgreSQL schema holding the
            tables, default ``hoard``) and ``lease_ttl`` (seconds, default 10); every other one is
            libpq's. Anything else (``owner_id``, timeouts, ``notify``) needs ``PostgresStore(...)``.
        readonly: open without writing (no writer lock on SQLite; read-only sessions on PostgreSQL).
        recovery: "strict" or "fallback" (see `hoard.storage._recovery`).
        sync: SQLite only: "full" or "normal".
        compression_level: zstd level for snapshots and recovery points.
        max_state_bytes: the largest decoded state accepted when reading.
        require_lease: PostgreSQL only: refuse writes to contexts this store holds no lease on.

    Raises `ConfigError` for a target or option that cannot name a store. Runs in the caller's
    thread and does no I/O.
    """
    if isinstance(target, str) and target.startswith(PG_SCHEMES):
        dsn, options = _split_url(target)
        return PostgresStore(dsn, compression_level=compression_level, max_state_bytes=max_state_bytes,
                             require_lease=require_lease, recovery=recovery, readonly=readonly, **options)
    if not isinstance(target, (str, os.PathLike)):
        raise ConfigError(f"a store target is a path or a postgresql:// URL, not {type(target).__name__}")
    if os.fspath(target) in ("", ":memory:"):
        return MemoryStore()
    return SQLiteStore(target, sync=sync, compression_level=compression_level, max_state_bytes=max_state_bytes,
                       readonly=readonly, recovery=recovery)


def open_store(target: str | os.PathLike[str], *, readonly: bool = True, **options: Any) -> Store:
    """`make_store(target, readonly=readonly, **options)`, opened: ready to read (and, with
    ``readonly=False``, to write; a SQLite file another process writes to raises `StoreLockedError`).

    Read-only is the default: a tool inspecting a store never takes it from the program that owns it.
    Close the store when done. Runs in the caller's thread; blocks while connecting (PostgreSQL: up to
    its ``connect_timeout``). Raises `PersistenceError` if the store cannot be reached or does not
    exist (read-only), `CorruptStateError` if it is not a hoard store of this format.
    """
    store = make_store(target, readonly=readonly, **options)
    store.open()
    return store


def _split_url(url: str) -> tuple[str, dict[str, Any]]:
    """The libpq URL without hoard's query options, and those options (typed)."""
    base, _, query = url.partition("?")
    found: dict[str, str] = {}
    rest = []
    for piece in query.split("&") if query else []:
        key, _, value = piece.partition("=")
        if unquote(key) in _PG_OPTIONS:
            found[unquote(key)] = unquote(value)
        else:
            rest.append(piece)
    options: dict[str, Any] = {}
    if "schema" in found:
        options["schema"] = found["schema"]
    if "lease_ttl" in found:
        try:
            options["lease_ttl"] = float(found["lease_ttl"])
        except ValueError:
            raise ConfigError(f"lease_ttl in the store URL must be a number of seconds, not "
                              f"{found['lease_ttl']!r}") from None
    return base + ("?" + "&".join(rest) if rest else ""), options
