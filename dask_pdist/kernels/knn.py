"""Block kernels of exact k nearest neighbours: numpy in, numpy out, no dask.

Every distance comes from the pairwise kernels' own row routine
(:mod:`dask_pdist.kernels.distances`), so each is bit-identical to the value the distance
store holds for that pair. Ties are broken by the smaller token position; NaN distances
sort last. Three methods, the same lists: the tile kernel here computes every pair (every
metric); Euclidean blocks go through the BLAS method of :mod:`dask_pdist.kernels.knn_gemm`
(a bounded matrix product rules most pairs out, the rest are computed exactly) where its
bounds apply (:func:`knn_pairs_rows`), Chebyshev blocks through the max-only routine of
:mod:`dask_pdist.kernels.knn_chebyshev` where their values allow. Every method takes the
running lists of earlier block pairs (``lists=``) and returns the top-k of the union.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.conventions import KNN_TILE_BYTES, Metric, check_metric
from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.distances import _raise_overflow, _rescale_row, _row, _scaling_bound
from dask_pdist.kernels.knn_chebyshev import knn_max_pairs, max_safe
from dask_pdist.kernels.knn_gemm import gemm_pairs
from dask_pdist.kernels.knn_lists import _empty_lists, _insert, _start_lists

__all__ = ["knn_pairs", "knn_pairs_rows", "knn_merge", "knn_block", "churn_block", "check_k", "knn_tile", "QUERY_ROWS"]

QUERY_ROWS = 128  # query rows per cache block


def check_k(k: int, n_tokens: int) -> int:
    """``k`` as an int if ``1 <= k <= n_tokens - 1``; otherwise a ValueError that says why."""
    if n_tokens < 2:
        raise ValueError(
            f"the history has {n_tokens} token{'s' if n_tokens != 1 else ''}: neighbours need at least 2"
            " (a token is never its own neighbour)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_tokens - 1:
        raise ValueError(
            f"k={k!r}: need an integer 1 <= k <= {n_tokens - 1} (tokens - 1: a token is never its own"
            f" neighbour, and the history has {n_tokens} tokens); choose a smaller k"
        )
    return int(k)


def knn_tile(n_dims: int, n_tokens: int, itemsize: int) -> int:
    """Candidate tokens per tile: a (dim, tile) candidate block of about KNN_TILE_BYTES."""
    return max(64, min(n_tokens, KNN_TILE_BYTES // max(1, n_dims * itemsize)))


# Every distance comes from the same _row routine as pairwise_block/cross_block, over a
# candidate tile: each pair's value depends only on the two tokens and the fixed order over
# dims, never on the tile, so it is bit-identical to the pairwise store's. Each unordered
# pair is computed once and offered to both tokens' lists: _row(i, j) equals _row(j, i)
# exactly (x_i - x_j is exactly -(x_j - x_i), see above).


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
    ab = np.empty(tile, dtype=xt.dtype)  # the L1 sums the shared row routine also takes
    # contiguous copies of each list's last distance, so the common rejection stays in L1
    rbar = np.empty(nb, dtype=xt.dtype)
    cbar = rbar if diag else np.empty(nc, dtype=xt.dtype)
    for s in range(nstep):
        at = xt[s]
        # the lists may come in holding other blocks' candidates (a running list): their
        # last entries are the bars from the start (NaN while a list is not full)
        for r in range(nb):
            rbar[r] = rd[s, r, last] if rn[s, r, last] != -1 else np.nan
        if not diag:
            for q in range(nc):
                cbar[q] = cd[s, q, last] if cn[s, q, last] != -1 else np.nan
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
                    if _row(at, i, at, c0 + start, j1 - start, sq, mx, ab, e_low):
                        over = _rescale_row(at, i, at, c0 + start, j1 - start, sq, mx, e_low)
                        if over >= 0:
                            return s, i, c0 + start + over
                    vals = sq if metric == 0 else mx if metric == 1 else ab
                    rnr = rn[s, r]
                    rdr = rd[s, r]
                    for q in range(j1 - start):
                        jl = start + q
                        v = vals[q]
                        # Fast rejection (most candidates): farther than a full list's last
                        # (bars hold NaN until a list is full, and NaN compares false, so NaN
                        # goes through the exact order in _insert). A tie goes to _insert too:
                        # a running list may hold a larger token from another block.
                        if not v > rbar[r]:
                            _insert(rnr, rdr, v, c0 + jl)
                            if rnr[last] != -1:
                                rbar[r] = rdr[last]
                        if not v > cbar[jl]:
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
    lists: tuple | None = None,
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
    lists : (b_nbr, b_dist, c_nbr, c_dist), optional
        Running lists of b's and c's tokens from earlier block pairs (as returned; for a
        diagonal block only b's are used), not modified: the pairs here are offered to
        copies of them. Default: empty lists.

    Returns
    -------
    (row_nbr, row_dist, col_nbr, col_dist)
        Each row token's k nearest among the candidates (step, b, k), and each candidate's
        k nearest among the rows (step, c, k) (the same arrays for a diagonal block); with
        ``lists``, the k nearest of the union of theirs and these. Token positions (int64,
        -1 where fewer than k exist) and distances (``xt.dtype``), ordered by (distance,
        token) with NaN last; a token is never its own neighbour.

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
    rn, rd, cn, cd = _start_lists(lists, xt.shape[0], b, c, k, xt.dtype)
    if metric == 1 and max_safe(xt, b, c):  # Chebyshev: the max-only routine, the same values
        knn_max_pairs(xt, b, c, (rn, rd, cn, cd), rows, tile)
        return rn, rd, cn, cd
    where = _knn_pairs(
        xt, b[0], c[0], c[1] - c[0], metric, rows, tile, rn, rd, cn, cd, _scaling_bound(xt.dtype, xt.shape[1])
    )
    _raise_overflow(where, xt.dtype, step0, 0, 0)  # i, j are already whole-history positions
    return rn, rd, cn, cd


def knn_pairs_rows(
    x: np.ndarray, b: tuple[int, int], c: tuple[int, int], k: int, *, step0: int = 0, lists: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Euclidean :func:`knn_pairs` from row-major snapshots: the BLAS method where it applies.

    The same lists bit for bit either way. Blocks with a non-finite value, or values too
    large for a product in the dtype (or so small that every pair would be recomputed), take
    the tile kernel on a transposed copy of the two blocks instead.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), C-contiguous float32 or float64
    b, c, k, step0, lists
        As :func:`knn_pairs`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[0.0], [3.0], [1.0]]])
    >>> knn_pairs_rows(x, (0, 3), (0, 3), 1)[0][0, :, 0]
    array([2, 2, 0])
    """
    if x.ndim != 3 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous (step, token, dim) float block, got {x.shape} {x.dtype}")
    ntok = x.shape[1]
    if not (0 <= b[0] <= b[1] <= ntok and 0 <= c[0] <= c[1] <= ntok) or (b != c and max(b[0], c[0]) < min(b[1], c[1])):
        raise ValueError(f"token ranges {b} and {c} must be equal or disjoint, within 0..{ntok}")
    if k < 1:
        raise ValueError(f"need k >= 1, got {k}")
    out = gemm_pairs(x, b, c, k, step0=step0, lists=lists)
    if out is not None:
        return out
    out = _tile_pairs_rows(x, b, c, k, step0)
    if lists is None:
        return out
    # the running lists, then this block pair's: the top-k of the union either way
    rn, rd, cn, cd = _start_lists(lists, x.shape[0], b, c, k, x.dtype)
    _knn_merge(out[0][None], out[1][None], rn, rd)
    if b != c:
        _knn_merge(out[2][None], out[3][None], cn, cd)
    return rn, rd, cn, cd


