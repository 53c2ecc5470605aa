"""Block functions of per-step statistics of distance tiles: numpy in, numpy out, no numba.

Each tile of a (step, token_i, token_j) distance array is reduced to five numbers per step
(min, max, sum and count of its off-diagonal values that are not NaN, and the pairs i < j
strictly below a threshold: the notebook's "differ by less than the quantization
threshold"); the tiles of a step are then combined. Plain numpy, because ``summarize`` is a
reader and reading never loads the compiler; whole-array reductions keep it near decoding
speed (``benchmarks/`` measures it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FIELDS", "tile_stats", "combine_stats"]


#: Columns of :func:`tile_stats` and :func:`combine_stats`.
FIELDS: tuple[str, ...] = ("min", "max", "sum", "count", "below")


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
    steps, a, b = tile.shape
    thr = np.full(steps, -np.inf) if threshold is None else np.asarray(threshold, dtype=np.float64).reshape(steps)
    if tile.dtype not in (np.float32, np.float64):  # float16 stores: widened exactly
        tile = tile.astype(np.float32)
    out = np.empty((steps, len(FIELDS)))
    # the diagonal (global i == j) crosses this tile at rows ii, columns jj
    ii = np.arange(max(0, j0 - i0), min(a, j0 + b - i0))
    jj = i0 + ii - j0
    work = tile
    if ii.size:  # leave the diagonal out: 0 adds nothing to the sum, NaN is skipped by fmin/fmax
        work = tile.copy()
        work[:, ii, jj] = 0
    out[:, 2] = work.sum(axis=(1, 2), dtype=np.float64)
    if ii.size:
        work[:, ii, jj] = np.nan
    out[:, 0] = np.fmin.reduce(work, axis=(1, 2), initial=np.inf)
    out[:, 1] = np.fmax.reduce(work, axis=(1, 2), initial=-np.inf)
    out[:, 3] = a * b - ii.size
    nan = np.isnan(out[:, 2])
    if nan.any():  # NaN values (nonfinite="propagate"): sum and count the others
        ok = ~np.isnan(work[nan])
        out[nan, 2] = np.where(ok, work[nan], 0).sum(axis=(1, 2), dtype=np.float64)
        out[nan, 3] = ok.sum(axis=(1, 2))
    out[:, 4] = 0 if threshold is None else _below(tile, i0, j0, thr)
    empty = out[:, 3] == 0
    out[empty, 0] = np.nan
    out[empty, 1] = np.nan
    return out


def _below(tile: np.ndarray, i0: int, j0: int, thr: np.ndarray) -> np.ndarray | int:
    """Pairs i < j (global) of each step of the tile with a value below ``thr`` (NaN: never)."""
    steps, a, b = tile.shape
    if j0 + b - 1 <= i0:  # no pair i < j in this tile
        return 0
    if tile.dtype == np.float32:  # compare in float32, not in a float64 copy of the tile
        thr = _float32_above(thr)
    below = tile < thr[:, None, None]
    if i0 + a - 1 < j0:  # every pair in this tile has i < j
        return np.count_nonzero(below, axis=(1, 2))
    if np.count_nonzero(below) * 16 < below.size:  # few below (the usual case): where they are
        s, rest = np.divmod(np.flatnonzero(below), a * b)
        i, j = np.divmod(rest, b)
        return np.bincount(s[i0 + i < j0 + j], minlength=steps)
    return np.count_nonzero(np.triu(below, i0 - j0 + 1), axis=(1, 2))  # the pairs right of the diagonal


def _float32_above(thr: np.ndarray) -> np.ndarray:
    """The smallest float32 at or above each float64 threshold: a float32 value is below the
    threshold exactly when it is below that (no float32 lies between the two).

    >>> _float32_above(np.array([0.7, 0.5]))  # 0.7 rounds down in float32: one step up
    array([0.70000005, 0.5       ], dtype=float32)
    """
    with np.errstate(over="ignore"):  # beyond float32: inf, above every finite value too
        up = thr.astype(np.float32)
    low = up.astype(np.float64) < thr
    up[low] = np.nextafter(up[low], np.float32(np.inf))
    return up


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
