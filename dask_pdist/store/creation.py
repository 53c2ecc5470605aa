"""Creating a distance store: its metadata, coordinates and bookkeeping arrays, published whole.

The distances themselves are written afterwards by the job's tasks (:mod:`.writer`); what is
made here is everything a task and a reader rely on: the arrays with their codecs and NaN fill
value, the step and token labels, and in the ``_dask_pdist`` sub-group the done flags, the
input checksums and versions, and the chunk digests (per block, and packed), keyed with the
store's random id (:mod:`.digests`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import (
    BOOKKEEPING,
    COMPLETE_ATTR,
    DISTANCE_DIMS,
    DONE,
    FINGERPRINT_ATTR,
    INPUT_CHECKSUM,
    INPUT_VERSION,
)
from dask_pdist.io.publish import building
from dask_pdist.store.append import VERSION_CHUNK
from dask_pdist.store.codecs import codecs
from dask_pdist.store.digests import (
    DIGEST,
    MANIFEST_ATTR,
    PACKED,
    PACKED_ATTR,
    STORE_ID_ATTR,
    file_digests,
    new_store_id,
    packed_steps,
)
from dask_pdist.store.layout import StorePath, consolidate

__all__ = ["create", "task_variables", "DONE_DIMS"]

#: Dimensions of the per-block bookkeeping arrays.
DONE_DIMS = ("step_block", "token_i_block", "token_j_block")


def create(ds: xr.Dataset, path: StorePath, compressor: str, fingerprint: dict[str, Any]) -> None:
    # the store's metadata and coordinates appear whole at `path`, or not at all; with
    # --overwrite the old store stays until then (io/publish.py: the one publishing primitive)
    with building(path) as tmp:
        _build(ds, tmp, compressor, fingerprint)


def _build(ds: xr.Dataset, tmp: Path, compressor: str, fingerprint: dict[str, Any]) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    checksums = ds.coords.get(INPUT_CHECKSUM)
    versions = ds.coords.get(INPUT_VERSION)
    written = task_variables(ds)
    ds = ds.drop_vars([INPUT_CHECKSUM, INPUT_VERSION], errors="ignore")  # bookkeeping: kept in the sub-group
    encoding = {
        name: {
            "chunks": tuple(c[0] for c in var.chunks),
            "compressors": codecs(compressor, var.dtype.itemsize, str(name)),
            # an unwritten chunk reads as NaN, never as distance 0; an integer count has no NaN:
            # an absent chunk of it is refused by its recorded digest (store/digests.py)
            **({"_FillValue": np.nan} if var.dtype.kind == "f" else {}),
        }
        for name, var in ds.data_vars.items()
    }
    for name in ds.coords:  # every array carries a checksum, coordinates too
        encoding[name] = {"compressors": [Crc32cCodec()]}
    # the step labels in chunks of at least VERSION_CHUNK steps (8 kB): every append and every
    # open reads them all, so a store created with one step (--follow) must not keep one file per label
    encoding["step"]["chunks"] = (max(VERSION_CHUNK, int(ds.sizes["step"])),)
    # metadata and the (small, eager) coordinates; the distances are written by our own tasks;
    # every chunk is written, even one equal to the fill value, so that "absent" means missing
    for name, var in ds.variables.items():  # each dask variable's chunks, stated (see _placeholders)
        if isinstance(var.data, da.Array):
            encoding.setdefault(str(name), {}).setdefault("chunks", tuple(c[0] for c in var.chunks))
    _placeholders(ds).to_zarr(
        tmp,
        mode="w-",
        zarr_format=3,
        consolidated=False,
        encoding=encoding,
        compute=False,
        write_empty_chunks=True,
        safe_chunks=False,  # (the placeholders' one chunk: never written)
    )
    group = zarr.open_group(str(tmp), mode="r+")
    # attributes given at creation: each later `attrs[...] =` would rewrite a zarr.json (a few
    # ms each, before the first kernel call)
    books = group.create_group(
        BOOKKEEPING, attributes={"long_name": "dask_pdist bookkeeping: which blocks are written, and from what input"}
    )
    nblocks = tuple(len(ds.chunksizes[d]) for d in DISTANCE_DIMS)
    books.create_array(
        DONE,
        shape=nblocks,
        chunks=(1, 1, 1),
        dtype="uint8",
        fill_value=0,
        dimension_names=DONE_DIMS,
        compressors=[Crc32cCodec()],
        attributes={"long_name": "1 where the block of every variable is written (one element per dask task)"},
    )
    if checksums is not None:
        books.create_array(
            INPUT_CHECKSUM,
            shape=(ds.sizes["step"],),
            chunks=(ds.chunksizes["step"][0],),
            dtype="uint32",
            fill_value=0,
            dimension_names=("step",),
            compressors=[Crc32cCodec()],
            attributes={"long_name": checksums.attrs.get("long_name", "")},
        )
    if versions is not None:
        version = books.create_array(
            INPUT_VERSION,
            shape=(ds.sizes["step"],),
            chunks=(VERSION_CHUNK,),  # read whole by every append: few files, whatever the step chunks
            dtype="uint64",
            fill_value=0,
            dimension_names=("step",),
            compressors=[Crc32cCodec()],
            attributes={"long_name": "hash of the identity of each step's input file, 0 if none vouched (io/paths.py)"},
        )
        version.with_config({"write_empty_chunks": True})[:] = versions.values  # all 0 is a value too
    books.create_array(
        DIGEST,
        shape=(*nblocks, len(written)),
        chunks=(1, 1, 1, len(written)),
        dtype="uint32",
        fill_value=0,
        dimension_names=(*DONE_DIMS, "variable"),
        compressors=[Crc32cCodec()],
        attributes={
            "long_name": "crc32c trailer of each chunk the block's task wrote, by position (store/digests.py)",
            "variables": written,
        },
    )
    books.create_array(
        PACKED,
        shape=(*nblocks, len(written)),
        chunks=(packed_steps(nblocks, len(written)), *nblocks[1:], len(written)),
        dtype="uint32",
        fill_value=0,
        dimension_names=(*DONE_DIMS, "variable"),
        # zstd: the unfilled end of the last chunk (zeros) costs nothing to rewrite
        compressors=[ZstdCodec(level=1), Crc32cCodec()],
        attributes={
            "long_name": f"{DIGEST}, many step-blocks per chunk: written when a job completes the store",
            "variables": written,
        },
    )
    # the arrays written now, once (coordinates): their chunks' digests, by key, keyed with the
    # store's own id (store/digests.py)
    store_id = new_store_id()
    static = [str(n) for n in ds.coords if not isinstance(ds[n].data, da.Array)]
    books.attrs[MANIFEST_ATTR] = file_digests(tmp, store_id, static)
    group.update_attributes(
        {
            PACKED_ATTR: 0,
            STORE_ID_ATTR: store_id,
            FINGERPRINT_ATTR: json.dumps(fingerprint, sort_keys=True),
            COMPLETE_ATTR: False,
        }
    )
    consolidate(tmp)


def _placeholders(ds: xr.Dataset) -> xr.Dataset:
    # ds with each dask-backed variable's graph replaced by zeros of the same shape and dtype in
    # one chunk (its store chunks are given in the encoding): to_zarr(compute=False) writes the
    # same metadata from them, and the write graph it builds and dask optimizes, which nobody
    # runs (our tasks write the chunks), has one task per variable instead of the kernels' and
    # reads' graph: measured 0.44 -> 0.05 s at 20,004 steps, all before the first kernel call
    out = ds.copy()
    for name, var in ds.variables.items():
        if isinstance(var.data, da.Array):
            out[name] = var.copy(data=da.zeros(var.shape, dtype=var.dtype, chunks=-1))
    return out


def task_variables(ds: xr.Dataset, with_checksums: bool = True) -> list[str]:
    # what each block's task writes, in the order of the chunk_digest array's last axis
    names = [str(n) for n in ds.data_vars]
    for name, coord in ds.coords.items():
        if isinstance(coord.data, da.Array) and name != INPUT_VERSION:  # versions: written with the metadata
            if name == INPUT_CHECKSUM:
                if with_checksums:
                    names.append(f"{BOOKKEEPING}/{INPUT_CHECKSUM}")
            else:
                names.append(str(name))
    return names
