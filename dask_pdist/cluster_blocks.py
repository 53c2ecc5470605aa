"""Block functions of the clusters: numpy in, numpy out, no dask.

Threshold 0: :func:`equal_row_labels` groups equal rows by their bytes. Positive thresholds:
:func:`tile_labels` joins the pairs of one distance tile with union-find (numba), and
:func:`merge_labels` joins the partitions of several tiles. :func:`label_stats` counts.
Labels are canonical: the smallest token position of the group.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .kernels import cross_block, pairwise_block

__all__ = ["equal_row_labels", "tile_labels", "merge_labels", "label_stats"]

#: Distance bytes one task may hold at a positive threshold (one tile, both metrics).
_TILE_BYTES = 4 * 2**20


# ---------------------------------------------------------------- block functions (numpy)


def equal_row_labels(x: np.ndarray) -> np.ndarray:
    """Group equal rows of each snapshot: the threshold-0 clusters, without any distance.

    Two rows are in one group when they are equal as numbers in every dim, which is
    exactly Chebyshev (or Euclidean) distance 0: ``-0.0`` and ``+0.0`` are equal (they are
    normalised before the rows are compared by their bytes). A row holding NaN or Inf is a
    singleton (its distance to any row is NaN or Inf, never <= 0).

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float

    Returns
    -------
    ndarray, shape (step, token), int32
        The smallest token position of each token's group (itself for a singleton).

    Examples
    --------
    >>> x = np.array([[[1.0, 0.0], [2.0, 0.0], [1.0, -0.0], [np.nan, 0.0], [np.nan, 0.0]]])
    >>> equal_row_labels(x)
    array([[0, 1, 0, 3, 4]], dtype=int32)
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected a (step, token, dim) block, got shape {x.shape}")
    n_steps, n_tokens, n_dims = x.shape
    out = np.empty((n_steps, n_tokens), dtype=np.int32)
    if n_tokens == 0:
        return out
    row = np.dtype((np.void, max(1, n_dims) * x.dtype.itemsize))
    ids = np.arange(n_tokens, dtype=np.int32)
    for s in range(n_steps):
        snap = x[s] + x.dtype.type(0)  # -0.0 + 0.0 == +0.0: equal numbers get equal bytes
        if n_dims == 0:
            snap = np.zeros((n_tokens, 1), dtype=x.dtype)
        keys = np.ascontiguousarray(snap).view(row).ravel()
        # return_index gives the first (smallest) position of each distinct row
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        labels = first.astype(np.int32)[inverse.ravel()]
        bad = ~np.isfinite(snap).all(axis=1)
        labels[bad] = ids[bad]
        out[s] = labels
    return out


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


def label_stats(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Group populations and per-step counts from canonical labels.

    Parameters
    ----------
    labels : ndarray, shape (step, token), int
        Canonical labels (as :func:`equal_row_labels` or :func:`merge_labels` give).

    Returns
    -------
    dict
        ``cluster_size`` (step, token): population of each token's group (1 for a
        singleton); ``n_clusters`` (step,): groups of two or more tokens; ``n_clustered``
        (step,): tokens in such groups; ``largest`` (step,): the largest population (1
        when there is no group). All int32.

    Examples
    --------
    >>> s = label_stats(np.array([[0, 0, 2, 0, 4, 4]]))
    >>> s["cluster_size"]
    array([[3, 3, 1, 3, 2, 2]], dtype=int32)
    >>> s["n_clusters"], s["n_clustered"], s["largest"]
    (array([2], dtype=int32), array([5], dtype=int32), array([3], dtype=int32))
    """
    labels = np.asarray(labels)
    n_steps, n_tokens = labels.shape
    offsets = (np.arange(n_steps, dtype=np.int64) * n_tokens)[:, None]
    counts = np.bincount((labels + offsets).ravel(), minlength=n_steps * n_tokens).reshape(n_steps, n_tokens)
    grouped = counts >= 2
    return {
        "cluster_size": np.take_along_axis(counts, labels.astype(np.int64), axis=1).astype(np.int32),
        "n_clusters": grouped.sum(axis=1).astype(np.int32),
        "n_clustered": np.where(grouped, counts, 0).sum(axis=1).astype(np.int32),
        "largest": counts.max(axis=1, initial=0).astype(np.int32),
    }


# ---------------------------------------------------------------- task functions (dask blocks)


def _history_tile_task(
    xa: np.ndarray, xb: np.ndarray, ia: np.ndarray, jb: np.ndarray, thr: np.ndarray, *, metric: int, n_tokens: int
) -> np.ndarray:
    n_steps = xa.shape[0]
    if ia.size == 0 or jb.size == 0 or ia[0] > jb[0]:
        # distances are symmetric: the tile (j, i) already gave every edge of (i, j)
        return _identity(n_steps, n_tokens)[:, None, None, :]
    diagonal = ia[0] == jb[0]
    parent = _identity(n_steps, n_tokens)
    # a few steps at a time, so the distances held stay within one tile's budget
    per_step = 2 * xa.shape[1] * xb.shape[1] * xa.dtype.itemsize
    batch = max(1, _TILE_BYTES // max(1, per_step))
    for s in range(0, n_steps, batch):
        e = min(n_steps, s + batch)
        d = pairwise_block(xa[s:e]) if diagonal else cross_block(xa[s:e], xb[s:e])
        _union_tile(d[metric], np.ascontiguousarray(thr[s:e], dtype=np.float64), int(ia[0]), int(jb[0]), parent[s:e])
    _flatten(parent)
    return parent[:, None, None, :]


def _store_tile_task(d: np.ndarray, ia: np.ndarray, jb: np.ndarray, thr: np.ndarray, *, n_tokens: int) -> np.ndarray:
    if ia.size == 0 or jb.size == 0 or ia[0] > jb[0]:  # symmetric: the upper tile has every edge
        return _identity(d.shape[0], n_tokens)[:, None, None, :]
    return tile_labels(d, thr, int(ia[0]), int(jb[0]), n_tokens)[:, None, None, :]


def _merge_tiles(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    # x: (step, ni, nj, V) partial labels of the tiles of one step range -> one partition
    n_steps, ni, nj, n_tokens = x.shape
    flat = x.reshape(n_steps, ni * nj, n_tokens)
    out = np.array(flat[:, 0], dtype=np.int32, order="C")
    for k in range(1, ni * nj):
        _union_labels(np.ascontiguousarray(flat[:, k], dtype=np.int32), out)
    _flatten(out)
    return out[:, None, None, :] if keepdims else out


def _stat_task(labels: np.ndarray, *, stat: str) -> np.ndarray:
    return label_stats(labels)[stat]


def _keep(x: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    return x
