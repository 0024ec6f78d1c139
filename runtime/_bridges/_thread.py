"""What a relay and a command applier share: one worker thread, a stop flag, and the system whose
`stop()` stops them first (`attach_bridge` / `detach_bridge`)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from hoard.storage import HoardError


class BridgeThread:
    """Base of `Relay` and `CommandApplier`: their thread's lifecycle. Subclasses set `_stop`,
    `_thread` and `_system`, and implement `stop` (which calls `_halt`)."""

    _stop: threading.Event
    _thread: threading.Thread | None
    _system: Any

    def stop(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _halt(self, join_timeout: float) -> None:
        """Set the stop flag, wait up to `join_timeout` for the thread (never for itself), and leave
        the system's list of bridges. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)
        with contextlib.suppress(HoardError):
            self._system.detach_bridge(self)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the bridge's thread is alive."""
        return self._thread is not None and self._thread.is_alive()
