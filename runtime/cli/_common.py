"""What every `hoard` command shares: output (rich on a TTY, plain otherwise, JSON for scripts),
opening a store for reading or writing, progress bars, formatting, and parsing of times.

Output ends quietly when its reader goes away (``hoard ls big.db | head -1``): a write to a closed
pipe raises `BrokenPipeError` (Python ignores SIGPIPE), which the command group turns into exit 0
after pointing stdout at ``os.devnull`` (see `discard_stdout`); rich's consoles raise it too instead of
exiting on their own.

Commands run in the main thread of a short-lived process. STORE is a SQLite file or a
``postgresql://`` URL; every command opens it through `hoard.storage.open_store` and reads only through
the store's read interface. Read-only commands open it read-only: no writer lock and no lease, so
they work while a program has the store open, and each read sees one committed state. Writing
commands take the store's single-writer rules: the SQLite writer lock (refused at once with
`StoreLockedError` when the store is open elsewhere) and, on PostgreSQL, the lease of every context
they touch (refused with `ContextOwnedElsewhereError` when a running system holds one), all taken
before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from hoard.storage import (
    ContextNotFoundError,
    ContextOwnedElsewhereError,
    PersistenceError,
    PostgresStore,
    ReadView,
    Store,
    StoreLockedError,
    open_store,
)

from .._config import ContextAdapterConfig, ContextManagerConfig
from .._system import ContextSystem, open_system

__all__ = [
    "JSON_META",
    "NEW_STORE",
    "STORE",
    "STORE_META",
    "WHEN",
    "Utf8Path",
    "check_writable_target",
    "claim",
    "discard_stdout",
    "emit_json",
    "file_sizes",
    "human_bytes",
    "human_time",
    "is_url",
    "iso_time",
    "json_option",
    "not_found",
    "out",
    "print_columns",
    "progress",
    "read_store",
    "read_view",
    "remember_json",
    "system_for",
    "value_text",
    "write_store",
]

#: ``ctx.meta`` keys (shared by a command's context and the group's): the command's ``--json`` flag,
#: and the STORE it names, for the group's error reporting
JSON_META = "hoard.json"
STORE_META = "hoard.store"


def is_url(target: str) -> bool:
    """Whether STORE names a PostgreSQL store (a ``postgresql://`` or ``postgres://`` URL)."""
    return target.startswith(("postgresql://", "postgres://"))


class Utf8Path(click.Path):
    """A path (`str`) that is valid UTF-8. Others (legal on Linux: ``st\\xff.db``) are a usage error:
    decided rather than supported, as a path is printed in messages and ``--json`` output, which
    are UTF-8."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                self.fail(f"{shown!r} is not valid UTF-8; rename it (hoard takes UTF-8 paths only)", param, ctx)
        return super().convert(value, param, ctx)


class _StoreTarget(Utf8Path):
    """An existing file (click reports a missing one as a usage error) or a ``postgresql://`` URL
    (taken as written: the server is asked when the command opens it); remembers it in ``ctx.meta``
    so that error advice can name it."""

    name = "store"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        target = value if isinstance(value, str) and is_url(value) else super().convert(value, param, ctx)
        if ctx is not None:
            ctx.meta[STORE_META] = target
        return target


#: the STORE argument of every command that reads an existing store
STORE = _StoreTarget(exists=True, dir_okay=False, path_type=str)
#: the STORE argument of a command that may create it (``hoard import``)
NEW_STORE = _StoreTarget(dir_okay=False, path_type=str)


def remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Callback of every ``--json`` flag: records it for the group's error reporting."""
    ctx.meta[JSON_META] = value
    return value


# eager: processed before the other parameters, so an error in those is reported as JSON too
json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, callback=remember_json,
                           help="Print JSON (for scripts) instead of a table; errors become one JSON object "
                                "on stderr.")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit(1) here; a closed stdout is the reader's choice, handled like every other write
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def out() -> Console:
    """A console on stdout: colour and tables sized to the terminal on a TTY, plain text otherwise
    (rich also honours NO_COLOR and TERM=dumb): tables 160 columns wide, and lines of text never
    wrapped (a reader of a pipe takes a line as one record). A closed stdout raises `BrokenPipeError`."""
    if sys.stdout.isatty():
        return _Console(highlight=False)
    return _Console(highlight=False, width=160, no_color=True, color_system=None, soft_wrap=True)


