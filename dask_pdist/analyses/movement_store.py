"""Writer and reader of movement and divergence stores (zarr format 3).

Such a store is small next to a distance store (a few values per step and token), so it is
written whole under a hidden name and published when every chunk is on disk
(:mod:`dask_pdist.io.publish`): it exists complete or not at all, and an older store stays
readable until then; an interrupted job is rerun, there is nothing to resume. The writer holds
the store's writer lock (:func:`~dask_pdist.store.layout.acquire_lock`) from planning to
publishing, so two jobs never build the same output at once.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import xarray as xr

from dask_pdist.conventions import KIND_ATTR, human_size
from dask_pdist.planning import plan_store_steps
from dask_pdist.store.outputs import check_target, open_whole, root_attrs, write_whole

__all__ = [
    "COMPARISON_KINDS",
    "write_comparison",
    "open_comparison",
    "comparison_kind",
    "describe_comparison",
    "store_chunks",
]

#: Kinds this module writes: movement (:func:`movement`) and divergence (:func:`divergence`).
COMPARISON_KINDS = ("movement", "divergence")


def comparison_kind(path: str | os.PathLike[str]) -> str | None:
    """``"movement"`` or ``"divergence"`` if ``path`` holds such a store, else None."""
    kind = (root_attrs(path) or {}).get(KIND_ATTR)
    return kind if kind in COMPARISON_KINDS else None


def _check_kind(kind: str, path: Path, overwrite: bool) -> None:
    _check_target(path, kind, overwrite)


def _check_target(path: Path, kind: str, overwrite: bool) -> None:
    check_target(path, overwrite, ours=lambda p: comparison_kind(p) == kind, what=f"a {kind} store")


def write_comparison(
    ds: xr.Dataset, path: str | os.PathLike[str], *, overwrite: bool = False, compute: bool = True
) -> Any:
    """Write a movement or divergence Dataset to a zarr (format 3) store, complete or not at all.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`movement` or :func:`divergence`.
    path : path-like
        Local store directory to create; ``xarray.open_zarr(path)`` opens it.
    overwrite : bool
        Replace an existing store of the same kind at ``path`` (only once the new one is
        whole). Anything else at ``path`` is never written into or deleted.
    compute : bool
        If False, return a ``dask.delayed`` that writes when computed (run it with
        :class:`~dask_pdist.store.job.Job`; if it is never run, the writer lock stays
        until this process ends or writes again).

    Returns
    -------
    str (the path), or dask.delayed.Delayed if ``compute=False``.

    Examples
    --------
    >>> write_comparison(movement(open_history("h.safetensors")), "movement.zarr")  # doctest: +SKIP
    """
    kind = ds.attrs.get(KIND_ATTR)
    if kind not in COMPARISON_KINDS:
        raise ValueError(f"ds is not a movement or divergence Dataset (its {KIND_ATTR} is {kind!r})")
    return write_whole(
        ds,
        path,
        role=f"{kind} store",
        check=functools.partial(_check_kind, kind),
        overwrite=overwrite,
        compute=compute,
        chunks=store_chunks(ds),
        by_store_chunk=True,
    )


def store_chunks(ds: xr.Dataset) -> dict[str, tuple[int, ...]]:
    """The store chunks of a movement or divergence Dataset: along ``step``, whole tasks, about
    :data:`~dask_pdist.conventions.COMPARISON_CHUNK_BYTES` of its widest per-token variable
    (:func:`~dask_pdist.planning.plan_store_steps`); ``pair`` one run pair, ``token`` whole.
    One task writes each store chunk of every variable (``write_whole(by_store_chunk=True)``).

    >>> import dask.array as da
    >>> ds = xr.Dataset({"euclidean": (("step", "token"), da.zeros((500, 10_000), dtype="f4", chunks=(6, -1)))})
    >>> store_chunks(ds)
    {'euclidean': (102, 10000)}
    """
    task_steps = max(ds.chunksizes["step"]) if "step" in ds.chunksizes else ds.sizes["step"]
    widest = max((v.dtype.itemsize * v.sizes.get("token", 1) for v in ds.data_vars.values()), default=1)
    steps = plan_store_steps(task_steps, ds.sizes["step"], widest)
    return {
        name: tuple({"step": steps, "pair": 1}.get(str(d), var.sizes[d]) for d in var.dims)
        for name, var in ds.data_vars.items()
    }


def open_comparison(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a movement or divergence store lazily (plain ``xarray.open_zarr`` works too).

    Examples
    --------
    >>> mv = open_comparison("movement.zarr")  # doctest: +SKIP
    >>> mv.chebyshev_max.sel(step=slice(100, 200)).values  # doctest: +SKIP
    """
    return open_whole(
        path,
        role="movement or divergence store",
        is_kind=lambda p: comparison_kind(p) is not None,
        marker=f"{KIND_ATTR} in {COMPARISON_KINDS}",
    )


def describe_comparison(path: str | os.PathLike[str]) -> str:
    """What ``dask-pdist info`` prints for a movement or divergence store (metadata only).

    >>> print(describe_comparison("movement.zarr"))  # doctest: +SKIP
    """
    import zarr

    from dask_pdist.io.paths import disk_usage, local_path

    path = local_path(path, "movement or divergence store")
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs
    steps = group["step"][:]
    lines = [
        f"{path}",
        f"  dask_pdist {attrs.get(KIND_ATTR)} store, version {attrs.get('dask_pdist_version', '?')}",
        f"  source: {attrs.get('source', '?')} [{attrs.get('source_key', '?')}], {attrs.get('input_dtype', '?')}",
    ]
    if attrs.get(KIND_ATTR) == "movement":
        lines.append(f"  lag: {attrs.get('lag')} steps (the first {attrs.get('lag')} steps dropped)")
    else:
        lines.append(f"  runs: {attrs.get('runs', '?')}; reference: {attrs.get('reference', '?')}")
        if attrs.get("dropped_steps"):
            lines.append(f"  steps not common to every run, dropped: {attrs.get('dropped_steps')}")
    lines.append(f"  number format of chebyshev_ulp: {attrs.get('number_format', '?')}")
    lines.append(f"  steps: {len(steps)} ({steps[0]}..{steps[-1]})" if len(steps) else "  steps: 0")
    for name, arr in sorted(group.arrays()):
        if arr.ndim >= 2:
            lines.append(f"  {name}: shape {list(arr.shape)} {arr.dtype}, chunks {list(arr.chunks)}")
    lines.append(f"  size on disk: {human_size(disk_usage(path))}")
    return "\n".join(lines)
