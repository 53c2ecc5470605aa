"""Clusters from a store's tiles in numpy (kernels/cluster_edges.py) against scipy's connected
components, sparse tiles (numpy) and dense ones (handed to the numba union-find) alike."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dask_pdist.kernels import cluster_edges


def _smallest_of_component(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # the oracle: scipy's components, each labelled by its smallest node
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, n)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


@settings(max_examples=80, deadline=None)
@given(
    steps=st.integers(1, 4),
    n_tokens=st.integers(1, 40),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    offsets=st.tuples(st.integers(0, 39), st.integers(0, 39)),
    level=st.sampled_from([0.0, 0.02, 0.2, 1.0]),  # none, few, some, every pair within
    seed=st.integers(0, 2**16),
)
def test_edge_labels_are_the_components_scipy_finds(steps, n_tokens, shape, offsets, level, seed):
    rng = np.random.default_rng(seed)
    ti, tj = min(shape[0], n_tokens), min(shape[1], n_tokens)
    i0, j0 = min(offsets[0], n_tokens - ti), min(offsets[1], n_tokens - tj)
    d = rng.random((steps, ti, tj)).astype(np.float32)
    d[rng.random(d.shape) < 0.05] = np.nan  # never joins
    thr = np.full(steps, level)
    got = cluster_edges.edge_labels(d, thr, i0, j0, n_tokens)
    assert got.dtype == np.int32 and got.shape == (steps, n_tokens)
    for s in range(steps):
        i, j = np.nonzero(d[s] <= thr[s])
        np.testing.assert_array_equal(got[s], _smallest_of_component(n_tokens, i0 + i, j0 + j))


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 3),
    parts=st.integers(1, 4),
    n_tokens=st.integers(1, 30),
    groups=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_merge_partitions_is_the_union_scipy_finds(steps, parts, n_tokens, groups, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, groups, size=(steps, parts, n_tokens))
    # canonical labels (the smallest position of each group), as tiles give them
    canon = np.empty_like(labels)
    for s in range(steps):
        for p in range(parts):
            canon[s, p] = [np.flatnonzero(labels[s, p] == v).min() for v in labels[s, p]]
    got = cluster_edges.merge_partitions(canon)
    for s in range(steps):
        t = np.tile(np.arange(n_tokens), parts)
        np.testing.assert_array_equal(got[s], _smallest_of_component(n_tokens, t, canon[s].ravel()))


def test_store_clusters_at_threshold_zero_import_no_numba(tmp_path):
    import xarray as xr

    import dask_pdist as dp

    x = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    x[:, 3] = x[:, 1]  # tokens 1 and 3 identical at every step
    store = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim"))), store)
    code = (
        "import sys, dask_pdist as dp\n"
        f"c = dp.clusters(dp.open_distances({str(store)!r})).compute()\n"
        "assert (c.cluster.values[:, 3] == 1).all() and (c.n_clustered.values == 2).all()\n"
        "print(sorted(m for m in sys.modules if m == 'numba' or m == 'dask_pdist.kernels.cluster_tiles'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
