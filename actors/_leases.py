"""Ownership leases of a shared store (PostgreSQL), as the persistence actor keeps them.

A store that offers leases (``acquire_lease``, ``renew_leases``, ``release_lease``, ``lease_token``:
`hoard.storage.PostgresStore`) lets one process at a time own a context. The persistence actor, sole user
of the store, holds a `LeaseKeeper` that follows these rules (stores without leases make every
method a no-op):

* **Activation** (`Load`): the lease is acquired before the context is read. If another owner holds a
  live one, `ContextOwnedElsewhereError` goes back to the asking supervisor at once: the persistence
  actor never waits for an owner; the caller's thread retries (`runtime`'s activation path).
* **Renewal**: while any lease is held, a timer tells the persistence actor `RenewLeases` every
  ``lease_ttl / 3``; the actor renews them all in one statement. The timer only *tells* a message,
  so the renewal is ordered with the commits like any other request, and no lease state is shared
  between threads.
* **Loss**: a lease found taken over (at renewal, or a commit refused with `FencedOffError`) makes
  the context *lost* here: its pending and later commits fail with `FencedOffError`, and the
  supervisor is told `LeasesLost`, on which it stops the context actor **without** a snapshot (there
  is nothing it may write any more). A later activation acquires a new lease and reloads the state.
* **Release**: after the final snapshot of a passivation, after deleting a context, after a write to
  a context that was not active (a lease taken just for that write), and at close (the store releases
  whatever is still held).

Threading: everything here runs in the persistence actor's thread, except the renewal timer's
callback, which only tells a message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

import attrs
import pykka

from hoard.storage import ContextOwnedElsewhereError, FencedOffError, PersistenceError

__all__ = ["AttachSupervisor", "LeaseKeeper", "LeasesLost", "RenewLeases"]

log = logging.getLogger(__name__)


@attrs.frozen
class RenewLeases:
    """From the renewal timer to the persistence actor: renew every lease held now."""


@attrs.frozen
class LeasesLost:
    """From the persistence actor to the supervisor: these contexts were taken over by another owner;
    stop their actors without a snapshot (unless re-activated under a new lease since)."""

    context_ids: tuple[str, ...]


@attrs.frozen
class AttachSupervisor:
    """From the system, once, to the persistence actor: where `LeasesLost` goes."""

    supervisor: Any  # pykka.ActorRef


class LeaseKeeper:
    """The persistence actor's leases. See the module docstring.

    Attributes:
        enabled: the store has leases (else every method does nothing).
        ttl: the store's lease ttl, seconds.
        lost: context id -> the `FencedOffError` its writes get until it is activated again here.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.enabled = callable(getattr(store, "acquire_lease", None))
        self.ttl = float(getattr(store, "lease_ttl", 10.0))
        self.lost: dict[str, FencedOffError] = {}
        self.supervisor: pykka.ActorRef[Any] | None = None
        self._held: set[str] = set()
        self._timer: threading.Timer | None = None

    # -- acquire and release ---------------------------------------------------------------------------
    def acquire(self, context_id: str, actor_ref: pykka.ActorRef[Any]) -> bool:
        """Take the lease of `context_id` (renew it if held). Returns whether it was held already.

        Raises `ContextOwnedElsewhereError` at once if another owner holds it, `PersistenceError` if
        the server cannot be asked. Arms the renewal timer.
        """
        if not self.enabled:
            return True
        had = self.store.lease_token(context_id) is not None
        self.store.acquire_lease(context_id)
        self.lost.pop(context_id, None)
        self._held.add(context_id)
        self._arm(actor_ref)
        return had

    def acquire_for_write(self, context_ids: Iterable[str], actor_ref: pykka.ActorRef[Any]) -> list[str]:
        """Leases for a write to contexts that may not be active here: acquire those not held, and
        return them (release them after the write). All or none: on `ContextOwnedElsewhereError` the
        ones taken so far are released again."""
        taken: list[str] = []
        if not self.enabled:
            return taken
        try:
            for cid in sorted(set(context_ids)):
                if not self.acquire(cid, actor_ref):
                    taken.append(cid)
        except (ContextOwnedElsewhereError, PersistenceError):
            self.release(taken)
            raise
        return taken

    def release(self, context_ids: Iterable[str]) -> None:
        """Give up these leases now (best effort: a failure is logged; the lease then expires)."""
        if not self.enabled:
            return
        for cid in context_ids:
            self._held.discard(cid)
            self.lost.pop(cid, None)
            token = self.store.lease_token(cid)
            if token is None:
                continue
            try:
                self.store.release_lease(cid, token)
            except PersistenceError as exc:
                log.warning("could not release the lease on %r (it expires by itself): %s", cid, exc)

    # -- loss ------------------------------------------------------------------------------------------
    def check(self, context_id: str) -> FencedOffError | None:
        """The error a write to `context_id` gets now, or None if it may be written."""
        return self.lost.get(context_id) if self.enabled else None

    def fenced(self, exc: FencedOffError) -> str | None:
        """A commit was refused with `exc`: the context it names is lost here. Returns its id."""
        cid = exc.context_id
        if cid is None:
            return None
        token = self.store.lease_token(cid)
        if token is not None:  # the store keeps a stale token after a refused commit: forget it
            try:
                self.store.release_lease(cid, token)  # matches no row once taken over: only forgets
            except PersistenceError as release_error:
                log.debug("forgetting the stale lease on %r: %s", cid, release_error)
        self._lose(cid, exc)
        return cid

    def renew(self) -> list[str]:
        """Renew every held lease (one statement); return the ids found taken over, now lost here.
        A server that cannot be asked is logged: the leases keep running until their expiry."""
        self._timer = None
        if not self.enabled or not self._held:
            return []
        tokens = {cid: self.store.lease_token(cid) for cid in self._held}
        try:
            lost: list[str] = list(self.store.renew_leases())
        except PersistenceError as exc:
            log.warning("renewing %d leases failed (retried in %.3g s): %s", len(tokens), self.ttl / 3, exc)
            return []
        for cid in lost:
            self._lose(cid, FencedOffError(cid, token=tokens.get(cid), current_token=None, owner=None))
        self._held = {cid for cid in self._held if self.store.lease_token(cid) is not None}
        return lost

    def _lose(self, cid: str, exc: FencedOffError) -> None:
        self._held.discard(cid)
        self.lost[cid] = exc
        log.warning("context %r: lease lost to another owner; it is dropped here without writing", cid)

    def tell_lost(self, context_ids: list[str]) -> None:
        """Have the supervisor stop these contexts' actors without a snapshot."""
        if context_ids and self.supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):  # the system is stopping
                self.supervisor.tell(LeasesLost(tuple(context_ids)))

    # -- the renewal timer -------------------------------------------------------------------------------
    def rearm(self, actor_ref: pykka.ActorRef[Any]) -> None:
        """After a renewal: arm the timer again while leases are held."""
        self._arm(actor_ref)

    def _arm(self, actor_ref: pykka.ActorRef[Any]) -> None:
        if self._timer is not None or not self._held:
            return

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):  # stopped meanwhile
                actor_ref.tell(RenewLeases())

        timer = threading.Timer(self.ttl / 3, fire)
        timer.name = "hoard-lease-renewal"
        timer.daemon = True
        self._timer = timer
        timer.start()

    def cancel(self) -> None:
        """Stop the renewal timer (at close and when the actor stops): no thread is left behind."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join(1.0)
