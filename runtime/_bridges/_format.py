"""The JSON the bridges put on and take off a broker: a stable, versioned format.

**Outbound (a change):** one JSON object per feed entry (UTF-8, no trailing newline)::

    {"type": "hoard.change", "format": 1, "message_id": "cart-42:7@1234", "offset": 1234,
     "context_id": "cart-42", "version": 7, "at": 1764650000.25, "by": "svc:billing",
     "changed": ["total"], "removed": ["coupon"], "values": {"total": 12.5},
     "metadata": {}, "metadata_removed": [], "replaced": false, "created": false, "deleted": false}

A context's deletion is a change too, with ``"deleted": true``: its ``version`` is one past the
context's last (0 if the deleter did not know it), ``by`` who deleted it, ``changed``, ``values``
and ``metadata`` empty and ``replaced`` true (a consumer that predates the key sees the context
emptied). ``deleted`` was added to format 1 (which only ever gains keys); absent means false.

``message_id`` is ``<context id>:<version>@<offset>``: unique per change, the same on every redelivery (the
JetStream ``Nats-Msg-Id`` header, the AMQP ``message_id`` property, a Redis stream field). The feed
offset is part of it because a context id and a version alone do not name one change: a context
made again under a deleted one's id starts again at version 1 (before this, a broker that drops
repeats took its changes for the old context's and dropped them). ``at`` is
seconds since the epoch. Keys are only ever added to format 1, never removed or changed in meaning;
a change of meaning raises ``format``.

**Inbound (a command):** one JSON object::

    {"format": 1, "context_id": "cart-42", "operation": "set", "arguments": {"key": "total", "value": 3},
     "message_id": "order-991", "expected_version": 6, "by": "svc:orders"}

``operation`` is ``set`` / ``set_metadata`` (``arguments`` ``{"key", "value"}``), ``update``
(``{"values": {...}}``) or ``delete`` (``{"key"}``). ``message_id`` (a str of 1 to 128 characters) is
the write's idempotency key: a command applied once is never applied again for the same context.
``format`` may be omitted (1); ``expected_version`` and ``by`` are optional.

**The answer / dead letter:** ``{"type": "hoard.command_result", "format": 1, "message_id", "context_id",
"operation", "ok", "version", "error": null | {"type", "message"}, "body"}`` where ``body`` is the
command as received (a str) when it failed, else null. A result that would be over the broker's
message limit (a NATS server's ``max_payload``, or its stream's ``max_msg_size``; the AMQP or MQTT
URL's ``max_message_size``, or RabbitMQ's as its refusal named it: the body goes in
JSON-escaped, so a command near the limit makes a larger dead letter) carries the longest prefix of
the command that fits, with ``"body_truncated": true`` and ``"body_bytes"``, the command's size as
received (both added to format 1; absent means the body is whole); if the rest alone is over the
limit, ``context_id`` and the error's message are cut to their first 997 characters and ``...`` too.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import orjson

from hoard.storage import shown_repr

from ._errors import InvalidCommandError

if TYPE_CHECKING:
    from hoard.storage import FeedEntry

__all__ = [
    "CHANGE_FORMAT",
    "COMMAND_FORMAT",
    "OPERATIONS",
    "Command",
    "change_body",
    "change_body_of",
    "message_id",
    "parse_command",
    "render_subject",
    "result_body",
    "subject_token",
]

CHANGE_FORMAT = 1
COMMAND_FORMAT = 1
OPERATIONS = frozenset({"set", "update", "delete", "set_metadata"})
_MAX_MESSAGE_ID = 128
# characters a subject token keeps as they are; everything else (".", "*", ">", "/", "+", "#",
# spaces, non-ASCII) is percent-encoded, so one context id is one token on every broker
_SAFE = string.ascii_letters + string.digits + "_-~"


def message_id(entry: FeedEntry) -> str:
    """``<context id>:<version>@<offset>``: the change's identity, the same on every redelivery."""
    return f"{entry.context_id}:{entry.version}@{entry.offset}"


def change_body(entry: FeedEntry, msg_id: str | None = None) -> bytes:
    """The outbound JSON of `entry` (format 1, see the module docstring); `msg_id` is its
    `message_id` when the caller has it already."""
    return orjson.dumps({  # tuples encode as JSON arrays: no list copies
        "type": "hoard.change", "format": CHANGE_FORMAT, "message_id": msg_id or message_id(entry),
        "offset": entry.offset, "context_id": entry.context_id, "version": entry.version, "at": entry.at,
        "by": entry.by, "changed": entry.changed, "removed": entry.removed, "values": entry.values,
        "metadata": entry.metadata, "metadata_removed": entry.metadata_removed,
        "replaced": entry.replaced, "created": entry.created, "deleted": entry.deleted,
    })


#: what every change body starts with, up to its message id (`change_body`'s first three keys)
_BODY_HEAD = b'{"type":"hoard.change","format":%d,"message_id":' % CHANGE_FORMAT


def change_body_of(entry: dict[str, Any], msg_id: str) -> bytes:
    """`change_body` of an entry in its `FeedEntry.to_dict()` form (what ``feed_dicts`` reads): the
    same bytes. `msg_id` is its `message_id`. The constant head is pre-encoded and the entry encoded
    as it is (no merged copy of it): a quarter less work per entry for the relay."""
    return b"".join((_BODY_HEAD, orjson.dumps(msg_id), b",", orjson.dumps(entry)[1:]))


