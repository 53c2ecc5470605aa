"""Writers and readers of the zarr store (zarr format 3, NaN fill, chunks aligned with dask).

The store is plain xarray-on-zarr: ``xarray.open_zarr(path)`` opens it without dask_pdist.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from .dataset import DISTANCE_DIMS
from .errors import StoreError

__all__ = ["COMPRESSORS", "DEFAULT_COMPRESSOR", "to_zarr", "open_distances"]

Compressor = Literal["none", "lz4", "zstd"]
#: Compressor choices; see the README for the measurements behind the default.
COMPRESSORS: tuple[str, ...] = ("none", "lz4", "zstd")
DEFAULT_COMPRESSOR: Compressor = "lz4"
_MARKER_ATTR = "dask_pdist_version"


def _codecs(compressor: str, itemsize: int) -> list[Any] | None:
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor={compressor!r}: choose one of {list(COMPRESSORS)}")
    if compressor == "none":
        return None
    from zarr.codecs import BloscCodec

    # byte shuffle groups the exponent bytes of neighbouring floats, which is what compresses
    return [BloscCodec(cname=compressor, clevel=1 if compressor == "zstd" else 5, shuffle="shuffle", typesize=itemsize)]


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    # zarr chunks are regular: make every dask chunk but the last one equal, so each dask
    # task writes whole store chunks and no two tasks share one
    chunks = {}
    for dim in DISTANCE_DIMS:
        sizes = ds.chunksizes.get(dim)
        if sizes and len(set(sizes[:-1])) > 1 or (sizes and len(sizes) > 1 and sizes[-1] > sizes[0]):
            chunks[dim] = max(sizes)
    return ds.chunk(chunks) if chunks else ds


def is_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a zarr group written by dask_pdist."""
    import json

    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return _MARKER_ATTR in attrs


def to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    compressor: Compressor = DEFAULT_COMPRESSOR,
    overwrite: bool = False,
    compute: bool = True,
) -> Any:
    """Write a distance Dataset to a zarr (format 3) store, every metric from one graph.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances`.
    path : path-like
        Store directory to create.
    compressor : {"lz4", "zstd", "none"}
        Blosc with byte shuffle, or no compression (see README for the measurements).
    overwrite : bool
        Replace an existing dask_pdist store at ``path``. Anything else at ``path`` is
        never deleted.
    compute : bool
        If False, write the metadata and coordinates now and return a ``dask.delayed``
        object that writes the distances when computed (run it under a progress bar or a
        distributed client as you like).

    Returns
    -------
    None, or dask.delayed.Delayed if ``compute=False``.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is False, or is not a dask_pdist store.

    Examples
    --------
    >>> to_zarr(pairwise_distances(open_history("h.safetensors")), "d.zarr")  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise StoreError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
        if not is_store(path):
            raise StoreError(f"{path}: exists and is not a dask_pdist store; refusing to delete it")
        shutil.rmtree(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"{path}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"{path}: parent directory {parent} is not writable")
    ds = _regular_chunks(ds)
    encoding = {}
    for name, var in ds.data_vars.items():
        chunks = tuple(c[0] for c in var.chunks) if var.chunks else var.shape
        encoding[name] = {
            "chunks": chunks,
            "compressors": _codecs(compressor, var.dtype.itemsize),
            "_FillValue": np.nan,  # an unwritten chunk reads as NaN, never as distance 0
        }
    with warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension to format 3; we write it so that
        # plain xarray.open_zarr(path) opens the store without a fallback warning
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        return ds.to_zarr(path, mode="w-", zarr_format=3, consolidated=True, encoding=encoding, compute=compute)


def open_distances(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a distance store lazily; slicing by step reads only the chunks it needs.

    Parameters
    ----------
    path : path-like
        A store written by :func:`to_zarr` or ``dask-pdist compute``.

    Returns
    -------
    xarray.Dataset
        dask-backed, one dask chunk per store chunk.

    Examples
    --------
    >>> ds = open_distances("pairwise_distances.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234).values  # reads one chunk  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: store not found")
    if not is_store(path):
        raise StoreError(f"{path}: not a dask_pdist store (no zarr.json with {_MARKER_ATTR!r})")
    return xr.open_zarr(path, zarr_format=3, consolidated=True, chunks={})