def _tile_pairs_rows(
    x: np.ndarray, b: tuple[int, int], c: tuple[int, int], k: int, step0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # the tile kernel on a transposed copy of the two blocks (the BLAS method's fallback)
    nb = b[1] - b[0]
    parts = [x[:, b[0] : b[1]]] if b == c else [x[:, b[0] : b[1]], x[:, c[0] : c[1]]]
    xt = np.ascontiguousarray(np.concatenate(parts, axis=1).transpose(0, 2, 1))
    c_local = 0 if b == c else nb
    rn, rd = _empty_lists(x.shape[0], nb, k, x.dtype)
    cn, cd = (rn, rd) if b == c else _empty_lists(x.shape[0], c[1] - c[0], k, x.dtype)
    tile = knn_tile(x.shape[2], xt.shape[2], x.dtype.itemsize)
    s, i, j = _knn_pairs(
        xt, 0, c_local, c[1] - c[0], 0, QUERY_ROWS, tile, rn, rd, cn, cd, _scaling_bound(x.dtype, x.shape[2])
    )
    _raise_overflow((s, b[0] + i, c[0] + j - c_local), x.dtype, step0, 0, 0)
    rn[rn >= 0] += c[0] - c_local  # local positions back to the whole history's
    if b != c:
        cn[cn >= 0] += b[0]
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


def knn_block(
    x: np.ndarray, k: int, metric: Metric = "euclidean", *, tile: int | None = None, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest tokens of every token in each snapshot of a numpy block.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32 or float64
        Arithmetic is done in this dtype, as in :func:`dask_pdist.kernels.distances.pairwise_block`.
    k : int
        Neighbours per token, ``1 <= k <= token - 1``.
    metric : {"euclidean", "chebyshev"}
    tile : int, optional
        Candidate tokens per tile of the tile kernel (speed only: the result is the same for
        any tile).
    method : {"auto", "tiles"}
        ``"auto"``: Euclidean through the BLAS method (:func:`knn_pairs_rows`), Chebyshev
        through :func:`knn_pairs` (the max-only routine where the values allow, else the
        tile kernel); ``"tiles"``: :func:`knn_pairs` for both. The same lists.

    Returns
    -------
    (neighbour, distance) : ndarrays, shape (step, token, k)
        Token positions (int64) and distances (``x.dtype``), nearest first, ties broken by
        the smaller position, NaN distances last; a token is never its own neighbour (an
        exact duplicate is, at distance 0).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[0.0], [3.0], [1.0], [1.0]]])  # tokens 2 and 3 coincide
    >>> nbr, dist = knn_block(x, 2)
    >>> nbr[0].tolist(), dist[0].tolist()
    ([[2, 3], [2, 3], [3, 0], [2, 0]], [[1.0, 1.0], [2.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    """
    m = check_metric(metric)
    if x.ndim != 3 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected a (step, token, dim) float32/float64 block, got shape {x.shape} {x.dtype}")
    k = check_k(k, x.shape[1])
    if method not in ("auto", "tiles"):
        raise ValueError(f"method={method!r}: 'auto' or 'tiles'")
    whole = (0, x.shape[1])
    if m == 0 and method == "auto":
        nbr, dist, _, _ = knn_pairs_rows(np.ascontiguousarray(x), whole, whole, k)
        return nbr, dist
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    tile = tile or knn_tile(x.shape[2], x.shape[1], x.dtype.itemsize)
    nbr, dist, _, _ = knn_pairs(xt, whole, whole, k, m, QUERY_ROWS, tile)
    return nbr, dist


def churn_block(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Fraction of each row's neighbours in ``prev`` that are not among its ``cur`` ones.

    Parameters
    ----------
    prev, cur : ndarray, shape (..., k), integers
        Neighbour lists (each row holds k distinct tokens) at an earlier and a later step.

    Returns
    -------
    ndarray, shape (...), float32

    Examples
    --------
    >>> import numpy as np
    >>> churn_block(np.array([[1, 2, 3, 4]]), np.array([[4, 2, 9, 8]]))
    array([0.5], dtype=float32)
    """
    k = prev.shape[-1]
    both = np.sort(np.concatenate([prev, cur], axis=-1), axis=-1)
    # rows hold distinct tokens, so each token present in both lists is one adjacent equal pair
    shared = (both[..., 1:] == both[..., :-1]).sum(axis=-1)
    return (1 - shared / k).astype(np.float32)
