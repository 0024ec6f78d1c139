"""Redis Streams backend (redis-py; ``pip install 'hoard-contexts[redis]'``), outbound only.

Every message is one ``XADD`` to the stream named by the rendered subject (a template without
``{context_id}`` puts every context in one stream), with the fields ``message_id``
(``<context id>:<version>``) and ``body`` (the JSON). A batch is one pipeline (no MULTI): the XADDs are
sent in order on one connection and the batch returns when every reply came; Redis has no id it
de-duplicates on, so a batch published again after a crash arrives again (``message_id`` lets a reader
drop repeats). ``?maxlen=N`` trims each stream to about N entries (``MAXLEN ~``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.exceptions

from hoard.storage import ConfigError

from ._broker import Outgoing, public_url, url_options
from ._errors import BrokerUnavailableError

__all__ = ["RedisPublisher"]


class RedisPublisher:
    """Publishes with XADD in pipelined batches (see the module docstring)."""

    def __init__(self, url: str, *, subject: str = "hoard.{context_id}", maxlen: int | None = None) -> None:
        del subject  # the stream key is rendered per message
        self.url = public_url(url)
        self._raw = url.split("?", 1)[0]
        option = url_options(url).get("maxlen")
        self._maxlen = maxlen if maxlen is not None else (int(option) if option and option.isdigit() else option)
        if self._maxlen is not None and (type(self._maxlen) is not int or self._maxlen < 1):
            raise ConfigError(f"maxlen must be an int >= 1 (entries kept per stream), not {self._maxlen!r}")
        # XADD's trimming arguments, the same for every message: MAXLEN ~ N (approximate), or none
        self._trim: tuple[bytes, ...] = () if self._maxlen is None else (b"MAXLEN", b"~", b"%d" % self._maxlen)
        self._client: redis.Redis | None = None

    def connect(self, timeout: float) -> None:
        client = redis.Redis.from_url(self._raw, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      retry_on_timeout=False)
        try:
            client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            client.close()
            raise BrokerUnavailableError(self.url, f"connecting: {type(exc).__name__}: {exc}") from exc
        self._client = client

    def publish(self, messages: Sequence[Outgoing], timeout: float) -> None:  # socket_timeout bounds it
        if self._client is None:
            raise BrokerUnavailableError(self.url, "not connected")
        pipe = self._client.pipeline(transaction=False)
        command: Callable[..., Any] = pipe.execute_command  # redis-py leaves it untyped
        trim = self._trim
        # what pipe.xadd sends, without rebuilding its arguments per message; as bytes, which redis-py's
        # packer takes as they are (a str goes through its encoder's type checks, argument by argument)
        for m in messages:
            command(b"XADD", m.subject.encode(), *trim, b"*", b"message_id", m.message_id.encode(), b"body", m.body)
        try:
            pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BrokerUnavailableError(self.url, f"XADD: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
