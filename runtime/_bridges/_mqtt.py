"""MQTT backend (paho-mqtt 2; ``pip install 'hoard-contexts[mqtt]'``), MQTT 3.1.1, QoS 1.

paho runs its network loop on a thread of its own ("paho-mqtt-client-...", started by `connect`,
joined by `close`); the bridge's thread publishes and waits on the message infos.

Out: every message at QoS 1; a batch returns when every PUBACK came. (MQTT has no message id a broker
de-duplicates on: a batch published again after a crash arrives again; the payload's ``message_id``
lets a subscriber drop repeats.)

In: a persistent session (``clean_session=False``, client id ``?client_id=`` or the bridge's name) with
a QoS 1 subscription and manual acknowledgement: a PUBACK is sent only by `ack`, after the write
committed, so a command whose bridge was killed is delivered again when the session resumes.
Mosquitto keeps at most ``max_queued_messages`` (1,000 by default) for a session whose client is away
and drops the rest, acknowledging them to their sender: a broker that carries commands needs
``max_queued_messages 0`` or a bound the backlog cannot reach.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ._broker import Incoming, Outgoing, check_usable, public_url, size_option, url_options
from ._errors import BrokerUnavailableError
from ._format import render_subject

__all__ = ["MqttCommandSource", "MqttPublisher"]

_INFLIGHT = 1000
#: MQTT's limits: a topic's UTF-8 bytes, and a packet's remaining length
_TOPIC_BYTES = 65_535
_TOPIC_CHARS = _TOPIC_BYTES // 4
_PACKET_BYTES = 268_435_455


def _topic_problem(topic: str, *, filter_: bool) -> str | None:
    """What makes `topic` unusable on MQTT (None: nothing): a topic published to (a subject
    template: its literal text; the context ids go in percent-encoded) or, with `filter_`, a
    subscription's filter. paho raises ValueError for these at the first publish or subscribe."""
    size = len(topic.encode("utf-8", "surrogatepass"))
    if not topic or "\x00" in topic or size > _TOPIC_BYTES:
        return f"an MQTT topic has 1 to {_TOPIC_BYTES} UTF-8 bytes and no NUL (this one {size} bytes)"
    if not filter_:
        return "an MQTT topic published to holds no wildcard ('+', '#')" if "+" in topic or "#" in topic else None
    levels = topic.split("/")
    if any("#" in level and (level != "#" or i != len(levels) - 1) for i, level in enumerate(levels)):
        return "an MQTT filter's '#' is its whole last level"
    if any("+" in level and level != "+" for level in levels):
        return "an MQTT filter's '+' is a whole level"
    return None


def _check_topic(topic: str, what: str, url: str, *, filter_: bool = False, template: bool = False) -> None:
    """`ConfigError` naming `topic` if `_topic_problem` finds one (a `template` with a 1-byte id)."""
    check_usable(topic, what, url, _topic_problem(render_subject(topic, "c") if template else topic, filter_=filter_))


