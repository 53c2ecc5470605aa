"""The BLAS method of Euclidean neighbours gives exactly the tile kernel's lists."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import dask_pdist as dp
from conftest import history_array
from dask_pdist.kernels.knn import knn_block, knn_pairs, knn_pairs_rows
from dask_pdist.kernels.knn_gemm import bound_constants, gemm_pairs, gemm_safe

DTYPES = ["bf16", "f16", "f32", "f64"]


def _history(rng, shape, dtype, *, scale=1.0, integer=False, offset=0.0):
    """Random snapshots with many exact duplicates, ties, one-ulp and subnormal distances;
    ``offset``: all tokens near one shared vector (a synthetic history's early steps)."""
    s, v, d = shape
    x = rng.integers(-2, 3, size=shape).astype(np.float64) if integer else rng.standard_normal(shape) * scale
    x += offset * rng.standard_normal(d)
    x = {
        "bf16": lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32),
        "f16": lambda a: a.astype(np.float16).astype(np.float32),
        "f32": lambda a: a.astype(np.float32),
        "f64": lambda a: a,
    }[dtype](x)
    if v >= 6:
        x[:, rng.integers(0, v, size=v // 3)] = x[:, rng.integers(0, v, size=v // 3)]  # duplicates
        x[:, 1] = x[:, 0]
        x[:, 2] = x[:, 0]
        x[:, 2, 0] = np.nextafter(x[:, 0, 0], np.inf)  # one ulp: subnormal distance if it is 0
        x[:, 3] = 0.0  # a zero token
    return np.ascontiguousarray(x)


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))  # bit for bit, NaN included


