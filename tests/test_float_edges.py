"""Arithmetic at the float edges: distances whose sum of squares overflows or underflows the
dtype are rescaled, never inf or 0; a distance beyond the dtype's range is an error.

Oracles: scipy ``cdist`` in float64 for float32 input (float64 holds every square of a float32
exactly in range), Python's ``math.dist`` (scaled internally, independent of our code) for
float64 input. Shapes are not powers of two."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import oracle, random_history
from dask_pdist import pairwise_distances
from dask_pdist.kernels.distances import cross_block, pairwise_block

F32 = np.finfo(np.float32)
SUBNORMAL_STEP = 2.0**-149  # spacing of float32 subnormals


def _check_f32(out: np.ndarray, x: np.ndarray) -> None:
    """Euclidean within 1e-6 relative of scipy float64 (one subnormal spacing below float32's
    smallest normal), Chebyshev the exact float32 max-abs difference, symmetric, zero diagonal."""
    e, c = oracle(x)
    got = out[0].astype(np.float64)
    assert np.isfinite(got).all()
    normal = e >= F32.tiny
    assert (np.abs(got - e)[normal] <= 1e-6 * e[normal]).all(), np.max(np.abs(got - e)[normal] / e[normal])
    assert (np.abs(got - e)[~normal] <= SUBNORMAL_STEP).all()
    assert ((got > 0) == (e > 0)).all()  # never a distance of 0 between different tokens
    np.testing.assert_array_equal(out[1], np.abs(x[:, :, None, :] - x[:, None, :, :]).max(-1))
    for m in out:
        np.testing.assert_array_equal(m, m.transpose(0, 2, 1))
        assert (np.diagonal(m, axis1=1, axis2=2) == 0).all()


@pytest.mark.parametrize("scale", [1e19, 3e19, 1e30, 1e-20, 1e-25, 1e-38, 1e-42])
def test_float32_far_from_one_matches_scipy(scale):
    # 1e19: squares near float32's max, sums overflow; 1e-20 .. 1e-42: squares subnormal or 0
    x = (random_history((3, 13, 7), seed=3) * np.float32(scale)).astype(np.float32)
    _check_f32(pairwise_block(x), x)


def test_issue_examples_tokens_1e25_and_1e20_apart():
    x = np.zeros((1, 2, 5), dtype=np.float32)
    x[0, 1, 0] = 1e-25
    assert pairwise_block(x)[0, 0, 0, 1] == np.float32(1e-25)  # was exactly 0
    x[0, 1, 0] = 1e-20
    assert abs(float(pairwise_block(x)[0, 0, 0, 1]) - 1e-20) <= 1e-6 * 1e-20  # was 2.7e-6 off
    x[0, 1, :] = 1.3e20  # true distance 2.9e20 fits float32; the sum of squares does not
    assert float(pairwise_block(x)[0, 0, 0, 1]) == pytest.approx(1.3e20 * math.sqrt(5), rel=1e-6)


def test_mixed_magnitudes_in_one_snapshot():
    rng = np.random.default_rng(7)
    exponents = rng.integers(-44, 37, size=(2, 19, 1))  # each token its own magnitude
    x = (rng.standard_normal((2, 19, 11)) * 10.0**exponents).astype(np.float32)
    x[:, 5] = x[:, 4]  # duplicates stay exactly 0
    x[:, 6, 3] = np.nextafter(np.float32(0), np.float32(1))  # one subnormal away from 0
    x[:, 7] = 0
    _check_f32(pairwise_block(x), x)


def test_rescaled_pairs_are_bit_identical_for_any_tiling():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 23, 6)) * 10.0 ** rng.integers(-40, 30, size=(5, 23, 1))).astype(np.float32)
    full = pairwise_block(x)
    np.testing.assert_array_equal(cross_block(x[:, :9], x[:, 9:]), full[:, :, :9, 9:])
    np.testing.assert_array_equal(cross_block(x[:, 17:], x[:, :4]), full[:, :, 17:, :4])
    h = xr.DataArray(da.from_array(x, chunks=(2, 23, 6)), dims=("step", "token", "dim"))
    tiled = pairwise_distances(h, token_chunk=7)
    np.testing.assert_array_equal(tiled.euclidean.values, full[0])
    np.testing.assert_array_equal(tiled.chebyshev.values, full[1])
    _check_f32(full, x)


@pytest.mark.parametrize(
    "a, dims",
    [
        (3e38, 1),  # a - b itself overflows: 6e38
        (1.5e38, 2),  # every difference (3e38) fits, the distance (4.2e38) does not
    ],
)
def test_distance_beyond_float32_is_an_error_naming_step_and_pair(a, dims):
    x = np.zeros((3, 4, 5), dtype=np.float32)
    x[2, 1, :dims] = a
    x[2, 2, :dims] = -a  # tokens 0-1 and 0-2 fit, 1-2 does not
    np.testing.assert_allclose(pairwise_block(x[:, :2])[0, 2, 0, 1], a * math.sqrt(dims), rtol=1e-6)
    with pytest.raises(OverflowError, match=r"between tokens 1 and 2 at step index 2 exceeds float32's largest"):
        pairwise_block(x)
    # in the graph: the step index and tokens of the whole history, not of the block
    h = xr.DataArray(
        da.from_array(np.concatenate([np.zeros_like(x), x]), chunks=(2, 4, 5)), dims=("step", "token", "dim")
    )
    with pytest.raises(OverflowError, match=r"between tokens 1 and 2 at step index 5 exceeds"):
        pairwise_distances(h, token_chunk=4).euclidean.load()
    with pytest.raises(OverflowError, match=r"between tokens 1 and 2 at step index 5 exceeds"):
        pairwise_distances(h, token_chunk=1).euclidean.load()


def test_largest_distances_that_fit_are_finite():
    x = np.zeros((1, 3, 2), dtype=np.float32)
    x[0, 1] = [1.5e38, 1.5e38]  # distance 2.12e38 < 3.4e38 although the squares overflow
    x[0, 2] = [1.7e38, -1.0e38]  # 2.5e38 from token 1
    out = pairwise_block(x)
    _check_f32(out, x)


def test_nan_and_inf_inputs_behave_as_before():
    x = np.zeros((1, 5, 3), dtype=np.float32)
    x[0, 1] = [1e30, 0, 0]
    x[0, 2] = [np.nan, 1e30, 0]
    x[0, 3] = [np.inf, 0, 0]
    x[0, 4] = [1e-30, 0, 0]
    out = pairwise_block(x)
    assert np.isnan(out[:, 0, 2, [0, 1, 3, 4]]).all() and np.isnan(out[:, 0, [0, 1, 3, 4], 2]).all()
    assert (out[:, 0, 3, [0, 1, 4]] == np.inf).all()  # an infinite coordinate: infinite distance, as scipy
    assert out[0, 0, 0, 4] == np.float32(1e-30) and out[0, 0, 0, 1] == np.float32(1e30)


def _dist_oracle(x: np.ndarray) -> np.ndarray:
    s, v, _ = x.shape
    return np.array([[[math.dist(x[k, i], x[k, j]) for j in range(v)] for i in range(v)] for k in range(s)])


@pytest.mark.parametrize("scale", [1e160, 1e300, 1e-160, 1e-300, 1e-315])
def test_float64_far_from_one_computes_in_float64(scale):
    x = random_history((2, 11, 5), seed=5).astype(np.float64) * scale
    out = pairwise_block(x)
    want = _dist_oracle(x)
    assert out.dtype == np.float64 and np.isfinite(out).all()
    normal = want >= np.finfo(np.float64).tiny
    np.testing.assert_allclose(out[0][normal], want[normal], rtol=1e-14, atol=0)
    assert (np.abs(out[0] - want)[~normal] <= 2.0**-1074).all()
    assert ((out[0] > 0) == (want > 0)).all()
    np.testing.assert_array_equal(out[1], np.abs(x[:, :, None] - x[:, None]).max(-1))


def test_float64_beyond_range_and_float32_output_beyond_range_are_errors():
    x = np.zeros((2, 3, 4))
    x[1, 2] = 1e308
    with pytest.raises(OverflowError, match=r"tokens 0 and 2 at step index 1 exceeds float64's largest"):
        pairwise_block(x)
    x[1, 2] = 1e39  # fits float64 arithmetic, not a float32 store
    h = xr.DataArray(da.from_array(x, chunks=(1, 3, 4)), dims=("step", "token", "dim"))
    with pytest.raises(OverflowError, match=r"between tokens 0 and 2 at step index 1 exceeds float32.*float64"):
        pairwise_distances(h, dtype="float32").euclidean.load()
    np.testing.assert_allclose(pairwise_distances(h, dtype="float64").euclidean.values[1, 0, 2], 2e39)


@settings(max_examples=40, deadline=None)
@given(
    v=st.integers(2, 17),
    d=st.integers(1, 13),
    low=st.integers(-45, 30),
    span=st.integers(0, 60),
    seed=st.integers(0, 2**16),
)
def test_any_magnitudes_against_scipy(v, d, low, span, seed):
    # every token gets its own power of ten in [low, low + span], capped so nothing overflows
    rng = np.random.default_rng(seed)
    exponents = np.minimum(rng.integers(low, low + span + 1, size=(2, v, 1)), 36)
    x = (rng.standard_normal((2, v, d)) * 10.0**exponents).astype(np.float32)
    _check_f32(pairwise_block(x), x)


def test_subnormal_distances_just_below_the_smallest_normal_within_one_step():
    # distances near 1e-38 in 55 dims were up to 2.5 subnormal steps off: the rescaled sum's
    # float32 relative error (~3e-7) is several subnormal steps there
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((60, 7, 55)) * 1e-40).astype(np.float32)
    x[:, :, 0] *= np.float32(1e3)  # one dim dominates: distances ~1e-38, just below F32.tiny
    _check_f32(pairwise_block(x), x)
