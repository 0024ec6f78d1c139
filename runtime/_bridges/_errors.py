"""The errors of the broker bridges (under `HoardError`, re-exported from `hoard`).

They live here rather than in `hoard.storage`'s hierarchy because only the bridges raise them; each
still derives from `HoardError`, so one ``except HoardError`` catches them with every other error.
"""

from __future__ import annotations

from hoard.storage import HoardError

__all__ = ["BridgeError", "BrokerUnavailableError", "InvalidCommandError", "UnpublishableChangeError"]


class BridgeError(HoardError):
    """Base of the broker bridges' own errors."""


class BrokerUnavailableError(BridgeError, ConnectionError):
    """The broker did not answer or did not confirm in time (refused connection, cut network, no
    acknowledgement before the timeout). Nothing is taken as delivered: a relay keeps its consumer
    offset where it was and publishes the same entries again once the broker is back; an inbound
    bridge does not acknowledge the message, so the broker delivers it again.

    `url` names the broker (without credentials), `reason` what went wrong.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"broker {url} unavailable: {reason}; the bridge retries with back-off")


class InvalidCommandError(BridgeError, ValueError):
    """An inbound command cannot be applied as written: not JSON, not an object, a field missing or of
    the wrong type, an unknown ``operation`` or ``format``. Differs from `InvalidValueError` (a
    well-formed command whose value cannot be stored) and `VersionConflictError` (a well-formed
    command whose ``expected_version`` is stale): all three are answered or dead-lettered, never
    retried. `field` names what was wrong (None: the whole body)."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        where = f"field {field!r}" if field is not None else "body"
        super().__init__(f"invalid command {where}: {reason}")


class UnpublishableChangeError(BridgeError, ValueError):
    """A change of the feed that the broker can never take as it is: its AMQP routing key or message
    id is over 255 bytes, or its message is over the NATS server's ``max_payload`` (or the
    ``max_msg_size`` of the relay's stream), over RabbitMQ's ``max_message_size`` (the URL's, or
    the one its refusal named) or over MQTT's limits. Publishing it again would fail again, so a
    relay does not retry it: by default (``Relay(..., unpublishable="stop")``) it publishes every
    entry before it, commits that offset and stops, this error's message in `RelayLag.error`; with
    ``unpublishable="skip"`` it logs the error, counts the change in `RelayLag.skipped` and goes on.

    `message_id` names the change (``<context id>:<version>@<offset>``), `offset` its feed offset, `url` the
    broker (without credentials), `reason` what the broker does not take.
    """

    def __init__(self, message_id: str, offset: int, url: str, reason: str) -> None:
        self.message_id = message_id
        self.offset = offset
        self.url = url
        self.reason = reason
        super().__init__(f"change {message_id!r} (feed offset {offset}) can never be published to {url}: {reason}")
