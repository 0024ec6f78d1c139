"""``hoard relay`` and ``hoard apply``: the broker bridges as long-running commands.

Each opens a system on STORE (a SQLite file, created if missing, or a ``postgresql://`` URL; a SQLite
store takes its writer lock, so a relay of a store another program writes runs in that program, as a
`hoard.Relay`), starts the bridge, prints one line when it runs (a JSON object with ``--json``), and
runs until SIGTERM or SIGINT (or until the bridge stops on its own), then stops the bridge and the
system and prints what it did. Exit code 0 after a signal, 1 when it could not start (bad URL,
missing client extra, store refused) or the bridge stopped on its own with an error (within a
second of it: the command does not linger with a dead bridge).
"""

from __future__ import annotations

import signal
from typing import Any

import click
import orjson

from .._bridges import CommandApplier, Relay
from .._config import ContextAdapterConfig, ContextManagerConfig
from .._daemon import run_forever
from .._system import ContextSystem, open_system
from ._common import json_option

__all__ = ["apply", "relay"]


def _open(store: str) -> ContextSystem:
    return open_system(store, manager_config=ContextManagerConfig(),
                       adapter_config=ContextAdapterConfig(auto_activate_default=False))


def _say(as_json: bool, doc: dict[str, Any], text: str) -> None:
    click.echo(orjson.dumps(doc).decode() if as_json else text)


def _serve(system: ContextSystem, bridge: Relay | CommandApplier) -> None:
    """Until SIGTERM or SIGINT, or until the bridge stops on its own (an error it does not retry)."""
    run_forever(system, signals=(signal.SIGTERM, signal.SIGINT), until=lambda: not bridge.running)


@click.command("relay")
@click.argument("store")
@click.option("--to", "url", required=True, metavar="URL",
              help="The broker: nats://host:4222?stream=S, mqtt://host:1883, amqp://user:pw@host:5672/%2F, "
                   "redis://host:6379/0.")
@click.option("--subject", default="hoard.{context_id}", show_default=True, metavar="TEMPLATE",
              help="Subject / topic / routing key / stream key; {context_id} is replaced by the context id.")
@click.option("--name", default=None, help="The feed consumer's name (default: from the URL and subject).")
@click.option("--batch", default=256, show_default=True, type=click.IntRange(1),
              help="Entries read and published at once.")
@click.option("--unpublishable", default="stop", show_default=True, type=click.Choice(["stop", "skip"]),
              help="A change the broker can never take (an AMQP routing key over 255 bytes, a message over "
                   "NATS max_payload, a body over RabbitMQ's max_message_size): stop just before it (exit 1), "
                   "or log it and skip it.")
@json_option
def relay(store: str, url: str, subject: str, name: str | None, batch: int,  # noqa: PLR0917 - click passes options by name
          unpublishable: str, as_json: bool) -> None:
    """Publish every committed change of STORE to a broker, at least once, in order per context.

    Follows the store's change feed as a named consumer and commits its offset only after the broker
    confirmed; a relay killed at any moment goes on from there when started again (JetStream drops
    the repeats by message id). Runs until SIGTERM or SIGINT. The payload is JSON format 1
    (README, "Broker bridges").

    \b
    Examples:
      hoard relay state.db --to 'nats://127.0.0.1:4222?stream=HOARD'
      hoard relay postgresql://hoard@db/app --to mqtt://127.0.0.1:1883 --subject 'hoard/{context_id}'
    """
    system = _open(store)
    try:
        bridge = Relay(system, url, subject=subject, name=name, batch=batch, unpublishable=unpublishable).start()
        lag = bridge.lag()
        _say(as_json, {"relay": bridge.name, "to": bridge.url, "subject": subject, "position": lag.position},
             f"relaying {store} to {bridge.url} as {bridge.name!r} from feed offset {lag.position} "
             "(SIGTERM or Ctrl-C stops)")
        _serve(system, bridge)
        lag = bridge.lag()
    finally:
        system.stop()
    _say(as_json, {"relay": bridge.name, "published": lag.published, "failures": lag.failures,
                   "skipped": lag.skipped, "position": lag.position, "error": lag.error},
         f"stopped: {lag.published} entries published, {lag.failures} broker failures, {lag.skipped} skipped, "
         f"offset {lag.position}")
    if lag.error is not None:
        raise click.ClickException(f"the relay stopped: {lag.error}")


@click.command("apply")
@click.argument("store")
@click.option("--from", "url", required=True, metavar="URL",
              help="The broker: nats://host:4222, amqp://user:pw@host:5672/%2F, mqtt://host:1883.")
@click.option("--subject", required=True, help="The JetStream subject, AMQP queue or MQTT topic filter to consume.")
@click.option("--dead-letter", "dead_letter", default=None, metavar="SUBJECT",
              help="Where rejected commands go, with their typed error (default: answered and logged only).")
@click.option("--stream", default=None, metavar="NAME", help="The JetStream stream (created when missing).")
@click.option("--name", default="hoard-apply", show_default=True,
              help="The durable consumer / MQTT client id.")
@json_option
def apply(store: str, url: str, subject: str, dead_letter: str | None,  # noqa: PLR0917 - click passes options by name
          stream: str | None, name: str, as_json: bool) -> None:
    """Apply commands from a broker to the contexts of STORE, exactly once in effect.

    Each command (JSON format 1: context_id, operation set | update | delete | set_metadata,
    arguments, message_id, expected_version) is written with its message_id as the idempotency key
    and acknowledged after the commit, so a redelivered command is applied once. A bad command is
    acknowledged and answered or dead-lettered with its typed error. Runs until SIGTERM or SIGINT.

    \b
    Examples:
      hoard apply state.db --from nats://127.0.0.1:4222 --stream CMDS --subject cmds.hoard --dead-letter cmds.dead
      hoard apply state.db --from amqp://guest:guest@127.0.0.1:5672/%2F --subject hoard-commands
    """
    system = _open(store)
    try:
        bridge = CommandApplier(system, url, subject, dead_letter=dead_letter, stream=stream, name=name).start()
        _say(as_json, {"apply": bridge.name, "from": bridge.url, "subject": subject, "dead_letter": dead_letter},
             f"applying commands from {bridge.url} {subject!r} to {store} (SIGTERM or Ctrl-C stops)")
        _serve(system, bridge)
        stats = bridge.stats()
    finally:
        system.stop()
    _say(as_json, {"apply": bridge.name, "applied": stats.applied, "rejected": stats.rejected,
                   "failures": stats.failures, "error": stats.error},
         f"stopped: {stats.applied} commands applied, {stats.rejected} rejected, {stats.failures} failures")
    if stats.error is not None:
        raise click.ClickException(f"the applier stopped: {stats.error}")
