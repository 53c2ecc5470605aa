"""distinct_count: the number of distinct embedding vectors per step, against a Python loop over
rows (sets of tuples), with duplicates, -0.0/+0.0, non-finite rows and bf16 input."""

from __future__ import annotations

import numpy as np
import pytest

import dask_pdist as dp
from conftest import history_array

S, V, D = 7, 13, 5


def distinct_oracle(x: np.ndarray) -> np.ndarray:
    out = []
    for snap in np.asarray(x, dtype=np.float64):
        seen, singles = set(), 0
        for row in snap:
            if not np.isfinite(row).all():
                singles += 1  # NaN/Inf: its own vector
            else:
                seen.add(tuple(float(v) + 0.0 for v in row))  # -0.0 + 0.0 == +0.0
        out.append(len(seen) + singles)
    return np.array(out)


def history_with_duplicates(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # few distinct values per coordinate: rows repeat, more so at later steps
    x = rng.integers(-1, 2, size=(S, V, D)).astype(np.float32) * 0.5
    for s in range(S):
        x[s, : s + 1] = x[s, 0]  # step s: the first s + 1 tokens identical
    x[3, 4] = -0.0
    x[3, 5] = 0.0  # equal to token 4 at step 3
    return x


@pytest.mark.parametrize("chunk", [1, 3, S])
def test_distinct_count_matches_a_loop(chunk):
    x = history_with_duplicates()
    got = dp.distinct_count(history_array(x, chunk)).values
    expect = distinct_oracle(x)
    np.testing.assert_array_equal(got, expect)
    assert expect[-1] < expect[0]  # the fixture does have duplicates


def test_non_finite_rows_count_singly():
    x = history_with_duplicates()
    x[2, 7:9] = np.nan  # two identical NaN rows: two vectors
    x[2, 9:11] = np.inf
    got = dp.distinct_count(history_array(x, 3)).values
    np.testing.assert_array_equal(got, distinct_oracle(x))


def test_bf16_input_and_step_labels(write_safetensors):
    x = history_with_duplicates(seed=2)
    steps = np.arange(S) * 7 + 1
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": steps}, "BF16")
    got = dp.distinct_count(dp.open_history(path, chunks=2))
    np.testing.assert_array_equal(got["step"].values, steps)
    np.testing.assert_array_equal(got.values, distinct_oracle(x))


def test_agrees_with_clusters_at_threshold_zero():
    x = history_with_duplicates(seed=3)
    h = history_array(x, 3)
    cl = dp.clusters(h, 0).compute()
    groups = V - cl.n_clustered.values + cl.n_clusters.values
    np.testing.assert_array_equal(dp.distinct_count(h).values, groups)


def test_lazy_and_bad_input(no_compute):
    with no_compute():
        dp.distinct_count(history_array(history_with_duplicates(), 3))
    with pytest.raises(TypeError, match="history must be an xarray.DataArray"):
        dp.distinct_count(np.zeros((S, V, D)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_every_hash_colliding_still_counts_exactly(monkeypatch, dtype):
    # zero multipliers: every finite row hashes alike, so every lookup compares rows value by value
    from dask_pdist.kernels import distinct_rows

    x = history_with_duplicates(seed=4)
    x[4, 2] = np.inf
    x[5, 3, 0] = -0.0
    x[5, 4] = x[5, 3]
    x[5, 4, 0] = 0.0
    monkeypatch.setitem(distinct_rows._MULTIPLIERS, D, np.zeros(D, dtype=np.uint64))
    got = dp.distinct_count(history_array(x.astype(dtype), 2)).values
    np.testing.assert_array_equal(got, distinct_oracle(x))


def test_wide_snapshot_many_duplicates_and_no_dims():
    rng = np.random.default_rng(9)
    base = rng.integers(-3, 4, size=(3, 97, 6)).astype(np.float32)
    x = np.concatenate([base, base[:, ::-1], base[:, :41]], axis=1)  # V = 235, every row 2-3 times
    np.testing.assert_array_equal(dp.distinct_count(history_array(x, 2)).values, distinct_oracle(x))
    empty = np.zeros((2, 5, 0), dtype=np.float32)
    np.testing.assert_array_equal(dp.distinct_count(history_array(empty, 1)).values, [1, 1])
