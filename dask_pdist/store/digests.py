"""Chunks bound to their place: each chunk's checksum, recorded by position, checked on read.

zarr's crc32c codec ends every chunk with the crc32c of the bytes before it, so a flipped
byte fails on read. It cannot tell a chunk in the wrong place: two chunk files of one array
swapped (or a chunk copied from another store, or restored from an older backup) decode
cleanly and read as the wrong steps. So the writer records each chunk's trailing crc32c *by
position* in the store's own bookkeeping, and every read through :func:`checked_store`
compares the trailer of the chunk it got with the one recorded for the key it asked for: a
chunk that is not the one written there is refused, naming it. The comparison costs nothing
(4 bytes per chunk); zarr's codec then checks that those 4 bytes match the chunk's content.

Where the record lives (sub-group ``_dask_pdist`` of every store of ours):

- arrays written by a distance job's tasks (distances, ``embedding_rms``,
  ``input_checksum``): the ``chunk_digest`` array, one element per block and variable,
  written by the task that wrote the block, before the block's done flag (one small file per
  block: tasks on different machines write their own, nothing is read-modified-written), and
  ``chunk_digest_packed``, the same table in chunks of many blocks, written by the job that
  completes the store from its tasks' results: what a complete store's reader reads, so that
  opening a store of 10,001 step-blocks reads a few files, not 10,001 (root attribute
  ``dask_pdist_digests_packed``: the leading step-blocks it holds, lowered before any of
  them is rewritten and raised with the completion record);
- arrays written once (coordinates, and every array of a neighbours or clusters store): the
  ``digests`` attribute of the sub-group (``{chunk key: crc}``), written before the store is
  published.

Stores written before these records existed have none, and are read as before.

zarr has no hook for this (its codecs never see a chunk's position), hence a thin
:class:`zarr.storage.WrapperStore` that checks on ``get`` and records on ``set``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from zarr.storage import WrapperStore

from dask_pdist.conventions import BOOKKEEPING, FINGERPRINT_ATTR
from dask_pdist.io.paths import Location, files_under, is_remote

__all__ = [
    "DIGEST",
    "Digests",
    "keyed",
    "new_store_id",
    "record_whole",
    "Misplaced",
    "mismatch_reason",
    "Absent",
    "CheckingStore",
    "checked_store",
    "recording_array",
    "file_digests",
    "read_manifest",
    "manifest_with",
    "expected_digests",
    "PACKED",
    "PACKED_ATTR",
    "packed_steps",
    "update_packed",
]

#: The bookkeeping array of per-block chunk digests of a distance store.
DIGEST = "chunk_digest"
#: The same table, many step-blocks per chunk, written when a job completes the store.
PACKED = "chunk_digest_packed"
#: The root attribute with the number of leading step-blocks ``PACKED`` holds.
PACKED_ATTR = "dask_pdist_digests_packed"
#: Bytes per chunk of ``PACKED`` (an append rewrites its last chunk: keep it small; 10,001
#: step-blocks of three variables are 8 files).
_PACKED_BYTES = 1 << 14
#: The attribute of the bookkeeping sub-group with the digests of arrays written once.
MANIFEST_ATTR = "digests"
#: The root attribute with the store's id (what its digests are keyed with); its presence
#: says the store records digests, so a record gone missing is an error, never "no check".
STORE_ID_ATTR = "dask_pdist_store_id"
_CHUNK_KEY = re.compile(r"(?P<array>.+)/c(?P<index>(/\d+)+)")


def _trailer(data: Any) -> int:
    # the crc32c codec appends the checksum as 4 little-endian bytes
    return int.from_bytes(bytes(data[-4:]), "little")


class Digests(dict):
    """``{chunk key: recorded digest}`` of one store, and the store's id, which every recorded
    digest is keyed with (:func:`keyed`). Plain data: it pickles into dask tasks."""

    def __init__(
        self, values: Mapping[str, int] | Iterable = (), store_id: int = 0, pinned: Mapping[str, bytes] | None = None
    ) -> None:
        super().__init__(values)
        self.store_id = int(store_id)
        # metadata documents as the store was when opened ({key: bytes}, layout.pinned_metadata):
        # served instead of the files, so every array read through this view keeps that shape
        # while an append resizes the store one file at a time
        self.pinned = dict(pinned or {})

    def only(self, prefix: str) -> Digests:
        """The digests of the keys starting with ``prefix`` (one array's chunks)."""
        return Digests({k: v for k, v in self.items() if k.startswith(prefix)}, self.store_id, self.pinned)


def keyed(store_id: int, key: str, trailer: int) -> int:
    """The digest recorded for a chunk: its crc32c trailer bound to its key and to its store
    (a random id made when the store is), so that a chunk, or a whole block with its record,
    copied to another position or from another store does not match. Never 0 (0 means "not
    recorded").

    >>> keyed(7, "euclidean/c/1/0/0", 0x1234) != keyed(7, "euclidean/c/2/0/0", 0x1234)
    True
    """
    import google_crc32c

    value = google_crc32c.extend(store_id & 0xFFFFFFFF, f"{key}:{trailer:08x}".encode())
    return value or 1


class Misplaced(ValueError):
    """A chunk whose checksum is not the one recorded for its position."""

    def __init__(self, where: str, key: str, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{where}: chunk {key}: {self.detail}")
        self.key = key


class Absent(ValueError):
    """A chunk the store recorded as written, whose file (object) is gone."""

    def __init__(self, where: str, key: str) -> None:
        self.detail = "missing (chunk absent although its digest is recorded)"
        super().__init__(f"{where}: chunk {key}: {self.detail}")
        self.key = key


class CheckingStore(WrapperStore):
    """A zarr store that compares every chunk it reads with the digest recorded for its key
    (``expected``; keys absent are not checked), and remembers the keyed digest of every
    chunk it writes in ``written``. Metadata documents pinned in ``expected`` are read from
    there, not from the store."""

    def __init__(self, store: Any, expected: Mapping[str, int] | None = None, where: str = "") -> None:
        super().__init__(store)
        self.expected = expected if isinstance(expected, Digests) else Digests(expected or {})
        self.written: dict[str, int] = {}
        self.where = where or str(store)

    def _with_store(self, store: Any) -> CheckingStore:
        out = type(self)(store, self.expected, self.where)
        out.written = self.written
        return out

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if key in self.expected.pinned and byte_range is None:
            return prototype.buffer.from_bytes(self.expected.pinned[key])
        buf = await self._store.get(key, prototype, byte_range)
        want = self.expected.get(key)
        if buf is None and want is not None:  # zarr would read the fill value: never silently
            raise Absent(self.where, key)
        if buf is not None and want is not None and byte_range is None:
            data = buf.as_numpy_array()
            got = _trailer(data)
            if keyed(self.expected.store_id, key, got) != want:
                raise Misplaced(self.where, key, mismatch_reason(data, got))
        return buf

    async def set(self, key: str, value: Any) -> None:
        await self._store.set(key, value)
        if _CHUNK_KEY.fullmatch(key):
            self.written[key] = keyed(self.expected.store_id, key, _trailer(value.as_numpy_array()))


def mismatch_reason(data: Any, trailer: int) -> str:
    """Why a chunk whose keyed digest does not match was refused (for :class:`Misplaced`):
    damaged (its bytes do not match its own crc32c trailer) or a whole chunk in the wrong place.
    Only on the error path; shared by zarr's reads (:class:`CheckingStore`) and the store's own
    chunk reader (``store/chunk_files.py``)."""
    import google_crc32c

    if len(data) < 4 or google_crc32c.value(bytes(data[:-4])) != trailer:
        return "corrupt (its bytes do not match its own crc32c: truncated or damaged)"
    return (
        "misplaced: a whole chunk, but not the one recorded for this position of this store"
        " (swapped, copied from elsewhere, or restored from an older store)"
    )


def _base_store(path: Path | Location, read_only: bool) -> Any:
    if isinstance(path, Location):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(path.url, storage_options=dict(path.storage_options), read_only=read_only)
    from zarr.storage import LocalStore

    return LocalStore(str(path), read_only=read_only)


def checked_store(
    path: Path | Location, expected: Mapping[str, int] | None = None, read_only: bool = True
) -> CheckingStore:
    """A zarr store over ``path`` (what ``zarr.open_*`` and ``xarray.open_zarr`` take) that
    refuses a chunk whose trailer differs from ``expected[key]``."""
    return CheckingStore(_base_store(path, read_only), expected, str(path))


def recording_array(path: Path | Location, name: str, store_id: int) -> tuple[Any, dict[str, int]]:
    """Array ``name`` of the store at ``path`` opened for writing (every chunk written, even
    one equal to the fill value), and the dict that receives ``{chunk key: keyed digest}``
    of every chunk written through it."""
    import zarr

    store = CheckingStore(_base_store(path, False), Digests({}, store_id), str(path))
    array = zarr.open_array(store=store, path=name, mode="r+", zarr_format=3).with_config({"write_empty_chunks": True})
    return array, store.written


def file_digests(path: Path | Location, store_id: int, names: Iterable[str] | None = None) -> dict[str, int]:
    """``{chunk key: keyed digest}`` of every chunk file of arrays ``names`` (default: every
    array) below ``path``, from the files (the last 4 bytes of each)."""
    out = {}
    prefixes = [f"{n}/" for n in names] if names is not None else None
    for rel in files_under(path):
        if _CHUNK_KEY.fullmatch(rel) is None or rel.startswith(f"{BOOKKEEPING}/"):
            continue
        if prefixes is not None and not any(rel.startswith(p) for p in prefixes):
            continue
        where = path / rel
        if is_remote(where):
            data = where.read_bytes()
        else:
            with open(where, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4))
                data = f.read()
        out[rel] = keyed(store_id, rel, _trailer(data))
    return out


def new_store_id() -> int:
    """A random id for a new store (what its digests are keyed with)."""
    import secrets

    return secrets.randbits(32) or 1


def read_manifest(path: Path | Location) -> dict[str, int]:
    """The digests of a store's arrays written once ({} for a store without them)."""
    try:
        meta = json.loads((path / BOOKKEEPING / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    found = meta.get("attributes", {}).get(MANIFEST_ATTR, {}) if isinstance(meta, dict) else {}
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def record_whole(path: Path | Location) -> None:
    """Record the keyed digest of every chunk of a store written whole, not yet published
    (nothing reads it meanwhile): the manifest in its bookkeeping sub-group, the store id in
    its root attributes (without disturbing the consolidated metadata there)."""
    import zarr

    from dask_pdist.store.layout import write_root_attrs

    store_id = new_store_id()
    digests = file_digests(path, store_id)
    group = zarr.open_group(store=_base_store(path, False), mode="r+", use_consolidated=False, zarr_format=3)
    books = group[BOOKKEEPING] if BOOKKEEPING in group else group.create_group(BOOKKEEPING)
    books.attrs[MANIFEST_ATTR] = digests
    write_root_attrs(path, **{STORE_ID_ATTR: store_id})


def manifest_with(path: Path | Location, digests: Mapping[str, int]) -> None:
    """Add ``digests`` to the manifest of the store at ``path`` (creating its bookkeeping
    sub-group if needed). Called while the store is marked incomplete (an append growing
    it), so no reader trusts the manifest meanwhile."""
    import zarr

    group = zarr.open_group(store=_base_store(path, False), mode="r+", use_consolidated=False, zarr_format=3)
    books = group[BOOKKEEPING] if BOOKKEEPING in group else group.create_group(BOOKKEEPING)
    books.attrs[MANIFEST_ATTR] = {**read_manifest(path), **digests}


def expected_digests(path: Path | Location, done: np.ndarray | None = None, lost_blocks: list | None = None) -> Digests:
    """Every digest recorded in a store: the manifest, and (distance stores) the per-block
    ``chunk_digest`` array expanded to chunk keys, for blocks marked done in ``done``.

    ``lost_blocks``: a list that receives the blocks marked done whose record is lost (0),
    which are then left out, instead of raising (``--resume`` recomputes them).

    Raises
    ------
    StoreError
        The store says it records digests (its root carries a store id) but the record is
        gone or unreadable: nothing in it could be checked; or a block marked done has none.
    """
    from dask_pdist.errors import StoreError
    from dask_pdist.io.paths import zarr_array
    from dask_pdist.store.layout import read_attrs

    attrs = read_attrs(path) or {}
    if STORE_ID_ATTR not in attrs:
        return Digests()  # made before chunk digests: read as before
    out = Digests(read_manifest(path), attrs[STORE_ID_ATTR])

    def lost(what: str) -> StoreError:
        return StoreError(
            f"{path}: its record of chunk digests ({what}) is missing or unreadable, so no chunk of it can be"
            " checked; recompute the store (`dask-pdist compute ... --overwrite`)"
        )

    if not out:
        raise lost(f"{BOOKKEEPING}/zarr.json attribute {MANIFEST_ATTR!r}")
    if FINGERPRINT_ATTR not in attrs:
        return out  # an output written whole: the manifest holds every chunk
    try:
        arr = zarr_array(path / BOOKKEEPING / DIGEST)
        names = list(arr.attrs["variables"])
        upto = int(attrs.get(PACKED_ATTR, 0)) if done is None and (path / BOOKKEEPING / PACKED).exists() else 0
        upto = max(0, min(upto, arr.shape[0]))
        packed = _packed_rows(path, upto)  # None: unreadable; the per-block table holds the same
        start = upto if packed is not None else 0
        table = np.asarray(arr[start:]) if start < arr.shape[0] else np.zeros((0, *arr.shape[1:]), arr.dtype)
        if packed is not None:
            table = np.concatenate([packed, table])
    except Exception:
        raise lost(f"{BOOKKEEPING}/{DIGEST}") from None
    if done is None:
        done = np.ones(table.shape[:-1], bool)
    elif done.shape != table.shape[:-1]:  # a growth interrupted between resizing the two: none done past either
        both = np.zeros(table.shape[:-1], bool)
        rows = min(len(done), len(both))
        both[:rows] = done[:rows]
        done = both
    # every block marked done recorded a digest of each variable (never 0): a 0 there is a lost
    # record (a packed chunk gone reads as the fill value: those rows are read from their own files)
    unrecorded = done & (table == 0).any(axis=-1)
    again = np.unique(np.nonzero(unrecorded)[0])
    again = again[again < start]
    if len(again):
        table[again] = np.asarray(arr.get_orthogonal_selection((again,)))
        unrecorded = done & (table == 0).any(axis=-1)
    if unrecorded.any() and lost_blocks is None:
        s0 = int(np.nonzero(unrecorded)[0][0])
        raise StoreError(
            f"{path}: its record of chunk digests ({BOOKKEEPING}/{DIGEST}, step-block {s0} of the blocks marked"
            " written) is missing or unreadable, so those chunks cannot be checked; `dask-pdist compute ..."
            " --resume` recomputes the blocks without a record (or `dask-pdist verify` lists them)"
        )
    if lost_blocks is not None:  # --resume: the caller recomputes them
        lost_blocks.extend(tuple(int(i) for i in idx) for idx in np.argwhere(unrecorded))
        done = done & ~unrecorded
    kinds = [names_kind(name) for name in names]
    for s, i, j in zip(*np.nonzero(done), strict=True):
        for k, value in enumerate(table[s, i, j].tolist()):
            name = names[k]
            key = f"{name}/c/{s}/{i}/{j}" if kinds[k] == 3 else f"{name}/c/{s}"
            out.setdefault(key, value)
    return out


def _packed_rows(path: Path | Location, upto: int) -> np.ndarray | None:
    # the packed table's first `upto` rows, or None if it cannot be read (it is a copy)
    from dask_pdist.io.paths import zarr_array

    if not upto:
        return None
    try:
        return np.asarray(zarr_array(path / BOOKKEEPING / PACKED)[:upto])
    except Exception:
        return None


def packed_steps(blocks: tuple[int, ...], variables: int) -> int:
    """Step-blocks per chunk of the packed digest table (about 16 kB of digests per chunk)."""
    per_step = int(np.prod(blocks[1:], dtype=np.int64)) * variables * 4
    return max(1, _PACKED_BYTES // max(per_step, 1))


def update_packed(path: Path | Location, indices: Any, rows: list[np.ndarray]) -> int | None:
    """Copy into the packed table the digests of the step-blocks from the first one it does
    not hold (root attribute :data:`PACKED_ATTR`) or this job rewrote, to the end: ``rows``
    are this job's (block index, digests of its variables); the other blocks' are read from
    the per-block table. Returns the step-blocks the table now holds (the value to record
    with the completion), or None for a store without it."""
    from dask_pdist.io.paths import zarr_array
    from dask_pdist.store.layout import read_attrs

    where = path / BOOKKEEPING / PACKED
    if not (where / "zarr.json").exists():
        return None
    packed = zarr_array(where, "r+")
    total = int(packed.shape[0])
    start = min([int((read_attrs(path) or {}).get(PACKED_ATTR, 0)), *(int(i[0]) for i in indices)])
    if start >= total:
        return total
    table = np.zeros((total - start, *packed.shape[1:]), dtype=np.uint32)
    have = np.zeros(table.shape[:-1], bool)
    for index, row in zip(indices, rows, strict=True):
        if index[0] >= start:
            where = (int(index[0]) - start, *(int(i) for i in index[1:]))
            table[where] = np.asarray(row).ravel()
            have[where] = True
    if not have.all():  # blocks an earlier, interrupted job wrote: from their own files
        old = np.asarray(zarr_array(path / BOOKKEEPING / DIGEST)[start:total])
        table[~have] = old[~have]
    packed[start:total] = table
    return total


def names_kind(name: str) -> int:
    """Dimensions of a task-written variable of a distance store: 3 for distances, 1 for the
    per-step arrays (``embedding_rms``, ``input_checksum``)."""
    return 1 if name in ("embedding_rms", "input_checksum") or name.endswith("/input_checksum") else 3
