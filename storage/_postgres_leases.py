"""Ownership leases with fencing tokens for `PostgresStore` (single activation across processes).

Single activation (ownership leases with fencing tokens). One `leases` row per context that was
ever written or leased: ``(context_id, owner, token, expires_at)``. Expiry is judged by the database
clock (``now()``) only, so the hosts' clocks do not matter.

- ``acquire_lease(context_id, ttl=None) -> int`` takes the lease if it is free, released or expired
  (or held by an earlier incarnation with the same `owner_id`), and returns its fencing token, which
  grows by one on every acquisition; if this store holds it already, it is renewed and the same token
  returned. If another owner holds a live lease it raises `ContextOwnedElsewhereError` at once (with
  the owner and ``expires_in``): a store never waits, the caller decides whether to retry.
- ``renew_lease(context_id, token, ttl=None)`` extends it (`FencedOffError` if it was taken over);
  ``renew_leases(ttl=None) -> list[str]`` renews every lease this store holds in one statement and
  returns (and forgets) the ids it lost.
- ``release_lease(context_id, token) -> bool`` frees it at once for the next owner (the token stays
  in the row, so the next owner's token is still larger). `close()` releases every lease still held.
- Fencing: the store remembers the token of each lease it holds. Every `commit` first locks the lease
  rows of the contexts it touches and refuses the whole batch with `FencedOffError` when the token in
  the row is not the one held here (someone took over), or when this store holds no lease on a
  context another owner holds a live lease on (or on any context, with ``require_lease=True``). The
  row lock makes the check and the write one atomic step against a takeover: a takeover waits for a
  write in progress, and a write after a takeover is refused. A lease that expired but was not taken
  over fences nobody: its holder may still write (nobody else did meanwhile), and renewing it works.

One live process per owner id. Two live processes with the same `owner_id` would share every lease
(an acquisition by "an earlier incarnation of this owner" is a renewal to the other) and defeat
fencing. So a store that can write claims its owner id when it opens: a session-level advisory lock
on ``(schema, owner_id)``, held by one dedicated connection for the store's life. A second live
process with that id is refused at open with `OwnerIdInUseError` (after waiting up to two seconds:
the server ends a SIGKILLed process's session as soon as it reads the closed socket, so a restart
right after a kill gets the claim and takes its leases back at once). An earlier incarnation's lease
is taken back only while this store's claim holds, checked in the acquiring statement itself (the
claim's session must hold the lock): a zombie of the old incarnation whose session the server ended
(a partition longer than its keepalives, about ``lease_ttl``) cannot take the new incarnation's
leases; it tries to claim the id again, gets `OwnerIdInUseError`, and its writes are fenced off by
the new tokens. `close()` ends the claim after releasing the leases. The claim is checked at open
and whenever a lease is taken back under the id, not continuously: a process whose claim session
ended and that came back keeps its leases until someone takes them, and can take free ones, but in
any conflict the process holding the claim wins (its acquisitions raise the tokens and fence the
other's writes), so two processes never both write one context.

How the persistence actor is meant to use it (phase 2): on activation ``token =
store.acquire_lease(cid)``; on `ContextOwnedElsewhereError`, retry from a timer message (never a
sleep in the actor) until the activation timeout, using ``exc.expires_in`` as the next delay; renew
every held lease from a timer every ``lease_ttl / 3`` with ``renew_leases()``, and drop the contexts
it returns without writing; on `FencedOffError` from a commit, fail the waiting callers with it and
passivate that context without a snapshot; on deactivation, after the final snapshot,
``release_lease(cid, token)``. A lease is only as good as its renewal: an owner paused for longer than
its ttl (GC, SIGSTOP, a partition) has lost the context, and every write it attempts afterwards is
refused by the token, but it may still *serve reads* of its stale in-memory state until it learns so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._errors import (
    ConfigError,
    ContextOwnedElsewhereError,
    FencedOffError,
    HoardError,
    OwnerIdInUseError,
    PersistenceError,
)
from ._postgres_listen import CHANNEL
from ._values import validate_id

__all__ = ["LeaseHolder", "refusal"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the first key of the owner-id advisory locks ("hoar"); the second is hashtext(schema/owner_id)
OWNER_LOCK_SPACE = 0x686F6172
_CLAIM_WAIT = 2.0  # seconds an opening store waits for a dead predecessor's session to end


class LeaseHolder:
    """The lease half of `PostgresStore` (a mixin): acquiring, renewing and releasing leases, and the
    fence every write transaction checks. Uses the store's `_run`, `_sql` and identity."""

    owner_id: str
    schema: str
    location: str
    lease_ttl: float
    require_lease: bool
    _sql: dict[str, str]
    _leases: dict[str, int]  # context id -> fencing token this store holds
    dsn: str
    connection_class: Any
    connect_timeout: float
    _owner_conn: Any = None  # the session whose advisory lock is this store's claim to owner_id
    _owner_pid: int | None = None  # its server process id (the acquiring statement checks it)
    _claim_kwargs: dict[str, Any]  # the connection settings the claim was made with

    def _configure(self, conn: Any) -> None:
        raise NotImplementedError  # pragma: no cover - PostgresStore's

    # -- the claim to owner_id -----------------------------------------------------------------------
    def _claim_owner_id(self, kwargs: dict[str, Any], wait: float = _CLAIM_WAIT) -> None:
        """Take this store's claim to its owner id on a connection of its own (see the module
        docstring), waiting up to `wait` s for a dead predecessor's session to end. Runs in the
        opening (caller's) thread. Raises `OwnerIdInUseError` if another live session holds it,
        `PersistenceError` if the server cannot be asked."""
        import psycopg  # noqa: PLC0415 - present: PostgresStore checked the extra

        self._claim_kwargs = kwargs
        args = {"lock_space": OWNER_LOCK_SPACE, "lock_key": f"{self.schema}/{self.owner_id}"}
        deadline = time.monotonic() + min(wait, self.connect_timeout)
        pause = 0.02
        try:
            conn = self.connection_class.connect(
                self.dsn, **{**kwargs, "application_name": f"hoard owner {self.owner_id}"[:63]})
        except psycopg.Error as exc:
            raise PersistenceError(f"{self.location}: cannot claim owner id {self.owner_id!r}: {exc}") from exc
        try:
            self._configure(conn)  # the server ends this session within about lease_ttl of a partition
            while True:
                got, pid = conn.execute(self._sql["owner_lock"], args).fetchone()
                if got:
                    break
                if time.monotonic() >= deadline:
                    raise OwnerIdInUseError(self.owner_id, self.location)
                threading.Event().wait(pause)  # a predecessor's session may be ending: ask again
                pause = min(pause * 2, 0.2)
        except psycopg.Error as exc:
            conn.close()
            raise PersistenceError(f"{self.location}: cannot claim owner id {self.owner_id!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        old, self._owner_conn, self._owner_pid = self._owner_conn, conn, int(pid)
        if old is not None:
            old.close()

    def _reclaim_owner_id(self) -> None:
        """The acquiring statement found this store's claim gone (the server ended its session):
        claim the id again at once, or raise `OwnerIdInUseError` (a newer incarnation has it)."""
        if self._owner_conn is None:
            raise OwnerIdInUseError(self.owner_id, self.location)
        log.warning("%s: the claim to owner id %r was lost; claiming it again", self.location, self.owner_id)
        self._claim_owner_id(self._claim_kwargs, wait=0.0)

    def _release_owner_id(self) -> None:
        conn, self._owner_conn, self._owner_pid = self._owner_conn, None, None
        if conn is not None:
            try:
                conn.close()  # the session ends, and with it the claim
            except Exception as exc:  # noqa: BLE001 - closing anyway: the server ends the session
                log.warning("%s: closing the owner id claim: %r", self.location, exc)

    def _run(self, what: str, fn: Callable[[Any], T], context_id: str | None = None, *,
             idempotent: bool = True) -> T:
        raise NotImplementedError  # pragma: no cover - PostgresStore's

    def _fence_args(self, ids: list[str]) -> dict[str, Any]:
        """The parameters of the fence statement (`SQL["fence"]`) for a batch touching `ids` (sorted):
        the token this store holds for each (None where it holds none) and whether it needs one."""
        return {"ids": ids, "tokens": [self._leases.get(cid) for cid in ids], "strict": self.require_lease}

    def _fence(self, conn: Any, ids: list[str]) -> int:
        """Lock and check the lease rows of `ids` (inside the caller's transaction); return the
        transaction id. Raises `FencedOffError` (the transaction is then aborted: the caller rolls
        back) if this store may not write one of them."""
        import psycopg  # noqa: PLC0415 - present: PostgresStore checked the extra

        try:
            return int(conn.execute(self._sql["fence"], self._fence_args(ids)).fetchone()[0])
        except psycopg.errors.RaiseException as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            raise refused from exc

    # -- leases --------------------------------------------------------------------------------------
    def _ttl(self, ttl: float | None) -> float:
        ttl = self.lease_ttl if ttl is None else float(ttl)
        if not ttl > 0:
            raise ConfigError(f"a lease ttl must be positive, not {ttl!r}")
        return ttl

    def _lease_args(self, context_id: str, **extra: Any) -> dict[str, Any]:
        return {"id": context_id, "owner": self.owner_id, "ch": CHANNEL, "schema": self.schema,
                "lock_pid": self._owner_pid, "lock_space": OWNER_LOCK_SPACE,
                "lock_key": f"{self.schema}/{self.owner_id}", **extra}

    def acquire_lease(self, context_id: str, ttl: float | None = None) -> int:
        """Take (or renew) ownership of `context_id` for `ttl` seconds (default `lease_ttl`) and
        return the fencing token; from now on this store's writes to it carry that token.

        Runs in the caller's thread, one autocommit statement (two when owned elsewhere); never waits
        for the owner. The lease is taken when it is free, released, expired by the database clock, or
        held by an earlier incarnation of this `owner_id`; each such acquisition increments the token,
        so it is strictly increasing per context. If this store holds the lease already it is renewed
        and the same token returned.

        Raises:
            ContextOwnedElsewhereError: another owner holds a live lease (`owner`, `expires_in`).
            OwnerIdInUseError: the lease is held under this owner id, but this store's claim to the
                id has ended and another live process (a newer incarnation) holds it now.
            PersistenceError: the server could not be asked.
        """
        validate_id(context_id)
        ttl = self._ttl(ttl)
        mine = self._leases.get(context_id)
        if mine is not None:
            renewed = self._run("renew lease", lambda c: c.execute(
                self._sql["renew"], self._lease_args(context_id, token=mine, ttl=ttl)).fetchone(), context_id)
            if renewed is not None:
                return mine
            del self._leases[context_id]  # taken over meanwhile: try to take it back like anyone else
        for _ in range(3):
            row = self._run("acquire lease", lambda c: c.execute(
                self._sql["acquire"], self._lease_args(context_id, ttl=ttl)).fetchone(), context_id,
                idempotent=False)
            if row is not None:
                self._leases[context_id] = token = int(row[0])
                log.debug("%s: lease on %r acquired, token %d", self.location, context_id, token)
                return token
            holder = self._run("read lease", lambda c: c.execute(
                self._sql["holder"], {"id": context_id}).fetchone(), context_id)
            if holder is not None and holder[2]:
                if holder[0] == self.owner_id:  # held under this id, yet not taken back: the claim is gone
                    self._reclaim_owner_id()
                    continue
                raise ContextOwnedElsewhereError(context_id, holder[0], expires_in=max(0.0, float(holder[3])))
            # released or expired between the two statements: try again
        raise ContextOwnedElsewhereError(context_id, "another owner (the lease changed hands repeatedly)")

    def renew_lease(self, context_id: str, token: int, ttl: float | None = None) -> None:
        """Extend the lease with `token` on `context_id` to `ttl` seconds from now (database clock).

        Runs in the caller's thread; one statement. A lease that expired but was not taken over is
        renewed too (nobody wrote meanwhile).

        Raises:
            FencedOffError: another owner took it over; this store forgets the token.
            PersistenceError: the server could not be asked.
        """
        ttl = self._ttl(ttl)
        row = self._run("renew lease", lambda c: c.execute(
            self._sql["renew"], self._lease_args(context_id, token=token, ttl=ttl)).fetchone(), context_id)
        if row is not None:
            self._leases[context_id] = token
            return
        if self._leases.get(context_id) == token:
            del self._leases[context_id]
        holder = self._run("read lease", lambda c: c.execute(
            self._sql["holder"], {"id": context_id}).fetchone(), context_id)
        raise FencedOffError(context_id, token=token, current_token=None if holder is None else int(holder[1]),
                             owner=None if holder is None else holder[0])

    def renew_leases(self, ttl: float | None = None) -> list[str]:
        """Renew every lease this store holds, in one statement; return (sorted) the ids of those that
        were taken over meanwhile, which this store forgets: drop those contexts without writing. A
        lease whose row another session holds locked is skipped, never waited for (still held: the
        next renewal renews it).

        Runs in the caller's thread (meant for a periodic timer, every ``lease_ttl / 3``).
        Raises `PersistenceError` if the server could not be asked (the leases then keep running
        until their expiry).
        """
        ttl = self._ttl(ttl)
        if not self._leases:
            return []
        held = dict(self._leases)
        rows = self._run("renew leases", lambda c: c.execute(self._sql["renew_all"], {
            "ttl": ttl, "owner": self.owner_id, "ids": list(held), "tokens": list(held.values())}).fetchall())
        lost = sorted(r[0] for r in rows)
        for cid in lost:
            if self._leases.get(cid) == held[cid]:
                del self._leases[cid]
        if lost:
            log.warning("%s: leases taken over by other owners: %s", self.location, lost)
        return lost

    def release_lease(self, context_id: str, token: int) -> bool:
        """Give up the lease with `token` on `context_id` now, so that another owner can take it at
        once. Returns False if it had been taken over already (nothing to release).

        Runs in the caller's thread; one statement. Call it after the context's last write (its
        final snapshot): a write after it is no longer fenced by this lease.
        """
        if self._leases.get(context_id) == token:
            del self._leases[context_id]
        return self._release(context_id, token)

    def _release(self, context_id: str, token: int) -> bool:
        def run(conn: Any) -> bool:
            return conn.execute(self._sql["release"], self._lease_args(context_id, token=token)).fetchone() is not None
        return self._run("release lease", run, context_id, idempotent=False)

    def lease_holder(self, context_id: str) -> tuple[str, int, float] | None:
        """Who holds a live lease on `context_id`: ``(owner, token, expires_in)`` (seconds left by the
        database clock), or None if nobody does (never leased, released, or expired). One read
        statement in the caller's thread; changes nothing."""
        validate_id(context_id)
        row = self._run("read lease", lambda c: c.execute(
            self._sql["holder"], {"id": context_id}).fetchone(), context_id)
        if row is None or not row[2]:
            return None
        return str(row[0]), int(row[1]), max(0.0, float(row[3]))

    def lease_token(self, context_id: str) -> int | None:
        """The fencing token this store holds for `context_id`, or None. No I/O."""
        return self._leases.get(context_id)


def refusal(exc: Exception) -> HoardError | None:
    """Our error for a check the server refused (`SQL["fence"]`, `SQL["append"]`: ``hoard_refuse``),
    or None if `exc` is not one: `FencedOffError` for the fence, `PersistenceError` for a journal
    entry that does not follow the stored version."""
    diag = getattr(exc, "diag", None)
    what = getattr(diag, "message_primary", None) or ""
    if what not in ("hoard: fenced", "hoard: version"):
        return None
    detail = json.loads(diag.message_detail)  # type: ignore[union-attr]
    cid = str(detail["id"])
    if what == "hoard: fenced":
        mine, token, owner = detail["mine"], int(detail["token"]), str(detail["owner"])
        if mine is not None:
            return FencedOffError(cid, token=int(mine), current_token=token, owner=owner)
        return FencedOffError(cid, token=None, current_token=token, owner=owner or None)
    if detail["stored"] is None:
        return PersistenceError(f"journal entry for {cid!r}, which is not in the store", context_id=cid)
    return PersistenceError(f"journal entry {detail['v']} for {cid!r} does not follow stored version "
                            f"{detail['stored']}", context_id=cid)
