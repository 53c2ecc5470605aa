"""The graph of per-step statistics of a distance array: one task per tile, then one per
block of steps to combine the tiles (block functions in :mod:`dask_pdist.kernels.stats`).

:func:`dask_pdist.summarize` is built on it; each chunk of the store is read once.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from dask_pdist.kernels.stats import FIELDS, combine_stats, tile_stats

__all__ = ["step_stats"]


def _tile(tile: np.ndarray, threshold: np.ndarray | None = None, block_info: dict | None = None) -> np.ndarray:
    (_, _), (i0, _), (j0, _) = block_info[0]["array-location"]
    thr = None if threshold is None else threshold.reshape(-1)
    return tile_stats(tile, i0, j0, thr)[:, None, None, :]


def step_stats(distances: da.Array, threshold: da.Array | None = None) -> da.Array:
    """Lazy (step, 4) min, mean, max of the off-diagonal values and pairs i < j below threshold.

    One task per tile, then one per block of steps to combine the tiles: each chunk of the
    store is read once.

    Examples
    --------
    >>> x = da.from_array(np.arange(8, dtype=np.float32).reshape(2, 2, 2), chunks=(1, 2, 1))
    >>> step_stats(x, da.from_array(np.array([2.0, 7.0]), chunks=1)).compute()
    array([[1. , 1.5, 2. , 1. ],
           [5. , 5.5, 6. , 1. ]])
    """
    args = [distances]
    if threshold is not None:
        args.append(threshold.astype(np.float64).rechunk((distances.chunks[0],))[:, None, None])
    tiles = da.map_blocks(
        _tile,
        *args,
        new_axis=3,
        chunks=(distances.chunks[0], (1,) * distances.numblocks[1], (1,) * distances.numblocks[2], (len(FIELDS),)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0)),
    )
    per_step = tiles.rechunk({1: -1, 2: -1})
    return per_step.map_blocks(combine_stats, drop_axis=(1, 2), chunks=(distances.chunks[0], (4,)), dtype=np.float64)
