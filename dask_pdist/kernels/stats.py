"""Block functions of per-step statistics of distance tiles: numpy in, numpy out, no numba.

Each tile of a (step, token_i, token_j) distance array is reduced to five numbers per step
(min, max, sum and count of its off-diagonal values that are not NaN, and the pairs i < j
strictly below a threshold: the notebook's "differ by less than the quantization
threshold"); the tiles of a step are then combined. Plain numpy, because ``summarize`` is a
reader and reading never loads the compiler; its passes (a float64 sum, fmin, fmax, a
comparison) run over a few steps at a time that stay in the core's cache, so the tile is read
from memory once (``benchmarks/`` measures it against decoding the store).
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

    The tile is reduced a few steps at a time, so that every pass after the first finds
    them in the core's cache: one read of the tile from memory, not one per pass. Each
    step's result does not depend on how the steps are grouped.

    Examples
    --------
    >>> t = np.array([[[0.0, 2.0], [2.0, 0.0]]], dtype=np.float32)
    >>> tile_stats(t, threshold=np.array([3.0]))
    array([[2., 2., 4., 2., 1.]])
    """
    steps, a, b = tile.shape
    thr = None if threshold is None else np.asarray(threshold, dtype=np.float64).reshape(steps)
    dtype = tile.dtype if tile.dtype in (np.float32, np.float64) else np.dtype(np.float32)  # float16: widened exactly
    if thr is not None and dtype == np.float32:  # compare in float32, not in a float64 copy of the tile
        thr = _float32_above(thr)
    # the diagonal (global i == j) crosses this tile at rows ii, columns jj
    ii = np.arange(max(0, j0 - i0), min(a, j0 + b - i0))
    jj = i0 + ii - j0
    per = max(1, min(steps, _BLOCK_BYTES // max(1, a * b * dtype.itemsize)))
    if not tile.flags.c_contiguous:
        per = steps  # numpy may sum a step of another layout in an order that depends on the steps around it
    work = np.empty((per, a, b), dtype) if ii.size else None  # the block with its diagonal left out
    right = None  # the pairs i < j of a tile the diagonal crosses
    if ii.size or (i0 < j0 + b - 1 and j0 <= i0 + a - 1):
        right = np.arange(i0, i0 + a)[:, None] < np.arange(j0, j0 + b)
    out = np.empty((steps, len(FIELDS)))
    for s0 in range(0, steps, per):
        block = np.asarray(tile[s0 : s0 + per], dtype=dtype)
        _block_stats(block, ii, jj, work, out[s0 : s0 + per])
        if thr is None:
            out[s0 : s0 + per, 4] = 0
        else:
            out[s0 : s0 + per, 4] = _below(block, i0, j0, thr[s0 : s0 + per], right)
    empty = out[:, 3] == 0
    out[empty, 0] = np.nan
    out[empty, 1] = np.nan
    return out


#: Bytes of a tile reduced at a time: well within a core's L2 cache.
_BLOCK_BYTES = 1 << 20


def _block_stats(block: np.ndarray, ii: np.ndarray, jj: np.ndarray, work: np.ndarray | None, out: np.ndarray) -> None:
    """Min, max, sum and count (columns 0-3 of ``out``) of the values of ``block`` off the
    diagonal cells (rows ii, columns jj), NaN skipped; ``work``: room for a copy of the block."""
    steps, a, b = block.shape
    if ii.size:  # leave the diagonal out: 0 adds nothing to the sum, NaN is skipped by fmin/fmax
        np.copyto(work[:steps], block)
        block = work[:steps]
        block[:, ii, jj] = 0
    out[:, 2] = block.sum(axis=(1, 2), dtype=np.float64)
    if ii.size:
        block[:, ii, jj] = np.nan
    out[:, 0] = np.fmin.reduce(block, axis=(1, 2), initial=np.inf)
    out[:, 1] = np.fmax.reduce(block, axis=(1, 2), initial=-np.inf)
    out[:, 3] = a * b - ii.size
    nan = np.isnan(out[:, 2])
    if nan.any():  # NaN values (nonfinite="propagate"): sum and count the others
        ok = ~np.isnan(block[nan])
        out[nan, 2] = np.where(ok, block[nan], 0).sum(axis=(1, 2), dtype=np.float64)
        out[nan, 3] = ok.sum(axis=(1, 2))


def _below(tile: np.ndarray, i0: int, j0: int, thr: np.ndarray, right: np.ndarray | None) -> np.ndarray | int:
    """Pairs i < j (global) of each step of the tile with a value below ``thr`` (NaN: never);
    ``thr`` in the tile's dtype (see :func:`_float32_above`); ``right``: the (a, b) cells with
    i < j of a tile the diagonal crosses, else None."""
    steps, a, b = tile.shape
    if j0 + b - 1 <= i0:  # no pair i < j in this tile
        return 0
    below = tile < thr[:, None, None]
    if right is not None:  # only the pairs right of the diagonal count
        below &= right
    return _count_true(below.reshape(steps, a * b))


def _count_true(flags: np.ndarray) -> np.ndarray:
    """True values of each row of a 2-D bool array (a faster ``np.count_nonzero(flags, axis=1)``).

    >>> _count_true(np.array([[True, False, True], [False, False, False]]))
    array([2, 0])
    """
    steps, size = flags.shape
    if size % 8 or not flags.flags.c_contiguous or not hasattr(np, "bitwise_count"):  # (numpy >= 2.0)
        return np.count_nonzero(flags, axis=1)
    # a bool is one byte, 0 or 1: eight of them read as one 64-bit word have that many bits set
    return np.bitwise_count(flags.view(np.uint64)).sum(axis=1, dtype=np.intp)


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
