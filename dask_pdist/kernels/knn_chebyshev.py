"""Chebyshev k nearest neighbours: a max-only routine, four rows at a time.

Chebyshev has no product form: every pair is computed by coordinate differences. The tile
kernel (:mod:`dask_pdist.kernels.knn`) does that with the pairwise kernels' shared row
routine, which also sums squares (and, for Manhattan, absolute values) and streams its
candidate tile once per row: at D = 512 it is bound by the rate the (D x tile) tile comes
from L2 (one 4-byte load per pair-dim). Here only ``max_d |a_d - b_d|`` is computed, on the
same (dim, token) layout (tokens along the SIMD lanes: vsubps, vandps for the abs, vmaxps),
for four rows at once: each tile vector loaded serves four rows, and each running maximum
is loaded and stored once per four dims.

The values are the tile kernel's bit for bit: the max of the same float differences, which
does not depend on the order. The routine applies only where the tile kernel's own value is
that plain max and it raises nothing: finite values no larger than ``sqrt(max / D) / 4``
(:func:`max_safe`), so no sum of squares the shared routine forms can overflow. Other blocks
(NaN, infinities, huge values) keep the tile kernel.

No early exit: a pair could stop once its running max exceeds both lists' k-th, but lanes
run together; on Gaussian data at D = 512, with the final lists' k-th as the bar, a panel of
32 lanes would skip only ~25 % of its dims (simulated), less than a per-panel test costs.
"""

from __future__ import annotations

import math

import numpy as np

from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.knn_lists import _insert

__all__ = ["max_safe", "knn_max_pairs"]

_GROUP = 4  # rows per pass over a tile: each loaded tile vector serves four rows


def max_safe(xt: np.ndarray, b: tuple[int, int], c: tuple[int, int]) -> bool:
    """Whether the max-only routine applies: finite values, none above ``sqrt(max / D) / 4``.

    Examples
    --------
    >>> import numpy as np
    >>> max_safe(np.ones((1, 3, 4), np.float32), (0, 2), (2, 4))
    True
    >>> max_safe(np.full((1, 3, 4), np.inf, np.float32), (0, 4), (0, 4))
    False
    """
    info = np.finfo(xt.dtype)
    bound = math.sqrt(float(info.max) / max(1, xt.shape[1])) / 4
    for lo, hi in {b, c}:
        part = xt[:, :, lo:hi]
        if part.size and not np.abs(part).max() <= bound:  # False for NaN
            return False
    return True


@numba.njit(nogil=True, cache=True, inline="always")
def _max_rows(at, rows, bt, j0, n, m):
    # m[q, j] = max_d |at[d, rows[q]] - bt[d, j0 + j]| for the four rows: tokens along the
    # lanes, four dims per pass (a tree of maxima: exact in any order for finite values)
    ndim = at.shape[0]
    m0, m1, m2, m3 = m[0], m[1], m[2], m[3]
    i0, i1, i2, i3 = rows[0], rows[1], rows[2], rows[3]
    for j in range(n):
        m0[j] = 0
        m1[j] = 0
        m2[j] = 0
        m3[j] = 0
    d = 0
    while d + 4 <= ndim:
        b0, b1 = bt[d, j0 : j0 + n], bt[d + 1, j0 : j0 + n]
        b2, b3 = bt[d + 2, j0 : j0 + n], bt[d + 3, j0 : j0 + n]
        a00, a01, a02, a03 = at[d, i0], at[d + 1, i0], at[d + 2, i0], at[d + 3, i0]
        a10, a11, a12, a13 = at[d, i1], at[d + 1, i1], at[d + 2, i1], at[d + 3, i1]
        a20, a21, a22, a23 = at[d, i2], at[d + 1, i2], at[d + 2, i2], at[d + 3, i2]
        a30, a31, a32, a33 = at[d, i3], at[d + 1, i3], at[d + 2, i3], at[d + 3, i3]
        for j in range(n):
            p0, p1, p2, p3 = b0[j], b1[j], b2[j], b3[j]
            m0[j] = max(m0[j], max(max(abs(a00 - p0), abs(a01 - p1)), max(abs(a02 - p2), abs(a03 - p3))))
            m1[j] = max(m1[j], max(max(abs(a10 - p0), abs(a11 - p1)), max(abs(a12 - p2), abs(a13 - p3))))
            m2[j] = max(m2[j], max(max(abs(a20 - p0), abs(a21 - p1)), max(abs(a22 - p2), abs(a23 - p3))))
            m3[j] = max(m3[j], max(max(abs(a30 - p0), abs(a31 - p1)), max(abs(a32 - p2), abs(a33 - p3))))
        d += 4
    while d < ndim:
        b0 = bt[d, j0 : j0 + n]
        a00, a10, a20, a30 = at[d, i0], at[d, i1], at[d, i2], at[d, i3]
        for j in range(n):
            p0 = b0[j]
            m0[j] = max(m0[j], abs(a00 - p0))
            m1[j] = max(m1[j], abs(a10 - p0))
            m2[j] = max(m2[j], abs(a20 - p0))
            m3[j] = max(m3[j], abs(a30 - p0))
        d += 1


