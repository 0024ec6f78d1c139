"""Broker bridges: the change feed out to NATS JetStream, MQTT, AMQP and Redis Streams (`Relay`), and
commands in from JetStream, AMQP and MQTT (`CommandApplier`). Each broker's client is an optional extra.

One relay loop and one apply loop (`_relay`, `_apply`) over small backends (`_nats`, `_mqtt`, `_amqp`,
`_redis`), chosen by URL scheme (`_broker`); the JSON on the wire is `_format`'s (stable, versioned).
"""

from ._apply import ApplierStats as ApplierStats
from ._apply import CommandApplier as CommandApplier
from ._broker import CommandSource as CommandSource
from ._broker import Incoming as Incoming
from ._broker import Outgoing as Outgoing
from ._broker import PipelinedPublisher as PipelinedPublisher
from ._broker import Publisher as Publisher
from ._broker import make_publisher as make_publisher
from ._broker import make_source as make_source
from ._broker import public_url as public_url
from ._errors import BridgeError as BridgeError
from ._errors import BrokerUnavailableError as BrokerUnavailableError
from ._errors import InvalidCommandError as InvalidCommandError
from ._errors import UnpublishableChangeError as UnpublishableChangeError
from ._format import CHANGE_FORMAT as CHANGE_FORMAT
from ._format import COMMAND_FORMAT as COMMAND_FORMAT
from ._format import change_body as change_body
from ._format import change_body_of as change_body_of
from ._format import message_id as message_id
from ._format import parse_command as parse_command
from ._format import render_subject as render_subject
from ._format import result_body as result_body
from ._relay import Relay as Relay
from ._relay import RelayLag as RelayLag

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
    "PipelinedPublisher",
    "Publisher",
    "Relay",
    "RelayLag",
    "UnpublishableChangeError",
    "change_body",
    "change_body_of",
    "make_publisher",
    "make_source",
    "message_id",
    "parse_command",
    "public_url",
    "render_subject",
    "result_body",
]
