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

import os
import sys
import tempfile
from pathlib import Path


def _user_cache_dir() -> str:
    # numba's cache=True writes next to this file by default, i.e. into site-packages, which
    # may be read-only, and a leftover dask_pdist/__pycache__ there imports as an empty
    # namespace package once `pip install -e` replaces the package: keep it in a user cache
    try:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = str(Path.home() / "Library" / "Caches")
        else:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "dask_pdist" / "numba"
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # no (writable) home, as in some containers: a per-user temp folder
        path = Path(tempfile.gettempdir()) / f"dask_pdist-numba-{os.getuid() if hasattr(os, 'getuid') else 0}"
    return str(path)


# Before numba is imported: numba reads NUMBA_CACHE_DIR into its config at import, and a
# NUMBA_CACHE_DIR the user set wins. The environment also carries it to worker processes.
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _user_cache_dir()

import numba  # noqa: E402
import numpy as np  # noqa: E402

# numba was imported before us (its config already read, without a cache dir): set it too.
# Each kernel's cache location is fixed when it is decorated, just below.
if not numba.config.CACHE_DIR:
    numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

__all__ = ["METRICS", "pairwise_block", "cross_block", "knn_pairs", "knn_merge"]

#: Metrics every kernel computes, in the order of the leading output axis.
METRICS: tuple[str, ...] = ("euclidean", "chebyshev")


@numba.njit(nogil=True, cache=True, inline="always")
def _row(at, i, bt, j0, n, sq, mx, e_low):
    # Row i of ``at`` against columns j0..j0+n of ``bt`` (both (D, V), one snapshot).
    # Returns whether some pair of the row needs _rescale_row (rarely).
    # Slices start at 0 so numba drops negative-index wraparound and LLVM vectorises over j
    # (indexing bt[d, j] directly is ~3x slower, see MEASUREMENTS.md).
    ndim = at.shape[0]
    for j in range(n):
        sq[j] = 0
        mx[j] = 0
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
            m = mx[j]
            m = max(m, abs(t0))
            m = max(m, abs(t1))
            m = max(m, abs(t2))
            m = max(m, abs(t3))
            mx[j] = m
        d += 4
    while d < ndim:
        a0 = at[d, i]
        b0 = bt[d, j0 : j0 + n]
        for j in range(n):
            t0 = a0 - b0[j]
            sq[j] = sq[j] + t0 * t0
            mx[j] = max(mx[j], abs(t0))
        d += 1
    rare = False
    for j in range(n):
        v = sq[j]
        e = np.sqrt(v)
        sq[j] = e
        m = mx[j]
        # max() drops NaN; a NaN anywhere in the pair makes the sum NaN, so copy it over
        # (NaN distances where the input holds NaN, as scipy gives).
        if v != v:
            mx[j] = v
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


# Every row in full, i against every j, written straight into the output row. Computing both
# (i, j) and (j, i) costs twice the arithmetic of a triangle but no strided mirror writes, and
# measured faster (27 vs 34 ms for 256 x 128 x 64). Both are exactly equal: x_i - x_j is
# exactly -(x_j - x_i), and the diagonal x_i - x_i is exactly 0. Two separate functions, not
# one with a flag: the flag's aliasing (one buffer as both operands) cost ~30% in the loop.


@numba.njit(nogil=True, cache=True)
def _self_block(x, out, e_low):
    nstep, ntok, ndim = x.shape
    xt = np.empty((ndim, ntok), dtype=x.dtype)
    for s in range(nstep):
        _transpose(x, s, xt)
        for i in range(ntok):
            if _row(xt, i, xt, 0, ntok, out[0, s, i], out[1, s, i], e_low):
                j = _rescale_row(xt, i, xt, 0, ntok, out[0, s, i], out[1, s, i], e_low)
                if j >= 0:
                    return s, i, j
    return -1, -1, -1


@numba.njit(nogil=True, cache=True)
def _cross_block(xa, xb, out, e_low):
    nstep, na, ndim = xa.shape
    nb = xb.shape[1]
    at = np.empty((ndim, na), dtype=xa.dtype)
    bt = np.empty((ndim, nb), dtype=xa.dtype)
    for s in range(nstep):
        _transpose(xa, s, at)
        _transpose(xb, s, bt)
        for i in range(na):
            if _row(at, i, bt, 0, nb, out[0, s, i], out[1, s, i], e_low):
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


