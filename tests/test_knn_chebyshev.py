"""The max-only Chebyshev routine of neighbours gives exactly the tile kernel's lists."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_pdist.kernels.distances import _scaling_bound
from dask_pdist.kernels.knn import _knn_pairs, knn_pairs
from dask_pdist.kernels.knn_chebyshev import knn_max_pairs, max_safe
from dask_pdist.kernels.knn_lists import _empty_lists


def _tile_kernel(xt, b, c, k, rows, tile):
    """The shared-row-routine tile kernel, called directly (knn_pairs now takes the max-only one)."""
    rn, rd = _empty_lists(xt.shape[0], b[1] - b[0], k, xt.dtype)
    cn, cd = (rn, rd) if b == c else _empty_lists(xt.shape[0], c[1] - c[0], k, xt.dtype)
    where = _knn_pairs(
        xt, b[0], c[0], c[1] - c[0], 1, rows, tile, rn, rd, cn, cd, _scaling_bound(xt.dtype, xt.shape[1])
    )
    assert where == (-1, -1, -1)
    return rn, rd, cn, cd


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    v=st.integers(2, 70),
    d=st.integers(1, 21),
    k=st.integers(1, 9),
    rows=st.integers(1, 11),
    tile=st.integers(1, 40),
    integer=st.booleans(),
    f64=st.booleans(),
    data=st.data(),
)
def test_max_routine_equals_the_tile_kernel_and_float32_brute_force(v, d, k, rows, tile, integer, f64, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    k = min(k, v - 1)
    x = rng.integers(-2, 3, size=(2, v, d)) if integer else rng.standard_normal((2, v, d))  # integers: many ties
    x = x.astype(np.float64 if f64 else np.float32)
    if v > 3:
        x[:, v - 1] = x[:, 1]  # a duplicate: distance 0
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    assert max_safe(xt, (0, v), (0, v))
    cut = data.draw(st.integers(0, v))
    blocks = [((0, v), (0, v))] + ([((0, cut), (cut, v)), ((cut, v), (0, cut))] if 0 < cut < v else [])
    for b, c in blocks:
        want = _tile_kernel(xt, b, c, k, rows, tile)
        _same(knn_pairs(xt, b, c, k, 1, rows, tile), want)
    # the whole lists against an independent oracle: max |x_i - x_j| in the dtype, stable sort
    nbr, dist = knn_pairs(xt, (0, v), (0, v), k, 1, rows, tile)[:2]
    full = np.abs(x[:, :, None, :] - x[:, None, :, :]).max(-1)
    full[:, np.arange(v), np.arange(v)] = np.inf
    order = np.argsort(full, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(nbr, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(full, order, -1))


def test_values_the_max_routine_cannot_take_keep_the_tile_kernel():
    x = np.random.default_rng(1).standard_normal((1, 12, 5)).astype(np.float32)
    for bad in (np.nan, np.inf, 3e18):  # 3e18: a sum of squares the tile kernel forms could overflow
        y = x.copy()
        y[0, 7, 2] = bad
        yt = np.ascontiguousarray(y.transpose(0, 2, 1))
        assert not max_safe(yt, (0, 12), (0, 12)) and not max_safe(yt, (0, 6), (6, 12))
        assert max_safe(yt, (0, 6), (0, 6))
        _same(knn_pairs(yt, (0, 12), (0, 12), 3, 1, 4, 5), _tile_kernel(yt, (0, 12), (0, 12), 3, 4, 5))
    rn, rd = _empty_lists(1, 12, 3, np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    knn_max_pairs(xt, (0, 12), (0, 12), (rn, rd, rn, rd), 4, 5)
    _same((rn, rd), _tile_kernel(xt, (0, 12), (0, 12), 3, 4, 5)[:2])
