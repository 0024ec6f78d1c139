"""A TCP proxy on 127.0.0.1 for the PostgreSQL attacks: it forwards to the server and can stall (keep
every socket open, forward nothing: a server that stops answering), resume, cut every connection, or
slow each chunk down. Threads of its own, all ended by `close()` (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to `target`; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self.delay = 0.0  # seconds each forwarded chunk waits (slow mode)
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stall(self) -> None:
        """Forward nothing from now on (the sockets stay open) until `resume()`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every proxied connection now (new ones are still accepted)."""
        for s in list(self._sockets):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        for t in list(self._threads):
            t.join(5)
        self.cut()  # what the accepting thread let in while closing

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, name="test-proxy", daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(0.05)
                self._sockets.append(s)
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            while not self._flowing.wait(0.05):  # stalled: hold the bytes, keep the socket open
                if self._closed.is_set():
                    return
            if self.delay:
                self._closed.wait(self.delay)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
