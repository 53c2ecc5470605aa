"""step_stats / tile_stats (behind summarize) against numpy float64, any tiling, NaN skipped."""

from __future__ import annotations

from unittest import mock

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_history
from dask_pdist import open_distances, open_history, pairwise_distances, summarize, to_zarr
from dask_pdist.graphs.stats import step_stats, summary_stats
from dask_pdist.kernels import stats as kernel
from dask_pdist.kernels.stats import _count_true, _float32_above, tile_stats


def _oracle(x: np.ndarray, thr: np.ndarray) -> np.ndarray:
    s, v, _ = x.shape
    off = ~np.eye(v, dtype=bool)
    upper = np.triu(np.ones((v, v), dtype=bool), 1)
    out = np.full((s, 4), np.nan)
    for k in range(s):
        vals = x[k][off].astype(np.float64)
        vals = vals[~np.isnan(vals)]
        if vals.size:
            out[k, :3] = vals.min(), vals.mean(), vals.max()
        out[k, 3] = np.count_nonzero(x[k][upper].astype(np.float64) < thr[k])
    return out


@settings(max_examples=30, deadline=None)
@given(
    steps=st.integers(1, 9),
    vocab=st.integers(1, 11),
    step_chunk=st.integers(1, 5),
    token_chunk=st.integers(1, 11),
    token_chunk_j=st.integers(1, 11),  # tiles the diagonal crosses away from their corner
    nan_fraction=st.sampled_from([0.0, 0.0, 0.1, 1.0]),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    seed=st.integers(0, 2**16),
    thr_scale=st.sampled_from([0.03, 0.3, 1.1]),  # few pairs below or many
    zero_diagonal=st.booleans(),  # as a distance store has it, or values that must not count
    block_bytes=st.sampled_from([1, 300, 1 << 20]),  # a tile reduced one step, a few, or all at a time
)
def test_step_stats_match_numpy(
    steps,
    vocab,
    step_chunk,
    token_chunk,
    token_chunk_j,
    nan_fraction,
    dtype,
    seed,
    thr_scale,
    zero_diagonal,
    block_bytes,
):
    rng = np.random.default_rng(seed)
    x = rng.random((steps, vocab, vocab)).astype(dtype)
    x[rng.random(x.shape) < nan_fraction] = np.nan
    x[:, np.arange(vocab), np.arange(vocab)] = 0 if zero_diagonal else rng.random((steps, vocab))
    thr = rng.random(steps) * thr_scale
    with mock.patch.object(kernel, "_BLOCK_BYTES", block_bytes):
        got = step_stats(
            da.from_array(x, chunks=(step_chunk, token_chunk, token_chunk_j)), da.from_array(thr, chunks=step_chunk)
        ).compute()
    want = _oracle(x, thr)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[:, [0, 2, 3]], want[:, [0, 2, 3]])  # min, max, count: exact
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-12)  # mean: float64 sums, any order


def test_step_stats_without_threshold_counts_nothing():
    x = da.from_array(np.zeros((3, 4, 4), np.float32), chunks=(2, 3, 3))
    got = step_stats(x).compute()
    assert (got[:, 3] == 0).all() and (got[:, :3] == 0).all()


