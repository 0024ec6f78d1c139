"""The bridges' wire format, URL handling and refusals, without a broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from hoard import ConfigError, InvalidCommandError, Relay, VersionConflictError, open_system
from hoard.bridges import (
    Outgoing,
    make_publisher,
    make_source,
    parse_command,
    public_url,
    render_subject,
    result_body,
)


def test_a_context_id_is_one_subject_token_on_every_broker() -> None:
    assert render_subject("hoard.{context_id}", "cart-42") == "hoard.cart-42"
    token = render_subject("{context_id}", "a.b/c*d>e+f#g h\u00e9")
    assert not any(c in token for c in "./*>+# ") and token.isascii()
    assert render_subject("all-changes", "x") == "all-changes"  # no placeholder: one subject for all


def test_a_well_formed_command_parses() -> None:
    c = parse_command(orjson.dumps({"context_id": "a", "operation": "update", "arguments": {"values": {"k": [1]}},
                                    "message_id": "m-1", "expected_version": 3, "by": "svc:x"}))
    assert (c.context_id, c.operation, c.arguments, c.message_id, c.expected_version, c.by) == \
        ("a", "update", {"values": {"k": [1]}}, "m-1", 3, "svc:x")


@pytest.mark.parametrize(("body", "field"), [
    (b"{", None),
    (b"[1]", None),
    (b'{"format": 2, "context_id": "a", "operation": "set", "arguments": {}, "message_id": "m"}', "format"),
    (b'{"operation": "set", "arguments": {"key": "k", "value": 1}, "message_id": "m"}', "context_id"),
    (b'{"context_id": "a", "operation": "drop", "arguments": {}, "message_id": "m"}', "operation"),
    (b'{"context_id": "a", "operation": "set", "arguments": {"key": "k"}, "message_id": "m"}', "arguments.value"),
    (b'{"context_id": "a", "operation": "set", "arguments": {"key": 1, "value": 1}, "message_id": "m"}',
     "arguments.key"),
    (b'{"context_id": "a", "operation": "update", "arguments": {"values": [1]}, "message_id": "m"}',
     "arguments.values"),
    (b'{"context_id": "a", "operation": "delete", "arguments": {"key": "k", "x": 1}, "message_id": "m"}',
     "arguments"),
    (b'{"context_id": "a", "operation": "delete", "arguments": {"key": "k"}, "message_id": ""}', "message_id"),
    (b'{"context_id": "a", "operation": "delete", "arguments": {"key": "k"}, "message_id": "m",'
     b' "expected_version": "3"}', "expected_version"),
])
def test_a_malformed_command_names_what_is_wrong(body: bytes, field: str | None) -> None:
    with pytest.raises(InvalidCommandError) as info:
        parse_command(body)
    assert info.value.field == field


def test_urls_choose_a_backend_and_hide_passwords() -> None:
    assert public_url("amqp://guest:secret@host:5672/%2F") == "amqp://guest:***@host:5672/%2F"
    with pytest.raises(ConfigError, match="unknown broker URL scheme 'kafka'"):
        make_publisher("kafka://host:9092")
    with pytest.raises(ConfigError, match="relayed to, not consumed from"):
        make_source("redis://127.0.0.1:6379/0", "commands")


def test_a_relay_refuses_bad_settings_before_it_starts(tmp_path: Path) -> None:
    with open_system(tmp_path / "s.db") as system:
        for kwargs in ({"batch": 0}, {"publish_timeout": -1}, {"subject": ""}):
            with pytest.raises(ConfigError):
                Relay(system, "redis://127.0.0.1:6379/0", **kwargs)  # type: ignore[arg-type]
        assert system.metrics().relay_lag_entries == {}


@pytest.mark.parametrize(("url", "options"), [
    ("redis://127.0.0.1:6379/0?maxlen=abc", {}), ("redis://127.0.0.1:6379/0?maxlen=-3", {}),
    ("redis://127.0.0.1:6379/0", {"maxlen": 0}), ("redis://127.0.0.1:6379/0", {"maxlen": "10"}),
])
def test_a_redis_publisher_refuses_a_bad_maxlen_with_a_config_error(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="maxlen"):
        make_publisher(url, **options)


def test_hoard_relay_with_an_unknown_scheme_fails_with_a_json_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "hoard", "relay", str(tmp_path / "s.db"), "--to", "kafka://x:1",  # noqa: S603 - our own CLI
                        "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and r.stdout == ""
    error = orjson.loads(r.stderr)
    assert error["type"] == "ConfigError" and "kafka" in error["error"]


def test_the_relay_s_lean_body_is_byte_for_byte_change_body(tmp_path: Path) -> None:
    """`change_body_of` (from `feed_dicts`, what the relay publishes) and `change_body` (from a
    `FeedEntry`) give the same bytes: the documented key order included."""
    from hoard.bridges import change_body, change_body_of, message_id  # noqa: PLC0415 - this test only

    system = open_system(tmp_path / "f.db")
    try:
        ctx = system.adapter.get_or_create("x.1", data={"a": 1})
        ctx.update({"b": {"c": [1, 2]}, "a": None})
        ctx.set_metadata("m", 1, remove="n")
        ctx.delete("b")
        system.manager.delete("x.1")
        entries = list(system.changes(after=0, timeout=0))
        assert [e.deleted for e in entries][-2:] == [False, True]
        dicts = system.store.feed_dicts(0, 10)  # type: ignore[attr-defined]
        assert [change_body_of(d, message_id(e)) for d, e in zip(dicts, entries, strict=True)] == \
            [change_body(e) for e in entries]
    finally:
        system.stop()


@pytest.mark.parametrize("maxlen", [None, 10])
def test_the_redis_publisher_sends_what_redis_py_packs_of_the_same_xadds(maxlen: int | None) -> None:
    import redis  # noqa: PLC0415 - the extra's client, this test only

    class Wire:  # stands in for the redis-py connection the publisher holds: records what is sent
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send_packed_command(self, command: list[bytes]) -> None:
            self.sent.extend(command)

        def read_response(self) -> bytes:
            return b"1-0"

    messages = [Outgoing("hoard.a%2Eb", b'{"k":"\xc3\xa9"}', "a.b:7"), Outgoing("s", b"", "s:1"),
                Outgoing("\u00e9t\u00e9", b"x" * 70_000, "\u00e9t\u00e9:2")]
    trim = () if maxlen is None else (b"MAXLEN", b"~", b"%d" % maxlen)
    connection = redis.Connection()
    expected = b"".join(b"".join(connection.pack_command(b"XADD", m.subject.encode(), *trim, b"*", b"message_id",
                                                         m.message_id.encode(), b"body", m.body))
                        for m in messages)
    publisher: Any = make_publisher("redis://127.0.0.1:6379/0", maxlen=maxlen)
    publisher._connection = wire = Wire()  # noqa: SLF001 - the wire under the publisher, no broker needed
    publisher.publish(messages, 5.0)
    assert b"".join(wire.sent) == expected


@pytest.mark.parametrize("text", ['"' * 5_000, "\x01" * 3_000, "é✓" * 4_000, "plain " * 2_000])
def test_a_result_over_the_limit_carries_the_longest_body_prefix_that_fits(text: str) -> None:
    body = text.encode()
    fields = {"message_id": "m", "context_id": "c", "operation": "set", "version": None,
              "error": VersionConflictError("c", 9, 1)}
    whole = result_body(**fields, body=body)
    assert result_body(**fields, body=body, limit=len(whole)) == whole  # fits: untouched, no new keys
    assert "body_truncated" not in orjson.loads(whole)
    limit = len(whole) // 3
    cut = result_body(**fields, body=body, limit=limit)
    doc = orjson.loads(cut)
    assert len(cut) <= limit and doc["body_truncated"] is True and doc["body_bytes"] == len(body)
    assert text.startswith(doc["body"]) and doc["body"]
    longer = {**doc, "body": text[:len(doc["body"]) + 1]}
    assert len(orjson.dumps(longer)) > limit  # the longest prefix: one character more is over
    assert doc["error"]["type"] == "VersionConflictError" and doc["ok"] is False


def test_a_result_whose_other_fields_echo_a_huge_command_still_fits_the_limit() -> None:
    """A context id of 100 KB parses (the id is refused only when applied) and is echoed back: the
    result cuts it as well when the body alone cannot make room."""
    cid = "c" * 100_000
    body = orjson.dumps({"context_id": cid, "operation": "set", "arguments": {"key": "k", "value": 1},
                         "message_id": "m"})
    cut = result_body(message_id="m", context_id=cid, operation="set", version=None,
                      error=InvalidCommandError("context_id", "c" * 50_000), body=body, limit=4_000)
    doc = orjson.loads(cut)
    assert len(cut) <= 4_000 and doc["body_truncated"] is True and doc["body_bytes"] == len(body)
    assert cid.startswith(doc["context_id"][:-3]) and doc["context_id"].endswith("...")
    assert doc["error"]["type"] == "InvalidCommandError" and doc["error"]["message"].endswith("...")
    assert body.decode().startswith(doc["body"])


@pytest.mark.parametrize("fields", [{"operation": "x" * 100_000}, {"format": "9" * 100_000},
                                    {"arguments": {"key": "k", "value": 1, "y" * 100_000: 2}}])
def test_a_command_refused_for_a_huge_field_names_it_by_its_start(fields: dict[str, Any]) -> None:
    doc = {"context_id": "a", "operation": "set", "arguments": {"key": "k", "value": 1}, "message_id": "m", **fields}
    with pytest.raises(InvalidCommandError) as info:
        parse_command(orjson.dumps(doc))
    assert len(str(info.value)) < 300 and "..." in str(info.value), str(info.value)[:400]
