"""`CommandApplier`: commands from a broker applied to contexts, exactly once in effect.

The applier's thread fetches commands from a durable subscription (`CommandSource`: a JetStream
durable consumer, an AMQP queue, an MQTT persistent session) and, one at a time, in the order
received:

1. parses the command (format 1, see `hoard._bridges._format`);
2. applies it through the context's tracker with ``request_id=<message_id>`` (and ``expected_version``,
   ``by`` when given) and waits until the write committed;
3. answers it (when the message has a reply address) and only then acknowledges it to the broker.

A bridge killed between 2 and 3 gets the command again from the broker; the write's idempotency key
makes the context answer with the original version instead of applying it twice (within the
system's ``request_window``). A command that cannot be applied as written (`InvalidCommandError`,
`InvalidValueError`, `VersionConflictError`, `InvalidContextIdError`, an unknown context without an
adapter to create it, any other `HoardError` of the write) is answered or published to the
dead-letter subject with the typed error, then acknowledged: never retried, never a crash. What may
pass (the store or broker away, a timeout, the context owned by another process, capacity) is not
acknowledged: the applier reconnects with back-off and the broker delivers the command again.

Contexts: with an adapter attached to the system, a command for a missing context creates it
(``adapter.get_or_create``, never becoming current); without one, only existing contexts are written.

Threads: as for `Relay` (one thread of its own, "hoard-apply-<name>"; `stop()` from any thread;
stopped with its system).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

import attrs

from hoard.storage import (
    CapacityError,
    ConfigError,
    ContextOwnedElsewhereError,
    ContextTimeoutError,
    HoardError,
    PersistenceError,
    SystemStoppedError,
)

from ._broker import CommandSource, Incoming, make_source, public_url
from ._errors import BrokerUnavailableError
from ._format import Command, parse_command, result_body
from ._thread import BridgeThread

if TYPE_CHECKING:
    from .._system import ContextSystem

__all__ = ["ApplierStats", "CommandApplier"]

log = logging.getLogger(__name__)

#: errors that may pass: the command is not acknowledged, the broker delivers it again
_TRANSIENT = (ContextTimeoutError, SystemStoppedError, PersistenceError, ContextOwnedElsewhereError, CapacityError,
              BrokerUnavailableError)
_POLL = 0.25


@attrs.frozen
class ApplierStats:
    """What an applier has done since it started.

    Attributes:
        name: the applier's name. url: the broker (without password). subject: what it consumes.
        applied: commands applied (a redelivered one answered from its idempotency key counts again).
        rejected: commands answered or dead-lettered with an error (and acknowledged).
        failures: times the broker or the store failed (commands then delivered again).
        connected: whether it has a connection now.
        error: why it stopped on its own (None while it runs or after `stop()`).
    """

    name: str
    url: str
    subject: str
    applied: int
    rejected: int
    failures: int
    connected: bool
    error: str | None = None


class CommandApplier(BridgeThread):
    """Applies commands from the broker at `source_url` to `system`'s contexts. See the module docstring.

    Args:
        system: the running system written to.
        source_url: the broker (``nats://``, ``amqp://``, ``mqtt://``).
        subject: the JetStream subject, AMQP queue or MQTT topic filter consumed.
        dead_letter: where rejected commands go (subject / queue / topic), with their error; None: they
            are only answered (when they have a reply address) and logged. An empty one, or on MQTT a
            topic with a wildcard (``+``, ``#``), is a `ConfigError`.
        stream: the JetStream stream (created over `subject` when missing); NATS only.
        name: names the durable consumer / client id / thread (default ``hoard-apply``).
        batch: the most commands fetched at once.
        call_timeout: the bound of each write and each broker call.
        max_backoff: the longest wait between two attempts while the broker or the store is away.
        source: a backend to use instead of the one the URL names.
        **options: passed to the backend (``ack_wait=`` seconds for NATS).
    """

    def __init__(self, system: ContextSystem, source_url: str, subject: str, *, dead_letter: str | None = None,
                 stream: str | None = None, name: str = "hoard-apply", batch: int = 64, call_timeout: float = 5.0,
                 max_backoff: float = 2.0, source: CommandSource | None = None, **options: Any) -> None:
        if not isinstance(subject, str) or not subject:
            raise ConfigError(f"subject must be a non-empty str, not {subject!r}")
        if dead_letter is not None and (not isinstance(dead_letter, str) or not dead_letter):
            raise ConfigError(f"dead_letter must be a non-empty str or None, not {dead_letter!r}")
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ConfigError(f"name must be a str of 1 to 128 characters, not {name!r}")
        if type(batch) is not int or batch < 1:
            raise ConfigError(f"batch must be an int >= 1, not {batch!r}")
        if stream is not None:
            options["stream"] = stream
        if source is None:
            source = make_source(source_url, subject, dead_letter=dead_letter, durable=name, client_id=name,
                                 **options)
        self._source = source
        self._system = system
        self.url = public_url(source_url)
        self.subject = subject
        self.dead_letter = dead_letter
        self.name = name
        self._batch = batch
        self._timeout = float(call_timeout)
        self._max_backoff = float(max_backoff)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied = 0
        self._rejected = 0
        self._failures = 0
        self._connected = False
        self._error: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> CommandApplier:
        """Start the applier's thread; returns at once (the broker is connected on that thread, with
        retries). Starting twice raises `HoardError`."""
        if self._thread is not None:
            raise HoardError(f"applier {self.name!r} was started already; make a new one to start again")
        if self._system.stopped:
            raise SystemStoppedError()
        self._system.attach_bridge(self)
        self._thread = threading.Thread(target=self._run, name=f"hoard-apply-{self.name}"[:60], daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread after the command in hand (applied and acknowledged, or left to the broker),
        close the connection; blocks until then (at most `timeout`, default call_timeout x 2 + 5 s).
        Idempotent; also called by the system's `stop()`."""
        self._halt(self._timeout * 2 + 5 if timeout is None else timeout)

    def __enter__(self) -> CommandApplier:
        return self.start()

    def stats(self) -> ApplierStats:
        """Counts so far (lock-free; any thread)."""
        return ApplierStats(self.name, self.url, self.subject, self._applied, self._rejected, self._failures,
                            self._connected, self._error)

    # -- the loop (the applier's thread) ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except SystemStoppedError:
            pass
        except Exception as exc:  # a bug must be seen (logged, in stats().error), not kill silently
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("applier %r stopped by an unexpected error", self.name)
        finally:
            self._connected = False
            self._source.close()

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if backoff and self._stop.wait(backoff):
                return
            try:
                if not self._connected:
                    self._source.connect(self._timeout)
                    self._connected = True
                    log.info("applier %r consuming %r from %s", self.name, self.subject, self.url)
                for message in self._source.fetch(self._batch, _POLL):
                    self._handle(message)
                    if self._stop.is_set():
                        return  # the rest are not acknowledged: the broker delivers them again
                backoff = 0.0
            except _TRANSIENT as exc:
                if isinstance(exc, SystemStoppedError):
                    raise
                self._failures += 1
                log.warning("applier %r: %s; reconnecting (unacknowledged commands come again)", self.name, exc)
                self._source.close()
                self._connected = False
                backoff = min(self._max_backoff, max(0.05, backoff * 2))

    def _handle(self, message: Incoming) -> None:
        command: Command | None = None
        try:
            command = parse_command(message.body)
            version = self._apply(command)
        except _TRANSIENT:
            raise
        except HoardError as exc:
            self._reject(message, command, exc)
        except Exception as exc:  # a command must never crash the bridge nor be retried forever
            log.exception("applier %r: command failed unexpectedly", self.name)
            self._reject(message, command, exc)
        else:
            if message.reply_to:
                self._source.send(message.reply_to, result_body(
                    message_id=command.message_id, context_id=command.context_id, operation=command.operation,
                    version=version, error=None, body=None), self._timeout)
            self._source.ack(message)
            self._applied += 1

    def _tracker(self, context_id: str) -> Any:
        try:
            adapter = self._system.adapter
        except HoardError:
            return self._system.manager.tracker(context_id, timeout=self._timeout)
        return adapter.get_or_create(context_id, timeout=self._timeout)

    def _apply(self, c: Command) -> int:
        tracker = self._tracker(c.context_id)
        common: dict[str, Any] = {"expected_version": c.expected_version, "request_id": c.message_id, "by": c.by,
                                  "timeout": self._timeout}
        args = c.arguments
        if c.operation == "set":
            version: int = tracker.set(args["key"], args["value"], **common)
        elif c.operation == "update":
            version = tracker.update(args["values"], **common)
        elif c.operation == "delete":
            version = tracker.delete(args["key"], **common)
        else:
            version = tracker.set_metadata(args["key"], args["value"], **common)
        return version

    def _message_limit(self, subjects: list[str]) -> int | None:
        """The smallest limit of the `subjects` a result goes to (None: none has one)."""
        ask = getattr(self._source, "message_limit", None)
        if ask is None:
            return None
        limits = [n for n in (cast("int | None", ask(s, self._timeout)) for s in subjects) if n is not None]
        return min(limits) if limits else None

    def _reject(self, message: Incoming, command: Command | None, error: BaseException) -> None:
        body = result_body(message_id=command.message_id if command else None,
                           context_id=command.context_id if command else None,
                           operation=command.operation if command else None, version=None, error=error,
                           body=message.body,
                           limit=self._message_limit([s for s in (message.reply_to, self.dead_letter) if s]))
        if message.reply_to:
            self._source.send(message.reply_to, body, self._timeout)
        if self.dead_letter:
            self._source.send(self.dead_letter, body, self._timeout)
        if not message.reply_to and not self.dead_letter:
            log.warning("applier %r rejected a command (no reply address, no dead-letter subject): %s",
                        self.name, error)
        self._source.ack(message)
        self._rejected += 1
