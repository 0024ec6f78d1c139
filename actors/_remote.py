"""Cross-process events: `RemoteChange`, and the `RemoteListener` thread that publishes them.

With a shared store (PostgreSQL), every commit sends a notice (``NOTIFY hoard_changes``, inside its
transaction, so only once it has committed), and so does every lease taken or released. A system on
such a store runs one `RemoteListener`: a thread named ``hoard-listener`` that holds a connection of
its own (`PostgresStore.listen()`), waits for notices, and publishes each notice sent by *another*
owner (another process or host; this system's own commits already produce their local events) as a
`RemoteChange` on the local event bus. Subscribers get them like any other event, asynchronously,
in the order the database committed them.

Decisions:

* The listener runs for the whole life of the system, from `open_system` to `stop()` (which joins
  it), whether or not anybody subscribes: notices committed after `open_system` returns are never
  missed for want of a connection, and with nobody subscribed a notice costs one attribute read.
* Notices are hints, **at most once**: one sent while the listener's connection is down is lost (the
  listener logs the loss and reconnects with a backoff). A subscriber that must not miss a change
  re-reads the context (``manager.get_state(id)``, or activating it) after a `RemoteChange`, and
  compares versions.
* `RemoteChange.at` is when this process received the notice (the system's clock), not when the
  other process committed.

Threading: the listener's thread is the only user of its connection; `stop()` is called once, from
the thread stopping the system, and returns within about `poll` seconds.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import attrs

from hoard.storage import PersistenceError

from ._events import ContextEvent, Emitter

__all__ = ["RemoteChange", "RemoteListener"]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class RemoteChange(ContextEvent):
    """Another process committed something to a context of the shared store (PostgreSQL).

    Attributes:
        context_id: the context.
        at: when this process received the notice (seconds since the epoch, the system's clock).
        version: the context's stored version right after that commit; None for a deletion or a lease.
        owner: the `owner_id` of the committing store (``"<host>:<pid>:<random>"`` by default).
        ops: what happened, in the store's words: ``"create"``, ``"append"``, ``"snapshot"``,
            ``"recovery_point"``, ``"delete_recovery_point"``, ``"delete"``, ``"lease_acquired"``,
            ``"lease_released"``.
    """

    version: int | None
    owner: str | None
    ops: tuple[str, ...]


class RemoteListener:
    """Publishes other processes' notices as `RemoteChange` events. See the module docstring.

    Args:
        store: an open store with ``listen()`` and ``owner_id`` (`hoard.storage.PostgresStore`).
        events: the system's emitter (its gate and bus).
        poll: the longest wait for notices before checking for `stop()`, in seconds.
    """

    def __init__(self, store: Any, events: Emitter, *, poll: float = 0.25) -> None:
        self._listener = store.listen(others_only=True)  # it drops this store's own notices
        self._own = store.owner_id
        self._events = events
        self._poll = poll
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hoard-listener", daemon=True)

    @classmethod
    def start_for(cls, store: Any, events: Emitter) -> RemoteListener | None:
        """Start a listener if `store` can notify (else None). Connects and LISTENs before returning
        (in the caller's thread), so every notice committed afterwards is received; if that fails it
        is logged and the thread keeps trying."""
        if not callable(getattr(store, "listen", None)) or not getattr(store, "notify", False):
            return None
        listener = cls(store, events)
        try:
            listener._listener.open()
        except PersistenceError as exc:
            log.warning("cannot listen for other processes' changes yet (retrying): %s", exc)
        listener._thread.start()
        return listener

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (within about `poll` seconds) and close its connection. Idempotent."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the hoard-listener thread did not end within %s s", timeout)
            return  # it still uses the connection; it closes when the process ends
        self._listener.close()

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                notices = self._listener.wait(self._poll)
            except PersistenceError as exc:
                log.warning("listening for other processes' changes: %s; reconnecting in %.2g s", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:  # the thread must outlive a bug here; it is logged
                log.exception("the hoard-listener failed; retrying in %.2g s", backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for n in notices:
                if n.owner != self._own:
                    self._events(RemoteChange, n.context_id, version=n.version, owner=n.owner, ops=n.ops)
