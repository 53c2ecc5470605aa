"""Clusters from a distance store's tiles in plain numpy: numpy in, numpy out, no numba.

A store already holds the distances, so a tile's clusters are the connected components of
its pairs within the threshold. Those pairs are few where clusters are meaningful (threshold
0: identical tokens; one bf16 spacing: near-identical ones), so they are found as positions
and joined by min-label hooking and pointer jumping over all steps of a tile at once; a tile
with many pairs goes to the numba union-find of :mod:`dask_pdist.kernels.cluster_tiles`
(imported only then). Either way the labels are the same: each token's smallest position in
its component. Reading a store for clusters at threshold 0 thus never loads the compiler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["edge_labels", "merge_partitions"]

#: Pairs per step and token above which a tile's components go to the numba union-find
#: (the numpy rounds cost a few passes over the pairs; union-find one).
_PAIRS_PER_TOKEN = 4


def _identity(n_steps: int, n_tokens: int) -> np.ndarray:
    out = np.empty((n_steps, n_tokens), dtype=np.int32)
    out[:] = np.arange(n_tokens, dtype=np.int32)
    return out


def _components(n_steps: int, n_tokens: int, s: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(step, n_tokens) int32: the smallest token of each token's component, for the pairs
    (a, b) of steps s. Every node points to a smaller or equal one, so each tree's root is
    its smallest node; each round hooks every root an unfinished pair touches onto the
    smaller of its pair's roots (at least halving the trees), then jumps pointers to roots."""
    base = s.astype(np.int64) * n_tokens
    a = base + a
    b = base + b
    label = np.arange(n_steps * n_tokens, dtype=np.int64)
    while True:
        la, lb = label[a], label[b]
        open_ = la != lb
        if not open_.any():
            break
        la, lb = la[open_], lb[open_]
        a, b = a[open_], b[open_]  # a pair whose ends share a root stays so
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)  # la, lb are roots: each hooks under a smaller root
        np.minimum.at(label, lb, low)
        while True:  # pointer jumping: every node to its root
            up = label[label]
            if np.array_equal(up, label):
                break
            label = up
    return (label.reshape(n_steps, n_tokens) - np.arange(n_steps, dtype=np.int64)[:, None] * n_tokens).astype(np.int32)


def edge_labels(d: np.ndarray, thr: np.ndarray, i0: int, j0: int, n_tokens: int) -> np.ndarray:
    """Components of "distance <= threshold" seen in one distance tile (as
    :func:`dask_pdist.kernels.cluster_tiles.tile_labels`, the same labels).

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
        The smallest position of each token's component.

    Examples
    --------
    >>> d = np.array([[[0.0, 0.5, 2.0], [0.5, 0.0, 3.0], [2.0, 3.0, 0.0]]])
    >>> edge_labels(d, np.array([1.0]), 0, 0, 4)
    array([[0, 0, 2, 3]], dtype=int32)
    """
    n_steps, ti, tj = d.shape
    joined = d <= np.asarray(thr, dtype=np.float64).reshape(n_steps, 1, 1)  # NaN compares False
    if np.count_nonzero(joined) > _PAIRS_PER_TOKEN * n_steps * max(ti, tj):
        from dask_pdist.kernels.cluster_tiles import tile_labels  # many pairs: numba union-find

        return tile_labels(d, thr, i0, j0, n_tokens)
    s, rest = np.divmod(np.flatnonzero(joined), ti * tj)
    i, j = np.divmod(rest, tj)
    return _components(n_steps, n_tokens, s, i0 + i, j0 + j)


def merge_partitions(parts: np.ndarray) -> np.ndarray:
    """One partition per step from several: (step, k, V) labels -> (step, V), the components of
    their union (each token joined with its label in every part).

    Examples
    --------
    >>> merge_partitions(np.array([[[0, 0, 2, 3], [0, 1, 1, 3]]]))
    array([[0, 0, 0, 3]], dtype=int32)
    """
    n_steps, k, n_tokens = parts.shape
    if k == 1:
        return np.array(parts[:, 0], dtype=np.int32)
    s, p, t = np.nonzero(parts != np.arange(n_tokens))
    return _components(n_steps, n_tokens, s, t, parts[s, p, t])


def _store_tile_task(d: np.ndarray, ia: np.ndarray, jb: np.ndarray, thr: np.ndarray, *, n_tokens: int) -> np.ndarray:
    if ia.size == 0 or jb.size == 0 or ia[0] > jb[0]:  # symmetric: the upper tile has every edge
        return _identity(d.shape[0], n_tokens)[:, None, None, :]
    return edge_labels(d, thr, int(ia[0]), int(jb[0]), n_tokens)[:, None, None, :]


def _merge_tiles(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    # x: (step, ni, nj, V) partial labels of the tiles of one step range -> one partition
    n_steps, ni, nj, n_tokens = x.shape
    out = merge_partitions(x.reshape(n_steps, ni * nj, n_tokens))
    return out[:, None, None, :] if keepdims else out
