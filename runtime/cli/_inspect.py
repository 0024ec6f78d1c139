"""Read-only commands: ``hoard ls``, ``show``, ``history``, ``stats``.

They open the store read-only (no writer lock), so they work while a program has it open, and show
committed data only. Nothing here writes.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hoard.storage import ContextState, HoardError, RecoveryPoint, SQLiteStore, thaw

from .._history import history as stored_history
from ._changes import print_changes
from ._common import (
    STORE,
    WHEN,
    emit_json,
    file_sizes,
    human_bytes,
    human_time,
    iso_time,
    json_option,
    not_found,
    out,
    print_columns,
    read_store,
    value_text,
)
from ._reader import StoreReader

__all__ = ["history", "ls", "show", "stats"]


def _context_row(store: SQLiteStore, reader: StoreReader, cid: str) -> dict[str, Any] | None:
    info = store.info(cid)
    if info is None:  # deleted since it was listed
        return None
    raw, stored = reader.sizes(cid)
    return {
        "id": cid,
        "version": info.version,
        "size": raw,
        "compressed_size": stored,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "updated": iso_time(info.updated_at),
        "recovery_points": info.recovery_points,
        "snapshot_version": info.snapshot_version,
        "journal_entries": info.journal_entries,
    }


@click.command("ls")
@click.argument("store", type=STORE)
@click.option("--prefix", default="", help="Only contexts whose id starts with this.")
@click.option("--updated-since", type=WHEN, default=None,
              help="Only contexts changed since WHEN: a date/time (2024-05-01, 2024-05-01T12:30) or an age "
                   "(15m, 2h, 3d).")
@json_option
def ls(store: str, prefix: str, updated_since: float | None, as_json: bool) -> None:
    """List the contexts in STORE: version, size, compressed size, last update, recovery points.

    SIZE is the uncompressed size of what is stored for the context (snapshots and journal entries);
    COMPRESSED is what their payloads take in the file (never more than SIZE: a payload that
    compression does not shrink is stored raw; each row's 20-byte header is not counted).

    \b
    Examples:
      hoard ls state.db
      hoard ls state.db --prefix cart- --updated-since 2h --json
    """
    rows = []
    with read_store(store) as st, StoreReader(st) as reader:
        for cid in st.list_ids(prefix):
            row = _context_row(st, reader, cid)
            if row is not None and (updated_since is None or row["updated_at"] >= updated_since):
                rows.append(row)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no contexts" + (" match" if prefix or updated_since is not None else ""))
        return
    print_columns(("ID", "VERSION", "SIZE", "COMPRESSED", "UPDATED", "RPS"),
                  ((r["id"], str(r["version"]), human_bytes(r["size"]), human_bytes(r["compressed_size"]),
                    human_time(r["updated_at"]), str(r["recovery_points"])) for r in rows), right={1, 2, 3, 5})
    click.echo(f"{len(rows)} context{'s' if len(rows) != 1 else ''}")


def _state_json(state: ContextState) -> dict[str, Any]:
    return {
        "id": state.id,
        "version": state.version,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "metadata": thaw(dict(state.metadata)),
        "data": thaw(dict(state.data)),
    }


def _rebuild(store: str, st: SQLiteStore, cid: str, version: int | None) -> tuple[ContextState, str]:
    current = st.load(cid)
    if current is None:
        raise not_found(store, cid)
    if version is None or version == current.version:
        return current, "current"
    if version < 1 or version > current.version:
        raise HoardError(f"context {cid!r} has no version {version}: it is at v{current.version}")
    with StoreReader(st) as reader:
        rebuilt = reader.load_version(cid, version)
        if rebuilt is None:
            span = reader.rebuildable(cid, current.version)
            kept = [rp.version for rp in st.recovery_points(cid)]
            where = [f"v{span[0]}..v{span[1]} (snapshot + journal)"] if span else []
            if kept:
                where.append("v" + ", v".join(map(str, sorted(set(kept)))) + " (recovery points)")
            raise HoardError(f"version {version} of {cid!r} cannot be rebuilt any more: the store keeps only "
                             f"{' and '.join(where) or 'the current version'}. Older versions are dropped once "
                             "a newer snapshot covers them; make recovery points to keep one.")
    return rebuilt.state, rebuilt.source


@click.command("show")
@click.argument("store", type=STORE)
@click.argument("context_id", metavar="ID")
@click.option("--key", "key", default=None, help="Show only this key's value.")
@click.option("--version", "version", type=int, default=None,
              help="Show an older version. Only versions the store can still rebuild: those of a recovery "
                   "point, and those between the older kept snapshot and now (see `hoard history`).")
@json_option
def show(store: str, context_id: str, key: str | None, version: int | None, as_json: bool) -> None:
    """Show context ID in STORE: its data (or one key) and metadata.

    \b
    Examples:
      hoard show state.db cart-42
      hoard show state.db cart-42 --key items --json
      hoard show state.db cart-42 --version 17
    """
    with read_store(store) as st:
        state, source = _rebuild(store, st, context_id, version)
    if key is not None:
        if key not in state.data:
            raise HoardError(f"context {context_id!r} has no key {key!r} at v{state.version}")
        value = thaw(state.data[key])
        if as_json:
            emit_json({"id": state.id, "version": state.version, "key": key, "value": value})
        else:
            out().print(value_text(value, limit=10**9), markup=False)
        return
    if as_json:
        emit_json({**_state_json(state), "source": source})
        return
    console = out()
    console.print(f"[bold]{escape(state.id)}[/bold]  v{state.version}"
                  + ("" if source == "current" else f"  ({source})"))
    console.print(f"created {human_time(state.created_at)}   updated {human_time(state.updated_at)}")
    if state.metadata:
        console.print("metadata: " + value_text(thaw(dict(state.metadata)), limit=10**9), markup=False)
    if not state.data:
        console.print("(no keys)")
        return
    print_columns(("KEY", "VALUE"), ((k, value_text(state.data[k])) for k in sorted(state.data)))
    click.echo(f"{len(state.data)} key{'s' if len(state.data) != 1 else ''}")


def _rp_json(rp: RecoveryPoint) -> dict[str, Any]:
    return {"id": rp.id, "version": rp.version, "label": rp.label, "created_at": rp.created_at,
            "created": iso_time(rp.created_at), "keys": len(rp.state.data)}


@click.command("history")
@click.argument("store", type=STORE)
@click.argument("context_id", metavar="ID")
@click.option("--since", "since", type=click.IntRange(min=1), default=None,
              help="Changes from this version on (default: the oldest the store keeps).")
@click.option("--until", "until", type=click.IntRange(min=1), default=None, help="Changes up to this version.")
@json_option
def history(store: str, context_id: str, since: int | None, until: int | None, as_json: bool) -> None:
    """Show the stored changes of context ID (version, time, who, keys with old and new values),
    its recovery points, and which versions `hoard show --version` can still rebuild.

    How far back the changes go is the store's history policy (ContextManagerConfig(history=...)).

    \b
    Examples:
      hoard history state.db cart-42
      hoard history state.db cart-42 --since 40 --json
    """
    with read_store(store) as st:
        if st.info(context_id) is None:
            raise not_found(store, context_id)
        stored = [e.to_dict() for e in stored_history(st, context_id, since, until)]
    with read_store(store) as st, StoreReader(st) as reader:
        info = st.info(context_id)
        if info is None:
            raise not_found(store, context_id)
        rps = st.recovery_points(context_id)
        snapshots = reader.snapshot_versions(context_id)
        changes = reader.journal(context_id, after=snapshots[-1] if snapshots else 0)
        span = reader.rebuildable(context_id, info.version)
    journal = [{"version": c.version, "at": c.at, "time": iso_time(c.at), "set": sorted(c.data_set),
                "deleted": list(c.data_del), "metadata_set": sorted(c.meta_set),
                "metadata_deleted": list(c.meta_del), "replace": c.replace} for c in changes]
    result = {
        "id": context_id, "version": info.version, "snapshots": snapshots,
        "recovery_points": [_rp_json(rp) for rp in rps], "journal": journal,
        "rebuildable": {"from": span[0], "to": span[1]} if span else None, "changes": stored,
    }
    if as_json:
        emit_json(result)
        return
    console = out()
    print_changes(console, stored)
    console.print(f"[bold]{escape(context_id)}[/bold]  v{info.version}   snapshots: "
                  + (", ".join(f"v{v}" for v in snapshots) or "none"))
    if rps:
        table = Table(title="recovery points", box=None, header_style="bold", title_justify="left")
        for name in ("ID", "VERSION", "LABEL", "CREATED", "KEYS"):
            table.add_column(name)
        for rp in rps:
            table.add_row(str(rp.id), str(rp.version), Text(rp.label or ""), human_time(rp.created_at),
                          str(len(rp.state.data)))
        console.print(table)
    else:
        console.print("no recovery points")
    if journal:
        table = Table(title="journal since the last snapshot", box=None, header_style="bold", title_justify="left")
        for name in ("VERSION", "TIME", "CHANGE"):
            table.add_column(name, overflow="fold")
        for c, j in zip(changes, journal, strict=True):
            table.add_row(str(c.version), human_time(c.at), Text(_describe(j)))
        console.print(table)
    else:
        console.print("no journal entries since the last snapshot")
    if span:
        console.print(f"versions that can be rebuilt: v{span[0]}..v{span[1]}"
                      + (" and those of the recovery points" if rps else ""))


def _describe(j: dict[str, Any]) -> str:
    if j["replace"]:
        return f"restore: data replaced ({len(j['set'])} keys)"
    parts = []
    if j["set"]:
        parts.append("set " + ", ".join(j["set"][:8]) + (" ..." if len(j["set"]) > 8 else ""))
    if j["deleted"]:
        parts.append("deleted " + ", ".join(j["deleted"][:8]) + (" ..." if len(j["deleted"]) > 8 else ""))
    if j["metadata_set"] or j["metadata_deleted"]:
        parts.append("metadata " + ", ".join(j["metadata_set"] + [f"-{k}" for k in j["metadata_deleted"]]))
    return "; ".join(parts) or "(no change)"


@click.command("stats")
@click.argument("store", type=STORE)
@json_option
def stats(store: str, as_json: bool) -> None:
    """Show counts and sizes for STORE: contexts, snapshots, journal, recovery points, file and free space.

    \b
    Examples:
      hoard stats state.db
      hoard stats state.db --json
    """
    with read_store(store) as st, StoreReader(st) as reader:
        result: dict[str, Any] = {"path": store, **file_sizes(store), **reader.stats()}
    stored = sum(result[t]["stored_bytes"] for t in ("snapshots", "journal", "recovery_points"))
    raw = sum(result[t]["raw_bytes"] for t in ("snapshots", "journal", "recovery_points"))
    result["stored_bytes"] = stored
    result["raw_bytes"] = raw
    result["compression_ratio"] = round(raw / stored, 3) if stored else None
    result["reclaimable_bytes"] = result["free_pages"] * result["page_size"]
    if as_json:
        emit_json(result)
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("contexts", str(result["contexts"]), f"{result['versions_total']} versions in all")
    for name in ("snapshots", "journal", "recovery_points"):
        t = result[name]
        table.add_row(name.replace("_", " "), str(t["count"]),
                      f"{human_bytes(t['stored_bytes'])} stored, {human_bytes(t['raw_bytes'])} uncompressed")
    ratio = f"{result['compression_ratio']:.2f}x" if result["compression_ratio"] else "-"
    table.add_row("compression", ratio, "")
    table.add_row("file", human_bytes(result["file_bytes"]), f"+ {human_bytes(result['wal_bytes'])} WAL")
    table.add_row("free space", human_bytes(result["reclaimable_bytes"]), "`hoard compact` gives it back")
    if result["quarantined_rows"]:
        table.add_row("quarantined rows", str(result["quarantined_rows"]), "damaged rows kept aside by a repair")
    console = out()
    console.print(table)
    if result["largest"]:
        console.print("largest: " + ", ".join(f"{x['id']} ({human_bytes(x['stored_bytes'])})"
                                              for x in result["largest"]), markup=False)
