"""``hoard export`` and ``hoard import``: a portable, versioned, compressed, checksummed archive of
some or all contexts of a store, with their recovery points.

Archive layout (integers little-endian)::

    magic    8 bytes   b"HOARDARC"
    record*  u64 length + a storage `Codec` frame of kind KIND_ARCHIVE holding one JSON object

The frame carries the blob format version, zstd compression and a CRC32 (see `hoard.storage.Codec`). The
records, in order:

* ``{"type": "header", "archive_format": 2, "store_format": ..., "created_at": ..., "hoard": ...}``
* per context: ``{"type": "context", "state": {...}, "next_rp_id": n, "ttl": t, "recovery_points": k}``
  followed by its `k` records ``{"type": "recovery_point", "id", "version", "label", "created_at", "state"}``
* ``{"type": "end", "contexts": n, "recovery_points": m, "sha256": ...}``: the SHA-256 of every byte
  before this record. A missing or wrong end record means a truncated or spliced file.

States are in the store's own unstructured form (the project converter), so an import reproduces
each context exactly: id, version, data, metadata, both times, every recovery point with its id,
label and time, the recovery point sequence (the next id), so ids are never reused, and the
context's own time to live (`SetTTL`; null: none).

Archive formats: 2 added the context's ``ttl``. This hoard writes format 2 and reads 1 and 2 (a
format 1 archive holds no ttl: its contexts are imported without one). A hoard that reads only
format 1 refuses a format 2 archive rather than drop the ttls it cannot see.

Import reads the archive once (it may be a pipe) and verifies all of it -- framing, checksums, and
that its contents are what a store can hold (versions, ids, times in years 1 to 9999, recovery points
no newer than their context, ids increasing) -- before it opens or creates the store; it then writes
every context in one transaction, so an import is entirely done or not at all (a failure midway, a crash, a full disk
leave the store as it was). That transaction is built in memory: an import needs memory for the
archive's contents (decompressed) and their encoded form. A context that already exists is refused
unless ``--replace``; a replaced context never goes back in version (see `context_ops`).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from collections.abc import Iterator
from importlib import metadata
from typing import IO, Any

import attrs
import click

from hoard.storage import (
    FIRST_TIME,
    FORMAT_VERSION,
    KIND_ARCHIVE,
    LAST_TIME,
    MAX_STORED_INT,
    Codec,
    ContextNotFoundError,
    ContextState,
    CorruptStateError,
    CreateContext,
    DeleteContext,
    DeleteRecoveryPoint,
    HoardError,
    Op,
    PersistenceError,
    PutRecoveryPoint,
    RecoveryPoint,
    SetTTL,
    StoredContext,
    validate_id,
)

from .._version import DISTRIBUTION
from ._common import (
    NEW_STORE,
    STORE,
    Utf8Path,
    check_writable_target,
    claim,
    emit_json,
    is_url,
    json_option,
    out,
    progress,
    read_view,
    write_store,
)

__all__ = ["ARCHIVE_FORMAT", "READABLE_FORMATS", "context_ops", "export", "import_", "own_ttl"]

MAGIC = b"HOARDARC"
ARCHIVE_FORMAT = 2
#: the archive formats this hoard imports (see the module docstring)
READABLE_FORMATS = (1, 2)
_LEN = struct.Struct("<Q")
#: a record holds one state; a reader refuses to decompress more than this per record
MAX_RECORD_BYTES = 256 * 2**20

#: at most this many recovery point ids of a context may be unused (skipped): an import writes a
#: placeholder for each (see `context_ops`)
MAX_UNUSED_RP_IDS = 1_000_000


def _is_time(t: Any) -> bool:
    return type(t) in (int, float) and FIRST_TIME <= t < LAST_TIME


@attrs.frozen
class ArchivedContext:
    """One context read back from an archive."""

    state: ContextState
    next_rp_id: int
    recovery_points: tuple[RecoveryPoint, ...]
    ttl: float | None = None


class _Writer:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.codec = Codec()
        self.sha = hashlib.sha256()
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.sha.update(data)

    def record(self, obj: dict[str, Any]) -> None:
        frame = self.codec.encode_json(KIND_ARCHIVE, obj)
        self._write(_LEN.pack(len(frame)) + frame)

    def end(self, contexts: int, rps: int) -> None:
        self.record({"type": "end", "contexts": contexts, "recovery_points": rps, "sha256": self.sha.hexdigest()})


class _Reader:
    """Reads records one at a time, verifying each frame, the order of records and the end record."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self.f = f
        self.name = name
        self.codec = Codec(max_bytes=MAX_RECORD_BYTES)
        self.sha = hashlib.sha256()
        magic = self._read(len(MAGIC), "the file header")
        if magic != MAGIC:
            raise CorruptStateError(f"{name!r} is not a hoard archive (bad magic)", what="archive")
        self.converter = self.codec.converter

    def _read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptStateError(f"archive {self.name!r} is truncated (in {what})", what="archive")
        self.sha.update(data)
        return data

    def record(self, index: int) -> dict[str, Any]:
        digest = self.sha.hexdigest()  # of everything before this record: what an end record holds
        (size,) = _LEN.unpack(self._read(_LEN.size, f"record {index}"))
        if size > MAX_RECORD_BYTES:
            raise CorruptStateError(f"archive {self.name!r}: record {index} claims {size} bytes", what="archive")
        obj = self.codec.decode_json(KIND_ARCHIVE, self._read(size, f"record {index}"), f"record {index}")
        if type(obj) is not dict or "type" not in obj:
            raise CorruptStateError(f"archive {self.name!r}: record {index} is not a record", what="archive")
        obj["_digest"] = digest
        return obj

    def contexts(self) -> Iterator[ArchivedContext]:
        """Every context, in order; raises `CorruptStateError` at the first problem (including a
        missing, wrong or not-last end record)."""
        head = self.record(0)
        if head["type"] != "header":
            raise CorruptStateError(f"archive {self.name!r}: no header record", what="archive")
        fmt = head.get("archive_format")
        if type(fmt) is not int or fmt not in READABLE_FORMATS:
            raise CorruptStateError(f"archive {self.name!r} has archive format {fmt!r}; this hoard reads "
                                    f"formats {', '.join(map(str, READABLE_FORMATS))}", what="archive")
        index, n_ctx, n_rps = 1, 0, 0
        while True:
            rec = self.record(index)
            index += 1
            if rec["type"] == "end":
                if (rec.get("sha256") != rec["_digest"] or rec.get("contexts") != n_ctx
                        or rec.get("recovery_points") != n_rps):
                    raise CorruptStateError(f"archive {self.name!r}: end record does not match the contents "
                                            "(damaged or spliced file)", what="archive")
                if self.f.read(1):
                    raise CorruptStateError(f"archive {self.name!r}: data after the end record", what="archive")
                return
            if rec["type"] != "context":
                raise CorruptStateError(f"archive {self.name!r}: record {index - 1} is a {rec['type']!r}, "
                                        "expected a context", what="archive")
            ctx_index = index - 1
            state = self._state(rec.get("state"), ctx_index)
            rps: list[RecoveryPoint] = []
            for _ in range(self._count(rec, "recovery_points", ctx_index)):
                r = self.record(index)
                index += 1
                rps.append(self._recovery_point(r, index - 1, state, rps[-1].id if rps else 0))
            next_rp_id = self._count(rec, "next_rp_id", ctx_index)
            # an import reproduces the sequence by putting a placeholder for every id not archived
            # (see `context_ops`): bounded, so that a made-up sequence cannot keep it writing for hours
            if not (rps[-1].id if rps else 0) < next_rp_id <= len(rps) + MAX_UNUSED_RP_IDS + 1:
                raise CorruptStateError(f"archive {self.name!r}: record {ctx_index} has a bad 'next_rp_id' "
                                        f"({next_rp_id}: it must be past every archived recovery point id, and "
                                        f"at most {MAX_UNUSED_RP_IDS} ids can be unused)", what="archive")
            n_ctx += 1
            n_rps += len(rps)
            yield ArchivedContext(state, next_rp_id, tuple(rps), self._ttl(rec, ctx_index))

    def _recovery_point(self, r: dict[str, Any], index: int, of: ContextState, after: int) -> RecoveryPoint:
        """The recovery point in record `index`, of context `of`, whose id must follow `after`."""
        def bad(why: str) -> CorruptStateError:
            return CorruptStateError(f"archive {self.name!r}: record {index}: {why}", what="archive")
        if r["type"] != "recovery_point":
            raise bad(f"should be a recovery point of {of.id!r}")
        rp_state = self._state(r.get("state"), index)
        if rp_state.id != of.id or r.get("version") != rp_state.version:
            raise bad(f"the recovery point does not belong to {of.id!r}")
        if rp_state.version > of.version:
            raise bad(f"the recovery point's v{rp_state.version} is newer than {of.id!r} (v{of.version})")
        rp_id = self._count(r, "id", index)
        if not after < rp_id <= MAX_STORED_INT:
            raise bad(f"bad 'id' {rp_id} (ids start at 1 and increase; the one before is {after})")
        label = r.get("label")
        if label is not None and type(label) is not str:
            raise bad("bad 'label' (a string or null)")
        created_at: float = r.get("created_at")  # type: ignore[assignment]  # checked on the next line
        if not _is_time(created_at):
            raise bad("bad 'created_at' (seconds since the epoch, years 1 to 9999)")
        return RecoveryPoint(rp_id, of.id, rp_state.version, label, float(created_at), rp_state)

    def _state(self, obj: Any, index: int) -> ContextState:
        def bad(why: str) -> CorruptStateError:
            return CorruptStateError(f"archive {self.name!r}: record {index} holds no valid state ({why})",
                                     what="archive")
        if type(obj) is not dict:
            raise bad("not an object")
        # exact types, as the store's codec checks them: cattrs alone would coerce "7" into 7
        if type(obj.get("version")) is not int or not 1 <= obj["version"] <= MAX_STORED_INT:
            raise bad("version")
        if not all(_is_time(obj.get(f)) for f in ("created_at", "updated_at")):
            raise bad("times: seconds since the epoch, years 1 to 9999")
        try:
            validate_id(obj.get("id"))
            state: ContextState = self.converter.structure(obj, ContextState)
        except Exception as exc:  # ours, cattrs' and builtin errors all mean a bad record
            raise bad(str(exc)) from exc
        return state

    def _ttl(self, rec: dict[str, Any], index: int) -> float | None:
        ttl = rec.get("ttl")  # absent in a format 1 archive
        if ttl is None:
            return None
        if type(ttl) not in (int, float) or not 0 < ttl < math.inf:
            raise CorruptStateError(f"archive {self.name!r}: record {index} has a bad 'ttl'", what="archive")
        return float(ttl)

    def _count(self, rec: dict[str, Any], field: str, index: int) -> int:
        v = rec.get(field)
        if type(v) is not int or not 0 <= v <= MAX_STORED_INT:
            raise CorruptStateError(f"archive {self.name!r}: record {index} has a bad {field!r}", what="archive")
        return v


