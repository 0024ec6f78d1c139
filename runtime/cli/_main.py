"""The `hoard` command group: every command registered, and the translation of errors into exit
codes: 0 success, 1 failure (an ``Error: ...`` line on stderr, no traceback), 2 usage error."""

from __future__ import annotations

from typing import Any

import click

from hoard.storage import HoardError

from .._version import DISTRIBUTION
from ._archive import export, import_
from ._bench import bench
from ._demo import demo
from ._inspect import history, ls, show, stats
from ._maintain import compact, restore, verify

__all__ = ["cli", "main"]


class _HoardGroup(click.Group):
    """Turns the errors a user can cause (and act on) into a message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HoardError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a file the user named: unreadable, unwritable, disk full
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from exc


@click.group(cls=_HoardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION)
def cli() -> None:
    """hoard: durable named contexts for long-running Python programs.

    Inspect and maintain a store offline (read-only commands work while a program has it open),
    run the demo, and benchmark hoard on this machine.

    \b
    Examples:
      hoard ls state.db
      hoard show state.db cart-42 --json
      hoard bench --quick
    """


for _command in (ls, show, history, stats, restore, export, import_, verify, compact, demo, bench):
    cli.add_command(_command)


def main() -> None:
    """The console script: run `cli` and exit with its code."""
    cli(prog_name="hoard")
