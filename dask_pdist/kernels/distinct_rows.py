"""Distinct rows per snapshot (numba): the number of different embedding vectors, counted in one
pass over the rows with a hash table, for :func:`dask_pdist.analyses.distinct.distinct_count`.

Each row is hashed as it is read (a sum of its bit patterns times fixed random odd 64-bit
multipliers, one per dim, wrapping: an integer reduction, vectorised; ``-0.0`` counts as
``+0.0``), then looked up in an open-addressing table of the snapshot's rows; a row whose hash
is in the table is compared value by value with the row found there, so the count is exact
whatever the hash does. O(V x D) per snapshot, no sort. A row holding NaN or Inf is distinct
from every row (its distance to any row is NaN or Inf, never 0), as in
:func:`~dask_pdist.kernels.cluster_rows.equal_row_labels`.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.kernels._jit import numba

__all__ = ["distinct_rows"]

_MULTIPLIERS: dict[int, np.ndarray] = {}


def _multipliers(n_dims: int) -> np.ndarray:
    mult = _MULTIPLIERS.get(n_dims)
    if mult is None:
        rng = np.random.default_rng(0x5EED)
        mult = rng.integers(0, 2**63, size=max(1, n_dims), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        mult = _MULTIPLIERS.setdefault(n_dims, mult)
    return mult


@numba.njit(nogil=True, cache=True)
def _count(x, bits, mult, out):
    nstep, ntok, ndim = x.shape
    size = 1
    while size < 2 * ntok:
        size *= 2
    mask = size - 1
    table = np.empty(size, dtype=np.int64)  # row position + 1; 0: empty
    keys = np.empty(size, dtype=np.uint64)
    for s in range(nstep):
        table[:] = 0
        count = 0
        for t in range(ntok):
            h = np.uint64(0)
            bad = 0
            for d in range(ndim):
                v = x[s, t, d]
                w = np.uint64(bits[s, t, d]) if v != 0 else np.uint64(0)  # -0.0 and +0.0: 0
                h += w * mult[d]
                bad += not (v - v == 0)  # NaN or Inf
            count += 1
            if bad:
                continue
            h ^= h >> np.uint64(29)  # the high bits reach the table index
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
            i = np.int64(h & np.uint64(mask))
            seen = False
            while table[i] != 0 and not seen:
                if keys[i] == h:
                    j = table[i] - 1
                    seen = True
                    for d in range(ndim):
                        if x[s, t, d] != x[s, j, d]:
                            seen = False
                            break
                if not seen:
                    i = (i + 1) & mask
            if seen:
                count -= 1
            else:
                table[i] = t + 1
                keys[i] = h
        out[s] = count


def distinct_rows(x: np.ndarray) -> np.ndarray | None:
    """Distinct rows of each snapshot of a (step, token, dim) float32 or float64 block, or None
    for another dtype (the caller groups rows by their bytes instead).

    Rows equal as numbers in every dim are one (``-0.0 == +0.0``); a row with NaN or Inf
    counts on its own.

    >>> x = np.array([[[1.0, 0.0], [1.0, -0.0], [2.0, 0.0], [np.nan, 0.0], [np.nan, 0.0]]])
    >>> distinct_rows(x)
    array([4])
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected a (step, token, dim) block, got shape {x.shape}")
    kind = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}.get(x.dtype)
    if kind is None:
        return None
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape[0], dtype=np.int64)
    _count(x, x.view(kind), _multipliers(x.shape[2]), out)
    return out
