"""The command line as a whole: help with examples, exit codes, errors without tracebacks, demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hoard.cli._main import cli

from .conftest import Hoard, no_traceback

COMMANDS = ["ls", "show", "history", "diff", "restore", "export", "import", "verify", "compact", "stats", "demo",
            "bench", "relay", "apply"]


def test_every_command_has_help_with_an_example(hoard: Hoard) -> None:
    top = hoard("--help")  # the installed entry point, once
    assert top.code == 0
    assert sorted(cli.commands) == sorted(COMMANDS)  # a command added is a command checked here
    runner = CliRunner()
    for name in COMMANDS:  # in this process: a subprocess each took 0.9 s
        assert name in top.out
        r = runner.invoke(cli, [name, "--help"], prog_name="hoard")
        assert r.exit_code == 0, (name, r.output)
        assert "Example" in r.output and f"hoard {name}" in r.output, name


def test_version(hoard: Hoard) -> None:
    r = hoard("--version")
    assert r.code == 0 and "version" in r.out


@pytest.mark.parametrize("args", [["frobnicate"], ["show"], ["ls", "--no-such-option", "x"],
                                  ["ls", "missing.db"], ["restore", "x.db", "id", "not-a-number"]])
def test_usage_errors_exit_2(hoard: Hoard, args: list[str]) -> None:
    r = hoard(*args)
    assert r.code == 2, r
    no_traceback(r)


def test_a_file_that_is_not_a_store_fails_with_a_message(hoard: Hoard, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, this is not SQLite\n" * 100)
    for args in (["ls", "notes.txt"], ["show", "notes.txt", "x"], ["stats", "notes.txt"],
                 ["compact", "notes.txt"], ["verify", "notes.txt"]):
        r = hoard(*args)
        assert r.code == 1, args
        assert r.err.startswith("Error: ") and "notes.txt" in r.err
        no_traceback(r)
    assert (tmp_path / "notes.txt").read_text().startswith("hello")  # untouched


def test_an_empty_file_is_not_turned_into_a_store(hoard: Hoard, tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    r = hoard("compact", "empty.db")
    assert r.code == 1 and "not a hoard store" in r.err
    assert (tmp_path / "empty.db").read_bytes() == b""


def test_demo_runs_and_reruns_in_the_same_folder(hoard: Hoard, tmp_path: Path) -> None:
    for _ in range(2):  # the second run starts from the balances the first one stored
        r = hoard("demo", "--dir", str(tmp_path / "demo"))
        assert r.code == 0, r.out + r.err
        no_traceback(r)
        assert "FAILED" not in r.out
        # what it says of the current context after the reopen is what the reopened system has
        assert "current is 'default' (before the stop it was 'account-00'; a reopen starts at the default" in r.out
    stores = list((tmp_path / "demo").glob("*.db"))
    assert stores
    assert hoard("ls", str(stores[0]), "--json").json() != []
