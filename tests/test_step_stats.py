"""step_stats / tile_stats (behind summarize) against numpy float64, any tiling, NaN skipped."""

from __future__ import annotations

import dask.array as da
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_pdist.graphs.stats import step_stats


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
    nan_fraction=st.sampled_from([0.0, 0.0, 0.1, 1.0]),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    seed=st.integers(0, 2**16),
)
def test_step_stats_match_numpy(steps, vocab, step_chunk, token_chunk, nan_fraction, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((steps, vocab, vocab)).astype(dtype)
    x[rng.random(x.shape) < nan_fraction] = np.nan
    x[:, np.arange(vocab), np.arange(vocab)] = rng.random((steps, vocab))  # the diagonal never counts
    thr = rng.random(steps) * 1.1
    got = step_stats(
        da.from_array(x, chunks=(step_chunk, token_chunk, token_chunk)), da.from_array(thr, chunks=step_chunk)
    ).compute()
    want = _oracle(x, thr)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[:, [0, 2, 3]], want[:, [0, 2, 3]])  # min, max, count: exact
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-12)  # mean: float64 sums, any order


def test_step_stats_without_threshold_counts_nothing():
    x = da.from_array(np.zeros((3, 4, 4), np.float32), chunks=(2, 3, 3))
    got = step_stats(x).compute()
    assert (got[:, 3] == 0).all() and (got[:, :3] == 0).all()
