"""Block kernels: numpy in, numpy out, no dask.

Every pair (i, j) is reduced over the dims in one fixed order by one shared row routine,
whichever tile computes it.  That makes results bit-identical for any chunking, and exactly
symmetric: ``a - b`` and ``b - a`` differ only in sign, which neither ``d * d`` nor
``abs(d)`` sees.

Differences are taken coordinate by coordinate (``x_i - x_j``); the Gram-matrix shortcut
``|x|^2 + |y|^2 - 2 x.y`` is never used: it gives non-zero self-distances and large
relative errors in float32.

At the float edges the plain sum of squares fails: it overflows once the squares exceed the
dtype's range (float32: differences above ~1.8e19) and loses digits or becomes 0 once they
underflow (differences below ~1e-19). The rare pairs where that happened are found after the
fast loop and recomputed scaled by their Chebyshev distance, so every finite input gives a
finite, correctly scaled distance; one that truly exceeds the dtype is an ``OverflowError``
naming the step and the pair.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.conventions import METRICS
from dask_pdist.kernels._jit import numba

__all__ = ["METRICS", "pairwise_block", "cross_block"]


@numba.njit(nogil=True, cache=True, inline="always")
def _row(at, i, bt, j0, n, sq, mx, ab, e_low, l1=True):
    # Row i of ``at`` against columns j0..j0+n of ``bt`` (both (D, V), one snapshot).
    # Returns whether some pair of the row needs _rescale_row (rarely).
    # Slices start at 0 so numba drops negative-index wraparound and LLVM vectorises over j
    # (indexing bt[d, j] directly is ~3x slower, docs/measurements.md).
    ndim = at.shape[0]
    for j in range(n):
        sq[j] = 0
        mx[j] = 0
        ab[j] = 0
    d = 0
    while d + 4 <= ndim:
        a0 = at[d, i]
        a1 = at[d + 1, i]
        a2 = at[d + 2, i]
        a3 = at[d + 3, i]
        b0 = bt[d, j0 : j0 + n]
        b1 = bt[d + 1, j0 : j0 + n]
        b2 = bt[d + 2, j0 : j0 + n]
        b3 = bt[d + 3, j0 : j0 + n]
        for j in range(n):
            t0 = a0 - b0[j]
            t1 = a1 - b1[j]
            t2 = a2 - b2[j]
            t3 = a3 - b3[j]
            sq[j] = sq[j] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
            u0 = abs(t0)
            u1 = abs(t1)
            u2 = abs(t2)
            u3 = abs(t3)
            if l1:
                ab[j] = ab[j] + u0 + u1 + u2 + u3
            m = mx[j]
            m = max(m, u0)
            m = max(m, u1)
            m = max(m, u2)
            m = max(m, u3)
            mx[j] = m
        d += 4
    while d < ndim:
        a0 = at[d, i]
        b0 = bt[d, j0 : j0 + n]
        for j in range(n):
            t0 = a0 - b0[j]
            sq[j] = sq[j] + t0 * t0
            if l1:
                ab[j] = ab[j] + abs(t0)
            mx[j] = max(mx[j], abs(t0))
        d += 1
    rare = False
    for j in range(n):
        v = sq[j]
        e = np.sqrt(v)
        sq[j] = e
        m = mx[j]
        # max() drops NaN; a NaN anywhere in the pair makes the sum NaN, so NaN for every
        # metric (NaN distances where the input holds NaN, as scipy gives). One NaN, not the
        # sum's: x_i - x_j and x_j - x_i propagate different NaNs where both hold one (NaN and
        # -NaN, as inf - inf makes), and a diagonal tile copies (i, j) to (j, i).
        if v != v:
            sq[j] = np.nan
            mx[j] = np.nan
            if l1:
                ab[j] = np.nan
        rare |= _needs_rescale(e, m, e_low)
    return rare


@numba.njit(nogil=True, cache=True, inline="always")
def _needs_rescale(e, m, e_low):
    # The sum of squares overflowed, or underflowed in part (a non-zero pair below e_low).
    return ((e < e_low) & (m > 0)) | (e == np.inf)


@numba.njit(nogil=True, cache=True)
def _rescale_row(at, i, bt, j0, n, sq, mx, e_low):
    # The rare pairs of a row whose sum of squares overflowed or holds squares that underflowed
    # (see _scaling_bound), recomputed scaled by their Chebyshev distance m. A separate,
    # not inlined, function: kept out of _row it costs the fast path nothing measurable.
    # Returns the first column whose distance overflows the dtype, else -1.
    first = -1
    for j in range(n):
        e = sq[j]
        m = mx[j]
        if _needs_rescale(e, m, e_low):
            e64, infinite_input = _scaled(at, i, bt, j0 + j, m)
            sq[j] = e64  # rounded once to the dtype
            if sq[j] == np.inf and not infinite_input and first < 0:
                first = j
    return first


@numba.njit(nogil=True, cache=True)
def _scaled(at, i, bt, j, m):
    # Euclidean distance as m * sqrt(sum(((a - b) / m)^2)), m = max |a - b| > 0: every term
    # is in [0, 1] and the sum in [1, D], so nothing overflows and the terms that matter stay
    # normal. Symmetric: (b - a) / m is exactly -((a - b) / m). In float64 whatever the
    # dtype, rounded once by the caller: in float32 the sum's relative error (~D * 6e-8) is
    # several subnormal steps for distances just below the smallest normal. Returns
    # (distance in float64, infinite input); the caller's rounding to the dtype gives inf
    # where finite inputs are further apart than the dtype's range.
    ndim = at.shape[0]
    if m == np.inf:  # some |a - b| overflowed, or the input holds an infinity
        for d in range(ndim):
            if not (np.isfinite(at[d, i]) and np.isfinite(bt[d, j])):
                return np.inf, True  # infinite input: infinite distance, as scipy gives
        return np.inf, False
    m64 = np.float64(m)
    s = 0.0
    for d in range(ndim):
        t = (np.float64(at[d, i]) - np.float64(bt[d, j])) / m64
        s += t * t
    return m64 * np.sqrt(s), False


@numba.njit(nogil=True, cache=True)
def _transpose(x, s, xt):
    # (V, D) snapshot -> contiguous (D, V) so the inner loop runs over tokens.
    for t in range(x.shape[1]):
        for d in range(x.shape[2]):
            xt[d, t] = x[s, t, d]


# A diagonal tile computes each row from the diagonal on (its upper triangle: half the
# arithmetic) and copies it to the lower triangle. Bit-identical to full rows: x_i - x_j is
# exactly -(x_j - x_i), which neither d * d nor |d| sees, and x_i - x_i is exactly 0. Measured
# (benchmarks/results.md, 2026-12-05): 1.1 vs 1.3 ms for 16 x 128 x 64, 26 vs 41 ms for
# 2 x 1024 x 256 against full rows. An earlier triangle with unaligned rows and a row-strided
# mirror copy had measured slower than full rows (34 vs 27 ms for 256 x 128 x 64).


@numba.njit(nogil=True, cache=True)
def _self_block(x, out, e_low):
    # out: (2, ...) Euclidean and Chebyshev, or (3, ...) with Manhattan; without it the L1
    # sums go to a scratch row (their adds cost ~nothing next to the loads they share)
    nstep, ntok, ndim = x.shape
    xt = np.empty((ndim, ntok), dtype=x.dtype)
    scratch = np.empty(ntok, dtype=out.dtype)
    nmetric = out.shape[0]
    for s in range(nstep):
        _transpose(x, s, xt)
        for i in range(ntok):
            l1 = nmetric > 2
            # from the diagonal's 64-byte boundary: aligned loads and stores (the few pairs
            # left of the diagonal are computed twice, the same bits either way)
            j0 = i - i % 16
            ab = out[2, s, i, j0:] if l1 else scratch
            n = ntok - j0
            if _row(xt, i, xt, j0, n, out[0, s, i, j0:], out[1, s, i, j0:], ab, e_low, l1):
                j = _rescale_row(xt, i, xt, j0, n, out[0, s, i, j0:], out[1, s, i, j0:], e_low)
                if j >= 0:
                    return s, i, j0 + j
        for k in range(nmetric):
            _mirror(out[k, s])
    return -1, -1, -1


@numba.njit(nogil=True, cache=True, inline="always")
def _mirror(a):
    # a[j, i] = a[i, j] for j > i, in 8 x 8 tiles. A whole tile is read row by row into a
    # small buffer, transposed there, and written row by row: 1.2 ms against 2.1 ms for
    # 128 x 128 x 128 x 2 (element by element from the tile's columns), 2.2 against 3.7 ms for
    # 4 x 1024 x 1024 x 2 (2026-12-05, one thread). Edge and diagonal tiles element by element.
    n = a.shape[0]
    t = np.empty((8, 8), a.dtype)
    for i0 in range(0, n, 8):
        for j0 in range(i0, n, 8):
            if j0 > i0 and j0 + 8 <= n:  # (then i0 + 8 <= j0 < n too)
                for r in range(8):
                    for c in range(8):
                        t[c, r] = a[i0 + r, j0 + c]
                for c in range(8):
                    for r in range(8):
                        a[j0 + c, i0 + r] = t[c, r]
            else:
                for j in range(j0, min(j0 + 8, n)):
                    for i in range(i0, min(i0 + 8, j)):
                        a[j, i] = a[i, j]


@numba.njit(nogil=True, cache=True)
def _cross_block(xa, xb, out, e_low):
    nstep, na, ndim = xa.shape
    nb = xb.shape[1]
    at = np.empty((ndim, na), dtype=xa.dtype)
    bt = np.empty((ndim, nb), dtype=xa.dtype)
    scratch = np.empty(nb, dtype=out.dtype)
    for s in range(nstep):
        _transpose(xa, s, at)
        _transpose(xb, s, bt)
        for i in range(na):
            l1 = out.shape[0] > 2
            ab = out[2, s, i] if l1 else scratch
            if _row(at, i, bt, 0, nb, out[0, s, i], out[1, s, i], ab, e_low, l1):
                j = _rescale_row(at, i, bt, 0, nb, out[0, s, i], out[1, s, i], e_low)
                if j >= 0:
                    return s, i, j
    return -1, -1, -1


def _scaling_bound(dtype: np.dtype, ndim: int) -> np.floating:
    # Below this Euclidean distance the plain sum of squares may have lost precision: a
    # square under the dtype's smallest normal (tiny) is rounded to the subnormal grid,
    # an absolute error of at most tiny * eps / 2 each (2^-150 in float32), D * tiny * eps / 2
    # in all. Where the sum is at least D * tiny that is at most eps / 2 of it, the same order
    # as one rounding. Pairs below are rescaled (all-zero pairs, e.g. the diagonal, are not:
    # their distance is exactly 0).
    info = np.finfo(dtype)
    return np.sqrt(dtype.type(max(ndim, 1)) * info.tiny)


def _raise_overflow(where: tuple[int, int, int], dtype: np.dtype, step0: int, token0_i: int, token0_j: int) -> None:
    s, i, j = where
    if s < 0:
        return
    i, j = sorted((token0_i + i, token0_j + j))  # the same words whichever tile meets it
    raise OverflowError(
        f"the Euclidean distance between tokens {i} and {j} at step index {step0 + s}"
        f" exceeds {dtype.name}'s largest finite value {float(np.finfo(dtype).max):.6g}"
        " (the history's coordinates are that far apart); rescale the history"
    )


def _check(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected a (step, token, dim) block, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"kernels take float32 or float64 blocks, got {x.dtype}")
    return np.ascontiguousarray(x)


def pairwise_block(x: np.ndarray, *, step0: int = 0, token0: int = 0, manhattan: bool = False) -> np.ndarray:
    """Euclidean and Chebyshev (and Manhattan) distances between all tokens of each snapshot.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32 or float64
        Arithmetic is done in this dtype.
    step0, token0 : int
        Position of the block's first step and token in the whole history; used only to
        name the pair in an error.
    manhattan : bool
        Also return the Manhattan (L1) distance, summed in the same pass, in the same fixed
        order over dims as the Euclidean sum of squares.

    Returns
    -------
    ndarray, shape (2 or 3, step, token, token), same dtype
        ``[0]`` Euclidean, ``[1]`` Chebyshev (order of :data:`METRICS`), ``[2]`` Manhattan if
        asked; exactly symmetric, diagonal exactly 0.

    Raises
    ------
    OverflowError
        A distance exceeds the dtype's range although the coordinates are finite; the
        message names the step index and the pair.

    Examples
    --------
    >>> import numpy as np
    >>> pairwise_block(np.array([[[0.0, 0.0], [3.0, -4.0]]]))[:, 0, 0, 1]
    array([5., 4.])
    """
    x = _check(x)
    out = np.empty((len(METRICS) + manhattan,) + x.shape[:2] + x.shape[1:2], dtype=x.dtype)
    where = _self_block(x, out, _scaling_bound(x.dtype, x.shape[2]))
    _raise_overflow(where, x.dtype, step0, token0, token0)
    return out


def cross_block(
    xa: np.ndarray, xb: np.ndarray, *, step0: int = 0, token0_a: int = 0, token0_b: int = 0, manhattan: bool = False
) -> np.ndarray:
    """Distances between the tokens of ``xa`` (rows) and of ``xb`` (columns).

    Used for off-diagonal token tiles; each pair is reduced exactly as in
    :func:`pairwise_block`, so a tiled result equals an untiled one bit for bit.

    Parameters
    ----------
    xa, xb : ndarray, shapes (step, token_a, dim) and (step, token_b, dim), one dtype
    step0, token0_a, token0_b : int
        Position of the blocks in the whole history, to name a pair in an error.
    manhattan : bool
        As :func:`pairwise_block`.

    Returns
    -------
    ndarray, shape (2 or 3, step, token_a, token_b)

    Raises
    ------
    OverflowError
        As :func:`pairwise_block`.

    Examples
    --------
    >>> import numpy as np
    >>> cross_block(np.zeros((1, 1, 2)), np.array([[[3.0, -4.0]]]))[:, 0, 0, 0]
    array([5., 4.])
    """
    xa = _check(xa)
    xb = _check(xb)
    if xa.dtype != xb.dtype or xa.shape[0] != xb.shape[0] or xa.shape[2] != xb.shape[2]:
        raise ValueError(f"mismatched blocks: {xa.shape} {xa.dtype} vs {xb.shape} {xb.dtype}")
    out = np.empty((len(METRICS) + manhattan, xa.shape[0], xa.shape[1], xb.shape[1]), dtype=xa.dtype)
    where = _cross_block(xa, xb, out, _scaling_bound(xa.dtype, xa.shape[2]))
    _raise_overflow(where, xa.dtype, step0, token0_a, token0_b)
    return out


# ---------------------------------------------------------------- k nearest neighbours