@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(1, 7),
    vocab=st.integers(2, 13),
    step_chunk=st.integers(1, 4),
    token_chunk=st.integers(1, 13),
    seed=st.integers(0, 2**16),
)
def test_summary_stats_of_several_arrays_match_numpy(steps, vocab, step_chunk, token_chunk, seed):
    # every array in one task per tile, the threshold's pairs counted for one of them, the
    # threshold itself in the last column; the second array chunked otherwise (rechunked)
    rng = np.random.default_rng(seed)
    x = rng.random((steps, vocab, vocab)).astype(np.float32)
    y = (rng.random((steps, vocab, vocab)) * 3).astype(np.float64)
    y[rng.random(y.shape) < 0.1] = np.nan
    thr = rng.random(steps)
    chunks = (step_chunk, token_chunk, token_chunk)
    got = summary_stats(
        [da.from_array(x, chunks=chunks), da.from_array(y, chunks=(step_chunk + 1, token_chunk, 2))],
        da.from_array(thr, chunks=max(1, step_chunk - 1)),
        below=1,
    ).compute()
    assert got.shape == (steps, 9)
    for k, values in enumerate((x, y)):
        want = _oracle(values, thr)
        if k == 0:
            want[:, 3] = 0  # the threshold counts pairs of the other array only
        np.testing.assert_array_equal(got[:, 4 * k + np.array([0, 2, 3])], want[:, [0, 2, 3]])
        np.testing.assert_allclose(got[:, 4 * k + 1], want[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(got[:, -1], thr)


def test_summary_stats_without_threshold_gives_nan_threshold():
    x = da.from_array(np.ones((3, 4, 4), np.float32), chunks=(2, 4, 4))
    got = summary_stats([x]).compute()
    assert np.isnan(got[:, -1]).all() and (got[:, 3] == 0).all()


def test_summary_stats_needs_the_array_a_threshold_counts():
    x = da.from_array(np.ones((3, 4, 4), np.float32), chunks=(2, 4, 4))
    with pytest.raises(ValueError, match="below="):
        summary_stats([x], da.from_array(np.ones(3), chunks=2))


@settings(max_examples=50, deadline=None)
@given(
    thr=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(width=32).map(float),  # thresholds that are float32 values themselves
    ),
    seed=st.integers(0, 2**16),
)
def test_float32_threshold_compares_as_the_float64_one(thr, seed):
    # float32 values around the threshold (and the extremes) compare the same against the
    # float64 threshold and against the float32 one summarize uses instead
    rng = np.random.default_rng(seed)
    f32 = np.finfo(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # thresholds beyond float32 on purpose
        near = np.float32(thr) if np.isfinite(thr) else np.float32(0)
        scale = np.float32(min(abs(float(near)), 1e30) + 1)
        x = np.concatenate(
            [
                rng.standard_normal(64).astype(np.float32) * scale,
                np.nextafter(near, np.float32([-np.inf, np.inf])),
                [near, np.float32(0), -np.float32(0), f32.max, -f32.max, np.inf, -np.inf, np.nan],
            ]
        ).astype(np.float32)
        t = np.array([thr])
        np.testing.assert_array_equal(x < _float32_above(t)[0], x.astype(np.float64) < t[0])


def test_tile_stats_counts_pairs_right_of_the_diagonal_only():
    # a tile straddling the diagonal (rows 2..9, columns 1..8): the pair (i=3, j=2) is left
    # of the diagonal and does not count, (i=2, j=3) does; few below (their positions) and
    # all below (a triangle) give what a loop over the global indices gives
    tile = np.full((1, 8, 8), 5.0, np.float32)
    tile[0, 0, 2] = 0.5  # global (2, 3)
    tile[0, 1, 1] = 0.5  # global (3, 2)
    for thr, want in ((1.0, 1), (10.0, sum(1 for i in range(2, 10) for j in range(1, 9) if i < j))):
        assert tile_stats(tile, 2, 1, np.array([thr]))[0, 4] == want


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 11),
    a=st.integers(1, 13),
    b=st.integers(1, 13),
    i0=st.integers(0, 20),
    j0=st.integers(0, 20),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    layout=st.sampled_from(["C", "F", "strided"]),
    nan_fraction=st.sampled_from([0.0, 0.0, 0.2, 1.0]),
    inf_fraction=st.sampled_from([0.0, 0.0, 0.05]),
    seed=st.integers(0, 2**16),
)
def test_tile_stats_do_not_depend_on_how_steps_are_grouped(
    steps, a, b, i0, j0, dtype, layout, nan_fraction, inf_fraction, seed
):
    # a tile reduced a few steps at a time gives, bit for bit, what it gives reduced whole
    # (float64 sums included: each step's sum is taken in the same order), in any memory layout
    rng = np.random.default_rng(seed)
    x = (rng.random((steps, a, 2 * b)) * 10).astype(dtype)
    x[rng.random(x.shape) < nan_fraction] = np.nan
    x[rng.random(x.shape) < inf_fraction] = np.inf
    x = {"C": np.ascontiguousarray(x[:, :, :b]), "F": np.asfortranarray(x[:, :, :b]), "strided": x[:, :, ::2]}[layout]
    thr = rng.random(steps) * 10
    with mock.patch.object(kernel, "_BLOCK_BYTES", 1 << 30):
        whole = tile_stats(x, i0, j0, thr)
    for block_bytes in (1, 2 * a * b * x.itemsize + 1):
        with mock.patch.object(kernel, "_BLOCK_BYTES", block_bytes):
            np.testing.assert_array_equal(tile_stats(x, i0, j0, thr).view(np.int64), whole.view(np.int64))


