"""`run_forever`: the main loop of a daemon that hosts a hoard system."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

from hoard.storage import HoardError

from ._system import ContextSystem

__all__ = ["run_forever"]

log = logging.getLogger(__name__)


def run_forever(system: ContextSystem, *, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                stop_timeout: float | None = None, on_ready: Callable[[], Any] | None = None,
                until: Callable[[], bool] | None = None) -> int:
    """Block until one of `signals` arrives, then stop `system` gracefully; return the signal number.
    Also returns 0 when `system` was stopped by someone else, and (after stopping it) when `until()`,
    asked about once a second in the main thread, is true (e.g. a bridge that stopped on its own).

    Must run in the main thread (Python delivers signals there). The stop drains every mailbox,
    commits, snapshots every context and closes the store (bounded by `stop_timeout`, default
    ``call_timeout x 4``); the previous signal handlers are restored afterwards. `on_ready` is called
    once the handlers are installed (e.g. to tell a supervisor process the daemon is up).
    """
    if threading.current_thread() is not threading.main_thread():
        raise HoardError("run_forever must run in the main thread (signals are delivered there)")
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        if on_ready is not None:
            on_ready()
        while not stop.wait(1.0):  # the timeout keeps the main thread responsive to signals
            if system.stopped:
                return 0
            if until is not None and until():
                log.info("stopping hoard: what it ran for ended")
                system.stop(stop_timeout)
                return 0
        log.info("signal %d: stopping hoard", received[0])
        system.stop(stop_timeout)
        return received[0]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
