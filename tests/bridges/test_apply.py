"""Commands in from the real brokers: exactly once in effect across SIGKILLs of the consumer, and bad
commands acknowledged and dead-lettered with their typed error, never retried, never a crash."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hoard import CommandApplier, ContextAdapterConfig, ContextSystem, open_system
from hoard.storage import CorruptStateError, SQLiteStore
from tests.bridges.brokers import CommandChannel, make_channel
from tests.bridges.conftest import require_broker
from tests.bridges.kids import Zygote
from tests.helpers import wait_for

INBOUND = ("nats", "amqp", "mqtt")
CONTEXTS = 4
NAME = "apply-under-test"


@pytest.fixture(params=INBOUND)
def channel(request: pytest.FixtureRequest) -> Iterator[CommandChannel]:
    require_broker(request.param)
    c = make_channel(request.param, NAME)
    try:
        yield c
    finally:
        c.close()


def _command(i: int, tag: str) -> bytes:
    return orjson.dumps({"format": 1, "context_id": f"c{i % CONTEXTS}", "operation": "update",
                         "arguments": {"values": {f"k{i}": i}}, "message_id": f"{tag}-{i}", "by": "svc:test"})


def _applied(path: Path) -> int:
    """Commands applied so far, read from the store without its writer lock (versions past creation)."""
    if not path.exists():
        return 0
    store = SQLiteStore(path, readonly=True)
    try:
        store.open()
    except CorruptStateError:  # the first applier is creating the file right now
        return 0
    try:
        states = [store.load(f"c{i}") for i in range(CONTEXTS)]
        return sum(s.version - 1 for s in states if s is not None)
    finally:
        store.close()


def _system(path: Path) -> ContextSystem:
    return open_system(path, adapter_config=ContextAdapterConfig(auto_activate_default=False))


def test_commands_redelivered_after_the_consumer_is_killed_are_applied_once(channel: CommandChannel, kids: Zygote,
                                                                              tmp_path: Path) -> None:
    rng = random.Random(12)  # noqa: S311 - seeded, reproducible kill moments, not a secret
    path = tmp_path / "s.db"
    # more than five runs apply before their kills: each runs 0-50 ms past its first commit, plus the
    # polls and the kill itself, at up to ~2 commands a ms on a quiet machine (with 400 commands and
    # 0-100 ms, all were applied before the last kill in 2 of 8 runs here); and fewer than the 1,000
    # Mosquitto queues for a persistent session by default (max_queued_messages: it drops the rest)
    total = 900
    channel.send([_command(i, channel.tag) for i in range(total)])
    args = channel.cli_args(str(path), NAME)
    pause = threading.Event()
    for run in range(5):
        out = tmp_path / f"apply-{run}.out"
        done = _applied(path)  # read now: the applier killed last may have committed after the last look
        pid = kids.fork(args, out)
        # the store is read only once the child has opened it (a reader while a writer opens after
        # a crash can make that open fail: SQLite's WAL recovery wants the file to itself)
        wait_for(lambda o=out: o.exists() and "applying" in o.read_text(), 60, "the applier to start")
        # a random moment while it applies: once it committed one more command, within 0-50 ms
        wait_for(lambda d=done: _applied(path) > d, 60, "the applier to apply", pause=0.01)
        pause.wait(rng.uniform(0.0, 0.05))
        kids.kill(pid)
    assert _applied(path) < total, "the kills came too late to interrupt anything"
    out = tmp_path / "apply-last.out"
    pid = kids.fork(args, out)
    wait_for(lambda: out.exists() and "applying" in out.read_text(), 60, "the applier to start")
    wait_for(lambda: _applied(path) >= total, 60, f"{total} commands applied", pause=0.05)
    if channel.kind != "mqtt":  # a command applied by a killed applier comes again after ack_wait: let it
        wait_for(lambda: channel.unfinished(NAME) == 0, 60, "every command acknowledged", pause=0.05)
    kids.kill(pid, signal.SIGTERM)
    with _system(path) as system:
        for c in range(CONTEXTS):
            mine = [i for i in range(total) if i % CONTEXTS == c]
            state = system.manager.get_state(f"c{c}")
            assert state.version == 1 + len(mine), f"c{c}: a command was applied twice or not at all"
            assert dict(state.data) == {f"k{i}": i for i in mine}
    if channel.kind != "mqtt":  # MQTT offers no count of a session's unacknowledged messages
        assert channel.unfinished(NAME) == 0
    assert channel.dead_letters() == []


def _deep(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


def test_bad_commands_are_acknowledged_and_dead_lettered_with_their_typed_error(channel: CommandChannel,
                                                                                tmp_path: Path) -> None:
    def cmd(**fields: object) -> bytes:
        doc = {"context_id": "a", "operation": "set", "arguments": {"key": "k", "value": 1}, "message_id": "m"}
        return orjson.dumps({**doc, **fields})

    bad = {
        b"this is not JSON": "InvalidCommandError",
        cmd(operation="explode", message_id="m1"): "InvalidCommandError",
        cmd(arguments={"value": 1}, message_id="m2"): "InvalidCommandError",
        cmd(arguments={"key": "k", "value": _deep(80)}, message_id="m3"): "InvalidValueError",
        cmd(expected_version=99, message_id="m4"): "VersionConflictError",
        cmd(context_id="", message_id="m5"): "InvalidContextIdError",
    }
    with _system(tmp_path / "s.db") as system:
        applier = CommandApplier(system, channel.url(), channel.subject, dead_letter=channel.dead_letter,
                                 stream=channel.stream, name=NAME, call_timeout=5.0).start()
        channel.send([*bad, cmd(message_id="good")])
        wait_for(lambda: applier.stats().applied + applier.stats().rejected >= len(bad) + 1, 30,
                 "every command handled")
        stats = applier.stats()
        assert (stats.applied, stats.rejected, stats.error) == (1, len(bad), None)
        assert applier.running
        assert system.manager.get_state("a").version == 2  # created, then the one good command
        letters = wait_for(lambda: d if len(d := channel.dead_letters()) >= len(bad) else None, 30,
                           "the dead letters")
        assert [d["error"]["type"] for d in letters] == list(bad.values())
        assert all(d["ok"] is False and d["type"] == "hoard.command_result" and d["format"] == 1 for d in letters)
        assert letters[0]["body"] == "this is not JSON"
        assert letters[4]["context_id"] == "a" and "expected" in letters[4]["error"]["message"]
        applier.stop()
        if channel.kind != "mqtt":
            assert channel.unfinished(NAME) == 0  # all acknowledged: none comes again


def test_an_amqp_command_sent_twice_is_applied_once_and_both_are_answered(tmp_path: Path) -> None:
    require_broker("amqp")
    import pika  # noqa: PLC0415 - the broker's client, only where its tests run

    from tests.bridges.brokers import url  # noqa: PLC0415

    channel = make_channel("amqp", NAME)
    conn = pika.BlockingConnection(pika.URLParameters(url("amqp")))
    try:
        ch = conn.channel()
        answers = ch.queue_declare("", exclusive=True).method.queue
        ch.confirm_delivery()
        body = orjson.dumps({"context_id": "acct", "operation": "set", "arguments": {"key": "balance", "value": 5},
                             "message_id": "deposit-1"})
        with _system(tmp_path / "s.db") as system:
            with CommandApplier(system, channel.url(), channel.subject, name=NAME) as applier:
                for _ in range(2):  # a client retrying after a lost answer
                    ch.basic_publish("", channel.subject, body, pika.BasicProperties(reply_to=answers))
                wait_for(lambda: applier.stats().applied == 2, 30, "both commands handled")
            state = system.manager.get_state("acct")
            assert (state.version, dict(state.data)) == (2, {"balance": 5})  # created, then set once
        replies = []
        for _ in range(2):
            method, _props, reply = ch.basic_get(answers, auto_ack=True)
            assert method is not None
            replies.append(orjson.loads(reply))
        expected = [(True, 2, "deposit-1", None)] * 2
        assert [(r["ok"], r["version"], r["message_id"], r["error"]) for r in replies] == expected
    finally:
        conn.close()
        channel.close()


def test_a_nats_dead_letter_subject_without_a_stream_gets_a_plain_message(tmp_path: Path) -> None:
    require_broker("nats")
    import asyncio  # noqa: PLC0415

    import nats  # noqa: PLC0415

    from tests.bridges.brokers import url  # noqa: PLC0415

    channel = make_channel("nats", NAME)
    dead = f"{channel.tag}-nostream.dead"  # outside the command stream's subjects
    received: list[bytes] = []

    async def listen(ready: threading.Event, stop: threading.Event) -> None:
        nc = await nats.connect(url("nats"))

        async def note(msg: object) -> None:
            received.append(msg.data)  # type: ignore[attr-defined]
        await nc.subscribe(dead, cb=note)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)  # keeps the loop delivering until the test is done
        await nc.close()

    ready, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=asyncio.run, args=(listen(ready, stop),), name="test-nats-listener")
    listener.start()
    try:
        assert ready.wait(10)
        with _system(tmp_path / "s.db") as system, CommandApplier(
                system, channel.url(), channel.subject, dead_letter=dead, stream=channel.stream, name=NAME) as applier:
            channel.send([b"not a command"])
            wait_for(lambda: applier.stats().rejected == 1 and received, 30, "the dead letter")
            assert applier.stats().failures == 0
        assert orjson.loads(received[0])["error"]["type"] == "InvalidCommandError"
        assert channel.unfinished(NAME) == 0
    finally:
        stop.set()
        listener.join(10)
        channel.close()


@pytest.mark.parametrize("stream_limit", [None, 4096], ids=["server-max_payload", "stream-max_msg_size"])
def test_a_rejected_nats_command_near_the_limit_is_dead_lettered_once_with_its_body_cut(
        tmp_path: Path, stream_limit: int | None) -> None:
    """The dead letter carries the command as text, JSON-escaped: a command of quotes doubles in it. A
    command within the limit (the server's max_payload, or the max_msg_size of the stream that keeps
    the dead letters) whose dead letter is over it was sent again and again (its publish failed as
    "broker unavailable"); now the body is cut to fit and says so."""
    require_broker("nats")
    import asyncio  # noqa: PLC0415

    import nats  # noqa: PLC0415

    from tests.bridges.brokers import url  # noqa: PLC0415

    channel = make_channel("nats", NAME)

    async def limit_of() -> int:
        nc = await nats.connect(url("nats"))
        try:
            if stream_limit is None:
                return int(nc.max_payload)
            js = nc.jetstream()
            config = (await js.stream_info(channel.stream)).config
            config.max_msg_size = stream_limit
            await js.update_stream(config)
            return stream_limit
        finally:
            await nc.close()
    try:
        limit = asyncio.run(limit_of())
        head = orjson.dumps({"context_id": "a", "operation": "set", "expected_version": 99, "message_id": "big",
                             "arguments": {"key": "k", "value": ""}})
        value = '"' * ((limit - len(head) - 64) // 2)  # each a 2-byte \" in the command, 4 in its dead letter
        body = orjson.dumps({"context_id": "a", "operation": "set", "expected_version": 99, "message_id": "big",
                             "arguments": {"key": "k", "value": value}})
        assert limit - 100 < len(body) <= limit
        with _system(tmp_path / "s.db") as system, CommandApplier(
                system, channel.url(), channel.subject, dead_letter=channel.dead_letter, stream=channel.stream,
                name=NAME, call_timeout=5.0) as applier:
            channel.send([body, orjson.dumps({"context_id": "a", "operation": "set", "message_id": "after",
                                              "arguments": {"key": "k", "value": 1}})])
            wait_for(lambda: applier.stats().rejected + applier.stats().applied >= 2 or applier.stats().failures >= 3,
                     60, "both commands handled (or the dead letter failing again and again)")
            stats = applier.stats()
            assert (stats.rejected, stats.applied, stats.failures, stats.error) == (1, 1, 0, None)
        (letter,) = wait_for(lambda: d if (d := channel.dead_letters()) else None, 30, "the dead letter")
        assert letter["error"]["type"] == "VersionConflictError" and letter["message_id"] == "big"
        assert letter["body_truncated"] is True and letter["body_bytes"] == len(body)
        assert body.decode().startswith(letter["body"]) and len(letter["body"]) > limit // 4
        assert len(orjson.dumps(letter)) <= limit
        assert channel.unfinished(NAME) == 0
    finally:
        channel.close()


def _quotes_command(limit: int) -> bytes:
    """A command of at most `limit` bytes, within 100 of it, whose value is quotes (each a 2-byte
    ``\\"`` in the command and 4 bytes in its dead letter) and which is refused (a version conflict)."""
    head = orjson.dumps({"context_id": "a", "operation": "set", "expected_version": 99, "message_id": "big",
                         "arguments": {"key": "k", "value": ""}})
    body = orjson.dumps({"context_id": "a", "operation": "set", "expected_version": 99, "message_id": "big",
                         "arguments": {"key": "k", "value": '"' * ((limit - len(head) - 64) // 2)}})
    assert limit - 100 < len(body) <= limit
    return body


def _check_cut_dead_letter(letter: dict[str, object], body: bytes, limit: int) -> None:
    assert letter["error"]["type"] == "VersionConflictError" and letter["message_id"] == "big"  # type: ignore[index]
    assert letter["body_truncated"] is True and letter["body_bytes"] == len(body)
    assert body.decode().startswith(str(letter["body"])) and len(str(letter["body"])) > limit // 4
    assert len(orjson.dumps(letter)) <= limit


@pytest.mark.parametrize("told", [True, False], ids=["url-max_message_size", "learned-from-the-refusal"])
def test_a_rejected_amqp_command_near_the_broker_limit_is_dead_lettered_once_with_its_body_cut(
        tmp_path: Path, told: bool) -> None:
    """RabbitMQ refuses a body over its max_message_size by closing the channel (406), which the
    applier took as "broker unavailable": a command within the limit whose dead letter was over it
    came back forever. The limit is now taken from the URL (``?max_message_size=``) or, once, from
    the broker's refusal, and the dead letter's body is cut to fit."""
    require_broker("amqp")
    from tests.bridges.brokers import rabbitmq_max_message_size, url  # noqa: PLC0415

    limit = 65_536
    channel = make_channel("amqp", NAME)
    try:
        with rabbitmq_max_message_size(limit):
            body = _quotes_command(limit)
            source = url("amqp", max_message_size=limit) if told else url("amqp")
            with _system(tmp_path / "s.db") as system, CommandApplier(
                    system, source, channel.subject, dead_letter=channel.dead_letter, name=NAME,
                    call_timeout=5.0) as applier:
                channel.send([body, orjson.dumps({"context_id": "a", "operation": "set", "message_id": "after",
                                                  "arguments": {"key": "k", "value": 1}})])
                wait_for(lambda: applier.stats().rejected + applier.stats().applied >= 2
                         or applier.stats().failures >= 3,
                         60, "both commands handled (or the dead letter failing again and again)")
                stats = applier.stats()
                # told: never refused; not told: refused once, which names the limit
                assert (stats.rejected, stats.applied, stats.failures, stats.error) == (1, 1, 0 if told else 1, None)
            (letter,) = channel.dead_letters()
            _check_cut_dead_letter(letter, body, limit)
            assert channel.unfinished(NAME) == 0
    finally:
        channel.close()


def test_a_rejected_mqtt_command_is_dead_lettered_within_the_url_max_message_size(tmp_path: Path) -> None:
    """Mosquitto's message_size_limit is not told to MQTT 3.1.1 clients (it drops a larger PUBLISH);
    ``?max_message_size=`` tells the applier, which cuts a dead letter to fit it."""
    require_broker("mqtt")
    from tests.bridges.brokers import url  # noqa: PLC0415

    limit = 8_192
    channel = make_channel("mqtt", NAME)
    try:
        body = _quotes_command(limit)
        with _system(tmp_path / "s.db") as system, CommandApplier(
                system, url("mqtt", max_message_size=limit), channel.subject, dead_letter=channel.dead_letter,
                name=NAME, call_timeout=5.0) as applier:
            channel.send([body])
            wait_for(lambda: applier.stats().rejected or applier.stats().failures, 30, "the command handled")
            assert (applier.stats().rejected, applier.stats().failures) == (1, 0)
            (letter,) = wait_for(lambda: list(channel.dead) or None, 30, "the dead letter")
        _check_cut_dead_letter(letter, body, limit)
    finally:
        channel.close()


@pytest.mark.parametrize(("raw", "problem"), [("0", "max_message_size"), ("-5", "max_message_size"),
                                              ("4k", "'4k'")])
@pytest.mark.parametrize("scheme", ["amqp", "mqtt"])
def test_a_max_message_size_that_is_not_a_whole_number_of_bytes_is_refused_with_a_typed_error(
        scheme: str, raw: str, problem: str) -> None:
    pytest.importorskip({"amqp": "pika", "mqtt": "paho.mqtt"}[scheme])
    from hoard import ConfigError  # noqa: PLC0415
    from hoard.bridges import make_publisher, make_source  # noqa: PLC0415

    base = {"amqp": "amqp://guest:guest@127.0.0.1:5672/%2F", "mqtt": "mqtt://127.0.0.1:1883"}[scheme]
    for make in (make_publisher, lambda u: make_source(u, "cmd")):
        with pytest.raises(ConfigError, match=problem):
            make(f"{base}?max_message_size={raw}")


def test_an_mqtt_source_reports_the_protocol_limit_or_the_url_max_message_size() -> None:
    pytest.importorskip("paho.mqtt")
    from hoard.bridges import make_source  # noqa: PLC0415

    plain: Any = make_source("mqtt://127.0.0.1:1883", "t/cmd")
    # a PUBLISH packet's remaining length: topic length (2), topic, packet id (2), payload
    assert plain.message_limit("t/dead", 1.0) == 268_435_455 - 2 - len("t/dead") - 2
    told: Any = make_source("mqtt://127.0.0.1:1883?max_message_size=1000", "t/cmd")
    assert told.message_limit("t/dead", 1.0) == 1000


@pytest.mark.parametrize("dead_letter", ["hoard/dead/#", "hoard/+/dead", ""])
def test_an_mqtt_applier_refuses_a_dead_letter_topic_no_publish_can_use(tmp_path: Path, dead_letter: str) -> None:
    # paho raised ValueError at the first rejected command: the applier's thread died, and the
    # command, never acknowledged, killed the next applier too
    pytest.importorskip("paho.mqtt")
    from hoard import ConfigError  # noqa: PLC0415

    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match=r"MQTT|dead_letter") as raised:
        CommandApplier(system, "mqtt://127.0.0.1:1883", "hoard/cmd/#", dead_letter=dead_letter, name=NAME)
    assert repr(dead_letter) in str(raised.value)


_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
_NATS = "nats://127.0.0.1:4222?stream=NEVERMADE"


@pytest.mark.parametrize(("source", "subject", "dead_letter", "problem"), [
    (_AMQP, "q" * 256, None, "256 bytes"),
    (_AMQP, "é" * 128, None, "256 bytes"),
    (_AMQP, "commands", "d" * 300, "300 bytes"),
    (_AMQP, "amq.commands", None, "amq."),
    (_AMQP, "commands", "amq.dead", "amq."),
    ("mqtt://127.0.0.1:1883", "t/" + "x" * 65_534, None, "65536 bytes"),
    ("mqtt://127.0.0.1:1883", "t/#/x", None, "'#'"),
    ("mqtt://127.0.0.1:1883", "t/a+", None, "'\\+'"),
    ("mqtt://127.0.0.1:1883", "t/cmd", "t/" + "d" * 65_534, "65536 bytes"),
    (_NATS, "cmd s", None, "whitespace"),
    (_NATS, "cmd..s", None, "empty token"),
    (_NATS, "cmd.>.s", None, "'>'"),
    (_NATS, "cmd", "dead letter", "whitespace"),
    (_NATS, "cmd", "dead.*", "wildcard"),
    (_NATS, "cmd", "dead.", "empty token"),
], ids=lambda v: v[:20] if isinstance(v, str) else repr(v))
def test_a_subject_or_dead_letter_the_broker_can_never_use_is_refused_when_the_applier_is_made(
        tmp_path: Path, source: str, subject: str, dead_letter: str | None, problem: str) -> None:
    # each was taken: AMQP and NATS then failed at every connect or publish and were retried as
    # "broker unavailable" forever (AMQP: 11 failures in 2 s), MQTT's thread died on a ValueError
    pytest.importorskip({"amqp": "pika", "mqtt": "paho.mqtt", "nats": "nats"}[source.split(":", 1)[0]])
    from hoard import ConfigError  # noqa: PLC0415

    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match=problem) as raised:
        CommandApplier(system, source, subject, dead_letter=dead_letter, name=NAME)
    assert repr((dead_letter or subject)[:40])[:-1] in str(raised.value)


@pytest.mark.parametrize(("options", "problem"), [
    ("stream=bad.name", "stream"), ("stream=bad%20name", "stream"), ("stream=OKS&name=my.app", "durable"),
    ("stream=OKS&ack_wait=abc", "ack_wait"), ("stream=OKS&ack_wait=-3", "ack_wait"),
    ("stream=OKS&ack_wait=0", "ack_wait"), ("stream=OKS&ack_wait=inf", "ack_wait"),
    ("stream=OKS&ack_wait=nan", "ack_wait"),
])
def test_a_nats_option_the_server_can_never_take_is_refused_when_the_applier_is_made(
        tmp_path: Path, options: str, problem: str) -> None:
    # a stream or durable name with '.' or a space killed the applier's thread with nats-py's
    # ValueError at connect; ack_wait=abc raised a bare ValueError, ack_wait=-3 was taken
    pytest.importorskip("nats")
    from hoard import ConfigError  # noqa: PLC0415

    options, _, name = options.partition("&name=")  # the applier's name names its durable consumer
    with _system(tmp_path / "s.db") as system, pytest.raises(ConfigError, match=problem):
        CommandApplier(system, f"nats://127.0.0.1:4222?{options}", "cmd", name=name or NAME)


def test_a_nats_applier_whose_subject_no_stream_takes_says_so_and_keeps_trying(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # each attempt logged "subscribing: NotFoundError: nats: NotFoundError: code=None err_code=None
    # description='None'", which names neither the subject nor what to do
    require_broker("nats")
    import uuid  # noqa: PLC0415

    subject = f"t{uuid.uuid4().hex[:10]}.nostream"
    with _system(tmp_path / "s.db") as system, CommandApplier(system, "nats://127.0.0.1:4222", subject, name=NAME,
                                                              max_backoff=0.2) as applier:
        wait_for(lambda: applier.stats().failures >= 2, 30, "the applier to try twice")
        assert applier.stats().error is None  # still trying: the stream may be made meanwhile
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"no JetStream stream takes subject {subject!r}" in m and "--stream" in m for m in said), said
