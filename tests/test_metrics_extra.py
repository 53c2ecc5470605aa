"""Manhattan (L1) and Chebyshev in representable values (``chebyshev_ulp``) as metrics of
pairwise_distances, neighbours and clusters (issue 22.3), each against an independent
oracle on shapes that are not powers of two."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance as sd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

import dask_pdist as dp
from conftest import random_history
from dask_pdist.cli.main import main

S, V, D = 7, 13, 5


def _places(values: np.ndarray, fmt: str) -> np.ndarray:
    """Oracle: each value's index among all finite values of the format, sorted (+0 = -0),
    by enumerating the format's 2^16 bit patterns: independent of the library's bit trick."""
    import ml_dtypes

    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    kind = ml_dtypes.bfloat16 if fmt == "bf16" else np.float16
    with np.errstate(invalid="ignore"):  # the NaN patterns
        every = patterns.view(kind).astype(np.float64)
    every = np.unique(every[np.isfinite(every)])  # sorted; -0.0 and +0.0 are one value
    found = np.searchsorted(every, values.astype(np.float64))
    assert np.array_equal(every[found], values.astype(np.float64))
    return found


def _ulp_oracle(x: np.ndarray, fmt: str) -> np.ndarray:
    return np.stack([sd.squareform(sd.pdist(_places(s, fmt), "chebyshev")) for s in x])


@pytest.fixture(params=["BF16", "F16"])
def half_history(request, write_safetensors):
    x = random_history((S, V, D), seed=11)
    x[3, 4] = x[3, 7]  # identical tokens: 0 apart
    x[5, 2, 1] = -0.0
    x[5, 9, 1] = 0.0  # -0 and +0: the same place
    path = write_safetensors("h.safetensors", {"embedding_history": x}, request.param)
    return path, request.param


def test_manhattan_matches_scipy_and_is_exact_in_the_euclidean_sense(half_history):
    path, _ = half_history
    h = dp.open_history(path, chunks=3)
    x = h.values.astype(np.float64)
    got = dp.pairwise_distances(h, metrics=("manhattan", "euclidean")).compute()
    tiled = dp.pairwise_distances(h, metrics=("manhattan",), token_chunk=4).manhattan.values
    for s in range(S):
        ref = sd.squareform(sd.pdist(x[s], "cityblock"))
        np.testing.assert_allclose(got.manhattan.values[s], ref, rtol=1e-6, atol=0)
        assert (np.diag(got.manhattan.values[s]) == 0).all()
        np.testing.assert_array_equal(got.manhattan.values[s], got.manhattan.values[s].T)
    np.testing.assert_array_equal(tiled, got.manhattan.values)  # any tiling, bit for bit
    assert got.manhattan.values[3, 4, 7] == 0
    # the default metrics are unchanged by asking for Manhattan too
    plain = dp.pairwise_distances(h).euclidean.values
    np.testing.assert_array_equal(plain, got.euclidean.values)


def test_chebyshev_ulp_counts_representable_values(half_history):
    path, kind = half_history
    fmt = kind.lower()
    h = dp.open_history(path, chunks=3)
    got = dp.pairwise_distances(h, metrics=("chebyshev_ulp",), token_chunk=5).chebyshev_ulp
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got.values, _ulp_oracle(h.values, fmt))
    assert got.values[3, 4, 7] == 0


def test_chebyshev_ulp_of_float32_counts_nextafter_steps():
    # tokens built from one base row by k[i, d] nextafter steps: tokens i and j are
    # max_d |k[i, d] - k[j, d]| representable values apart (binade boundaries included)
    rng = np.random.default_rng(5)
    base = np.float32([1.0, 0.75, 3.9999998, 1e-3, 2.0])  # 1.0 and 2.0: at binade boundaries
    k = rng.integers(-3, 4, size=(V, D))
    x = np.empty((1, V, D), np.float32)
    for i in range(V):
        for d in range(D):
            v = base[d]
            for _ in range(abs(k[i, d])):
                v = np.nextafter(v, np.float32(np.inf if k[i, d] > 0 else -np.inf))
            x[0, i, d] = v
    ref = np.abs(k[:, None, :] - k[None, :, :]).max(axis=2)
    import xarray as xr

    got = dp.pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")), metrics=("chebyshev_ulp",))
    assert got.chebyshev_ulp.dtype == np.uint32
    np.testing.assert_array_equal(got.chebyshev_ulp.values[0], ref)


def test_chebyshev_ulp_is_refused_for_float64_naming_the_dtype(write_safetensors):
    path = write_safetensors("h.safetensors", {"embedding_history": random_history((S, V, D))}, "F64")
    with pytest.raises(ValueError, match="chebyshev_ulp counts representable values of bf16, f16 or f32.*float64"):
        dp.pairwise_distances(dp.open_history(path), metrics=("chebyshev_ulp",))


def test_stores_hold_the_new_metrics_and_reads_check_them(half_history, tmp_path, capsys):
    path, kind = half_history
    out = tmp_path / "d.zarr"
    argv = ["compute", str(path), "-o", str(out), "--chunk-steps", "3", "--no-progress"]
    assert main([*argv, "--metrics", "euclidean,manhattan,chebyshev_ulp"]) == 0
    ds = dp.open_distances(out)
    assert ds.chebyshev_ulp.dtype == np.uint16 and ds.manhattan.dtype == np.float32
    h = dp.open_history(path)
    np.testing.assert_array_equal(ds.chebyshev_ulp.values, _ulp_oracle(h.values, kind.lower()))
    assert dp.verify_store(out) == []
    # an absent chunk of an integer variable is found too (its fill value is the dtype's max)
    (out / "chebyshev_ulp" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(dp.StoreError, match=r"chebyshev_ulp chunk \(1, 0, 0\).*missing"):
        _ = dp.open_distances(out).chebyshev_ulp.values
    capsys.readouterr()
    assert main([*argv, "--metrics", "euclidean,manhattan,chebyshev_ulp", "--resume"]) == 0
    assert dp.verify_store(out) == []


def _components(adjacent: np.ndarray) -> np.ndarray:
    _, labels = connected_components(csr_matrix(adjacent), directed=False)
    first = {}
    return np.array([first.setdefault(lab, i) for i, lab in enumerate(labels)])


def test_clusters_within_two_ulp_from_history_and_store_match_the_oracle(half_history, tmp_path):
    path, kind = half_history
    h = dp.open_history(path, chunks=3)
    ulp = _ulp_oracle(h.values, kind.lower())
    want = np.stack([_components(ulp[s] <= 2) for s in range(S)])
    from_history = dp.clusters(h, threshold="2ulp").compute()
    np.testing.assert_array_equal(from_history.cluster.values, want)
    out = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(h, metrics=("chebyshev", "chebyshev_ulp")), out, progress=False)
    from_store = dp.clusters(dp.open_distances(out), threshold="2ulp").compute()
    np.testing.assert_array_equal(from_store.cluster.values, want)


def _brute_neighbours(dist: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(dist.shape[:2] + (k,), dtype=np.int64)
    for s in range(dist.shape[0]):
        for i in range(dist.shape[1]):
            order = sorted((dist[s, i, j], j) for j in range(dist.shape[2]) if j != i)  # ties: smaller token
            out[s, i] = [j for _, j in order[:k]]
    return out


@pytest.mark.parametrize("metric", ["manhattan", "chebyshev_ulp"])
def test_neighbours_by_the_new_metrics_match_brute_force(half_history, metric):
    path, kind = half_history
    h = dp.open_history(path, chunks=3)
    dist = (
        dp.pairwise_distances(h, metrics=("manhattan",)).manhattan.values
        if metric == "manhattan"
        else _ulp_oracle(h.values, kind.lower())
    )
    nb = dp.neighbours(h, k=4, metric=metric).compute()
    np.testing.assert_array_equal(nb.neighbour.values, _brute_neighbours(dist, 4))
    np.testing.assert_array_equal(nb.distance.values, np.take_along_axis(dist, nb.neighbour.values, axis=2))