@pytest.mark.parametrize("size", [1, 7, 8, 24, 61])
def test_count_true_counts_each_row(size):
    rng = np.random.default_rng(size)
    flags = rng.random((5, size)) < 0.4
    want = [sum(bool(v) for v in row) for row in flags]
    assert _count_true(flags).tolist() == want
    assert _count_true(np.asfortranarray(flags)).tolist() == want  # not contiguous by rows: counted as well


def test_count_true_without_numpy_2s_popcount(monkeypatch):
    # np.bitwise_count is numpy >= 2.0; pyproject allows 1.26: counted another way there
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    flags = np.random.default_rng(3).random((5, 24)) < 0.4
    assert _count_true(flags).tolist() == flags.sum(axis=1).tolist()
    t = np.random.default_rng(4).random((3, 8, 8)).astype(np.float32)
    assert tile_stats(t, 0, 8, np.full(3, 0.5))[:, 4].tolist() == (t < np.float32(0.5)).sum(axis=(1, 2)).tolist()


@pytest.mark.parametrize(
    ("dtype", "token_chunk", "block_bytes"),
    [("float32", "auto", 1 << 20), ("float32", 5, 1 << 20), ("float32", 5, 1), ("float16", 4, 300), ("float64", 6, 1)],
)
def test_summarize_of_a_store_with_nan_tokens_matches_numpy(
    write_safetensors, tmp_path, dtype, token_chunk, block_bytes
):
    # a nonfinite="propagate" store: a token with NaN coordinates at some steps has NaN distances
    # (its diagonal too); token-chunked stores have tiles the diagonal crosses and tiles it does
    # not, and a narrower last tile; the oracle is the stored values in float64
    x = random_history((23, 13, 7), seed=3, scale=0.05)
    x[[2, 9, 10], 4, 1] = np.nan
    x[[9, 17], 11, 0] = np.nan
    x[12, :, 0] = np.nan  # a step without any value off the diagonal
    source = "F64" if dtype == "float64" else "F32"
    path = write_safetensors("h.safetensors", {"embedding_history": x}, source)
    history = open_history(path, chunks=6, nonfinite="propagate")
    to_zarr(pairwise_distances(history, dtype=dtype, token_chunk=token_chunk), tmp_path / "d.zarr")
    ds = open_distances(tmp_path / "d.zarr")
    with mock.patch.object(kernel, "_BLOCK_BYTES", block_bytes):
        got = summarize(ds, threshold=0.02).compute()
    off = ~np.eye(13, dtype=bool)
    upper = np.triu(np.ones((13, 13), dtype=bool), 1)
    for name in ("euclidean", "chebyshev"):
        values = ds[name].values.astype(np.float64)
        assert ds[name].dtype == dtype and np.isnan(values).any()
        want = np.full((23, 3), np.nan)
        for k in range(23):
            v = values[k][off]
            v = v[~np.isnan(v)]
            if v.size:
                want[k] = v.min(), v.mean(), v.max()
        np.testing.assert_array_equal(got[f"{name}_min"], want[:, 0])
        np.testing.assert_allclose(got[f"{name}_mean"], want[:, 1], rtol=1e-12)
        np.testing.assert_array_equal(got[f"{name}_max"], want[:, 2])
        if name == "chebyshev":
            neighbours = [(values[k][upper] < 0.02).sum() for k in range(23)]
            np.testing.assert_array_equal(got["quantization_neighbours"], neighbours)
            assert 0 < max(neighbours) < upper.sum()
    assert np.isnan(got["euclidean_mean"].values[12])
