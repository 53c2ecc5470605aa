"""Writing the data variables of an output written whole with one task per store chunk.

xarray's ``to_zarr`` writes each variable's dask chunk by a task of its own. When every
variable comes from one kernel task (movement and divergence: 13 variables per task) that is
13 small zarr writes per kernel task, and dask's static order then runs the kernel tasks far
ahead of the writes of all but one variable: measured, every kernel result stayed in memory
until the end (peak RSS growing with the number of steps). Here one task writes the store chunk
of every variable at once, so each chunk's kernel tasks, its writes and their release form one
closed piece of the graph, and a store chunk may hold several kernel tasks (fewer, larger
writes). The store's metadata and coordinates are still xarray's (``to_zarr(compute=False)``),
so the store is the one xarray would write, in the chunks it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from dask_pdist.io.paths import zarr_array

__all__ = ["chunk_writes"]


def _write(*blocks: np.ndarray, lead: tuple[str, ...], dims: dict[str, tuple], targets: dict[str, Any]) -> np.ndarray:
    # blocks: one arange block per lead dim (its positions), then one block per variable
    at = {d: slice(int(b[0]), int(b[-1]) + 1) for d, b in zip(lead, blocks, strict=False)}
    for (name, target), block in zip(targets.items(), blocks[len(lead) :], strict=True):
        target[tuple(at.get(d, slice(None)) for d in dims[name])] = block
    return np.ones((1,) * len(lead), dtype=bool)


def chunk_writes(ds: xr.Dataset, store: Path) -> da.Array:
    """Lazily write every dask-backed data variable of ``ds`` into the existing arrays of the
    same names in the zarr store ``store`` (created by ``ds.to_zarr(store, compute=False)``),
    one task per store chunk of the dims all variables share, every variable at once.

    The other dims are whole in each store chunk. Returns a dask array of one flag per task
    (compute it, or hand it to a task that must run after every write).

    >>> import tempfile
    >>> store = Path(tempfile.mkdtemp()) / "c.zarr"
    >>> ds = xr.Dataset({"a": (("step", "token"), da.ones((5, 3), chunks=2)), "b": ("step", da.arange(5, chunks=2))})
    >>> enc = {"a": {"chunks": (4, 3)}, "b": {"chunks": (4,)}}  # two dask chunks per store chunk
    >>> _ = ds.to_zarr(store, compute=False, zarr_format=3, consolidated=False, safe_chunks=False, encoding=enc)
    >>> chunk_writes(ds, store).compute().tolist()  # two tasks
    [True, True]
    >>> back = xr.open_zarr(store, consolidated=False)
    >>> back.b.values.tolist(), float(back.a.sum())
    ([0, 1, 2, 3, 4], 15.0)
    """
    names = [n for n, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
    first = ds[names[0]].dims
    lead = tuple(d for d in first if all(d in ds[n].dims for n in names))
    letters = {d: chr(ord("a") + i) for i, d in enumerate(dict.fromkeys(d for n in names for d in ds[n].dims))}
    targets = {n: zarr_array(store / n, "r+") for n in names}
    offsets: dict[str, tuple[int, ...]] = {}
    args: list[Any] = []
    for n in names:
        var, target = ds[n], targets[n]
        for d, size in zip(var.dims, target.chunks, strict=True):
            if d in lead and offsets.setdefault(d, (size,)) != (size,):
                raise ValueError(f"{store}: variable {n!r} is stored in chunks of {size} along {d!r}, others not")
            if d not in lead and size != var.sizes[d]:
                raise ValueError(f"{store}: variable {n!r} is chunked along {d!r}, which not every variable has")
        args += [var.data.rechunk(target.chunks), "".join(letters[d] for d in var.dims)]
    positions = []
    for d in lead:
        positions += [da.arange(ds.sizes[d], chunks=offsets[d][0]), letters[d]]
    return da.blockwise(
        _write,
        "".join(letters[d] for d in lead),
        *positions,
        *args,
        lead=lead,
        dims={n: ds[n].dims for n in names},
        targets=targets,
        concatenate=True,
        adjust_chunks={letters[d]: 1 for d in lead},
        dtype=bool,
        meta=np.empty((0,) * len(lead), dtype=bool),
        name=f"write-chunks-{tokenize(str(store), *(ds[n].data.name for n in names))}",
    )
