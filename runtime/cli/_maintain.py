"""Commands that change a store: ``hoard restore``, ``verify [--fix]``, ``compact``.

STORE is a SQLite file or a ``postgresql://`` URL. Each writing command takes the store's
single-writer rules before it writes (``restore`` through `open_system`, so the restore is an
ordinary versioned, journaled change): the SQLite writer lock, or the PostgreSQL leases of every
context it touches. So each refuses at once, changing nothing, while a running program holds them.
``verify`` without ``--fix`` only reads, in one read transaction.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from hoard.storage import CorruptStateError, DeleteContext, HoardError

from ._archive import context_ops, own_ttl
from ._common import (
    STORE,
    claim,
    emit_json,
    file_sizes,
    human_bytes,
    json_option,
    not_found,
    out,
    progress,
    read_store,
    system_for,
    write_store,
)

__all__ = ["compact", "restore", "verify"]


@click.command("restore")
@click.argument("store", type=STORE)
@click.argument("context_id", metavar="ID")
@click.argument("rp_id", metavar="RP", type=int)
@json_option
def restore(store: str, context_id: str, rp_id: int, as_json: bool) -> None:
    """Restore context ID in STORE to its recovery point RP.

    The data and metadata become the recovery point's, as a new version (versions never go back;
    the change is journaled like any other). Refused while another program has STORE open: restore
    through that program's API instead. `hoard history` lists the recovery points.

    \b
    Examples:
      hoard restore state.db cart-42 3
      hoard restore state.db cart-42 3 --json
    """
    with system_for(store, "restore") as system:
        manager = system.manager
        if not manager.exists(context_id):
            raise not_found(store, context_id)
        points = {rp.id: rp for rp in manager.recovery_points(context_id)}
        rp = points.get(rp_id)
        if rp is None:
            have = ", ".join(map(str, points)) or "none"
            raise HoardError(f"context {context_id!r} has no recovery point {rp_id} (it has: {have})")
        before = manager.get_state(context_id).version
        version = manager.restore(context_id, rp_id)
    result = {"id": context_id, "recovery_point": rp_id, "recovery_point_version": rp.version,
              "previous_version": before, "version": version}
    if as_json:
        emit_json(result)
    else:
        out().print(f"restored {context_id!r} to recovery point {rp_id} (the data of v{rp.version}): "
                    f"v{before} -> v{version}", markup=False)


@click.command("verify")
@click.argument("store", type=STORE)
@click.option("--fix", is_flag=True,
              help="Repair what can be repaired without losing an acknowledged change (takes the writer lock).")
@json_option
def verify(store: str, fix: bool, as_json: bool) -> None:
    """Check every snapshot, journal entry and recovery point in STORE; exit 1 if anything is wrong.

    Without --fix nothing is written (and it works while a program has STORE open). With --fix,
    what can be repaired without losing an acknowledged change is repaired; the rest is reported and
    the exit code stays 1.

    \b
    Examples:
      hoard verify state.db
      hoard verify state.db --fix --json
    """
    opener = write_store(store, "repair") if fix else read_store(store)
    with opener as st, progress("verifying", None):
        if fix:  # a repair rewrites contexts: on PostgreSQL, only those no running system holds
            claim(st, st.list_ids(), "repair")
            contexts = st.count()
            issues = st.verify(fix=True)
        else:
            # a file or URL store's view is the store itself, pinned to one read transaction (see
            # RowStore.read_view): the count and the check see the same state of the store
            with st.read_view():
                contexts = st.count()
                issues = st.verify()
    unfixed = [i for i in issues if not i.fixed]
    result = {"ok": not unfixed, "contexts": contexts,
              "issues": [{"context_id": i.context_id, "what": i.what, "problem": i.problem, "fixed": i.fixed}
                         for i in issues]}
    if as_json:
        emit_json(result)
    else:
        console = out()
        if issues:
            table = Table(box=None, header_style="bold")
            for name in ("CONTEXT", "WHAT", "PROBLEM", "FIXED"):
                table.add_column(name, overflow="fold")
            for i in issues:
                table.add_row(Text(i.context_id or "-"), i.what, Text(i.problem), "yes" if i.fixed else "no")
            console.print(table)
        verdict = "ok" if not issues else (f"{len(issues) - len(unfixed)} fixed, {len(unfixed)} left" if fix
                                           else f"{len(issues)} problem{'s' if len(issues) != 1 else ''}")
        console.print(f"{contexts} contexts checked: {verdict}")
        if unfixed and not fix:
            console.print(f"run `hoard verify --fix {store}` to repair what can be repaired without losing data",
                          markup=False)
    if unfixed:
        click.get_current_context().exit(1)


def _needs_compaction(snapshots: list[int], version: int, journal_entries: int) -> bool:
    return journal_entries > 0 or snapshots != [version]


def _total(sizes: dict[str, int | None]) -> int | None:
    """Bytes of the file and its WAL; None for a PostgreSQL store (the server's files)."""
    file, wal = sizes["file_bytes"], sizes["wal_bytes"]
    return None if file is None or wal is None else file + wal


@click.command("compact")
@click.argument("store", type=STORE)
@json_option
def compact(store: str, as_json: bool) -> None:
    """Compact STORE: one snapshot per context at its current version, no journal, then give the
    space back (SQLite: VACUUM, the file shrinks; PostgreSQL: VACUUM (ANALYZE), which makes the space
    reusable without blocking other writers; the files keep their size).

    A store that records a longer history policy (``ContextManagerConfig(history=...)``) keeps what
    it says: compact then drops only the snapshots and journal entries the policy lets go.

    Each context is rewritten in one transaction (same version, data, metadata, times, recovery
    points and time to live), so a crash midway leaves every context either old or compacted, never half. Afterwards
    the older kept snapshot and its journal are gone, so `hoard show --version` can rebuild only
    recovery point versions. A context that cannot be read is left untouched and reported (exit
    1; see `hoard verify`). Refused while another program has STORE open (PostgreSQL: while a
    running system holds the lease of any of its contexts).

    \b
    Examples:
      hoard compact state.db
      hoard compact state.db --json
    """
    before = file_sizes(store)
    rewritten: list[str] = []
    failed: list[dict[str, Any]] = []
    dropped = 0
    with write_store(store, "compact", feed=False) as st:  # a rewrite changes no context: no feed entry
        keep_history = st.history_policy.kind != "recovery"
        ids = st.list_ids()
        keep_leases = claim(st, ids, "compact")
        if keep_history:  # the store's recorded history policy: trim to it, never below it
            dropped = st.compact_history()
        with progress("compacting", 0 if keep_history else len(ids)) as advance:
            for cid in [] if keep_history else ids:
                advance(1)
                keep_leases()
                info = st.info(cid)
                if info is None or not _needs_compaction(st.snapshot_versions(cid), info.version,
                                                         info.journal_entries):
                    continue
                try:
                    state = st.load(cid)
                    rps = st.recovery_points(cid)
                except CorruptStateError as exc:
                    failed.append({"id": cid, "problem": str(exc)})
                    continue
                if state is None:  # pragma: no cover - we hold the writer lock or the lease
                    continue
                ops, _written, _note = context_ops(state, rps, info.next_rp_id, ttl=own_ttl(info))
                st.commit([DeleteContext(cid), *ops])
                rewritten.append(cid)
                dropped += info.journal_entries
        with progress("vacuuming", None):
            st.vacuum()
    after = file_sizes(store)
    result: dict[str, Any] = {
        "contexts_rewritten": len(rewritten), "journal_entries_removed": dropped, "failed": failed,
        "bytes_before": _total(before), "bytes_after": _total(after)}
    if as_json:
        emit_json(result)
    else:
        console = out()
        console.print(f"compacted {len(rewritten)} context{'s' if len(rewritten) != 1 else ''} "
                      f"({dropped} journal entries removed)"
                      + ("" if result["bytes_after"] is None else
                         f"; file {human_bytes(result['bytes_before'])} -> {human_bytes(result['bytes_after'])}"))
        for f in failed:
            console.print(f"not compacted: {f['id']}: {f['problem']}", markup=False)
        if failed:
            console.print(f"run `hoard verify {store}` for details", markup=False)
    if failed:
        click.get_current_context().exit(1)
