"""Block kernels against scipy float64 on shapes that are not powers of two."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import oracle, random_history
from dask_pdist.kernels.distances import cross_block, pairwise_block


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    mask = want > 0
    return float((np.abs(got[mask] - want[mask]) / want[mask]).max()) if mask.any() else 0.0


def test_matches_scipy_float64_oracle():
    x = random_history((37, 29, 7))
    e, c = oracle(x)
    out = pairwise_block(x)
    assert out.shape == (2, 37, 29, 29) and out.dtype == np.float32
    assert _rel_err(out[0], e) <= 1e-6
    # the float32 differences are exact or correctly rounded; Chebyshev is their max
    np.testing.assert_array_equal(out[1], np.abs(x[:, :, None, :] - x[:, None, :, :]).max(-1))
    assert np.abs(out[1] - c).max() <= 4 * np.finfo(np.float32).eps * c.max()


def test_exact_zeros_and_symmetry():
    x = random_history((5, 23, 13))
    out = pairwise_block(x)
    for m in out:
        np.testing.assert_array_equal(m, m.transpose(0, 2, 1))
        assert (np.diagonal(m, axis1=1, axis2=2) == 0).all()
        assert (m[:, 0, 22] == 0).all()  # duplicate tokens
        assert (m[:, 1, 21] > 0).all()  # one ulp apart is not zero


def test_identical_tokens_exactly_zero_with_large_offsets():
    # the Gram-matrix formula gives non-zero self-distances here; we must not
    x = np.full((3, 11, 9), 1000.0, dtype=np.float32) + np.random.default_rng(1).random((1, 1, 9), dtype=np.float32)
    out = pairwise_block(x)
    assert (out == 0).all()


def test_bf16_chebyshev_is_float32_max_abs_difference():
    x = random_history((9, 31, 17), scale=0.05).astype(ml_dtypes.bfloat16).astype(np.float32)
    out = pairwise_block(x)
    np.testing.assert_array_equal(out[1], np.abs(x[:, :, None, :] - x[:, None, :, :]).max(-1))
    e, _ = oracle(x)
    assert _rel_err(out[0], e) <= 1e-6


def test_float64_input_computes_in_float64():
    x = random_history((4, 19, 11)).astype(np.float64) * np.pi
    out = pairwise_block(x)
    e, c = oracle(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out[0], e, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(out[1], c)


def test_nan_propagates_to_both_metrics():
    x = random_history((2, 7, 6))
    x[1, 3, 4] = np.nan
    out = pairwise_block(x)
    assert np.isnan(out[:, 1, 3, [0, 1, 2, 4, 5, 6]]).all() and np.isnan(out[:, 1, [0, 1, 2, 4], 3]).all()
    assert not np.isnan(out[:, 0]).any()


def test_cross_block_equals_the_pairwise_block_bit_for_bit():
    x = random_history((6, 29, 10))
    full = pairwise_block(x)
    np.testing.assert_array_equal(cross_block(x[:, :12], x[:, 12:]), full[:, :, :12, 12:])
    np.testing.assert_array_equal(cross_block(x[:, 20:], x[:, :5]), full[:, :, 20:, :5])


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros((2, 3, 4), dtype=np.int32)])
def test_rejects_bad_blocks(bad):
    with pytest.raises((ValueError, TypeError), match="block|float32"):
        pairwise_block(bad)


@settings(max_examples=30, deadline=None)
@given(
    s=st.integers(1, 5),
    v=st.integers(1, 40),
    d=st.integers(1, 21),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_against_scipy(s, v, d, seed):
    x = random_history((s, v, d), seed=seed)
    e, c = oracle(x)
    out = pairwise_block(x)
    assert _rel_err(out[0], e) <= 1e-6
    np.testing.assert_array_equal(out[1], np.abs(x[:, :, None, :] - x[:, None, :, :]).max(-1))
    assert (np.diagonal(out, axis1=2, axis2=3) == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    s=st.integers(1, 3),
    v=st.integers(1, 70),
    d=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64]),
    manhattan=st.booleans(),
    special=st.sampled_from([None, np.nan, np.inf, 1e30, 1e-30]),
)
def test_the_triangle_and_its_mirror_equal_full_rows_bit_for_bit(s, v, d, seed, dtype, manhattan, special):
    # pairwise_block computes each row from the diagonal on and copies it below; cross_block of
    # the block with itself computes every (i, j) in full: the same bits, everywhere
    x = random_history((s, v, d), seed=seed).astype(dtype)
    if special is not None:
        rng = np.random.default_rng(seed)
        x[rng.integers(s), rng.integers(v), rng.integers(d)] = special
        x[rng.integers(s), rng.integers(v)] *= 1e-25 if special == 1e-30 else 1.0
    try:
        full = cross_block(x, x, manhattan=manhattan)
    except OverflowError as exc:
        with pytest.raises(OverflowError) as caught:
            pairwise_block(x, manhattan=manhattan)
        assert str(caught.value) == str(exc)  # the same first pair named
        return
    got = pairwise_block(x, manhattan=manhattan)
    assert got.tobytes() == full.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", [2, 17, 33])
def test_nans_of_either_sign_give_the_same_bits_whichever_tile_computes_the_pair(dtype, v):
    # a NaN and a -NaN (what inf - inf makes on x86) in the same coordinate of two tokens: x_i - x_j
    # and x_j - x_i propagate different NaNs; a diagonal tile (mirrored) and the cross tiles of
    # another token chunking must still store the same bits, as scipy's NaN distance for both
    x = random_history((2, v, 5), seed=v).astype(dtype)
    x[0, 0, 3] = np.nan
    x[0, v - 1, 3] = -np.nan
    x[1, v // 2, 0] = np.inf - np.inf  # (the other sign, made as arithmetic makes it)
    got = pairwise_block(x, manhattan=True)
    full = cross_block(x, x, manhattan=True)
    assert np.isnan(got[:, 0, 0, v - 1]).all() and np.isnan(got[:, 0, v - 1, 0]).all()
    assert got.tobytes() == full.tobytes()
    h = v // 2  # two token tiles: the lower one computed by cross_block(b, a), not mirrored
    tiled = np.block(
        [
            [pairwise_block(x[:, :h], manhattan=True), cross_block(x[:, :h], x[:, h:], manhattan=True)],
            [cross_block(x[:, h:], x[:, :h], manhattan=True), pairwise_block(x[:, h:], manhattan=True)],
        ]
    )
    assert tiled.tobytes() == got.tobytes()
