"""Exact Euclidean k nearest neighbours through one BLAS pass: bounds, candidates, exact values.

The tile kernel (:mod:`dask_pdist.kernels.knn`) computes every pair by coordinate
differences. Here a matrix product (numpy's BLAS, in the history's own dtype) of the block
pair's tokens, centred on their mean (``y = fl(x - m)``), first gives each pair's
approximate squared distance ``s = |y_i|^2 + |y_j|^2 - 2 y_i.y_j`` with a rigorous bound on
its error, so each pair's exact distance (the pairwise kernels' own value ``d~``, of ``x``)
lies in ``[lo, hi]``. Per token, every pair whose ``lo`` is at most the k-th smallest ``hi``
(and that could still enter the token's running list) is a candidate; the true k nearest are
always among them. Only the candidates are computed exactly, by the pairwise kernels' row
routine, and offered to the same running top-k lists as the tile kernel's: the lists are
exactly the tile kernel's, bit for bit, ties included.

The bound (docs/neighbours.md, "Why the BLAS pass is exact"), with ``u`` the dtype's unit
roundoff, ``g_n = n u / (1 - n u)``, ``n_i = |y_i|^2`` summed in float64:

* product: ``|fl(y_i.y_j) - y_i.y_j| <= g_D sum |y_id y_jd| <= g_D |y_i| |y_j|`` for any
  summation order of the BLAS (inputs of bf16, f16, f32 are exact in float32), plus
  underflow: at most half the smallest subnormal per operation;
* the norms' float64 sums, and the bounds' own evaluation in the dtype;
* the centring: ``| |x_i - x_j| - |y_i - y_j| | <= u (|y_i| + |y_j|) / (1 - u)`` (+ underflow);
* the exact kernel: ``d~^2`` within ``(1 +- g_{D+4}) d^2`` plus its squares' underflow.

Every term is doubled for margin: a looser bound costs a few more candidates, never a wrong
list. Blocks with a non-finite value, a squared norm above ``max / 32`` or all values so
small that every pair would be a candidate return None: the caller
(:func:`dask_pdist.kernels.knn.knn_pairs_rows`) takes the tile kernel there.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.distances import _raise_overflow, _rescale_row, _row, _scaling_bound
from dask_pdist.kernels.knn_lists import _insert, _start_lists

__all__ = ["GEMM_BLOCK_BYTES", "bound_constants", "gemm_pairs", "gemm_safe"]

GEMM_BLOCK_BYTES = 64 * 2**20  # one (rows x candidates) block of the product
_EXACT_COLS = 16  # a row's candidates computed exactly at a time: one vector; (D, 16) stays in L1
_U64 = 2.0**-53


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def bound_constants(dtype: np.dtype, ndim: int) -> np.ndarray:
    """The bounds' coefficients for a history of this dtype (the arithmetic of every step).

    Returns ``(a, c_hi, c_lo, rho)``: for every pair, with ``n = |y_i|^2 + |y_j|^2`` (float64)
    of the centred tokens ``y = fl(x - m)`` and ``g`` the BLAS's ``y_i . y_j``, the pairwise
    kernels' exact ``d~^2`` (of the tokens ``x``) lies in
    ``[(1 - rho) (1 - a) n - 2 (1 - rho) g - c_lo, (1 + rho) (1 + a) n - 2 (1 + rho) g + c_hi]``,
    also when both are evaluated in the dtype. Each term's derivation is doubled for margin.

    Examples
    --------
    >>> import numpy as np
    >>> a, c_hi, c_lo, rho = bound_constants(np.dtype(np.float32), 512)
    >>> bool(a < 1.3e-4 and rho < 1.3e-4)
    True
    """
    info = np.finfo(dtype)
    u = float(info.eps) / 2  # the product's, the exact kernel's and the bounds' own arithmetic
    sub = float(info.smallest_subnormal)
    d = max(1, ndim)
    norms = 2 * (_gamma(d, _U64) + 4 * _U64)  # |y|^2 summed in float64
    product = 2 * (2 * _gamma(d, u))  # 2 |fl(y.z) - y.z| <= 2 g_D |y| |z| <= g_D n, doubled
    evaluation = 2 * 16 * u  # the bounds evaluated in the dtype: ~6 roundings of terms <= 2 n
    # Centring: y_i = (x_i - m)(1 + t), |t| <= u, so | |x_i - x_j| - |y_i - y_j| | <= e with
    # e = u' (|y_i| + |y_j|) + 2 sqrt(D) sub (u' = u / (1 - u); sub: underflow), and
    # (d_y +- e)^2 lies within d_y^2 (1 +- eta) +- e^2 (1 + 1 / eta), e^2 <= 4 u'^2 n + 8 D sub.
    eta = 64 * u
    u1 = u / (1 - u)
    centring = 2 * 4 * u1 * u1 * (1 + 1 / eta)
    a = norms + product + evaluation + centring
    # the exact kernel: d~^2 = d^2 (1 +- g_{D+4}); with eta and margin
    rho = 2 * _gamma(d + 4, u) + 16 * _U64 + 2 * eta
    under = 2 * 2 * d * sub  # underflow in the product's D multiplications and additions
    kernel_under = 2 * 2 * (d + 2) * sub  # and in the exact kernel's squares
    evaluation_under = 16 * sub
    centring_under = 2 * 8 * d * sub * (1 + 1 / eta)
    c_hi = (1 + rho) * (under + centring_under) + kernel_under + evaluation_under
    c_lo = (1 - rho) * (under + centring_under) + kernel_under + evaluation_under
    return np.array([a, c_hi, c_lo, rho], dtype=np.float64)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _top_norm(x, t0, t1):
    # the largest squared norm of tokens t0..t1 over all steps (float64), NaN if one is not
    # finite. Only the gate (_safe) uses it, whose limits leave factors of 32 and 2^40, so its
    # sums may run in any order (reassoc: SIMD lanes, ~8x faster; every task gates both blocks);
    # a NaN or inf still reaches acc in any order
    top = 0.0
    for s in range(x.shape[0]):
        for t in range(t0, t1):
            acc = 0.0
            for d in range(x.shape[2]):
                v = np.float64(x[s, t, d])
                acc += v * v
            if not acc <= 1.7e308:
                return np.nan
            top = max(top, acc)
    return top


@numba.njit(nogil=True, cache=True)
def _centre(xs, b0, b1, c0, c1, y, cst, ph, pl):
    # One snapshot's tokens b0..b1 and c0..c1 (c may equal b) minus their mean m (float64
    # sums, rounded to the dtype), into y (rows 0..nb, then nb..nb+nc); and each token's
    # share of the separable bounds (see bound_constants) from its centred squared norm.
    a, c_hi, c_lo, rho = cst[0], cst[1], cst[2], cst[3]
    ndim = xs.shape[1]
    diag = b0 == c0
    m = np.zeros(ndim)
    for t in range(b0, b1):
        for d in range(ndim):
            m[d] += xs[t, d]
    if not diag:
        for t in range(c0, c1):
            for d in range(ndim):
                m[d] += xs[t, d]
    count = (b1 - b0) + (0 if diag else c1 - c0)
    mt = np.empty(ndim, dtype=xs.dtype)
    for d in range(ndim):
        mt[d] = m[d] / count
    nb = b1 - b0
    for r in range(y.shape[0]):
        t = b0 + r if r < nb else c0 + r - nb
        acc = 0.0
        for d in range(ndim):
            v = xs[t, d] - mt[d]
            y[r, d] = v
            w = np.float64(v)
            acc += w * w
        ph[r] = (1.0 + rho) * (1.0 + a) * acc + c_hi / 2
        pl[r] = (1.0 - rho) * (1.0 - a) * acc - c_lo / 2


def _safe(x: np.ndarray, b: tuple[int, int], c: tuple[int, int]) -> bool:
    # finite, squared norms at most max / 32 (so |x_i - m| and every bound stay in range),
    # and not so small that every bound is the underflow term
    top_b = _top_norm(x, b[0], b[1])
    top_c = top_b if b == c else _top_norm(x, c[0], c[1])
    info = np.finfo(x.dtype)
    lo, hi = float(info.tiny) * 2.0**40, float(info.max) / 32
    return bool(top_b <= hi and top_c <= hi and max(top_b, top_c) >= lo)  # False for NaN


def gemm_safe(x: np.ndarray, b: tuple[int, int], c: tuple[int, int]) -> bool:
    """Whether the BLAS method applies to these blocks: finite values of moderate size.

    Examples
    --------
    >>> import numpy as np
    >>> gemm_safe(np.ones((1, 4, 3), np.float32), (0, 2), (2, 4))
    True
    >>> gemm_safe(np.full((1, 4, 3), np.nan, np.float32), (0, 4), (0, 4))
    False
    """
    return _safe(x, b, c)


_LANES = 128  # pass 1: running minima per row and per column (at least k)


@numba.njit(nogil=True, cache=True)
def _kth(vals, kbuf):
    # the k-th smallest of vals (inf if fewer than k), k = len(kbuf)
    last = kbuf.shape[0] - 1
    kbuf[:] = np.inf
    for v in vals:
        if v < kbuf[last]:
            p = last
            while p > 0 and kbuf[p - 1] > v:
                kbuf[p] = kbuf[p - 1]
                p -= 1
            kbuf[p] = v
    return kbuf[last]


@numba.njit(nogil=True, cache=True)
def _thresholds(g, i0, j0, diag, ph, ch, trow, tcol, cmin, rmin, kbuf):
    # Pass 1 over one product block (rows i0.., columns j0..): for each row (trow) and each
    # column (tcol) a value with at least k of its pairs' upper bounds at or below it (inf
    # where it has fewer than k pairs). Branch-free: running minima over L lanes (columns
    # t = l mod L of a row; rows p = l mod L of a column), then the k-th smallest of the L
    # minima: k lanes hold a pair at or below it. Usually the k-th smallest bound itself (the
    # k smallest rarely share a lane), never below it. On a diagonal block only the pairs
    # j > i count (each unordered pair once).
    m, n = g.shape
    lanes = rmin.shape[0]
    cmin[:, :] = np.inf
    for p in range(m):
        i = i0 + p
        rmin[:] = np.inf
        hi_i = ph[i]
        crow = cmin[p % lanes]
        start = max(0, i + 1 - j0) if diag else 0
        for t0 in range(start, n, lanes):
            w = min(lanes, n - t0)
            # slices from 0 indexed by the loop counter: no wraparound test, so LLVM vectorises
            gs = g[p, t0 : t0 + w]
            ps = ph[j0 + t0 : j0 + t0 + w]
            cs = crow[t0 : t0 + w]
            for lane in range(w):
                h = (hi_i + ps[lane]) - ch * gs[lane]
                rmin[lane] = min(rmin[lane], h)
                cs[lane] = min(cs[lane], h)
        trow[p] = _kth(rmin, kbuf)
    for t in range(n):
        tcol[t] = _kth(cmin[:, t], kbuf)


_NONE = np.iinfo(np.int64).max  # the k-th token of a list that is not full


@numba.njit(nogil=True, cache=True, inline="always")
def _bar(dr, nr, last, up):
    # What a candidate must beat to enter a full list: its k-th exact distance, squared and
    # rounded up (up = (1 + 4u, 2 x the smallest subnormal): the square may underflow), and
    # its k-th token (a tie enters only with a smaller token); inf, _NONE while not full, or
    # while its k-th is NaN (a running list from a block pair with a NaN token, which the
    # tile kernel took: any finite distance enters before it).
    v = dr[last]
    if nr[last] == -1 or v != v:
        return np.inf, _NONE
    if v == 0:  # exact: only a tie at 0 with a smaller token may enter (duplicate tokens)
        return v, nr[last]
    return v * v * up[0] + up[1], nr[last]


@numba.njit(nogil=True, cache=True, inline="always")
def _may_enter(lo, t, bar, idx, j):
    # whether a pair with lower bound lo (>= 0) on d~^2 may enter a list: within the pass-1
    # threshold t (k pairs provably no farther), and not provably behind the list's k-th
    return (lo <= t) & ((lo < bar) | ((j < idx) & (lo <= bar)))


@numba.njit(nogil=True, cache=True)
def _exact(xs, g, i0, j0, diag, pl, cl, up, trow, tcol, cols, lists, e_low, bufs, jbuf, scan, counts):
    # Pass 2: every pair that may enter its row's or its column's list is computed exactly
    # (the shared row routine over the row's gathered candidates) and offered to both lists.
    # Returns (i, j) of a distance that overflows the dtype, else (-1, -1).
    rn, rd, rb0, cn, cd, cb0 = lists
    cbar, cidx, ceff = cols  # each column list's _bar, and min(tcol, bar)
    lob, hit = scan  # one row's lower bounds, and which pairs pass the vector test
    words = hit.view(np.uint64)  # hit's length: a multiple of 8 bytes (8 tests a word)
    m, n = g.shape
    ndim = xs.shape[1]
    last = rn.shape[1] - 1
    width = jbuf.shape[0]
    for q in range(n):
        cbar[q], cidx[q] = _bar(cd[j0 + q - cb0], cn[j0 + q - cb0], last, up)
        ceff[q] = min(tcol[q], cbar[q])
    for p in range(m):
        i = i0 + p
        nr = rn[i - rb0]
        dr = rd[i - rb0]
        tr = trow[p]
        bar, idx = _bar(dr, nr, last, up)
        lo_i = pl[i]
        q0 = max(0, i + 1 - j0) if diag else 0
        w = n - q0
        reff = min(tr, bar)
        # The whole row in one vectorised loop (slices from 0, no branch): the lower bounds,
        # and a test implied by _may_enter (so nothing is lost) with the bars as they are at
        # the row's start (they only tighten); false for most pairs: only the 8-pair words of
        # the tests with a hit are looked at
        gs, ps = g[p, q0:n], pl[j0 + q0 : j0 + n]
        es, bs, xs_ = ceff[q0:n], cbar[q0:n], cidx[q0:n]
        jq = j0 + q0
        for t in range(w):
            lo = max((lo_i + ps[t]) - cl * gs[t], 0)  # d~^2 >= 0
            lob[t] = lo
            row = (lo <= reff) & ((lo < bar) | (jq + t < idx))
            col = (lo <= es[t]) & ((lo < bs[t]) | (i < xs_[t]))
            hit[t] = row | col
        hit[w : w + 8] = False  # the last word's tail
        cnt = 0
        for word in range((w + 7) // 8):
            if words[word] == 0:
                continue
            for t in range(8 * word, min(8 * word + 8, w)):
                if not hit[t]:
                    continue
                lo = lob[t]
                q = q0 + t
                j = j0 + q
                if _may_enter(lo, tr, bar, idx, j) or _may_enter(lo, tcol[q], cbar[q], cidx[q], i):  # the bars now
                    if cnt == 0:
                        for d in range(ndim):
                            bufs[0][d, 0] = xs[i, d]
                    for d in range(ndim):
                        bufs[1][d, cnt] = xs[j, d]
                    jbuf[cnt] = j
                    cnt += 1
                    counts[0] += 1
                    if cnt == width:
                        over = _flush(cnt, i, bufs, jbuf, lists, j0, tcol, cols, up, e_low)
                        if over >= 0:
                            return i, over
                        bar, idx = _bar(dr, nr, last, up)
                        cnt = 0
        if cnt:
            over = _flush(cnt, i, bufs, jbuf, lists, j0, tcol, cols, up, e_low)
            if over >= 0:
                return i, over
    return -1, -1


@numba.njit(nogil=True, cache=True)
def _flush(cnt, i, bufs, jbuf, lists, j0, tcol, cols, up, e_low):
    # Row i's gathered candidates, computed exactly and offered to both lists. The row
    # routine runs over the whole buffer (the lanes past cnt hold earlier candidates: one
    # full vector costs less than a scalar remainder; their values are not used, and no
    # pair of finite values of the sizes this method takes can overflow). Returns the
    # token whose distance to i overflows the dtype, else -1.
    rn, rd, rb0, cn, cd, cb0 = lists
    abuf, bbuf, sq, mx, ab = bufs
    cbar, cidx, ceff = cols
    last = rn.shape[1] - 1
    width = jbuf.shape[0]
    if _row(abuf, 0, bbuf, 0, width, sq, mx, ab, e_low, False):  # no L1 sums
        over = _rescale_row(abuf, 0, bbuf, 0, width, sq, mx, e_low)
        if 0 <= over < cnt:
            return jbuf[over]
    nr = rn[i - rb0]
    dr = rd[i - rb0]
    for t in range(cnt):
        j = jbuf[t]
        _insert(nr, dr, sq[t], j)
        _insert(cn[j - cb0], cd[j - cb0], sq[t], i)
        q = j - j0
        cbar[q], cidx[q] = _bar(cd[j - cb0], cn[j - cb0], last, up)
        ceff[q] = min(tcol[q], cbar[q])
    return -1


def _by_token(terms: np.ndarray, b: tuple[int, int], c: tuple[int, int], ntok: int) -> np.ndarray:
    # the terms of b's tokens (then c's) laid out by token position (others unused)
    out = np.empty(ntok, dtype=terms.dtype)
    nb = b[1] - b[0]
    out[b[0] : b[1]] = terms[:nb]
    if b != c:
        out[c[0] : c[1]] = terms[nb:]
    return out


def gemm_pairs(
    x: np.ndarray,
    b: tuple[int, int],
    c: tuple[int, int],
    k: int,
    *,
    step0: int = 0,
    block_bytes: int = GEMM_BLOCK_BYTES,
    lists: tuple | None = None,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`dask_pdist.kernels.knn.knn_pairs` (Euclidean) on row-major snapshots, via BLAS.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), C-contiguous float32 or float64
    b, c : (start, stop)
        Row and candidate token ranges: equal (a diagonal block) or disjoint.
    k : int
    step0 : int
        Position of the first step in the whole history, to name a pair in an error.
    block_bytes : int
        Bytes of one product block (rows of ``b`` x all of ``c``); speed and memory only.
    lists : (b_nbr, b_dist, c_nbr, c_dist), optional
        Running lists from earlier block pairs, as :func:`dask_pdist.kernels.knn.knn_pairs`
        takes them: their k-th entries rule pairs out from the start.
    counts : ndarray of int64, shape (1,), optional
        Diagnostics: the number of pairs computed exactly is added to ``counts[0]``.

    Returns
    -------
    (row_nbr, row_dist, col_nbr, col_dist) or None
        As :func:`dask_pdist.kernels.knn.knn_pairs`, the same values bit for bit; None where
        the blocks hold a value the bounds cannot take (:func:`gemm_safe`).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[0.0], [3.0], [1.0]]], dtype=np.float32)
    >>> gemm_pairs(x, (0, 3), (0, 3), 1)[0][0, :, 0]
    array([2, 2, 0])
    """
    nstep, ntok, ndim = x.shape
    if not _safe(x, b, c):
        return None
    cst = bound_constants(x.dtype, ndim)
    diag = b == c
    rn, rd, cn, cd = _start_lists(lists, nstep, b, c, k, x.dtype)
    rho = float(cst[3])
    ch, cl = x.dtype.type(2 * (1 + rho)), x.dtype.type(2 * (1 - rho))
    info = np.finfo(x.dtype)
    up = np.array([1 + 2 * float(info.eps), 2 * float(info.smallest_subnormal)], dtype=x.dtype)
    e_low = _scaling_bound(x.dtype, ndim)
    ncol = c[1] - c[0]
    rows = max(1, min(b[1] - b[0], block_bytes // max(1, x.dtype.itemsize * ncol)))
    width = _EXACT_COLS
    bufs = (
        np.empty((ndim, 1), dtype=x.dtype),  # the row, as a (D, 1) block for the row routine
        np.zeros((ndim, width), dtype=x.dtype),  # its gathered candidates
        *(np.empty(width, dtype=x.dtype) for _ in range(3)),  # Euclidean, Chebyshev, L1 out
    )
    jbuf = np.empty(width, dtype=np.int64)
    # pass 2's row buffers: lower bounds, tests (a whole number of 8-byte words, one spare)
    scan = (np.empty(ncol, dtype=x.dtype), np.zeros(8 * (ncol // 8 + 2), dtype=np.bool_))
    lanes = max(_LANES, k)
    cmin = np.empty((lanes, ncol), dtype=x.dtype)
    rmin = np.empty(lanes, dtype=x.dtype)
    kbuf = np.empty(k, dtype=x.dtype)
    trow = np.empty(rows, dtype=x.dtype)
    tcol = np.empty(ncol, dtype=x.dtype)
    cbar = np.empty(ncol, dtype=x.dtype)
    cidx = np.empty(ncol, dtype=np.int64)
    ceff = np.empty(ncol, dtype=x.dtype)
    nb = b[1] - b[0]
    y = np.empty((nb + (0 if diag else ncol), ndim), dtype=x.dtype)  # the centred tokens
    ph = np.empty(y.shape[0], dtype=x.dtype)
    pl = np.empty(y.shape[0], dtype=x.dtype)
    yc = y if diag else y[nb:]
    if counts is None:
        counts = np.zeros(1, dtype=np.int64)
    for s in range(nstep):
        xs = x[s]
        _centre(xs, b[0], b[1], c[0], c[1], y, cst, ph, pl)
        # the passes index the bounds' terms by token: views that start at token 0
        ph_t = _by_token(ph, b, c, ntok)
        pl_t = _by_token(pl, b, c, ntok)
        for r0 in range(b[0], b[1], rows):
            r1 = min(r0 + rows, b[1])
            j0 = r0 if diag else c[0]  # a diagonal block needs only the columns j > i >= r0
            ya = y[r0 - b[0] : r1 - b[0]]
            yb = y[r0 - b[0] :] if diag else yc
            g = ya @ yb.T  # on a diagonal block with one row block: y @ y.T, BLAS's syrk
            n = c[1] - j0
            _thresholds(g, r0, j0, diag, ph_t, ch, trow[: r1 - r0], tcol[:n], cmin[:, :n], rmin, kbuf)
            lists = (rn[s], rd[s], b[0], cn[s], cd[s], c[0])
            i, j = _exact(
                xs, g, r0, j0, diag, pl_t, cl, up, trow[: r1 - r0], tcol[:n], (cbar[:n], cidx[:n], ceff[:n]),
                lists, e_low, bufs, jbuf, scan, counts,
            )  # fmt: skip
            _raise_overflow((s if i >= 0 else -1, i, j), x.dtype, step0, 0, 0)
    return rn, rd, cn, cd
