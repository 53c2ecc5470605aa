"""Per-step loops over a distance Dataset: walk the steps in order, reading each chunk once.

Analyses written as loops over steps (as the research notebooks are) would read one step at a
time with ``ds.euclidean.sel(step=s).values``; on a store that decodes a whole chunk (128
steps) per step, 128 times over. :func:`iter_steps` reads each block of steps once, every
variable in one dask compute (so a lazy, not yet written Dataset runs its kernel once per
block), and hands out the steps of the block in order while the next block is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["iter_steps", "step_blocks"]


def _step_chunks(var: xr.DataArray) -> tuple[int, ...]:
    n = var.sizes["step"]
    axis = var.dims.index("step")
    if var.chunks is not None:  # dask-backed: its own chunks, which open_distances aligns with the store
        return tuple(var.chunks[axis])
    size = (var.encoding.get("chunks") or (n,) * var.ndim)[axis]  # lazily indexed store (chunks=None)
    return tuple(min(size, n - s) for s in range(0, n, size)) if n else ()


def step_blocks(ds: xr.Dataset, variables: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Positions ``(start, stop)`` along ``step`` of the chunks that :func:`iter_steps` reads.

    Examples
    --------
    >>> import dask.array as da
    >>> ds = xr.Dataset({"e": (("step", "token_i", "token_j"), da.zeros((5, 2, 2), chunks=(2, 2, 2)))})
    >>> step_blocks(ds)
    [(0, 2), (2, 4), (4, 5)]
    """
    names = list(ds.data_vars) if variables is None else list(variables)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise KeyError(f"no variable(s) {missing} in the Dataset; it has {list(ds.data_vars)}")
    chunks = {name: _step_chunks(ds[name]) for name in names}
    if len(set(chunks.values())) > 1:
        raise ValueError(
            f"variables are chunked differently along step ({chunks}); rechunk them alike,"
            " e.g. ds.chunk(step=128), so each chunk is read once"
        )
    bounds = np.cumsum((0,) + next(iter(chunks.values()), ()))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _read_block(ds: xr.Dataset, names: list[str], start: int, stop: int) -> list[np.ndarray]:
    import dask
    import dask.array as da

    # .data: a dask array, or (lazily indexed store, chunks=None) the block read now
    parts = [ds[name].isel(step=slice(start, stop)).transpose("step", ...).data for name in names]
    lazy = [i for i, p in enumerate(parts) if isinstance(p, da.Array)]
    for i, value in zip(lazy, dask.compute(*(parts[i] for i in lazy)), strict=True):  # one graph: one kernel run
        parts[i] = value
    return [np.asarray(p) for p in parts]


def iter_steps(
    ds: xr.Dataset, variables: Sequence[str] | None = None, *, prefetch: bool = True
) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
    """Walk the steps in order; yield ``(step label, {variable: (token_i, token_j) array})``.

    Each chunk of the store (each block of steps of a lazy Dataset) is read once, all
    variables together; while you work on the steps of one block, the next one is read in a
    background thread (``prefetch``). Memory: two blocks of steps (~16 MiB each by default).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`open_distances` (either ``chunks``) or :func:`pairwise_distances`.
    variables : sequence of str, optional
        Which variables to read (default: all data variables).
    prefetch : bool
        Read the next block while the caller processes the current one.

    Yields
    ------
    (step label, dict of variable name to numpy array)
        Arrays are views into the block just read: copy one if you keep it past the loop.

    Raises
    ------
    KeyError
        A name in ``variables`` is not in ``ds``.
    ValueError
        The variables are chunked differently along ``step``.

    Examples
    --------
    >>> import dask.array as da
    >>> ds = xr.Dataset(
    ...     {"euclidean": (("step", "token_i", "token_j"), da.ones((3, 2, 2), chunks=(2, 2, 2)))},
    ...     coords={"step": [10, 20, 30]},
    ... )
    >>> [(int(step), float(d["euclidean"].sum())) for step, d in iter_steps(ds)]
    [(10, 4.0), (20, 4.0), (30, 4.0)]
    """
    names = list(ds.data_vars) if variables is None else list(variables)
    blocks = step_blocks(ds, names)
    labels = ds["step"].values if "step" in ds.coords else np.arange(ds.sizes["step"])
    if not blocks:
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_read_block, ds, names, *blocks[0]) if prefetch else None
        for k, (start, stop) in enumerate(blocks):
            if prefetch:
                arrays = pending.result()
                pending = pool.submit(_read_block, ds, names, *blocks[k + 1]) if k + 1 < len(blocks) else None
            else:
                arrays = _read_block(ds, names, start, stop)
            for offset in range(stop - start):
                yield labels[start + offset], {name: a[offset] for name, a in zip(names, arrays, strict=True)}