def read_archive(path: str) -> Iterator[ArchivedContext]:
    """Iterate the contexts of the archive at `path`, verifying as it goes."""
    try:
        with open(path, "rb") as f:
            yield from _Reader(f, path).contexts()
    except OSError as exc:
        raise PersistenceError(f"cannot read archive {path!r}: {exc}") from exc


# -- store operations that reproduce a context ----------------------------------------------------
def context_ops(state: ContextState, recovery_points: tuple[RecoveryPoint, ...] | list[RecoveryPoint],
                next_rp_id: int, existing: StoredContext | None = None,
                ttl: float | None = None) -> tuple[list[Op], ContextState, str]:
    """The store operations that make the store hold exactly this context (replacing `existing`),
    with its own time to live `ttl` (None: none; a rewritten context has none unless given here).

    Returns (ops, the state written, a note for the user or ""). Committed as one transaction, so the
    context is replaced entirely or not at all.

    Rules when a context exists: versions never go back, and each change has a version of its own:
    the replaced context's deletion is ``stored + 1`` in the change feed, so an archived version at
    or below that is written as ``stored + 2``, holding the archived data, like a restore. Recovery
    point ids are never reused (archived ids below the stored sequence are renumbered after it).

    The store has no operation that sets the recovery point sequence, so ids are reproduced by
    putting (and at once deleting, in the same transaction) a tiny placeholder for every id that is
    not archived -- a stopgap until the store offers one (see the issue 5 report).
    """
    notes = []
    rps = sorted(recovery_points, key=lambda rp: rp.id)
    if existing is not None:
        deletion = existing.version + 1  # the replaced context's deletion: a feed entry of its own
        if state.version <= deletion:
            if state.version <= existing.version:
                than = "the same version as" if state.version == existing.version else "newer than"
                why = f"the stored v{existing.version} is {than} the archived v{state.version}"
            else:
                why = f"the archived v{state.version} is the version of the stored context's deletion"
            notes.append(f"{why}: the archived data written as v{deletion + 1} (v{deletion} is the replaced "
                         "context's deletion; versions never go back)")
            state = attrs.evolve(state, version=deletion + 1, updated_at=time.time())
        if rps and rps[0].id < existing.next_rp_id:
            first = existing.next_rp_id
            rps = [attrs.evolve(rp, id=first + i) for i, rp in enumerate(rps)]
            notes.append(f"recovery points renumbered {first}..{first + len(rps) - 1} (ids are never reused)")
        next_rp_id = max(next_rp_id, existing.next_rp_id, rps[-1].id + 1 if rps else 0)
    ops: list[Op] = [DeleteContext(state.id, existing.version)] if existing is not None else []
    ops.append(CreateContext(state))
    if ttl is not None:
        ops.append(SetTTL(state.id, ttl))
    by_id = {rp.id: rp for rp in rps}
    keep = len(rps) + 1
    top = max(next_rp_id - 1, rps[-1].id if rps else 0)
    for i in range(1, top + 1):
        rp = by_id.get(i)
        if rp is not None:
            ops.append(PutRecoveryPoint(rp, keep))
        else:
            stub = ContextState(state.id, state.version)
            ops.append(PutRecoveryPoint(RecoveryPoint(i, state.id, state.version, None, 0.0, stub), keep))
            ops.append(DeleteRecoveryPoint(state.id, i))
    return ops, state, "; ".join(notes)


