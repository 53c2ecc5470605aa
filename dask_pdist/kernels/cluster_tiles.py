"""Block functions of the clusters at a positive threshold: numpy in, numpy out, no dask.

:func:`tile_labels` joins the pairs of one distance tile that are within the threshold,
with union-find (numba); :func:`merge_labels` joins the partitions of several tiles. The
task functions compute a history's distance tiles with the kernels of
:mod:`dask_pdist.kernels.distances`, a few steps at a time. Labels are canonical: the smallest token
position of the component (the union keeps the smaller root).
"""

from __future__ import annotations

import numpy as np

from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.distances import cross_block, pairwise_block

__all__ = ["tile_labels", "merge_labels"]

#: Distance bytes one task holds at a time (one tile of a few steps, both metrics).
_TILE_BYTES = 4 * 2**20


@numba.njit(nogil=True, cache=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@numba.njit(nogil=True, cache=True)
def _union(parent, i, j):
    # the smaller root wins, so a component's root is its smallest position
    ri = _find(parent, i)
    rj = _find(parent, j)
    if ri < rj:
        parent[rj] = ri
    elif rj < ri:
        parent[ri] = rj


@numba.njit(nogil=True, cache=True)
def _union_tile(d, thr, i0, j0, parent):
    # d: (step, ti, tj) distances between tokens i0.. and j0..; parent: (step, V) forests
    for s in range(d.shape[0]):
        p = parent[s]
        t = thr[s]
        for i in range(d.shape[1]):
            row = d[s, i]
            for j in range(d.shape[2]):
                if row[j] <= t:  # NaN compares False: a NaN distance joins nothing
                    _union(p, i0 + i, j0 + j)


@numba.njit(nogil=True, cache=True)
def _union_labels(labels, parent):
    # join token t with labels[s, t] (another partition of the same tokens)
    for s in range(labels.shape[0]):
        p = parent[s]
        lab = labels[s]
        for t in range(labels.shape[1]):
            _union(p, t, lab[t])


@numba.njit(nogil=True, cache=True)
def _flatten(parent):
    for s in range(parent.shape[0]):
        p = parent[s]
        for t in range(parent.shape[1]):
            p[t] = _find(p, t)


def _identity(n_steps: int, n_tokens: int) -> np.ndarray:
    out = np.empty((n_steps, n_tokens), dtype=np.int32)
    out[:] = np.arange(n_tokens, dtype=np.int32)
    return out


def tile_labels(d: np.ndarray, thr: np.ndarray, i0: int, j0: int, n_tokens: int) -> np.ndarray:
    """Components of "distance <= threshold" seen in one distance tile.

    Parameters
    ----------
    d : ndarray, shape (step, ti, tj)
        Distances between tokens ``i0 .. i0+ti`` (rows) and ``j0 .. j0+tj`` (columns).
    thr : ndarray, shape (step,)
        Threshold per step; a pair joins when ``d <= thr`` (NaN never joins).
    i0, j0 : int
        Positions of the tile's first row and column.
    n_tokens : int
        V: the labels cover every token (tokens outside the tile are singletons).

    Returns
    -------
    ndarray, shape (step, n_tokens), int32
        Canonical labels (smallest position of the component). Combine the tiles of one
        step with :func:`merge_labels`.

    Examples
    --------
    >>> d = np.array([[[0.0, 0.5, 2.0], [0.5, 0.0, 3.0], [2.0, 3.0, 0.0]]])
    >>> tile_labels(d, np.array([1.0]), 0, 0, 4)
    array([[0, 0, 2, 3]], dtype=int32)
    """
    d = np.ascontiguousarray(d)
    parent = _identity(d.shape[0], n_tokens)
    _union_tile(d, np.ascontiguousarray(thr, dtype=np.float64), int(i0), int(j0), parent)
    _flatten(parent)
    return parent


def merge_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Components of the union of two partitions of the same tokens (per step).

    Examples
    --------
    >>> merge_labels(np.array([[0, 0, 2, 3]]), np.array([[0, 1, 1, 3]]))
    array([[0, 0, 0, 3]], dtype=int32)
    """
    parent = np.array(a, dtype=np.int32, order="C")
    _union_labels(np.ascontiguousarray(b, dtype=np.int32), parent)
    _flatten(parent)
    return parent


def _history_tiles_task(x: np.ndarray, thr: np.ndarray, *, tiles: tuple, metric: int, n_tokens: int) -> np.ndarray:
    """Labels (step, token) of one step chunk's snapshots from the distance tiles ``tiles``
    (``((a0, a1), (b0, b1))`` token ranges, ``a0 <= b0``: each unordered pair of tiles once,
    distances being symmetric), computed a few steps at a time and joined in one partition."""
    n_steps = x.shape[0]
    parent = _identity(n_steps, n_tokens)
    thr = np.ascontiguousarray(thr, dtype=np.float64)
    for (a0, a1), (b0, b1) in tiles:
        # a few steps at a time, so the distances held stay within one tile's budget
        batch = max(1, _TILE_BYTES // max(1, 2 * (a1 - a0) * (b1 - b0) * x.dtype.itemsize))
        for s in range(0, n_steps, batch):
            e = min(n_steps, s + batch)
            xa = x[s:e, a0:a1]
            d = pairwise_block(xa) if a0 == b0 else cross_block(xa, x[s:e, b0:b1])
            _union_tile(d[metric], thr[s:e], int(a0), int(b0), parent[s:e])
    _flatten(parent)
    return parent


def _merge_groups(*parts: np.ndarray) -> np.ndarray:
    """One partition (step, token) from the partitions of a step chunk's tile groups."""
    out = np.array(parts[0], dtype=np.int32, order="C")
    for part in parts[1:]:
        _union_labels(np.ascontiguousarray(part, dtype=np.int32), out)
    _flatten(out)
    return out