class _Client:
    def __init__(self, url: str, client_id: str = "", *, persistent: bool = False, manual_ack: bool = False) -> None:
        parts = urlsplit(url)
        self.url = public_url(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.username, self.password = parts.username, parts.password
        self.client_id = client_id
        self.persistent = persistent
        self.manual_ack = manual_ack
        self.client: mqtt.Client | None = None
        self.connected: queue.Queue[int] = queue.Queue()

    def open(self, timeout: float, on_message: Any = None) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=not self.persistent, manual_ack=self.manual_ack)
        client.max_inflight_messages_set(_INFLIGHT)
        client.max_queued_messages_set(0)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put(rc.value)
        if on_message is not None:
            client.on_message = on_message
        try:
            client.connect(self.host, self.port, keepalive=max(5, int(timeout * 4)))
        except OSError as exc:
            raise BrokerUnavailableError(self.url, f"connecting: {exc}") from exc
        client.loop_start()
        self.client = client
        try:
            rc = self.connected.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise BrokerUnavailableError(self.url, f"no CONNACK within {timeout:g} s") from None
        if rc != 0:
            self.close()
            raise BrokerUnavailableError(self.url, f"connection refused (code {rc})")
        return client

    def publish(self, messages: Sequence[tuple[str, bytes]], timeout: float) -> None:
        self.wait(self.send(messages), timeout)

    def send(self, messages: Sequence[tuple[str, bytes]]) -> list[mqtt.MQTTMessageInfo]:
        """Hand the messages to paho (its thread writes them, in order); their infos, for `wait`."""
        client = self.client
        if client is None or not client.is_connected():
            raise BrokerUnavailableError(self.url, "not connected")
        return [client.publish(topic, body, qos=1) for topic, body in messages]

    def wait(self, infos: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
        """Wait until every message of `infos` is acknowledged (PUBACK), at most `timeout` for them all."""
        deadline = time.monotonic() + timeout
        for info in infos:
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailableError(self.url, f"publish refused: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(max(0.001, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as exc:  # paho: the connection went away meanwhile
                raise BrokerUnavailableError(self.url, f"publishing: {exc}") from exc
            if not info.is_published():
                raise BrokerUnavailableError(self.url, f"no PUBACK within {timeout:g} s")

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        with contextlib.suppress(Exception):  # a broken connection: nothing left to report
            client.disconnect()
        client.loop_stop()


class MqttPublisher:
    """Publishes at QoS 1 and waits for every PUBACK (see the module docstring)."""

    def __init__(self, url: str, *, subject: str = "hoard/{context_id}", client_id: str | None = None) -> None:
        self.url = public_url(url)
        _check_topic(subject, "the subject template", url, template=True)
        self._client = _Client(url, client_id or url_options(url).get("client_id", ""))
        self._max_body = size_option(url)  # the broker's message_size_limit, when the URL says it

    def connect(self, timeout: float) -> None:
        self._client.open(timeout)

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:
        self.wait(self.send(messages, timeout), timeout)

    def unpublishable(self, messages: Sequence[Outgoing]) -> tuple[int, str] | None:
        """The first message MQTT cannot carry (a topic over 65,535 bytes, or a PUBLISH packet over
        268,435,455 bytes: paho refuses both) or the broker would drop (a body over the URL's
        ``max_message_size``), and why; None when there is none."""
        limit = self._max_body
        for index, m in enumerate(messages):
            if limit is not None and len(m.body) > limit:
                return index, f"its body is {len(m.body)} bytes, over the URL's max_message_size of {limit}"
            if len(m.subject) > _TOPIC_CHARS or len(m.body) > _PACKET_BYTES - 4 - 4 * len(m.subject):
                topic = len(m.subject.encode("utf-8", "surrogatepass"))
                if topic > _TOPIC_BYTES:
                    return index, f"its topic is {topic} bytes, and MQTT takes at most {_TOPIC_BYTES}"
                if 2 + topic + 2 + len(m.body) > _PACKET_BYTES:  # topic length, topic, packet id, payload
                    return index, f"its PUBLISH packet is over MQTT's {_PACKET_BYTES} bytes"
        return None

    def send(self, messages: Sequence[Outgoing], timeout: float) -> list[mqtt.MQTTMessageInfo]:
        """Hand the batch to paho's thread and return at once (what `wait` takes)."""
        del timeout  # `wait` bounds it
        return self._client.send([(m.subject, m.body) for m in messages])

    def wait(self, sent: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
        """Wait for every PUBACK of a batch `send` handed over."""
        self._client.wait(sent, timeout)

    def close(self) -> None:
        self._client.close()


class MqttCommandSource:
    """Commands from a QoS 1 subscription of a persistent session (see the module docstring)."""

    def __init__(self, url: str, subject: str, *, client_id: str | None = None, dead_letter: str | None = None,
                 **_ignored: Any) -> None:
        self.url = public_url(url)
        _check_topic(subject, "the topic filter", url, filter_=True)
        if dead_letter is not None:
            _check_topic(dead_letter, "the dead-letter topic", url)
        cid = client_id or url_options(url).get("client_id") or "hoard-apply"
        self._client = _Client(url, cid, persistent=True, manual_ack=True)
        self._subject = subject
        self._max_body = size_option(url)
        self._inbox: queue.Queue[Any] = queue.Queue()

    def connect(self, timeout: float) -> None:
        self._inbox = queue.Queue()
        inbox = self._inbox
        client = self._client.open(timeout, on_message=lambda _c, _u, msg: inbox.put(msg))
        result, _mid = client.subscribe(self._subject, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._client.close()
            raise BrokerUnavailableError(self.url, f"subscribing: {mqtt.error_string(result)}")

    def fetch(self, max_messages: int, timeout: float) -> list[Incoming]:
        client = self._client.client
        if client is None or not client.is_connected():
            raise BrokerUnavailableError(self.url, "not connected")
        out: list[Incoming] = []
        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return out
        while True:
            out.append(Incoming(bytes(msg.payload), None, msg))
            if len(out) >= max_messages:
                return out
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return out

    def message_limit(self, subject: str, timeout: float) -> int | None:
        """The largest answer or dead letter body for topic `subject`: what a PUBLISH packet of
        268,435,455 bytes leaves (topic length, topic, packet id), or the URL's ``max_message_size``
        when smaller. No broker call."""
        del timeout
        packet = _PACKET_BYTES - 2 - len(subject.encode("utf-8", "surrogatepass")) - 2
        return packet if self._max_body is None else min(packet, self._max_body)

    def ack(self, message: Incoming) -> None:
        client = self._client.client
        if client is None:
            raise BrokerUnavailableError(self.url, "not connected")
        rc = client.ack(message.handle.mid, message.handle.qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailableError(self.url, f"acknowledging: {mqtt.error_string(rc)}")

    def send(self, subject: str, body: bytes, timeout: float) -> None:
        self._client.publish([(subject, body)], timeout)

    def close(self) -> None:
        self._client.close()