def own_ttl(info: StoredContext) -> float | None:
    """The context's own time to live as the store holds it; None also for a value that is no
    positive number (a damaged column: `SetTTL` never writes one), which is then not carried on."""
    ttl = info.ttl
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
        return None
    return float(ttl)


# -- commands -----------------------------------------------------------------------------------------
@click.command("export")
@click.argument("store", type=STORE)
@click.argument("out_path", metavar="OUT", type=Utf8Path(dir_okay=False, path_type=str))
@click.option("--prefix", default="", help="Only contexts whose id starts with this.")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this context (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@json_option
def export(*, store: str, out_path: str, prefix: str, ids: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Write contexts of STORE, with their recovery points, to the archive OUT.

    The archive is compressed, checksummed and versioned; `hoard import` reproduces every context
    exactly (versions, times, recovery point ids). OUT is written atomically: it appears complete
    or not at all. Reads STORE read-only, so it works while a program has STORE open.

    \b
    Examples:
      hoard export state.db backup.hoard
      hoard export state.db carts.hoard --prefix cart-
      hoard export state.db one.hoard --id cart-42 --json
    """
    if not out_path:
        raise click.BadParameter("an empty name is no file", param_hint="OUT")
    if not is_url(store) and _same_file(store, out_path):
        raise click.BadParameter(f"{out_path!r} is STORE itself: the archive would replace the store",
                                 param_hint="OUT")
    if os.path.exists(out_path) and not force:
        raise HoardError(f"{out_path!r} exists; use --force to overwrite it")
    check_writable_target(out_path)
    tmp = f"{out_path}.tmp-{os.getpid()}"
    n_ctx = n_rps = 0
    try:
        # owner-only, like a store: an archive holds all of the store's data
        with read_view(store) as st, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                                               "wb") as f:
            selected = st.list_ids(prefix)
            if ids:
                missing = [i for i in ids if st.info(i) is None]
                if missing:
                    also = f"(nor {', '.join(map(repr, missing[1:]))}); " if len(missing) > 1 else ""
                    raise ContextNotFoundError(missing[0], hint=f"{also}`hoard ls {store}` lists the contexts "
                                                                f"in {store!r}")
                selected = [i for i in dict.fromkeys(ids) if i.startswith(prefix)]
            w = _Writer(f)
            conv = w.codec.converter
            w.record({"type": "header", "archive_format": ARCHIVE_FORMAT, "store_format": FORMAT_VERSION,
                      "created_at": time.time(), "hoard": _version(),
                      "source": st.location if is_url(store) else os.path.basename(store)})
            with progress("exporting", len(selected)) as advance:
                for cid in selected:
                    state, info = st.load(cid), st.info(cid)
                    if state is None or info is None:  # deleted by a running program meanwhile
                        advance(1)
                        continue
                    rps = st.recovery_points(cid)
                    w.record({"type": "context", "state": conv.unstructure(state), "next_rp_id": info.next_rp_id,
                              "ttl": own_ttl(info), "recovery_points": len(rps)})
                    for rp in rps:
                        w.record({"type": "recovery_point", "id": rp.id, "version": rp.version, "label": rp.label,
                                  "created_at": rp.created_at, "state": conv.unstructure(rp.state)})
                    n_ctx += 1
                    n_rps += len(rps)
                    advance(1)
            w.end(n_ctx, n_rps)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
        _fsync_dir(out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    result = {"archive": out_path, "contexts": n_ctx, "recovery_points": n_rps, "bytes": os.path.getsize(out_path)}
    if as_json:
        emit_json(result)
    else:
        out().print(f"exported {n_ctx} context{'s' if n_ctx != 1 else ''} and {n_rps} recovery "
                    f"point{'s' if n_rps != 1 else ''} to {out_path} ({result['bytes']} bytes)", markup=False)


@click.command("import")
@click.argument("store", type=NEW_STORE)
@click.argument("in_path", metavar="IN", type=Utf8Path(exists=True, dir_okay=False, path_type=str))
@click.option("--replace", is_flag=True, help="Replace contexts that already exist (else the import is refused).")
@json_option
def import_(store: str, in_path: str, replace: bool, as_json: bool) -> None:
    """Import the contexts of archive IN (made by `hoard export`) into STORE.

    STORE (a file or a postgresql:// URL) is created if it is a file that does not exist. The whole
    archive is verified before anything is written; then each context is written exactly as
    exported, all of it in one transaction: the import is done entirely or not at all. If a context
    already exists, nothing is imported unless --replace is given. Refused while another program
    has STORE open (PostgreSQL: while a running system holds the lease of an archived context).

    \b
    Examples:
      hoard import state.db backup.hoard
      hoard import state.db backup.hoard --replace --json
    """
    # read once (IN may be a pipe, which a second read would find empty), all of it verified before
    # the store is opened or created; the transaction holds all of it in memory anyway
    with progress("verifying archive", None) as advance:
        archived = []
        for ctx in read_archive(in_path):
            archived.append(ctx)
            advance(1)
    ids = [ctx.state.id for ctx in archived]
    if len(set(ids)) != len(ids):
        raise CorruptStateError(f"archive {in_path!r} holds a context twice", what="archive")
    if not is_url(store):
        check_writable_target(store)
    results: list[dict[str, Any]] = []
    with write_store(store, "import", create=True) as st:
        claim(st, ids, "import")
        existing = {cid: info for cid in ids if (info := st.info(cid)) is not None}
        if existing and not replace:
            shown = ", ".join(map(repr, list(existing)[:10])) + (" ..." if len(existing) > 10 else "")
            raise HoardError(f"{len(existing)} of the archived contexts already exist in {store!r} ({shown}); "
                             "nothing was imported. Use --replace to overwrite them.")
        everything: list[Op] = []
        with progress("importing", len(ids)) as advance:
            for ctx in archived:
                ops, written, note = context_ops(ctx.state, ctx.recovery_points, ctx.next_rp_id,
                                                 existing.get(ctx.state.id), ctx.ttl)
                everything += ops
                results.append({"id": written.id, "version": written.version,
                                "recovery_points": len(ctx.recovery_points),
                                "replaced": ctx.state.id in existing, "note": note})
                advance(1)
        with progress("writing", None):
            try:
                st.commit(everything)  # one transaction: all of the import or none of it
            except PersistenceError as exc:
                raise PersistenceError(f"nothing was imported into {store!r}: {exc}",
                                       context_id=exc.context_id) from exc
    if as_json:
        emit_json({"store": store, "contexts": results})
        return
    console = out()
    for r in results:
        if r["note"]:
            console.print(f"{r['id']}: {r['note']}", markup=False)
    n_rps = sum(r["recovery_points"] for r in results)
    n_rep = sum(r["replaced"] for r in results)
    console.print(f"imported {len(results)} context{'s' if len(results) != 1 else ''} and {n_rps} recovery "
                  f"point{'s' if n_rps != 1 else ''} into {store}" + (f" ({n_rep} replaced)" if n_rep else ""),
                  markup=False)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist (yet)
        return False


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str | None:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
