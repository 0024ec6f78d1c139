"""The command line behaves like a Unix tool: a reader that closes the pipe early ends it quietly
(exit 0, nothing on stderr), and with ``--json`` every failure is one JSON object on stderr with the
exit code it has without ``--json``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hoard import open_system
from hoard.storage import ContextState, CreateContext, SQLiteStore

from .conftest import HOARD, NO_DEFAULT, Hoard, Result, command_env, damage_snapshot, no_traceback

#: enough rows that `hoard ls` writes several times what a pipe holds (64 KiB on Linux) plus what
#: `head` reads before it exits: the writer is certain to find the pipe closed
MANY = 5_000


@pytest.fixture
def big_store(tmp_path: Path) -> Path:
    path = tmp_path / "big.db"
    store = SQLiteStore(path)
    store.open()
    try:
        store.commit([CreateContext(ContextState(f"context-{i:05d}", 1)) for i in range(MANY)])
    finally:
        store.close()
    return path


def test_ls_into_head_ends_quietly_with_exit_0(big_store: Path, tmp_path: Path) -> None:
    writer = subprocess.Popen([*HOARD, "ls", str(big_store)], cwd=tmp_path, env=command_env(),  # noqa: S603
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)  # noqa: S607
    writer.stdout.close()  # head holds the only read end now; it exits after one line
    first, _ = head.communicate(timeout=120)
    err = writer.stderr.read().decode()
    writer.stderr.close()
    assert writer.wait(timeout=120) == 0, err
    assert err == ""
    assert head.returncode == 0
    assert first.decode().split() == ["ID", "VERSION", "STORED", "UPDATED", "RPS"]


def _with_closed_stdout(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run hoard with stdout a pipe whose read end is already closed: its first write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*HOARD, *args], cwd=cwd, env=command_env(), stdout=write_end,  # noqa: S603
                              stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["ls", "--help"],
    ["ls", "{store}"], ["ls", "{store}", "--json"], ["show", "{store}", "cart-42"],
    ["show", "{store}", "cart-42", "--json"], ["show", "{store}", "cart-42", "--key", "items"],
    ["history", "{store}", "cart-42"], ["history", "{store}", "cart-42", "--json"], ["stats", "{store}"],
    ["verify", "{store}"], ["export", "{store}", "{tmp}/out.hoard"], ["import", "{tmp}/new.db", "{archive}"],
    ["restore", "{store}", "cart-42", "1", "--json"], ["compact", "{store}"], ["demo", "--dir", "{tmp}/demo"],
], ids=lambda args: " ".join(a for a in args if "{" not in a))
def test_every_command_ends_quietly_when_stdout_is_closed(args: list[str], hoard: Hoard, store: Path,
                                                          tmp_path: Path) -> None:
    archive = tmp_path / "all.hoard"
    if args[0] == "import":
        assert hoard("export", str(store), str(archive)).code == 0
    filled = [a.format(store=store, tmp=tmp_path, archive=archive) for a in args]
    r = _with_closed_stdout(filled, tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    if args[0] in ("import", "restore", "compact"):  # the work was done before the output failed
        assert hoard("verify", filled[1], "--json").json()["ok"] is True


@pytest.mark.slow
def test_bench_ends_quietly_when_stdout_is_closed(tmp_path: Path) -> None:
    r = _with_closed_stdout(["bench", "--quick", "--only", "get", "--dir", str(tmp_path)], tmp_path)
    assert (r.returncode, r.stderr) == (0, "")


# -- errors as JSON ---------------------------------------------------------------------------------
def _json_error(r: Result, code: int, kind: str) -> dict[str, object]:
    assert r.code == code, r.err
    assert r.out == ""
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err  # one object, one line
    report = json.loads(lines[0])
    assert report.keys() == {"error", "type", "exit_code"}
    assert (report["type"], report["exit_code"]) == (kind, code)
    assert isinstance(report["error"], str) and report["error"]
    return report


@pytest.mark.parametrize(("args", "code", "kind", "words"), [
    # usage errors (exit 2)
    (["ls", "missing.db"], 2, "BadParameter", "'missing.db' does not exist"),
    (["ls", "{store}", "--bogus"], 2, "NoSuchOption", "--bogus"),
    (["show"], 2, "MissingParameter", "STORE"),
    (["restore", "{store}", "cart-42", "one"], 2, "BadParameter", "'one' is not a valid integer"),
    (["import", "{tmp}/new.db", "{tmp}/missing.hoard"], 2, "BadParameter", "does not exist"),
    (["ls", "{store}", "--updated-since", "yesterday-ish"], 2, "BadParameter", "neither a date"),
    (["bench", "--only", "nonsense"], 2, "BadParameter", "nonsense"),
    (["frobnicate"], 2, "NoSuchCommand", "No such command 'frobnicate'"),
    # failures (exit 1)
    (["show", "{store}", "nope"], 1, "ContextNotFoundError", "context 'nope' does not exist"),
    (["history", "{store}", "nope"], 1, "ContextNotFoundError", "`hoard ls"),
    (["show", "{store}", "cart-42", "--key", "nokey"], 1, "HoardError", "has no key 'nokey'"),
    (["show", "{store}", "cart-42", "--version", "99"], 1, "HoardError", "no version 99"),
    (["ls", "{tmp}/notes.txt"], 1, "CorruptStateError", "notes.txt"),
    (["stats", "{tmp}/notes.txt"], 1, "CorruptStateError", "not a hoard store"),
    (["show", "{damaged}", "cart-7"], 1, "CorruptStateError", "hoard verify --fix"),
    (["export", "{damaged}", "{tmp}/d.hoard"], 1, "CorruptStateError", "hoard verify --fix"),
    (["export", "{store}", "{tmp}/no/such/dir/a.hoard"], 1, "PersistenceError", "does not exist"),
    (["export", "{store}", "{tmp}/exists.hoard"], 1, "HoardError", "--force"),
    (["import", "{tmp}/new.db", "{tmp}/notes.txt"], 1, "CorruptStateError", "not a hoard archive"),
    (["restore", "{store}", "cart-42", "9"], 1, "HoardError", "no recovery point 9"),
])
def test_with_json_every_error_is_one_json_object_with_the_same_exit_code(  # noqa: PLR0917 - pytest's parameters
        args: list[str], code: int, kind: str, words: str, hoard: Hoard, store: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, this is not SQLite\n" * 100)
    (tmp_path / "exists.hoard").write_bytes(b"keep")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(store.read_bytes())
    damage_snapshot(damaged, "cart-7", 1)  # its only snapshot: cart-7 cannot be loaded
    filled = [a.format(store=store, tmp=tmp_path, damaged=damaged) for a in args]
    before = store.read_bytes()
    plain = hoard(*filled)
    assert plain.code == code and words in plain.err, plain.err
    no_traceback(plain)
    # --json last; for usage errors also right after the command name (before what fails to parse)
    for where in (len(filled), 1) if code == 2 else (len(filled),):
        report = _json_error(hoard(*filled[:where], "--json", *filled[where:]), code, kind)
        assert words in str(report["error"])
    assert store.read_bytes() == before  # a failed command changed nothing


def test_an_unreachable_postgres_store_is_reported_once_even_with_json(hoard: Hoard) -> None:
    # psycopg-pool logs each failed attempt to connect; hoard's error already names the cause, and
    # with --json a failure is one JSON object on stderr: the pool's lines were printed before it
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    with ThreadPoolExecutor(2) as pool:
        plain, as_json = pool.map(lambda extra: hoard("stats", url, *extra), ((), ("--json",)))
    assert plain.code == 1, plain.err
    assert plain.err.splitlines() == [plain.err.strip()] and plain.err.startswith("Error: cannot connect"), plain.err
    report = _json_error(as_json, 1, "PersistenceError")
    assert f"127.0.0.1:{port}" in str(report["error"])


def test_with_json_a_store_open_elsewhere_is_a_json_error(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    with open_system(store, adapter_config=NO_DEFAULT):
        for args in (["compact", str(store)], ["import", str(store), str(archive), "--replace"],
                     ["restore", str(store), "cart-42", "1"], ["verify", str(store), "--fix"]):
            report = _json_error(hoard(*args, "--json"), 1, "StoreLockedError")
            assert "open for writing by another system or process" in str(report["error"])


def test_verify_of_a_damaged_store_keeps_its_json_result_on_stdout(hoard: Hoard, store: Path) -> None:
    damage_snapshot(store, "cart-7", 1)
    r = hoard("verify", str(store), "--json")
    assert r.code == 1 and r.err == ""  # a finding, not an error: the report is the output
    assert json.loads(r.out)["ok"] is False


def test_a_damaged_context_is_reported_with_advice_for_the_command_line(hoard: Hoard, store: Path) -> None:
    damage_snapshot(store, "cart-7", 1)
    r = hoard("show", str(store), "cart-7")
    assert r.code == 1
    no_traceback(r)
    assert f"hoard verify {store}" in r.err and f"hoard verify --fix {store}" in r.err
    assert "recovery=" not in r.err and "verify()" not in r.err  # the Python API's advice, not a command's


def test_a_store_path_that_is_not_utf8_is_a_usage_error(hoard: Hoard, store: Path, tmp_path: Path) -> None:
    """Decided: refused (exit 2) rather than supported; a path is printed in messages and JSON."""
    odd = os.fsdecode(b"st\xff.db")
    shutil.copy(store, tmp_path / odd)
    archive = tmp_path / "a.hoard"
    assert hoard("export", str(store), str(archive)).code == 0
    for args in (["ls", odd], ["ls", odd, "--json"], ["import", os.fsdecode(b"n\xff.db"), str(archive)],
                 ["export", str(store), os.fsdecode(b"o\xff.hoard")]):
        r = hoard(*args)
        assert r.code == 2 and "UTF-8" in r.err, (args, r.err)
        no_traceback(r)
        if "--json" in args:
            assert json.loads(r.err)["exit_code"] == 2
    assert not any(p.name.startswith(("n", "o")) for p in tmp_path.iterdir())  # nothing created
