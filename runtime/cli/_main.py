"""The `hoard` command group: every command registered, and how a command ends.

Exit codes: 0 success, 1 failure (an ``Error: ...`` line on stderr, no traceback), 2 usage error.
With ``--json`` a failure is instead one JSON object on one line of stderr,
``{"error": message, "type": exception class, "exit_code": 1 or 2}``, with the same exit codes.
A reader that closes stdout early (``hoard ls big.db | head -1``) ends the command quietly with exit
0: nothing on stderr, the rest of the output discarded.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import click
import orjson

from hoard.storage import CorruptStateError, HoardError

from .._version import DISTRIBUTION
from ._archive import export, import_
from ._bench import bench
from ._bridge import apply, relay
from ._changes import diff
from ._common import JSON_META, STORE_META, discard_stdout
from ._demo import demo
from ._inspect import history, ls, show, stats
from ._maintain import compact, restore, verify

__all__ = ["CommandError", "CommandUsageError", "cli", "main"]

#: what the store's strict load appends to a `CorruptStateError` for users of the Python API
#: (hoard.storage, `FALLBACK_HINT`); the command line gives its own advice instead. Pinned by
#: tests/cli/test_unix.py::test_a_damaged_context_is_reported_with_advice_for_the_command_line.
_API_ADVICE = re.compile(r";\s*open the store with recovery='fallback'.*$", re.S)


class CommandError(click.ClickException):
    """A failure (exit code 1) reported the way the command was asked to: click's ``Error: ...``
    line, or with ``--json`` one JSON object on stderr. `kind` is the name of the exception class
    behind it."""

    def __init__(self, message: str, kind: str, *, as_json: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.as_json = as_json

    def show(self, file: IO[Any] | None = None) -> None:
        if not self.as_json:
            super().show(file)
            return
        stream = file if file is not None else sys.stderr
        report = {"error": self.format_message(), "type": self.kind, "exit_code": self.exit_code}
        stream.write(orjson.dumps(report).decode() + "\n")
        stream.flush()


class CommandUsageError(CommandError):
    """A usage error (exit code 2) given ``--json``: click's own message, as a JSON object."""

    exit_code = 2


def _wants_json(ctx: click.Context, args: Sequence[str]) -> bool:
    """Whether the command was given ``--json``: as parsed (``ctx.meta``, set by the eager option)
    or, when parsing failed before that, as written (before a ``--``)."""
    if JSON_META in ctx.meta:
        return bool(ctx.meta[JSON_META])
    words = list(args)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def _message(exc: BaseException, ctx: click.Context) -> str:
    if isinstance(exc, CorruptStateError) and exc.context_id is not None:
        store = ctx.meta.get(STORE_META, "STORE")
        return (_API_ADVICE.sub("", str(exc)) + f". Run `hoard verify {store}` to list every problem, and "
                f"`hoard verify --fix {store}` to repair what can be repaired without losing an acknowledged "
                "change.")
    if isinstance(exc, OSError) and not isinstance(exc, HoardError):  # a file the user named
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return str(exc)


class _HoardGroup(click.Group):
    """Turns what a user can cause (and act on) into a message and an exit code, and a closed
    stdout into a quiet exit 0."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # `hoard --help | head -1`: the group's own options print here
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            _stdout_closed()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["hoard.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()
        except (HoardError, OSError) as exc:
            raise CommandError(_message(exc, ctx), type(exc).__name__,
                               as_json=_wants_json(ctx, ctx.meta.get("hoard.argv", ()))) from exc
        except click.ClickException as exc:  # usage errors, and the commands' own refusals
            if not _wants_json(ctx, ctx.meta.get("hoard.argv", ())):
                raise
            error = CommandUsageError if exc.exit_code == CommandUsageError.exit_code else CommandError
            raise error(exc.format_message(), type(exc).__name__, as_json=True) from exc


def _stdout_closed() -> NoReturn:
    discard_stdout()
    raise click.exceptions.Exit(0)


@click.group(cls=_HoardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION)
def cli() -> None:
    """hoard: durable named contexts for long-running Python programs.

    Inspect and maintain a store offline (read-only commands work while a program has it open),
    run the demo, and benchmark hoard on this machine. With --json, output and errors are JSON.

    \b
    Examples:
      hoard ls state.db
      hoard show state.db cart-42 --json
      hoard bench --quick
    """


for _command in (ls, show, history, diff, stats, restore, export, import_, verify, compact, demo, bench, relay,
                 apply):
    cli.add_command(_command)


def main() -> None:
    """The console script: run `cli` and exit with its code. Output still buffered at exit is
    flushed here, so a reader that went away after the last write also ends quietly.

    psycopg-pool's warning for each failed attempt to connect is not shown: the command's own error
    names the cause once, and with ``--json`` a failure is one JSON object on stderr."""
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        cli(prog_name="hoard")
    finally:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            discard_stdout()