@settings(max_examples=60, deadline=None)
@given(
    v=st.integers(2, 90),
    d=st.integers(1, 40),
    k=st.integers(1, 12),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["gauss", "small", "large", "integer", "offset"]),
    block=st.integers(1, 10**6),
    seed=st.integers(0, 2**16),
)
def test_blas_method_equals_the_tile_kernel(v, d, k, dtype, kind, block, seed):
    rng = np.random.default_rng(seed)
    k = min(k, v - 1)
    scale = {"gauss": 1.0, "small": 0.02, "large": 1e4, "integer": 1.0, "offset": 1e-3}[kind]
    x = _history(rng, (2, v, d), dtype, scale=scale, integer=kind == "integer", offset=3.0 * (kind == "offset"))
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    whole = (0, v)
    want = knn_pairs(xt, whole, whole, k, 0)
    # any product block size (block bytes as small as one row): the same lists
    _same(gemm_pairs(x, whole, whole, k, block_bytes=block), want)
    _same(knn_block(x, k)[:2], knn_block(x, k, method="tiles")[:2])
    cut = int(rng.integers(1, v)) if v > 1 else 0
    if 0 < cut < v:  # an off-diagonal block pair, in either order
        for b, c in (((0, cut), (cut, v)), ((cut, v), (0, cut))):
            _same(gemm_pairs(x, b, c, k, block_bytes=block), knn_pairs(xt, b, c, k, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_blas_method_against_float64_cdist(dtype):
    x = _history(np.random.default_rng(5), (2, 301, 67), dtype, scale=0.02)
    k = 9
    nbr, dist = knn_block(x, k)
    for s in range(2):
        full = cdist(x[s].astype(np.float64), x[s].astype(np.float64))
        np.fill_diagonal(full, np.inf)
        order = np.lexsort((np.broadcast_to(np.arange(301), full.shape), full), axis=-1)[:, :k]
        want = np.take_along_axis(full, order, -1)
        np.testing.assert_allclose(dist[s], want, rtol=1e-6 if dtype != "f64" else 1e-14, atol=1e-30)
        # the lists are the exact k nearest: nothing outside them is nearer than their last
        got = np.take_along_axis(full, nbr[s], -1)
        np.testing.assert_allclose(got, dist[s], rtol=1e-6 if dtype != "f64" else 1e-14)
        outside = full.copy()
        np.put_along_axis(outside, nbr[s], np.inf, -1)
        assert (outside.min(-1) >= got[:, -1] * (1 - 2e-6)).all()
    assert (nbr != np.arange(301)[None, :, None]).all()
    assert dist[:, 0, 0].tolist() == [0, 0] and dist[:, 1, 0].tolist() == [0, 0]  # duplicates: exactly 0


def test_identical_tokens_and_a_large_k():
    # every token the same (a synthetic history's first step): ties at 0 by the smaller token
    x = np.ones((1, 300, 33), dtype=np.float32)
    nbr, dist = knn_block(x, 3)
    assert (dist == 0).all() and nbr[0, 0].tolist() == [1, 2, 3] and nbr[0, 5].tolist() == [0, 1, 2]
    # k above the pass's 128 lanes
    y = _history(np.random.default_rng(1), (1, 260, 20), "f32")
    _same(knn_block(y, 200), knn_block(y, 200, method="tiles"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e19, 1e-30])
def test_values_the_bounds_cannot_take_go_to_the_tile_kernel(bad):
    x = _history(np.random.default_rng(2), (2, 40, 6), "f32")
    if abs(bad) < 1:
        x *= bad  # so small that every bound is the underflow term
    else:
        x[1, 7, 2] = bad
    assert not gemm_safe(x, (0, 20), (20, 40)) and not gemm_safe(x, (0, 40), (0, 40))
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    for b, c in (((0, 40), (0, 40)), ((0, 13), (13, 40)), ((25, 40), (0, 25))):
        _same(knn_pairs_rows(x, b, c, 5), knn_pairs(xt, b, c, 5, 0))


def test_fallback_names_the_pair_that_overflows():
    x = np.zeros((2, 6, 3), dtype=np.float32)
    x[1, 4, :2], x[1, 5, :2] = 1.5e38, -1.5e38
    with pytest.raises(OverflowError, match=r"between tokens 4 and 5 at step index 8"):
        knn_pairs_rows(x, (0, 5), (5, 6), 2, step0=7)


def test_bound_constants_are_small_and_grow_with_dim():
    a32, _, _, rho32 = bound_constants(np.dtype(np.float32), 512)
    a64, _, _, rho64 = bound_constants(np.dtype(np.float64), 512)
    assert 0 < a64 < 1e-12 < a32 < 2e-4 and 0 < rho64 < 1e-12 < rho32 < 2e-4
    assert bound_constants(np.dtype(np.float32), 4096)[0] > a32


@pytest.mark.parametrize("token_chunk", ["auto", 7, 64])
def test_neighbours_graph_uses_the_blas_method_and_stays_exact(token_chunk):
    x = _history(np.random.default_rng(4), (3, 150, 19), "bf16")
    nb = dp.neighbours(history_array(x, 2), k=6, token_chunk=token_chunk).compute()
    nbr, dist = knn_block(x, 6, method="tiles")
    np.testing.assert_array_equal(nb.neighbour.values, nbr)
    np.testing.assert_array_equal(nb.distance.values.view(np.int32), dist.view(np.int32))


def _chain(pair, v, cuts, order, k, dtype):
    """Every block pair once, in ``order``, each offered to the blocks' running lists."""
    ranges = list(zip([0, *cuts], [*cuts, v], strict=True))
    state = {}
    for b, c in order:
        lb, lc = state.get(b), state.get(c)
        lists = None
        if lb is not None or lc is not None:  # a block not seen yet starts empty
            empty = [(np.full((2, r[1] - r[0], k), -1), np.full((2, r[1] - r[0], k), np.nan, dtype)) for r in ranges]
            lists = (*(lb or empty[b]), *(lc or empty[c]))
        rn, rd, cn, cd = pair(ranges[b], ranges[c], lists)
        state[b], state[c] = (rn, rd), (cn, cd)
    return np.concatenate([state[b][0] for b in range(len(ranges))], 1), np.concatenate(
        [state[b][1] for b in range(len(ranges))], 1
    )


@settings(max_examples=40, deadline=None)
@given(
    v=st.integers(3, 70),
    d=st.integers(1, 12),
    k=st.integers(1, 8),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["gauss", "integer", "offset", "nan"]),
    data=st.data(),
)
def test_running_lists_in_any_order_of_block_pairs_give_the_whole_lists(v, d, k, dtype, kind, data):
    # the graph passes each block's lists from one block pair to the next: whatever the order,
    # the lists end as the whole snapshot's, bit for bit; integer values make many exact ties,
    # so a later block pair offers ties with a smaller token than the list's k-th (from a
    # block with larger tokens), which must enter
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    k = min(k, v - 1)
    x = _history(rng, (2, v, d), dtype, integer=kind == "integer", offset=3.0 * (kind == "offset"))
    if kind == "nan":
        x[1, int(rng.integers(0, v)), 0] = np.nan  # that block pair takes the tile kernel
    n_cuts = data.draw(st.integers(0, min(4, v - 1)))
    cuts = sorted(rng.choice(np.arange(1, v), size=n_cuts, replace=False).tolist())
    nb = n_cuts + 1
    order = [(b, c) for b in range(nb) for c in range(b, nb)]
    order = [order[i] for i in rng.permutation(len(order))]
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    want = knn_pairs(xt, (0, v), (0, v), k, 0)[:2]
    kernels = {
        "blas": lambda b, c, lists: knn_pairs_rows(x, b, c, k, lists=lists),
        "tiles": lambda b, c, lists: knn_pairs(xt, b, c, k, 0, 3, 5, lists=lists),
    }
    for pair in kernels.values():
        _same(_chain(pair, v, cuts, order, k, x.dtype), want)
    for metric in (1, 2):  # Chebyshev, Manhattan: the tile kernel
        tiles = lambda b, c, lists, m=metric: knn_pairs(xt, b, c, k, m, 4, 3, lists=lists)  # noqa: E731
        _same(_chain(tiles, v, cuts, order, k, x.dtype), knn_pairs(xt, (0, v), (0, v), k, metric)[:2])


def test_running_lists_are_not_modified_and_are_checked():
    x = _history(np.random.default_rng(6), (1, 30, 4), "f32")
    first = knn_pairs_rows(x, (0, 10), (0, 10), 3)
    second = knn_pairs_rows(x, (10, 30), (10, 30), 3)
    before = [a.copy() for a in first[:2] + second[:2]]
    knn_pairs_rows(x, (0, 10), (10, 30), 3, lists=(*first[:2], *second[:2]))
    for a, b in zip(before, first[:2] + second[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"running lists of shape \(1, 10, 3\).*expected \(1, 20, 3\)"):
        knn_pairs_rows(x, (0, 10), (10, 30), 3, lists=(*first[:2], *first[:2]))


def test_a_running_list_ending_in_nan_still_takes_finite_pairs():
    # block 0 holds NaN tokens only, so its block pairs take the tile kernel and fill block 1's
    # short lists up to a NaN k-th; the BLAS method's next block pair (1, 2) must still let
    # finite distances in (a NaN k-th bars nothing)
    x = _history(np.random.default_rng(9), (2, 12, 3), "f32")
    x[:, :3, 1] = np.nan  # all of block 0
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    order = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    got = _chain(lambda b, c, lists: knn_pairs_rows(x, b, c, 4, lists=lists), 12, [3, 6], order, 4, x.dtype)
    want = knn_pairs(xt, (0, 12), (0, 12), 4, 0)[:2]
    _same(got, want)
    assert np.isnan(want[1][:, 3:6]).any(axis=-1).sum() == 0  # block 1's final lists are finite
