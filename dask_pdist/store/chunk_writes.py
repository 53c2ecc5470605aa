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
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from dask_pdist.io.paths import zarr_array

__all__ = ["chunk_writes"]


def _write(targets: dict[str, Any], at: dict[str, slice], dims: dict[str, tuple], *parts: list) -> bool:
    # parts: per variable, its dask blocks in this store chunk as nested lists (one level per dim)
    for (name, target), nested in zip(targets.items(), parts, strict=True):
        target[tuple(at.get(d, slice(None)) for d in dims[name])] = np.block(nested)
    return True


def _nested(keys: np.ndarray, spans: list[range]) -> list:
    # the keys of the blocks spans[0] x spans[1] x ... as nested lists, for np.block
    if len(spans) == 1:
        return [keys[i] for i in spans[0]]
    return [_nested(keys[i], spans[1:]) for i in spans[0]]


def _blocks_within(bounds: np.ndarray, start: int, stop: int) -> range | None:
    # the dask blocks (edges ``bounds``) making up [start, stop) exactly, else None
    lo, hi = np.searchsorted(bounds, [start, stop])
    if lo >= len(bounds) or hi >= len(bounds) or bounds[lo] != start or bounds[hi] != stop:
        return None
    return range(int(lo), int(hi))


def chunk_writes(ds: xr.Dataset, store: Path) -> list[Delayed]:
    """Lazily write every dask-backed data variable of ``ds`` into the existing arrays of the
    same names in the zarr store ``store`` (created by ``ds.to_zarr(store, compute=False)``),
    one task per store chunk of the dims all variables share, every variable at once, taking
    the variable's dask blocks in that chunk as they are (a dask chunk that crosses a store
    chunk boundary is rechunked first).

    The other dims are whole in each store chunk. Returns one ``dask.delayed`` per task
    (compute them, or hand them to a task that must run after every write).

    >>> import tempfile, dask
    >>> store = Path(tempfile.mkdtemp()) / "c.zarr"
    >>> ds = xr.Dataset({"a": (("step", "token"), da.ones((5, 3), chunks=2)), "b": ("step", da.arange(5, chunks=2))})
    >>> enc = {"a": {"chunks": (4, 3)}, "b": {"chunks": (4,)}}  # two dask chunks per store chunk
    >>> _ = ds.to_zarr(store, compute=False, zarr_format=3, consolidated=False, safe_chunks=False, encoding=enc)
    >>> [bool(flag) for flag in dask.compute(*chunk_writes(ds, store))]  # two tasks
    [True, True]
    >>> back = xr.open_zarr(store, consolidated=False)
    >>> back.b.values.tolist(), float(back.a.sum())
    ([0, 1, 2, 3, 4], 15.0)
    """
    names = [n for n, v in ds.data_vars.items() if isinstance(v.data, da.Array)]
    lead = tuple(d for d in ds[names[0]].dims if all(d in ds[n].dims for n in names))
    # every chunk written, also one equal to the fill value: an absent chunk is a lost one
    targets = {n: zarr_array(store / n, "r+").with_config({"write_empty_chunks": True}) for n in names}
    sizes: dict[str, int] = {}
    for n in names:
        for d, size in zip(ds[n].dims, targets[n].chunks, strict=True):
            if d in lead and sizes.setdefault(d, size) != size:
                raise ValueError(f"{store}: variable {n!r} is stored in chunks of {size} along {d!r}, others not")
            if d not in lead and size != ds.sizes[d]:
                raise ValueError(f"{store}: variable {n!r} is chunked along {d!r}, which not every variable has")
    grid = [range(0, ds.sizes[d], sizes[d]) for d in lead]
    name = f"write-chunks-{tokenize(str(store), *(ds[n].data.name for n in names))}"
    arrays, dsk = [], {}
    for n in names:
        data = ds[n].data
        bounds = [np.cumsum((0, *c)) for c in data.chunks]
        if any(
            _blocks_within(bounds[ds[n].dims.index(d)], a, min(a + sizes[d], ds.sizes[d])) is None
            for d, starts in zip(lead, grid, strict=True)
            for a in starts
        ):
            data = data.rechunk(targets[n].chunks)
            bounds = [np.cumsum((0, *c)) for c in data.chunks]
        keys = np.empty(data.numblocks, dtype=object)
        for index in np.ndindex(*data.numblocks):
            keys[index] = (data.name, *index)
        arrays.append((n, data, keys, bounds))
    dims = {n: ds[n].dims for n in names}
    for index in np.ndindex(*(len(g) for g in grid)):
        at = {d: slice(g[i], min(g[i] + sizes[d], ds.sizes[d])) for d, g, i in zip(lead, grid, index, strict=True)}
        parts = []
        for n, _, keys, bounds in arrays:
            spans = [
                _blocks_within(b, at[d].start, at[d].stop) if d in at else range(len(b) - 1)
                for d, b in zip(dims[n], bounds, strict=True)
            ]
            parts.append(_nested(keys, spans))  # type: ignore[arg-type]
        # zero-padded names: dask's static order breaks ties by key, and visits the chunks in
        # the order of these strings; in step order, the input chunk two store chunks share is
        # released after the second (by index, "10" would come between "1" and "2": measured,
        # such input chunks then stayed in memory, a number growing with the steps)
        dsk[f"{name}-" + "-".join(f"{i:09d}" for i in index)] = (_write, targets, at, dims, *parts)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a[1] for a in arrays])
    return [Delayed(key, graph, layer=name) for key in dsk]
