"""Exact k nearest neighbours, neighbour churn, and the neighbours store and CLI."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import dask_pdist as dp
import dask_pdist.graphs.knn
import dask_pdist.io.token_ids
import dask_pdist.kernels.knn
from conftest import history_array, random_history
from dask_pdist.cli.main import main
from dask_pdist.errors import StoreError
from dask_pdist.kernels.knn import churn_block, knn_block


def _brute(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Oracle: per row, self excluded, stable argsort (ties by smaller index, NaN last)."""
    d = np.array(dist, dtype=np.float64)
    n = d.shape[-1]
    d[..., np.arange(n), np.arange(n)] = np.inf
    nan = np.isnan(d)
    key = np.where(nan, np.inf, d)
    # NaN after +inf: sort on (isnan, value), stably
    order = np.argsort(key, axis=-1, kind="stable")
    order = np.take_along_axis(order, np.argsort(np.take_along_axis(nan, order, -1), axis=-1, kind="stable"), -1)
    # the diagonal (set to +inf) must not appear: move it after every finite and inf entry of other tokens
    out = []
    for row_order, i in zip(order.reshape(-1, n), np.tile(np.arange(n), order.size // (n * n)), strict=True):
        out.append([j for j in row_order if j != i][:k])
    idx = np.array(out).reshape(order.shape[:-1] + (k,))
    return idx, np.take_along_axis(np.array(dist, dtype=np.float64), idx, -1)


@pytest.mark.parametrize("method", ["auto", "tiles"])
@pytest.mark.parametrize("metric", ["euclidean", "chebyshev"])
def test_exact_against_float64_brute_force_with_ties_and_duplicates(metric, method):
    # small integer coordinates: float32 arithmetic is exact, so equal distances (ties) are
    # equal in both, and the stable float64 argsort is the exact answer, indices included
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(3, 41, 7)).astype(np.float32)
    x[:, 40] = x[:, 2]  # exact duplicates: distance 0 to each other
    x[:, 39] = x[:, 2]
    k = 6
    nbr, dist = knn_block(x, k, metric, tile=5, method=method)
    oracle = np.stack([cdist(s, s, metric) for s in x.astype(np.float64)])
    want_idx, want_dist = _brute(oracle, k)
    np.testing.assert_array_equal(nbr, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-7, atol=0)
    assert (dist[:, 2, :2] == 0).all() and nbr[0, 2, :2].tolist() == [39, 40]
    assert not (nbr == np.arange(41)[None, :, None]).any()  # never its own neighbour


@pytest.mark.parametrize("metric", ["euclidean", "chebyshev"])
def test_bit_identical_to_the_pairwise_distances(metric):
    x = random_history((5, 53, 11), seed=4)  # duplicates and one-ulp neighbours
    h = history_array(x, chunks=3)
    nb = dp.neighbours(h, k=7, metric=metric, token_chunk=10).compute()
    full = dp.pairwise_distances(h, token_chunk=17).compute()[metric].values
    want_idx, _ = _brute(full, 7)
    np.testing.assert_array_equal(nb.neighbour.values, want_idx)
    want = np.take_along_axis(full, want_idx, -1)
    assert nb.distance.dtype == np.float32
    np.testing.assert_array_equal(nb.distance.values.view(np.int32), want.view(np.int32))  # bit for bit
    # and close to float64 scipy: the kernels' exactness carries over
    oracle = np.stack([cdist(s, s, metric) for s in x.astype(np.float64)])
    got = np.take_along_axis(oracle, nb.neighbour.values.astype(np.int64), -1)
    np.testing.assert_allclose(nb.distance.values, got, rtol=2e-6, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(
    v=st.integers(3, 40),
    d=st.integers(1, 9),
    k=st.integers(1, 6),
    tile=st.integers(1, 45),
    query=st.integers(1, 45),
    data=st.data(),
)
def test_tiled_and_chunked_equal_untiled(v, d, k, tile, query, data):
    k = min(k, v - 1)
    seed = data.draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal((2, v, d)).astype(np.float32)
    x[:, v - 1] = x[:, 0]
    whole = knn_block(x, k, "euclidean", tile=v, method="tiles")
    tiled = knn_block(x, k, "euclidean", tile=tile, method="tiles")
    np.testing.assert_array_equal(whole[0], tiled[0])
    np.testing.assert_array_equal(whole[1].view(np.int32), tiled[1].view(np.int32))
    lazy = dp.neighbours(history_array(x, 1), k=k, token_chunk=query).compute()
    np.testing.assert_array_equal(lazy.neighbour.values, whole[0])
    np.testing.assert_array_equal(lazy.distance.values, whole[1])


@pytest.mark.parametrize("scale", [3e19, 1e-25])
def test_float_edges_take_the_pairwise_kernels_rescaled_values(scale):
    # sums of squares that overflow (3e19) or underflow (1e-25): the kernels rescale those
    # pairs; neighbours must get the same values, bit for bit
    x = random_history((2, 29, 6), seed=8, scale=scale)
    h = history_array(x, 2)
    nb = dp.neighbours(h, k=4, token_chunk=9).compute()
    full = dp.pairwise_distances(h).euclidean.values
    want_idx, _ = _brute(full, 4)
    np.testing.assert_array_equal(nb.neighbour.values, want_idx)
    np.testing.assert_array_equal(nb.distance.values, np.take_along_axis(full, want_idx, -1))
    assert np.isfinite(nb.distance.values).all() and (nb.distance.values[:, 2:] > 0).any()


def test_distance_beyond_float32_is_an_error_naming_step_and_pair():
    x = np.zeros((3, 4, 5), dtype=np.float32)
    x[2, 1, :2], x[2, 2, :2] = 1.5e38, -1.5e38  # tokens 1 and 2 are 4.2e38 apart
    with pytest.raises(OverflowError, match=r"between tokens 1 and 2 at step index 2 exceeds float32"):
        dp.neighbours(history_array(x, chunks=1), k=2, token_chunk=2).neighbour.load()


def test_float64_history_and_nan_sort_last():
    x = random_history((2, 9, 4), seed=1).astype(np.float64)
    nbr, dist = knn_block(x, 3)
    assert dist.dtype == np.float64
    x[1, 4, 2] = np.nan
    nbr, dist = knn_block(x.astype(np.float32), 8)
    assert np.isnan(dist[1, 4]).all() and nbr[1, 4].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    others = np.delete(np.arange(9), 4)
    assert (nbr[1, others, -1] == 4).all() and np.isnan(dist[1, others, -1]).all()
    assert not np.isnan(dist[1, others, :-1]).any() and not np.isnan(dist[0]).any()


def test_lazy_labels_and_checks(no_compute):
    x = random_history((4, 12, 3))
    h = history_array(x, 2)
    with no_compute():
        nb = dp.neighbours(h, k=3, metric="chebyshev")
        dp.neighbour_churn(nb, lag=2)
    assert nb.neighbour.dims == ("step", "token", "rank") and nb.neighbour.dtype == np.int32
    assert nb.attrs["dask_pdist_kind"] == "neighbours" and nb.attrs["metric"] == "chebyshev"
    np.testing.assert_array_equal(nb["step"].values, h["step"].values)
    np.testing.assert_array_equal(nb["rank"].values, [1, 2, 3])
    with pytest.raises(ValueError, match=r"k=12: need an integer 1 <= k <= 11"):
        dp.neighbours(h, k=12)
    with pytest.raises(ValueError, match=r"k=0"):
        dp.neighbours(h, k=0)
    with pytest.raises(ValueError, match=r"metric='cosine': choose one of \['euclidean', 'chebyshev', 'manhattan'"):
        dp.neighbours(h, k=2, metric="cosine")
    with pytest.raises(ValueError, match=r"lag=0"):
        dp.neighbour_churn(nb, lag=0)
    with pytest.raises(TypeError, match="DataArray"):
        dp.neighbours(x, k=2)


def test_euclidean_blas_tasks_take_one_step_where_a_step_is_big(no_compute):
    # each step is its own products: two steps in one task only left a thread idle (issue 25)
    x = da.zeros((3, 16384, 512), dtype=np.float32, chunks=(3, -1, -1))
    with no_compute():
        euclidean = dask_pdist.graphs.knn.neighbour_array(x, 10)
        chebyshev = dask_pdist.graphs.knn.neighbour_array(x, 10, "chebyshev")
    assert euclidean.chunks[0] == (1, 1, 1) and euclidean.chunks[1] == (4096,) * 4
    assert chebyshev.chunks[0] == (2, 1)  # the tile method keeps its plan: two snapshots' input
    small = dask_pdist.graphs.knn.neighbour_array(da.zeros((40, 130, 7), np.float32, chunks=5), 3)
    assert small.chunks[0] == (40,)  # small steps still share a task


def test_churn_against_direct_set_computation():
    x = random_history((6, 23, 3), seed=7)
    x[2:] += np.random.default_rng(1).standard_normal((4, 23, 3)).astype(np.float32)  # neighbourhoods move
    nb = dp.neighbours(history_array(x, 2), k=4)
    lists = nb.neighbour.values
    for lag in (1, 2, 7):
        c = dp.neighbour_churn(nb, lag=lag).compute()
        want = np.full((6, 23), np.nan)
        for s in range(lag, 6):
            for t in range(23):
                want[s, t] = len(set(lists[s - lag, t]) - set(lists[s, t])) / 4
        np.testing.assert_allclose(c.churn.values, want, rtol=1e-6)
        np.testing.assert_allclose(c.mean_churn.values, want.mean(axis=1), rtol=1e-6)
    assert 0 < np.nanmax(dp.neighbour_churn(nb).churn.values)
    np.testing.assert_array_equal(churn_block(lists[1:], lists[1:]), 0)


def test_churn_of_a_store_of_several_step_chunks():
    # the shifted lists have other step chunks than the unshifted ones: they are aligned
    # first (this raised "Shapes do not align" / a concatenate error on a 5001-step store)
    rng = np.random.default_rng(3)
    lists = np.stack([np.stack([rng.permutation(13)[:3] for _ in range(5)]) for _ in range(7)]).astype(np.int32)
    nb = xr.Dataset(
        {"neighbour": (("step", "token", "rank"), da.from_array(lists, chunks=(3, 5, 3)))},
        coords={"step": np.arange(7), "token": np.arange(5), "rank": [1, 2, 3]},
    )
    for lag in (1, 2, 4):
        want = np.full((7, 5), np.nan)
        for s in range(lag, 7):
            for t in range(5):
                want[s, t] = len(set(lists[s - lag, t]) - set(lists[s, t])) / 3
        np.testing.assert_allclose(dp.neighbour_churn(nb, lag=lag).churn.values, want, rtol=1e-6)


def test_neighbours_of_a_subset_hold_original_indices(write_safetensors, tmp_path):
    x = random_history((3, 60, 5), seed=2)
    path = write_safetensors("h.safetensors", {"h": x})
    (tmp_path / "tok.txt").write_text("\n".join(f"t{i}" for i in range(60)) + "\n")
    ids = np.array([1, 2, 3, 4, 30, 31, 50, 57, 58, 59])
    for tokens in (None, tmp_path / "tok.txt"):
        h = dp.open_history(path, tokens=tokens, token_ids="1:5,30:32,50,57:60")
        nb = dp.neighbours(h, k=3).compute()
        # the full store's sub-matrix ranked (float32 ties, as the store holds them)
        full = dp.pairwise_distances(dp.open_history(path)).euclidean.values[:, ids][:, :, ids]
        want_pos, _ = _brute(full, 3)
        np.testing.assert_array_equal(nb.neighbour.values, ids[want_pos])
    assert nb["token"].values.tolist()[:2] == ["t1", "t2"] and nb["token_id"].values.tolist() == ids.tolist()


def test_store_roundtrip_overwrite_and_refusals(tmp_path):
    nb = dp.neighbours(history_array(random_history((3, 9, 4)), 2), k=2)
    out = tmp_path / "n.zarr"
    dp.neighbours_to_zarr(nb, out)
    back = dp.open_neighbours(out)
    xr.testing.assert_identical(back.neighbour.load(), nb.neighbour.load())
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        dp.neighbours_to_zarr(nb, out)
    dp.neighbours_to_zarr(nb, out, overwrite=True)
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError, match="not a dask_pdist store; refusing"):
        dp.neighbours_to_zarr(nb, tmp_path / "other", overwrite=True)
    with pytest.raises(StoreError, match="not a neighbours store"):
        dp.open_neighbours(tmp_path / "other")
    assert not list(tmp_path.glob(".n.zarr*"))  # no hidden build left


def test_cli_neighbours_and_summary(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "12", "--vocab", "70", "--dim", "6"])
    out = tmp_path / "n.zarr"
    args = ["neighbours", str(src), "-k", "4", "--metric", "chebyshev", "-o", str(out), "--no-progress"]
    assert main(args + ["--token-ids", "0:30,40,60:70"]) == 0
    nb = dp.open_neighbours(out)
    assert nb.sizes == {"step": 12, "token": 41, "rank": 4} and nb.attrs["metric"] == "chebyshev"
    assert set(np.unique(nb.neighbour.values)) <= set(nb["token"].values)
    capsys.readouterr()
    assert main(["summary", str(out)]) == 0
    text = capsys.readouterr().out
    churn = dp.neighbour_churn(nb).mean_churn.values[1:].mean()
    assert f"Mean neighbour churn over steps: {churn:.6f}" in text
    assert main(["info", str(out)]) == 0
    assert "dask_pdist neighbours store" in capsys.readouterr().out
    assert main(["summary", str(out), "--plot", str(tmp_path / "p.png")]) == 2
    assert "apply to distance stores" in capsys.readouterr().err
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "-k", "70"]) == 2
    assert "k=70: need an integer 1 <= k <= 69" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--token-ids", "3,x"]) == 2
    assert "token_ids '3,x' item 2: 'x' is not an index" in capsys.readouterr().err
