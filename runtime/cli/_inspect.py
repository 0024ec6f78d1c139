"""Read-only commands: ``hoard ls``, ``show``, ``history``, ``stats``.

They open STORE (a SQLite file or a ``postgresql://`` URL) read-only through `open_store` (no writer
lock, no lease), so they work while a program has it open, and read only through the store's read
interface (`contexts`, `journal`, `snapshot_versions`, `state_at`, `stats`), all of a command's reads
in one `Store.read_view()` (one read transaction): committed data only, never half of a commit, and
never two snapshots combined (a listing and its totals, a journal and its snapshots agree). Nothing
here writes, parses a blob or rebuilds a version itself. The ``--json`` shapes are the same for both kinds of store.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from hoard.storage import (
    MAX_STORED_INT,
    ContextState,
    HoardError,
    JournalEntry,
    ReadView,
    RecoveryPoint,
    StoredContext,
    VersionNotStoredError,
    thaw,
)

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
    read_view,
    value_text,
)

__all__ = ["history", "ls", "show", "stats"]


def _context_row(info: StoredContext) -> dict[str, Any]:
    return {
        "id": info.id,
        "version": info.version,
        "stored_bytes": info.stored_bytes,
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
    """List the contexts in STORE (a file or a postgresql:// URL): version, stored size, last update,
    recovery points.

    STORED is what the context's snapshots and journal entries take in the store (compressed, with
    their headers; its recovery points are counted in RPS, their bytes in `hoard stats`). The list is
    one consistent read of the store.

    \b
    Examples:
      hoard ls state.db
      hoard ls state.db --prefix cart- --updated-since 2h --json
      hoard ls "postgresql://app@db.example/prod?schema=hoard"
    """
    with read_view(store) as st:
        rows = [_context_row(info) for info in st.contexts(prefix)
                if updated_since is None or info.updated_at >= updated_since]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no contexts" + (" match" if prefix or updated_since is not None else ""))
        return
    print_columns(("ID", "VERSION", "STORED", "UPDATED", "RPS"),
                  ((r["id"], str(r["version"]), human_bytes(r["stored_bytes"]),
                    human_time(r["updated_at"]), str(r["recovery_points"])) for r in rows), right={1, 2, 4})
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


def _rebuildable(snapshots: list[int], journal: list[JournalEntry], version: int) -> tuple[int, int] | None:
    """The versions the kept snapshots plus the contiguous journal after the oldest of them reach (up
    to `version`, the stored one); None if none does. Only counts rows: rebuilding is the store's."""
    have = {e.version for e in journal}
    for snap in snapshots:  # oldest first: the widest range wins
        v = snap
        while v < version and v + 1 in have:
            v += 1
        if v == version:
            return snap, version
    return None


def _source(st: ReadView, cid: str, version: int) -> str:
    """Where the store keeps `version` of `cid` from, for people: a recovery point of that version, or
    the newest snapshot at or below it plus the journal entries after it."""
    for rp in st.recovery_points(cid):
        if rp.version == version:
            return f"recovery point {rp.id}"
    base = max((v for v in st.snapshot_versions(cid) if v <= version), default=None)
    if base is None:
        return "the journal"
    n = version - base
    return f"snapshot v{base} + {n} journal entr{'y' if n == 1 else 'ies'}"


