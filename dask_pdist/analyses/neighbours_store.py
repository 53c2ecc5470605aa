"""Writer and reader of neighbours stores (zarr format 3).

A neighbours store is small next to a distance store (S x V x k x 8 bytes), so it is written
whole under a hidden name and published when every chunk is on disk
(:mod:`dask_pdist.io.publish`): it exists complete or not at all, and an older store stays
readable until then (an interrupted job is rerun, there is nothing to resume).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import dask
import xarray as xr

from dask_pdist.conventions import KIND_ATTR, NEIGHBOURS_KIND
from dask_pdist.errors import StoreError
from dask_pdist.io.locks import acquire_lock, release_lock
from dask_pdist.io.paths import local_path
from dask_pdist.io.publish import check_parent, clean_stale, discard, hidden_name, named, publish
from dask_pdist.store.codecs import checked_codecs
from dask_pdist.store.digests import checked_store, file_digests, manifest_with, read_manifest

__all__ = ["neighbours_to_zarr", "open_neighbours", "is_neighbours_store"]


def _attrs(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None


def is_neighbours_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a neighbours store written by dask_pdist."""
    attrs = _attrs(Path(path))
    return attrs is not None and attrs.get(KIND_ATTR) == NEIGHBOURS_KIND


def _check_target(path: Path, overwrite: bool) -> None:
    from dask_pdist.store.layout import is_store

    if path.exists():
        if not (is_neighbours_store(path) or is_store(path)):
            raise StoreError(f"{path}: exists and is not a dask_pdist store; refusing to write into or delete it")
        if not overwrite:
            raise StoreError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    check_parent(path)


def _publish(_written: Any, tmp: str, path: str, overwrite: bool, lock: str) -> str:
    # every chunk's checksum recorded by position (store/digests.py), then published: the old
    # store (overwrite) stays readable until the new one is whole
    try:
        manifest_with(Path(tmp), file_digests(Path(tmp)))
        publish(tmp, path, replace=overwrite)
    except BaseException:
        discard(tmp)
        raise
    finally:
        release_lock(Path(path), lock)
    return path


def neighbours_to_zarr(
    ds: xr.Dataset, path: str | os.PathLike[str], *, overwrite: bool = False, compute: bool = True
) -> Any:
    """Write a neighbours Dataset to a zarr (format 3) store, complete or not at all.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`neighbours`.
    path : path-like
        Store directory to create.
    overwrite : bool
        Replace an existing dask_pdist store at ``path`` (only after the new one is whole).
        Anything else at ``path`` is never written into or deleted.
    compute : bool
        If False, return a ``dask.delayed`` that writes when computed (run it under a
        progress bar or a distributed client).

    Returns
    -------
    str (the path), or dask.delayed.Delayed if ``compute=False``.

    Examples
    --------
    >>> neighbours_to_zarr(neighbours(open_history("h.safetensors")), "nbrs.zarr")  # doctest: +SKIP
    """
    if ds.attrs.get(KIND_ATTR) != NEIGHBOURS_KIND:
        raise ValueError("ds is not a neighbours Dataset (see neighbours())")
    path = local_path(path, "neighbours store")
    _check_target(path, overwrite)
    lock = acquire_lock(path, "neighbours store")  # held until published (or failed)
    try:
        clean_stale(path)
        _check_target(path, overwrite)
    except BaseException:
        release_lock(path, lock)
        raise
    tmp = hidden_name(path)
    # store chunks = dask chunks: each task writes whole chunks of its own
    encoding = {
        name: {"chunks": tuple(c[0] for c in var.chunks) if var.chunks else var.shape, "compressors": checked_codecs()}
        for name, var in ds.data_vars.items()
    }
    for name in ds.coords:
        encoding[name] = {"compressors": checked_codecs()}
    try:
        with warnings.catch_warnings():
            # consolidated metadata is a zarr-python extension to format 3 (as in store/layout.py): plain
            # xarray.open_zarr(path) then opens the store without a fallback warning
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            written = ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding, compute=False)
        job = dask.delayed(_publish, pure=False)(written, str(tmp), str(path), overwrite, lock)
        if not compute:
            return job
        return job.compute()
    except BaseException as exc:
        discard(tmp)
        release_lock(path, lock)
        raise named(exc, path) from exc


def open_neighbours(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a neighbours store lazily.

    Examples
    --------
    >>> nb = open_neighbours("nbrs.zarr")  # doctest: +SKIP
    >>> neighbour_churn(nb).mean_churn.values  # doctest: +SKIP
    """
    path = local_path(path, "neighbours store")
    if not path.exists():
        raise FileNotFoundError(f"{path}: store not found")
    if not is_neighbours_store(path):
        raise StoreError(f"{path}: not a neighbours store (no zarr.json with {KIND_ATTR}={NEIGHBOURS_KIND!r})")
    # every chunk is read through the check of its recorded digest (store/digests.py)
    ds = xr.open_zarr(checked_store(path, read_manifest(path)), zarr_format=3, consolidated=True, chunks={})
    ds.encoding["source"] = str(path)
    return ds
