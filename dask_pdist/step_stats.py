"""Per-step statistics of distance tiles: numpy block functions and one dask graph builder.

:func:`dask_pdist.summarize` is built on these. Each tile of a (step, token_i, token_j)
distance array is reduced in one pass to five numbers per step (min, max, sum and count of
its off-diagonal values that are not NaN, and the pairs i < j below a threshold); the tiles
of a step are then combined. Reading and decoding the store is the floor, not the arithmetic.
"""

from __future__ import annotations

import dask.array as da
import numba
import numpy as np

__all__ = ["tile_stats", "combine_stats", "step_stats", "FIELDS"]

#: Columns of :func:`tile_stats` and :func:`combine_stats`.
FIELDS: tuple[str, ...] = ("min", "max", "sum", "count", "below")


@numba.njit(nogil=True, cache=True)
def _stats_kernel(tile, i0, j0, thr, out):
    # One pass per step over the tile: off-diagonal min/max (comparisons skip NaN), float64
    # sum and count, and values below thr[s] right of the diagonal (pairs i < j). Rows are
    # walked through slices that start at 0 (see MEASUREMENTS.md on numba indexing).
    steps, a, b = tile.shape
    for s in range(steps):
        mn = np.inf
        mx = -np.inf
        total = 0.0
        count = 0
        below = 0
        t = thr[s]
        for i in range(a):
            row = tile[s, i]
            d = i0 + i - j0  # column of the diagonal in this tile (outside 0..b-1: none)
            stop = min(max(d, 0), b)  # columns 0..stop-1 lie left of the diagonal
            left = row[:stop]
            for j in range(stop):
                v = left[j]
                total += v
                mn = v if v < mn else mn
                mx = v if v > mx else mx
            first = min(max(d + 1, 0), b)  # columns first..b-1 lie right of it (pairs i < j)
            right = row[first:]
            for j in range(b - first):
                v = right[j]
                total += v
                mn = v if v < mn else mn
                mx = v if v > mx else mx
                below += v < t
            count += stop + b - first
        if total != total:  # NaN values (nonfinite="propagate"): sum and count the others
            total = 0.0
            count = 0
            for i in range(a):
                row = tile[s, i]
                for j in range(b):
                    v = row[j]
                    if v == v and i0 + i != j0 + j:
                        total += v
                        count += 1
        out[s, 0] = mn if count else np.nan
        out[s, 1] = mx if count else np.nan
        out[s, 2] = total
        out[s, 3] = count
        out[s, 4] = below


def tile_stats(tile: np.ndarray, i0: int = 0, j0: int = 0, threshold: np.ndarray | None = None) -> np.ndarray:
    """Reduce a (step, a, b) tile at token offsets (i0, j0) to (step, 5) float64.

    Columns (:data:`FIELDS`): min, max, sum (float64) and count of the off-diagonal values
    that are not NaN (min and max NaN where there are none); pairs i < j with value below
    ``threshold`` (one per step; 0 if None).

    Examples
    --------
    >>> t = np.array([[[0.0, 2.0], [2.0, 0.0]]], dtype=np.float32)
    >>> tile_stats(t, threshold=np.array([3.0]))
    array([[2., 2., 4., 2., 1.]])
    """
    steps = tile.shape[0]
    thr = np.full(steps, -np.inf) if threshold is None else np.asarray(threshold, dtype=np.float64).reshape(steps)
    out = np.empty((steps, len(FIELDS)))
    if tile.dtype not in (np.float32, np.float64):  # float16 stores: widened exactly
        tile = tile.astype(np.float32)
    _stats_kernel(np.ascontiguousarray(tile), i0, j0, thr, out)
    return out


def combine_stats(stats: np.ndarray) -> np.ndarray:
    """Combine (step, tiles_i, tiles_j, 5) tile statistics into (step, 4): min, mean, max, below.

    min, mean and max are NaN for a step without off-diagonal values that are not NaN.

    Examples
    --------
    >>> s = np.array([[[[1.0, 4.0, 5.0, 2.0, 1.0]], [[np.nan, np.nan, 0.0, 0.0, 0.0]]]])
    >>> combine_stats(s)
    array([[1. , 2.5, 4. , 1. ]])
    """
    steps = stats.shape[0]
    flat = stats.reshape(steps, -1, len(FIELDS))
    count = flat[:, :, 3].sum(axis=1)
    out = np.empty((steps, 4))
    out[:, 0] = np.fmin.reduce(flat[:, :, 0], axis=1)
    out[:, 1] = np.where(count > 0, flat[:, :, 2].sum(axis=1) / np.maximum(count, 1), np.nan)
    out[:, 2] = np.fmax.reduce(flat[:, :, 1], axis=1)
    out[:, 3] = flat[:, :, 4].sum(axis=1)
    return out


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
