"""Running top-k lists of the exact neighbour kernels: one order, shared by every method.

A list holds token positions (-1 for an empty slot) and distances, sorted by (distance,
token) with NaN last. :func:`_insert` offers one candidate; the result after any set of
offers is the top-k of that set in this order, whatever the order of the offers.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.kernels._jit import numba


@numba.njit(nogil=True, cache=True, inline="always")
def _before(v, j, w, jw):
    # (distance, token) order: smaller distance first, then smaller token; NaN last
    if v != v:
        return w != w and j < jw
    if w != w or v < w:
        return True
    return v == w and j < jw


@numba.njit(nogil=True, cache=True, inline="always")
def _insert(nr, dr, v, j):
    # offer candidate j at distance v to one token's sorted top-k; empty slots hold -1
    k = nr.shape[0]
    if nr[k - 1] != -1 and not _before(v, j, dr[k - 1], nr[k - 1]):
        return
    p = k - 1
    while p > 0 and (nr[p - 1] == -1 or _before(v, j, dr[p - 1], nr[p - 1])):
        nr[p] = nr[p - 1]
        dr[p] = dr[p - 1]
        p -= 1
    nr[p] = j
    dr[p] = v


def _empty_lists(nstep: int, nrows: int, k: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nstep, nrows, k), -1, dtype=np.int64), np.full((nstep, nrows, k), np.nan, dtype=dtype)


def _start_lists(
    lists: tuple | None, nstep: int, b: tuple[int, int], c: tuple[int, int], k: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # The lists a block pair's kernel updates: empty, or copies of running lists (b's, then
    # c's; a diagonal block uses b's for both) carried over from earlier block pairs
    diag = b == c
    if lists is None:
        rn, rd = _empty_lists(nstep, b[1] - b[0], k, dtype)
        cn, cd = (rn, rd) if diag else _empty_lists(nstep, c[1] - c[0], k, dtype)
        return rn, rd, cn, cd
    want = [(nstep, b[1] - b[0], k), (nstep, c[1] - c[0], k)]
    for pos, (nbr, dist) in enumerate((lists[:2], lists[2:])):
        if nbr.shape != want[pos] or dist.shape != want[pos] or dist.dtype != dtype:
            raise ValueError(
                f"running lists of shape {nbr.shape}/{dist.shape} {dist.dtype}; expected {want[pos]} {dtype}"
            )
    rn, rd = np.array(lists[0], dtype=np.int64), lists[1].copy()
    cn, cd = (rn, rd) if diag else (np.array(lists[2], dtype=np.int64), lists[3].copy())
    return rn, rd, cn, cd
