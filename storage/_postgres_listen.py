"""Cross-process change notices of the PostgreSQL store: `ChangeNotice` and `ChangeListener`.

Each commit of a `PostgresStore` sends, inside its transaction (so only if it commits), one
``NOTIFY hoard_changes`` per context touched, with a small JSON payload (schema, context id, version
after the commit, the kinds of operation, the committing owner); leases send ``lease_acquired`` and
``lease_released``. A `ChangeListener` receives them on a connection of its own. Notices are hints:
those sent while a listener is disconnected are lost, and subscribers read the store for the facts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ._errors import ConfigError, PersistenceError
from ._lazy import LazyModule, installed
from ._postgres_sql import LISTENING

if TYPE_CHECKING:
    import psycopg
else:  # the "postgres" extra, imported by the first listener (see `_lazy`)
    psycopg = LazyModule("psycopg")

__all__ = ["CHANNEL", "ChangeListener", "ChangeNotice"]

log = logging.getLogger(__name__)

#: the NOTIFY channel of every hoard store (notices carry their schema; listeners filter on it)
CHANNEL = "hoard_changes"


@attrs.frozen
class ChangeNotice:
    """One cross-process notice, as received by a `ChangeListener`.

    Attributes:
        schema: the store schema it comes from.
        context_id: the context concerned.
        version: its stored version right after the commit (None when it was deleted, or for a lease).
        ops: what happened: "create", "append", "snapshot", "recovery_point", "delete_recovery_point",
            "delete", "lease_acquired", "lease_released".
        owner: the `owner_id` of the store that committed it.
        sender_pid: the server process id of the committing connection.
    """

    schema: str
    context_id: str
    version: int | None
    ops: tuple[str, ...]
    owner: str | None
    sender_pid: int



class ChangeListener:
    """Receives the notices (``NOTIFY hoard_changes``) of one store schema, from every process.

    Has a connection of its own, opened on first use; a lost connection raises `PersistenceError`
    once (notices sent while disconnected are lost: re-read what you need) and is reopened on the
    next call. Notices are hints for subscribers, who read the store for the facts.

    Writers notify only while someone else listens (see `_postgres_sql.LISTENING`): after its LISTEN,
    a listener announces itself with a shared advisory lock on its schema, held by its session, unless
    `announce` is False (the listener of a writing store's own process: the store's session announces
    it, so that its own commits do not wake it; it still receives every other store's). A raw
    ``LISTEN hoard_changes`` session must take the same lock to be sent notices.

    Threading: one thread at a time (any thread, also not the store's owner); `wait` blocks up to its
    timeout, never longer. A context manager; `close()` is idempotent.
    """

    def __init__(self, dsn: str, schema: str, *, connect_timeout: float = 5.0, announce: bool = True) -> None:
        if not installed("psycopg"):  # pragma: no cover - exercised only without the extra
            raise ConfigError("ChangeListener needs psycopg 3: pip install 'hoard-contexts[postgres]'")
        self.dsn = dsn
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.announce = announce
        self._conn: Any = None

    def __enter__(self) -> ChangeListener:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect and LISTEN now (otherwise the first `wait` does), then announce it (waits for the
        commits under way that saw no listener). Notices committed after this returns are received.
        Raises `PersistenceError` if the server cannot be reached."""
        if self._conn is not None:
            return
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(2, round(self.connect_timeout)))
        except psycopg.Error as exc:
            raise PersistenceError(f"cannot connect to listen for {CHANNEL}: {exc}") from exc
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            if self.announce:
                conn.execute(LISTENING, {"schema": self.schema})
        except psycopg.Error as exc:
            conn.close()
            raise PersistenceError(f"cannot LISTEN {CHANNEL}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def wait(self, timeout: float) -> list[ChangeNotice]:
        """Block until at least one notice of this schema arrives or `timeout` seconds pass; return
        every notice received by then, in commit order (empty on timeout)."""
        self.open()
        conn = self._conn
        deadline = time.monotonic() + max(0.0, timeout)
        found: list[ChangeNotice] = []
        try:
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                for n in conn.notifies(timeout=remaining, stop_after=1):
                    found.extend(self._parse(n.payload, n.pid))
                if found:  # take whatever else has arrived, without waiting
                    for n in conn.notifies(timeout=0):
                        found.extend(self._parse(n.payload, n.pid))
                    return found
                if remaining <= 0:
                    return found
        except psycopg.Error as exc:
            self.close()
            raise PersistenceError(f"listening for {CHANNEL} failed, connection lost ({exc}); notices sent "
                                   "meanwhile are lost: re-read what you need") from exc

    def dispatch(self, callback: Callable[[ChangeNotice], object], timeout: float) -> int:
        """`wait` up to `timeout`, then call `callback` with each notice in order; return how many.
        A callback that raises stops the dispatch (the rest of the batch is dropped)."""
        notices = self.wait(timeout)
        for notice in notices:
            callback(notice)
        return len(notices)

    def _parse(self, payload: str, pid: int) -> Iterable[ChangeNotice]:
        try:
            obj = orjson.loads(payload)
            if obj.get("schema") != self.schema:
                return ()
            return (ChangeNotice(self.schema, str(obj["id"]), obj.get("v"), tuple(obj.get("ops") or ()),
                                 obj.get("owner"), int(pid)),)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            log.debug("ignoring a foreign notice on %s: %r (%s)", CHANNEL, payload[:80], exc)
            return ()
