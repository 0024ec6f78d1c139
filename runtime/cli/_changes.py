"""What changed: ``hoard diff`` (and the change table ``hoard history`` prints).

Read-only, like ``hoard show``: the store is opened without the writer lock and only committed data
is read, all of it in one `Store.read_view()`. On a terminal, additions are green, removals red and
old values dim; with ``--json`` (or when the output is not a terminal) there is no colour.
"""

from __future__ import annotations

from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hoard.storage import MAX_STORED_INT, RecoveryPoint, thaw

from .._history import diff as stored_diff
from ._common import STORE, emit_json, human_time, json_option, not_found, out, read_view

__all__ = ["diff", "print_changes"]

_SHOWN = 60  # characters of a value shown in a table cell


def _short(value: Any) -> str:
    text = orjson.dumps(thaw(value)).decode()
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def print_changes(console: Console, changes: list[dict[str, Any]]) -> None:
    """The table of stored changes (`HistoryEntry.to_dict()` rows), oldest first."""
    if not changes:
        console.print("no stored changes in that range")
        return
    table = Table(title="stored changes", box=None, header_style="bold", title_justify="left")
    for name in ("VERSION", "TIME", "BY", "CHANGE"):
        table.add_column(name, overflow="fold")
    for c in changes:
        cell = Text()
        for k in c["changed"]:
            if k in c["before"]:
                cell.append(f"{k}: ")
                cell.append(_short(c["before"][k]), style="dim")
                cell.append(" -> ")
                cell.append(_short(c["after"][k]), style="yellow")
            else:
                cell.append(f"+{k}: {_short(c['after'][k])}", style="green")
            cell.append("\n")
        for k in c["removed"]:
            cell.append(f"-{k}: {_short(c['before'].get(k))}", style="red")
            cell.append("\n")
        meta = [*c["metadata_changed"], *(f"-{k}" for k in c["metadata_removed"])]
        if meta:
            cell.append("metadata " + ", ".join(meta) + "\n", style="cyan")
        if c["replaced"]:
            cell.append("(restore: data and metadata replaced)\n", style="bold")
        cell.rstrip()
        table.add_row(str(c["version"]), human_time(c["at"]), Text(c["by"] or "-"),
                      cell if cell.plain else "(no change)")
    console.print(table)


def _side(value: str) -> tuple[str, int]:
    """``"12"`` (a version) or ``"rp:3"`` (a recovery point)."""
    kind, _, number = value.rpartition(":")
    if kind not in ("", "rp") or not number.isdigit() or int(number) < 1:
        raise click.BadParameter(f"{value!r} is neither a version (12) nor a recovery point (rp:3)")
    if int(number) > MAX_STORED_INT:  # what a store holds
        raise click.BadParameter(f"{value!r}: {number} is past the largest version or recovery point id a store "
                                 "holds (2**63 - 1)")
    return kind or "version", int(number)


@click.command("diff")
@click.argument("store", type=STORE)
@click.argument("context_id", metavar="ID")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@json_option
def diff(store: str, context_id: str, a: str, b: str, as_json: bool) -> None:
    """Show what differs in context ID between A and B: each a version (12) or a recovery point
    (rp:3). Keys added, changed (before and after) and removed, data and metadata; --json adds the
    RFC 6902 JSON Patch that turns A into B.

    \b
    Examples:
      hoard diff state.db cart-42 10 14
      hoard diff state.db cart-42 rp:2 14 --json
    """
    sides = [_side(a), _side(b)]
    with read_view(store) as st:
        if st.info(context_id) is None:
            raise not_found(store, context_id)
        resolved: list[int | RecoveryPoint] = []
        for (kind, number), given in zip(sides, (a, b), strict=True):
            if kind == "version":
                resolved.append(number)
                continue
            rp = st.recovery_point(context_id, number)
            if rp is None:
                raise click.BadParameter(f"context {context_id!r} has no recovery point {number} ({given})")
            resolved.append(rp)
        result = stored_diff(st, context_id, resolved[0], resolved[1])
    if as_json:
        emit_json(result.to_dict())
        return
    console = out()
    # a Text, not markup: an id is user data (``x[/]`` would be a markup error, ``[red]y`` a style)
    console.print(Text.assemble((context_id, "bold"), f"  {result.a} -> {result.b}"))
    if result.empty:
        console.print("no difference")
        return
    for title, added, changed, removed in (
            ("data", result.added, result.changed, result.removed),
            ("metadata", result.metadata_added, result.metadata_changed, result.metadata_removed)):
        if not (added or changed or removed):
            continue
        console.print(Text(title, style="bold"))
        for k, v in added.items():
            console.print(Text(f"  + {k}: {_short(v)}", style="green"))
        for k, (old, new) in changed.items():
            line = Text(f"  ~ {k}: ")
            line.append(_short(old), style="dim")
            line.append(" -> ")
            line.append(_short(new), style="yellow")
            console.print(line)
        for k, v in removed.items():
            console.print(Text(f"  - {k}: {_short(v)}", style="red"))