@numba.njit(nogil=True, cache=True)
def _knn_max(xt, b0, c0, nc, rows, tile, rn, rd, cn, cd):
    # As the tile kernel's _knn_pairs for the Chebyshev metric, in the same loop order (a
    # block of rows x one tile of candidates, every pair once, j > i on a diagonal block),
    # the rows four at a time (the last group repeats its last row; repeats are not offered)
    nstep = xt.shape[0]
    nb = rn.shape[1]
    diag = b0 == c0
    last = rn.shape[2] - 1
    m = np.empty((_GROUP, tile), dtype=xt.dtype)
    grp = np.empty(_GROUP, dtype=np.int64)
    rbar = np.empty(nb, dtype=xt.dtype)
    cbar = rbar if diag else np.empty(nc, dtype=xt.dtype)
    for s in range(nstep):
        at = xt[s]
        for r in range(nb):
            rbar[r] = rd[s, r, last] if rn[s, r, last] != -1 else np.nan
        if not diag:
            for q in range(nc):
                cbar[q] = cd[s, q, last] if cn[s, q, last] != -1 else np.nan
        for r0 in range(0, nb, rows):
            r1 = min(r0 + rows, nb)
            for j0 in range(0, nc, tile):
                j1 = min(j0 + tile, nc)
                for g in range(r0, r1, _GROUP):
                    start = max(j0, g + 1) if diag else j0
                    if start >= j1:
                        continue
                    for q in range(_GROUP):
                        grp[q] = b0 + min(g + q, r1 - 1)
                    _max_rows(at, grp, at, c0 + start, j1 - start, m)
                    for q in range(min(_GROUP, r1 - g)):
                        r = g + q
                        i = b0 + r
                        mq = m[q]
                        rnr = rn[s, r]
                        rdr = rd[s, r]
                        for jl in range(max(start, r + 1) if diag else start, j1):
                            v = mq[jl - start]
                            # as the tile kernel: farther than a full list's last is rejected
                            if not v > rbar[r]:
                                _insert(rnr, rdr, v, c0 + jl)
                                if rnr[last] != -1:
                                    rbar[r] = rdr[last]
                            if not v > cbar[jl]:
                                _insert(cn[s, jl], cd[s, jl], v, i)
                                if cn[s, jl, last] != -1:
                                    cbar[jl] = cd[s, jl, last]


def knn_max_pairs(
    xt: np.ndarray,
    b: tuple[int, int],
    c: tuple[int, int],
    lists: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rows: int,
    tile: int,
) -> None:
    """Offer every Chebyshev pair of blocks b x c to the lists, in place (see the module doc).

    ``xt``: (step, dim, token) snapshots; ``b``, ``c`` equal (a diagonal block: pairs j > i,
    the column lists are the row lists) or disjoint; ``lists`` (row_nbr, row_dist, col_nbr,
    col_dist) as :func:`dask_pdist.kernels.knn.knn_pairs` keeps them (they may hold earlier
    candidates); ``rows``, ``tile``: cache blocking, as there. Only for blocks where
    :func:`max_safe` holds.

    Examples
    --------
    >>> import numpy as np
    >>> xt = np.array([[[0.0, 3.0, 1.0]]], dtype=np.float32)
    >>> rn, rd = np.full((1, 3, 1), -1), np.full((1, 3, 1), np.nan, np.float32)
    >>> knn_max_pairs(xt, (0, 3), (0, 3), (rn, rd, rn, rd), 128, 64)
    >>> rn[0, :, 0].tolist(), rd[0, :, 0].tolist()
    ([2, 2, 0], [1.0, 2.0, 1.0])
    """
    rn, rd, cn, cd = lists
    _knn_max(xt, b[0], c[0], c[1] - c[0], max(1, rows), max(1, tile), rn, rd, cn, cd)
