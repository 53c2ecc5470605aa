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
  written by the task that wrote the block, before the block's done flag;
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

from dask_pdist.conventions import BOOKKEEPING
from dask_pdist.io.paths import Location, files_under, is_remote

__all__ = [
    "DIGEST",
    "Misplaced",
    "CheckingStore",
    "checked_store",
    "recording_array",
    "file_digests",
    "read_manifest",
    "manifest_with",
    "expected_digests",
]

#: The bookkeeping array of per-block chunk digests of a distance store.
DIGEST = "chunk_digest"
#: The attribute of the bookkeeping sub-group with the digests of arrays written once.
MANIFEST_ATTR = "digests"
_CHUNK_KEY = re.compile(r"(?P<array>.+)/c(?P<index>(/\d+)+)")


def _trailer(data: Any) -> int:
    # the crc32c codec appends the checksum as 4 little-endian bytes
    return int.from_bytes(bytes(data[-4:]), "little")


class Misplaced(ValueError):
    """A chunk whose checksum is not the one recorded for its position."""

    def __init__(self, where: str, key: str, want: int, got: int) -> None:
        self.detail = (
            f"misplaced: its checksum {got:08x} is not the one recorded for this position"
            f" ({want:08x}): a chunk swapped, copied from elsewhere or restored from an older store"
        )
        super().__init__(f"{where}: chunk {key}: {self.detail}")
        self.key = key


class CheckingStore(WrapperStore):
    """A zarr store that compares every chunk it reads with the digest recorded for its key
    (``expected``: chunk key -> crc32c trailer; keys absent are not checked), and remembers
    the trailer of every chunk it writes in ``written``."""

    def __init__(self, store: Any, expected: Mapping[str, int] | None = None, where: str = "") -> None:
        super().__init__(store)
        self.expected = dict(expected or {})
        self.written: dict[str, int] = {}
        self.where = where or str(store)

    def _with_store(self, store: Any) -> CheckingStore:
        out = type(self)(store, self.expected, self.where)
        out.written = self.written
        return out

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        want = self.expected.get(key)
        if buf is not None and want is not None and byte_range is None:
            got = _trailer(buf.as_numpy_array())
            if got != want:
                raise Misplaced(self.where, key, want, got)
        return buf

    async def set(self, key: str, value: Any) -> None:
        await self._store.set(key, value)
        if _CHUNK_KEY.fullmatch(key):
            self.written[key] = _trailer(value.as_numpy_array())


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


def recording_array(path: Path | Location, name: str) -> tuple[Any, dict[str, int]]:
    """Array ``name`` of the store at ``path`` opened for writing (every chunk written, even
    one equal to the fill value), and the dict that receives ``{chunk key: trailer}`` of
    every chunk written through it."""
    import zarr

    store = checked_store(path, read_only=False)
    array = zarr.open_array(store=store, path=name, mode="r+").with_config({"write_empty_chunks": True})
    return array, store.written


def file_digests(path: Path | Location, names: Iterable[str] | None = None) -> dict[str, int]:
    """``{chunk key: trailer}`` of every chunk file of arrays ``names`` (default: every
    array) below ``path``, read from the files (the last 4 bytes of each)."""
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
        out[rel] = _trailer(data)
    return out


def read_manifest(path: Path | Location) -> dict[str, int]:
    """The digests of a store's arrays written once ({} for a store without them)."""
    try:
        meta = json.loads((path / BOOKKEEPING / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    found = meta.get("attributes", {}).get(MANIFEST_ATTR, {}) if isinstance(meta, dict) else {}
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def manifest_with(path: Path | Location, digests: Mapping[str, int]) -> None:
    """Record ``digests`` in the store at ``path`` (creating its bookkeeping sub-group if
    needed). Called on a store not yet published, so nothing reads it meanwhile."""
    import zarr

    group = zarr.open_group(store=_base_store(path, False), mode="r+")
    books = group[BOOKKEEPING] if BOOKKEEPING in group else group.create_group(BOOKKEEPING)
    books.attrs[MANIFEST_ATTR] = {**read_manifest(path), **digests}


def expected_digests(path: Path | Location, done: np.ndarray | None = None) -> dict[str, int]:
    """Every digest recorded in a store: the manifest, and (distance stores) the per-block
    ``chunk_digest`` array expanded to chunk keys, for blocks marked done in ``done``."""
    from dask_pdist.io.paths import zarr_array

    out = read_manifest(path)
    where = path / BOOKKEEPING / DIGEST
    if not (where / "zarr.json").exists():
        return out
    try:
        arr = zarr_array(where)
        table = np.asarray(arr[...])
        names = list(arr.attrs["variables"])
    except Exception:  # unreadable record: verify reports the array; reads check nothing
        return out
    if done is None:
        done = np.ones(table.shape[:-1], bool)
    for s, i, j in zip(*np.nonzero(done), strict=True):
        for k, name in enumerate(names):
            value = int(table[s, i, j, k])
            if value == 0:
                continue  # not recorded (the fill value)
            kind = names_kind(name)
            key = f"{name}/c/{s}/{i}/{j}" if kind == 3 else f"{name}/c/{s}"
            out.setdefault(key, value)
    return out


def names_kind(name: str) -> int:
    """Dimensions of a task-written variable of a distance store: 3 for distances, 1 for the
    per-step arrays (``embedding_rms``, ``input_checksum``)."""
    return 1 if name in ("embedding_rms", "input_checksum") or name.endswith("/input_checksum") else 3
