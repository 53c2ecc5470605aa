"""Writer and reader of neighbours stores (zarr format 3).

A neighbours store is small next to a distance store (S x V x k x 8 bytes), so it is written
whole under a hidden name and published when every chunk is on disk
(:mod:`dask_pdist.io.publish`): it exists complete or not at all, and an older store stays
readable until then (an interrupted job is rerun, there is nothing to resume).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import xarray as xr

from dask_pdist.conventions import KIND_ATTR, NEIGHBOURS_KIND
from dask_pdist.store.outputs import appended, check_target, open_whole, root_attrs, write_whole

__all__ = ["neighbours_to_zarr", "open_neighbours", "is_neighbours_store"]


def is_neighbours_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a neighbours store written by dask_pdist."""
    attrs = root_attrs(path)
    return attrs is not None and attrs.get(KIND_ATTR) == NEIGHBOURS_KIND


def _ours(path: Path) -> bool:
    from dask_pdist.store.layout import is_store

    return is_neighbours_store(path) or is_store(path)


def _check_target(path: Path, overwrite: bool) -> None:
    check_target(path, overwrite, ours=_ours, what="a dask_pdist store")


def neighbours_to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: bool = True,
    append: bool = False,
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
    append : bool
        Grow the neighbours store at ``path`` (create it if absent) with the steps of ``ds``
        after its last one: only those are computed. ``ds`` must hold the store's steps first
        and the same metric, k, input dtype and tokens; otherwise ``StoreError`` and the store
        unchanged. Churn across the old/new boundary is that of a one-shot run.

    Returns
    -------
    str (the path), or dask.delayed.Delayed if ``compute=False``.

    Examples
    --------
    >>> neighbours_to_zarr(neighbours(open_history("h.safetensors")), "nbrs.zarr")  # doctest: +SKIP
    """
    if ds.attrs.get(KIND_ATTR) != NEIGHBOURS_KIND:
        raise ValueError("ds is not a neighbours Dataset (see neighbours())")
    grow = partial(appended, opener=open_neighbours, same=("metric", "k", "input_dtype")) if append else None
    return write_whole(
        ds, path, role="neighbours store", check=_check_target, overwrite=overwrite, compute=compute, append=grow
    )


def open_neighbours(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a neighbours store lazily.

    Examples
    --------
    >>> nb = open_neighbours("nbrs.zarr")  # doctest: +SKIP
    >>> neighbour_churn(nb).mean_churn.values  # doctest: +SKIP
    """
    return open_whole(
        path, role="neighbours store", is_kind=is_neighbours_store, marker=f"{KIND_ATTR}={NEIGHBOURS_KIND!r}"
    )
