"""Entry point of the `hoard` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hoard")
def cli() -> None:
    """hoard: durable named contexts for long-running Python programs."""


def main() -> None:
    from . import _demo  # noqa: F401 - registers the command
    cli()
