"""Block functions of the clusters at threshold 0, and their counts: numpy in, numpy out.

:func:`equal_row_labels` groups equal rows by their bytes (no distance, no numba: the
threshold-0 path imports neither numba nor the kernels); :func:`label_stats` counts.
Positive thresholds are in :mod:`dask_pdist.kernels.cluster_tiles`. Labels are canonical: the
smallest token position of the group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["equal_row_labels", "label_stats"]


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


def _stat_task(labels: np.ndarray, *, stat: str) -> np.ndarray:
    return label_stats(labels)[stat]


def _keep(x: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    return x
