"""``hoard demo``: the lead's `hoard._demo.run_demo`, imported only when the command runs."""

from __future__ import annotations

import importlib.util

import click

__all__ = ["demo"]


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Keep the demo's store in this directory (default: a temporary one, removed afterwards).")
def demo(directory: str | None) -> None:
    """Run the demo: a store on the embedded default, contexts, recovery points, a restart.

    Exit code 0 when every check of the demo passed, 1 otherwise.

    \b
    Examples:
      hoard demo
      hoard demo --dir ./demo-state && hoard ls ./demo-state/demo.db
    """
    if importlib.util.find_spec("hoard._demo") is None:
        raise click.ClickException("hoard demo is not available in this build")
    from .._demo import run_demo  # noqa: PLC0415 - imported only when the command runs

    click.get_current_context().exit(run_demo(directory, echo=click.echo))
