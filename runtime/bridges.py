"""The broker bridges' public face for those who extend them: the wire formats (format 1) and their
parsers, the two backend protocols (`Publisher`, `CommandSource`) a broker of one's own implements
(pass it as ``Relay(..., publisher=)`` / ``CommandApplier(..., source=)``), and the URL factories.
`Relay`, `CommandApplier` and the bridges' errors are also exported by `hoard` itself."""

from ._bridges import (
    CHANGE_FORMAT,
    COMMAND_FORMAT,
    ApplierStats,
    BridgeError,
    BrokerUnavailableError,
    CommandApplier,
    CommandSource,
    Incoming,
    InvalidCommandError,
    Outgoing,
    Publisher,
    Relay,
    RelayLag,
    change_body,
    change_body_of,
    make_publisher,
    make_source,
    message_id,
    parse_command,
    public_url,
    render_subject,
)

__all__ = [
    "CHANGE_FORMAT",
    "COMMAND_FORMAT",
    "ApplierStats",
    "BridgeError",
    "BrokerUnavailableError",
    "CommandApplier",
    "CommandSource",
    "Incoming",
    "InvalidCommandError",
    "Outgoing",
    "Publisher",
    "Relay",
    "RelayLag",
    "change_body",
    "change_body_of",
    "make_publisher",
    "make_source",
    "message_id",
    "parse_command",
    "public_url",
    "render_subject",
]