def pairwise_block(x: np.ndarray, *, step0: int = 0, token0: int = 0) -> np.ndarray:
    """Euclidean and Chebyshev distances between all tokens of each snapshot.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32 or float64
        Arithmetic is done in this dtype.
    step0, token0 : int
        Position of the block's first step and token in the whole history; used only to
        name the pair in an error.

    Returns
    -------
    ndarray, shape (2, step, token, token), same dtype
        ``[0]`` Euclidean, ``[1]`` Chebyshev (order of :data:`METRICS`); exactly symmetric,
        diagonal exactly 0.

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
    out = np.empty((len(METRICS),) + x.shape[:2] + x.shape[1:2], dtype=x.dtype)
    where = _self_block(x, out, _scaling_bound(x.dtype, x.shape[2]))
    _raise_overflow(where, x.dtype, step0, token0, token0)
    return out


def cross_block(xa: np.ndarray, xb: np.ndarray, *, step0: int = 0, token0_a: int = 0, token0_b: int = 0) -> np.ndarray:
    """Distances between the tokens of ``xa`` (rows) and of ``xb`` (columns).

    Used for off-diagonal token tiles; each pair is reduced exactly as in
    :func:`pairwise_block`, so a tiled result equals an untiled one bit for bit.

    Parameters
    ----------
    xa, xb : ndarray, shapes (step, token_a, dim) and (step, token_b, dim), one dtype
    step0, token0_a, token0_b : int
        Position of the blocks in the whole history, to name a pair in an error.

    Returns
    -------
    ndarray, shape (2, step, token_a, token_b)

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
    out = np.empty((len(METRICS), xa.shape[0], xa.shape[1], xb.shape[1]), dtype=xa.dtype)
    where = _cross_block(xa, xb, out, _scaling_bound(xa.dtype, xa.shape[2]))
    _raise_overflow(where, xa.dtype, step0, token0_a, token0_b)
    return out


# ---------------------------------------------------------------- k nearest neighbours
# Every distance comes from the same _row routine as pairwise_block/cross_block, over a
# candidate tile: each pair's value depends only on the two tokens and the fixed order over
# dims, never on the tile, so it is bit-identical to the pairwise store's. Each unordered
# pair is computed once and offered to both tokens' lists: _row(i, j) equals _row(j, i)
# exactly (x_i - x_j is exactly -(x_j - x_i), see above).


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


@numba.njit(nogil=True, cache=True)
def _knn_pairs(xt, b0, c0, nc, metric, rows, tile, rn, rd, cn, cd, e_low):
    # Rows b0..b0+nb x candidates c0..c0+nc of each snapshot in xt (step, D, V), every pair
    # once: row i's top-k (rn, rd) is offered j, column j's (cn, cd) is offered i. On a
    # diagonal block (b0 == c0; pass cn is rn) only pairs j > i are computed. Loop order:
    # `rows` rows x one `tile` of candidates at a time, so the (D, tile) columns stay in cache.
    # Returns (step, i, j) of a distance that overflows the dtype (finite input), else -1s.
    nstep = xt.shape[0]
    nb = rn.shape[1]
    diag = b0 == c0
    last = rn.shape[2] - 1
    sq = np.empty(tile, dtype=xt.dtype)
    mx = np.empty(tile, dtype=xt.dtype)
    # contiguous copies of each list's last distance, so the common rejection stays in L1
    rbar = np.empty(nb, dtype=xt.dtype)
    cbar = rbar if diag else np.empty(nc, dtype=xt.dtype)
    for s in range(nstep):
        at = xt[s]
        rbar[:] = np.nan
        cbar[:] = np.nan
        for r0 in range(0, nb, rows):
            r1 = min(r0 + rows, nb)
            for j0 in range(0, nc, tile):
                j1 = min(j0 + tile, nc)
                for r in range(r0, r1):
                    i = b0 + r
                    start = max(j0, r + 1) if diag else j0
                    if start >= j1:
                        continue
                    # the pairwise kernels' exact sequence: the fast row, then its rare rescaling
                    if _row(at, i, at, c0 + start, j1 - start, sq, mx, e_low):
                        over = _rescale_row(at, i, at, c0 + start, j1 - start, sq, mx, e_low)
                        if over >= 0:
                            return s, i, c0 + start + over
                    vals = sq if metric == 0 else mx
                    rnr = rn[s, r]
                    rdr = rd[s, r]
                    for q in range(j1 - start):
                        jl = start + q
                        v = vals[q]
                        # Fast rejection (most candidates): not nearer than a full list's
                        # last (bars hold NaN until a list is full, and NaN compares false,
                        # so NaN goes through the exact order in _insert). Rejecting a tie is
                        # exact because within one call every list is offered its candidates
                        # in ascending token order (tiles, row blocks and rows ascend), so a
                        # tie never has the smaller token.
                        if not v >= rbar[r]:
                            _insert(rnr, rdr, v, c0 + jl)
                            if rnr[last] != -1:
                                rbar[r] = rdr[last]
                        if not v >= cbar[jl]:
                            _insert(cn[s, jl], cd[s, jl], v, i)
                            if cn[s, jl, last] != -1:
                                cbar[jl] = cd[s, jl, last]
    return -1, -1, -1