def _rebuild(store: str, st: ReadView, cid: str, version: int | None) -> tuple[ContextState, str]:
    current = st.load(cid)
    if current is None:
        raise not_found(store, cid)
    if version is None or version == current.version:
        return current, "current"
    if version < 1 or version > current.version:
        raise HoardError(f"context {cid!r} has no version {version}: it is at v{current.version}")
    try:
        state = st.state_at(cid, version)
    except VersionNotStoredError as exc:
        span = _rebuildable(st.snapshot_versions(cid), st.journal(cid), current.version)
        kept = [rp.version for rp in st.recovery_points(cid)]
        where = [f"v{span[0]}..v{span[1]} (snapshot + journal)"] if span else []
        if kept:
            where.append("v" + ", v".join(map(str, sorted(set(kept)))) + " (recovery points)")
        refusal = VersionNotStoredError(cid, version, oldest=exc.oldest, newest=exc.newest, also=exc.also)
        refusal.args = (f"version {version} of {cid!r} cannot be rebuilt any more: the store keeps only "
                        f"{' and '.join(where) or 'the current version'}. Older versions are dropped once a "
                        "newer snapshot covers them; make recovery points to keep one.",)
        raise refusal from exc
    return state, _source(st, cid, version)


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
    with read_view(store) as st:
        state, source = _rebuild(store, st, context_id, version)
    if key is not None:
        if key not in state.data:
            raise HoardError(f"context {context_id!r} has no key {key!r} at v{state.version}")
        value = thaw(state.data[key])
        if as_json:
            emit_json({"id": state.id, "version": state.version, "key": key, "value": value})
        else:
            click.echo(value_text(value, limit=10**9))  # the value as JSON, on one line: never wrapped
        return
    if as_json:
        emit_json({**_state_json(state), "source": source})
        return
    console = out()
    console.print(Text.assemble((state.id, "bold"), f"  v{state.version}"
                                + ("" if source == "current" else f"  ({source})")))
    console.print(f"created {human_time(state.created_at)}   updated {human_time(state.updated_at)}")
    if state.metadata:
        click.echo("metadata: " + value_text(thaw(dict(state.metadata)), limit=10**9))  # one line, as JSON
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
@click.option("--since", "since", type=click.IntRange(min=1, max=MAX_STORED_INT), default=None,
              help="Changes from this version on (default: the oldest the store keeps).")
@click.option("--until", "until", type=click.IntRange(min=1, max=MAX_STORED_INT), default=None,
              help="Changes up to this version.")
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
    with read_view(store) as st:
        if st.info(context_id) is None:
            raise not_found(store, context_id)
        stored = [e.to_dict() for e in stored_history(st, context_id, since, until)]
        info = st.info(context_id)
        if info is None:
            raise not_found(store, context_id)
        rps = st.recovery_points(context_id)
        snapshots = st.snapshot_versions(context_id)
        kept = st.journal(context_id)
    changes = [e.change for e in kept if not snapshots or e.version > snapshots[-1]]
    span = _rebuildable(snapshots, kept, info.version)
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
    console.print(Text.assemble((context_id, "bold"), f"  v{info.version}   snapshots: "
                                + (", ".join(f"v{v}" for v in snapshots) or "none")))
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
    """Show counts and sizes for STORE: contexts, snapshots, journal, recovery points, and the file
    (a SQLite store). Sizes are stored bytes (compressed, with headers).

    \b
    Examples:
      hoard stats state.db
      hoard stats state.db --json
    """
    with read_view(store) as st:
        totals = st.stats()
        contexts = st.contexts()
    largest = sorted(contexts, key=lambda c: (-c.stored_bytes, c.id))[:5]
    result: dict[str, Any] = {
        "store": store, **file_sizes(store),
        "contexts": totals.contexts, "versions_total": sum(c.version for c in contexts),
        "snapshots": {"count": totals.snapshots, "stored_bytes": totals.snapshot_bytes},
        "journal": {"count": totals.journal_entries, "stored_bytes": totals.journal_bytes},
        "recovery_points": {"count": totals.recovery_points, "stored_bytes": totals.recovery_point_bytes},
        "stored_bytes": totals.stored_bytes, "quarantined_rows": totals.quarantined,
        "largest": [{"id": c.id, "stored_bytes": c.stored_bytes} for c in largest],
    }
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
        table.add_row(name.replace("_", " "), str(t["count"]), f"{human_bytes(t['stored_bytes'])} stored")
    if result["file_bytes"] is not None:
        table.add_row("file", human_bytes(result["file_bytes"]), f"+ {human_bytes(result['wal_bytes'])} WAL")
    if result["quarantined_rows"]:
        table.add_row("quarantined rows", str(result["quarantined_rows"]), "damaged rows kept aside by a repair")
    console = out()
    console.print(table)
    if result["largest"]:
        console.print("largest: " + ", ".join(f"{x['id']} ({human_bytes(x['stored_bytes'])})"
                                              for x in result["largest"]), markup=False)