def subject_token(context_id: str) -> str:
    """`context_id` as one subject / topic / routing-key token (percent-encoded outside ``[A-Za-z0-9_-~]``)."""
    return quote(context_id, safe=_SAFE).replace(".", "%2E")  # quote() never encodes "." itself


def render_subject(template: str, context_id: str) -> str:
    """`template` with ``{context_id}`` replaced by the id's token (a template without it is one subject
    for every context)."""
    return template.replace("{context_id}", subject_token(context_id))


@attrs.frozen
class Command:
    """A parsed inbound command (format 1)."""

    context_id: str
    operation: str
    arguments: dict[str, Any]
    message_id: str
    expected_version: int | None = None
    by: str | None = None


def _field(doc: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    if name not in doc or (optional and doc[name] is None):
        if optional:
            return None
        raise InvalidCommandError(name, "missing")
    value = doc[name]
    if type(value) is not kind:
        raise InvalidCommandError(name, f"must be a JSON {_JSON_NAMES[kind]}, not {_json_kind(value)}")
    return value


_JSON_NAMES = {str: "string", int: "integer", dict: "object", list: "array"}


def _json_kind(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
            list: "an array", type(None): "null"}.get(type(value), type(value).__name__)


def _arguments(operation: str, args: dict[str, Any]) -> dict[str, Any]:
    needed = {"set": ("key", "value"), "set_metadata": ("key", "value"), "update": ("values",),
              "delete": ("key",)}[operation]
    for name in needed:
        if name not in args:
            raise InvalidCommandError(f"arguments.{name}", f"{operation!r} needs arguments {list(needed)}")
    extra = sorted(set(args) - set(needed))
    if extra:
        raise InvalidCommandError("arguments", f"{operation!r} takes arguments {list(needed)}, "
                                               f"not {shown_repr(extra, 80)}")
    if "key" in args and type(args["key"]) is not str:
        raise InvalidCommandError("arguments.key", f"must be a string, not {_json_kind(args['key'])}")
    if operation == "update" and type(args["values"]) is not dict:
        raise InvalidCommandError("arguments.values", f"must be an object, not {_json_kind(args['values'])}")
    return args


def parse_command(body: bytes | str) -> Command:
    """Parse and check an inbound command (see the module docstring); `InvalidCommandError` names the
    first thing wrong. Values are checked later, by the write itself (`InvalidValueError`)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidCommandError(None, f"not JSON ({exc})") from None
    if type(doc) is not dict:
        raise InvalidCommandError(None, f"must be a JSON object, not {_json_kind(doc)}")
    fmt = doc.get("format", COMMAND_FORMAT)
    if fmt != COMMAND_FORMAT or type(fmt) is not int:
        raise InvalidCommandError("format", f"this hoard reads command format {COMMAND_FORMAT}, "
                                            f"not {shown_repr(fmt, 80)}")
    context_id = _field(doc, "context_id", str)
    operation = _field(doc, "operation", str)
    if operation not in OPERATIONS:
        raise InvalidCommandError("operation", f"unknown operation {shown_repr(operation, 80)}; "
                                               f"one of {sorted(OPERATIONS)}")
    msg_id = _field(doc, "message_id", str)
    if not 0 < len(msg_id) <= _MAX_MESSAGE_ID:
        raise InvalidCommandError("message_id", f"must have 1 to {_MAX_MESSAGE_ID} characters")
    expected = _field(doc, "expected_version", int, optional=True)
    by = _field(doc, "by", str, optional=True)
    args = _arguments(operation, _field(doc, "arguments", dict))
    return Command(context_id, operation, args, msg_id, expected, by)


def _clipped(text: str | None, width: int = 1_000) -> str | None:
    return text if text is None or len(text) <= width else text[:width - 3] + "..."


def result_body(*, message_id: str | None, context_id: str | None, operation: str | None, version: int | None,
                error: BaseException | None, body: bytes | None, limit: int | None = None) -> bytes:
    """The answer to a command, or its dead letter (see the module docstring). With `limit` (the
    largest message the broker takes), a result over it carries the longest prefix of `body` that
    fits, with ``"body_truncated": true`` and ``"body_bytes"`` (the command's size as received)."""
    doc: dict[str, Any] = {
        "type": "hoard.command_result", "format": COMMAND_FORMAT, "message_id": message_id,
        "context_id": context_id, "operation": operation, "ok": error is None, "version": version,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
        "body": None if body is None else body.decode("utf-8", "replace"),
    }
    out = orjson.dumps(doc)
    if limit is None or len(out) <= limit:
        return out
    text = doc["body"] or ""
    if body is not None:
        doc.update(body="", body_truncated=True, body_bytes=len(body))
    if len(orjson.dumps(doc)) > limit:
        # the rest alone is over: the fields that echo the command (a context id of a megabyte parses,
        # and is refused only when applied) are cut to their start as well
        doc["context_id"] = _clipped(context_id)
        if error is not None:
            doc["error"]["message"] = _clipped(doc["error"]["message"])
    if body is None:
        return orjson.dumps(doc)
    # the body goes in JSON-escaped (a quote takes 2 bytes, a control character 6): find the longest
    # prefix that fits by bisection, a dozen or two encodings on this rare path
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        doc["body"] = text[:mid]
        if len(orjson.dumps(doc)) <= limit:
            low = mid
        else:
            high = mid - 1
    doc["body"] = text[:low]
    return orjson.dumps(doc)