@numba.njit(nogil=True, cache=True)
def _knn_merge(parts_n, parts_d, nr, dr):
    # top-k of the union of partial lists (P, step, rows, k) over disjoint candidate sets
    for p in range(parts_n.shape[0]):
        for s in range(nr.shape[0]):
            for r in range(nr.shape[1]):
                for q in range(parts_n.shape[3]):
                    j = parts_n[p, s, r, q]
                    if j != -1:
                        _insert(nr[s, r], dr[s, r], parts_d[p, s, r, q], j)


def _empty_lists(nstep: int, nrows: int, k: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nstep, nrows, k), -1, dtype=np.int64), np.full((nstep, nrows, k), np.nan, dtype=dtype)


def knn_pairs(
    xt: np.ndarray,
    b: tuple[int, int],
    c: tuple[int, int],
    k: int,
    metric: int,
    rows: int = 128,
    tile: int = 512,
    *,
    step0: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Partial k-nearest lists from one block of token pairs, each pair computed once.

    Parameters
    ----------
    xt : ndarray, shape (step, dim, token), C-contiguous float32 or float64
        Transposed snapshots.
    b, c : (start, stop)
        Token ranges of the rows and of the candidates: equal (a diagonal block: every pair
        of its tokens) or disjoint.
    k : int
    metric : int
        Index into :data:`METRICS`.
    rows, tile : int
        Cache blocking (speed only: the result does not depend on them).
    step0 : int
        Position of the block's first step in the whole history, to name a pair in an error.

    Returns
    -------
    (row_nbr, row_dist, col_nbr, col_dist)
        Each row token's k nearest among the candidates (step, b, k), and each candidate's
        k nearest among the rows (step, c, k) (the same arrays for a diagonal block). Token
        positions (int64, -1 where fewer than k exist) and distances (``xt.dtype``), ordered
        by (distance, token) with NaN last; a token is never its own neighbour.

    Raises
    ------
    OverflowError
        As :func:`pairwise_block`: a distance exceeds the dtype although the input is finite.

    Examples
    --------
    >>> import numpy as np
    >>> xt = np.array([[[0.0, 3.0, 1.0]]])  # one step, one dim, tokens at 0, 3, 1
    >>> knn_pairs(xt, (0, 3), (0, 3), 1, 0)[0][0, :, 0]
    array([2, 2, 0])
    """
    if xt.ndim != 3 or xt.dtype not in (np.float32, np.float64) or not xt.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous (step, dim, token) float block, got {xt.shape} {xt.dtype}")
    ntok = xt.shape[2]
    if not (0 <= b[0] <= b[1] <= ntok and 0 <= c[0] <= c[1] <= ntok) or (b != c and max(b[0], c[0]) < min(b[1], c[1])):
        raise ValueError(f"token ranges {b} and {c} must be equal or disjoint, within 0..{ntok}")
    if k < 1 or rows < 1 or tile < 1:
        raise ValueError(f"need k, rows, tile >= 1, got {k}, {rows}, {tile}")
    rn, rd = _empty_lists(xt.shape[0], b[1] - b[0], k, xt.dtype)
    cn, cd = (rn, rd) if b == c else _empty_lists(xt.shape[0], c[1] - c[0], k, xt.dtype)
    where = _knn_pairs(
        xt, b[0], c[0], c[1] - c[0], metric, rows, tile, rn, rd, cn, cd, _scaling_bound(xt.dtype, xt.shape[1])
    )
    _raise_overflow(where, xt.dtype, step0, 0, 0)  # i, j are already whole-history positions
    return rn, rd, cn, cd


def knn_merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge partial k-nearest lists of the same tokens over disjoint candidate sets.

    Examples
    --------
    >>> import numpy as np
    >>> a = (np.array([[[4, -1]]]), np.array([[[2.0, np.nan]]]))
    >>> b = (np.array([[[7, 1]]]), np.array([[[2.0, 3.0]]]))
    >>> knn_merge([a, b], 2)[0].tolist()
    [[[4, 7]]]
    """
    nbr = np.stack([p[0] for p in parts])
    dist = np.stack([p[1] for p in parts])
    out_n, out_d = _empty_lists(nbr.shape[1], nbr.shape[2], k, dist.dtype)
    _knn_merge(nbr, dist, out_n, out_d)
    return out_n, out_d