def discard_stdout() -> None:
    """Point file descriptor 1 at ``os.devnull`` after its reader went away, so that the output still
    buffered (flushed at exit) goes nowhere instead of failing again (the recipe of the Python docs'
    note on SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (an embedding program replaced it): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def print_columns(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Collection[int] = ()) -> None:
    """Print an aligned table as plain text (bold header on a TTY). For long listings: rich's `Table`
    takes ~0.3 ms a row (34 s for 100k contexts); this takes microseconds. Values are printed
    verbatim (no markup), control characters escaped."""
    cells = [[_printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    styled = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(click.style(line(headers), bold=True) if styled else line(headers))
    chunk = []
    for row in cells:
        chunk.append(line(row))
        if len(chunk) == 1000:
            click.echo("\n".join(chunk))
            chunk = []
    if chunk:
        click.echo("\n".join(chunk))


def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def emit_json(obj: Any) -> None:
    """Print `obj` as indented JSON on stdout (UTF-8, keys as given)."""
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def not_found(store: str, context_id: str) -> ContextNotFoundError:
    """The error for a context id that is not in the store."""
    return ContextNotFoundError(context_id, hint=f"`hoard ls {store}` lists the contexts in {store!r}")


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a TTY (nothing otherwise). Yields ``advance(n)``."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    counted = [BarColumn(), MofNCompleteColumn()] if total is not None else []
    columns = [SpinnerColumn(), TextColumn("{task.description}"), *counted, TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# -- stores -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def read_store(target: str) -> Iterator[Store]:
    """Open `target` read-only (no lock, no lease; `CorruptStateError` if it is not a hoard store).
    Closed on exit."""
    store = open_store(target)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def read_view(target: str) -> Iterator[ReadView]:
    """`read_store(target)` seen through one `Store.read_view()`: every read of a command sees the
    same snapshot of the store, also while another program writes to it (a listing agrees with its
    totals, a journal with the snapshots it starts from). Closed on exit."""
    with read_store(target) as store, store.read_view() as view:
        yield view


def _locked(action: str, exc: StoreLockedError) -> StoreLockedError:
    return StoreLockedError(exc.path, hint=f"cannot {action} now. Stop that program first, or {action} "
                                           "through its API.")


@contextlib.contextmanager
def write_store(target: str, action: str, *, create: bool = False, feed: bool = True) -> Iterator[Store]:
    """Open a hoard store for writing; with `create`, a missing one is created (a SQLite file, or the
    tables in a PostgreSQL schema). A SQLite
    store takes the writer lock (`StoreLockedError`, naming `action`, when the store is open
    elsewhere). `feed` False: its commits record no change feed entries (for rewrites that change no
    context). A PostgreSQL store writes only to contexts whose lease it holds (``require_lease``):
    call `claim` with the contexts the command touches before writing. Leases are released on exit."""
    if not create:
        with read_store(target):
            pass  # it must already be a hoard store: never turn some other file into one
    try:
        store = open_store(target, readonly=False, require_lease=True, feed=feed)  # (refused: no lock file left)
    except StoreLockedError as exc:
        raise _locked(action, exc) from exc
    try:
        yield store
    finally:
        store.close()


def claim(store: Store, ids: Iterable[str], action: str) -> Callable[[], None]:
    """Take the PostgreSQL lease of every context in `ids` for `store` (from `write_store`), all
    before the command writes anything; nothing to do on SQLite (the writer lock covers the file).
    Raises `ContextOwnedElsewhereError` (with advice naming `action`) when a running system holds one:
    the leases taken so far are released when the store closes, and nothing was written.

    Returns ``keep()``, to call now and then during a long command: it renews the leases once a third
    of their time has passed, so they never lapse under it."""
    if not isinstance(store, PostgresStore):
        return lambda: None
    for cid in ids:
        try:
            store.acquire_lease(cid)
        except ContextOwnedElsewhereError as exc:
            raise ContextOwnedElsewhereError(exc.context_id, f"{exc.owner} (cannot {action} now: stop that "
                                             f"program or deactivate the context there first)",
                                             expires_in=exc.expires_in) from exc
    renewed = [time.monotonic()]

    def keep() -> None:
        if time.monotonic() - renewed[0] > store.lease_ttl / 3:
            store.renew_leases()
            renewed[0] = time.monotonic()
    return keep


@contextlib.contextmanager
def system_for(target: str, action: str) -> Iterator[ContextSystem]:
    """A `ContextSystem` on an existing store (no default context is activated or created), so
    writes keep the journal, snapshot and version rules. Stopped on exit."""
    with read_store(target):
        pass
    try:
        system = open_system(target, manager_config=ContextManagerConfig(),
                             adapter_config=ContextAdapterConfig(auto_activate_default=False))
    except StoreLockedError as exc:
        raise _locked(action, exc) from exc
    try:
        yield system
    finally:
        system.stop()


def file_sizes(path: str) -> dict[str, int | None]:
    """Bytes on disk of the store file and its WAL (None for a PostgreSQL store: the server's files
    are not the command's to measure)."""
    if is_url(path):
        return {"file_bytes": None, "wal_bytes": None}
    def size(p: str) -> int:
        try:
            return os.stat(p).st_size
        except FileNotFoundError:
            return 0
    return {"file_bytes": size(path), "wal_bytes": size(path + "-wal")}


def check_writable_target(path: str) -> None:
    """`PersistenceError` if `path`'s directory does not exist (before any work is done)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PersistenceError(f"directory {parent!r} does not exist")


# -- formatting ---------------------------------------------------------------------------------------
# A time `datetime` cannot hold (outside years 1 to 9999: a store another writer gave milliseconds,
# say) is printed as the number it is, not a crash: these raise ValueError, OverflowError or OSError.
_NO_DATE = (ValueError, OverflowError, OSError)


def iso_time(t: float) -> str:
    """ISO 8601 in UTC, to the millisecond (for JSON); ``repr(t)`` for a time no date holds."""
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except _NO_DATE:
        return repr(t)


def human_time(t: float) -> str:
    """Local time to the second (for tables); ``repr(t)`` for a time no date holds."""
    try:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
    except _NO_DATE:
        return repr(t)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def value_text(value: Any, limit: int = 200) -> str:
    """A stored value as compact JSON, cut at `limit` characters for tables."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class _When(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click stubs
    """A point in time: ISO 8601 (``2024-05-01``, ``2024-05-01T12:30``, with an optional zone; local
    time without one) or an age (``90s``, ``15m``, ``2h``, ``3d``, ``1w``: that long ago)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = _RELATIVE.match(value)
        if m:
            return time.time() - float(m.group(1)) * _SECONDS[m.group(2)]
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is neither a date/time (2024-05-01, 2024-05-01T12:30) nor an age (15m, 2h, 3d)",
                      param, ctx)
        try:
            return parsed.timestamp()  # naive: local time
        except _NO_DATE:  # 0001-01-01 east of UTC is still year 0 in UTC
            self.fail(f"{value!r} is before the first moment a time can name (0001-01-01 UTC)", param, ctx)


WHEN = _When()
