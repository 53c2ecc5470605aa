"""pairwise_distances: labeled, lazy, one graph, exact for any chunking."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import history_array, oracle, raise_if_dask_computes, random_history
from dask_pdist import open_history, pairwise_distances


def test_against_scipy_on_odd_shapes(write_safetensors):
    x = random_history((37, 29, 7), scale=0.2)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    xb = open_history(path).values  # bf16 widened
    ds = pairwise_distances(open_history(path, chunks=8))
    e, c = oracle(xb)
    assert set(ds.data_vars) == {"euclidean", "chebyshev"}
    assert ds.euclidean.dims == ("step", "token_i", "token_j") and ds.euclidean.dtype == np.float32
    got_e, got_c = ds.euclidean.values, ds.chebyshev.values
    mask = e > 0
    assert (np.abs(got_e - e)[mask] / e[mask]).max() <= 1e-6
    assert (got_e[~mask] == 0).all() and (got_c[~mask] == 0).all()
    np.testing.assert_array_equal(got_c, np.abs(xb[:, :, None] - xb[:, None]).max(-1))
    np.testing.assert_array_equal(got_e, got_e.transpose(0, 2, 1))


def test_labels_and_attrs(write_safetensors, tmp_path):
    x = random_history((4, 3, 2))
    path = write_safetensors("h.safetensors", {"hist": x, "steps": np.array([5, 6, 7, 9])}, "F16")
    (tmp_path / "t.txt").write_text("a\nb\nc\n")
    ds = pairwise_distances(open_history(path, tokens=tmp_path / "t.txt"))
    assert list(ds["step"].values) == [5, 6, 7, 9]
    assert list(ds["token_i"].values) == ["a", "b", "c"] == list(ds["token_j"].values)
    assert ds.attrs["input_dtype"] == "F16" and ds.attrs["compute_dtype"] == "float32"
    assert ds.attrs["source_key"] == "hist" and ds.attrs["dask_pdist_version"]
    assert "sqrt" in ds.euclidean.attrs["formula"] and "max_d" in ds.chebyshev.attrs["formula"]
    assert float(ds.chebyshev.sel(step=7, token_i="a", token_j="c")) == pytest.approx(
        np.abs(x[2, 0] - x[2, 2]).max(), rel=1e-3
    )


def test_one_blockwise_layer_runs_once_per_block(monkeypatch):
    import dask_pdist.graphs.distances as graph

    calls = []
    real = graph.pairwise_block
    monkeypatch.setattr(graph, "pairwise_block", lambda x, **kw: calls.append(x.shape) or real(x, **kw))
    x = random_history((12, 5, 3))
    ds = pairwise_distances(history_array(x, (4, 5, 3), labelled=False))
    e, c = dask.compute(ds.euclidean.data, ds.chebyshev.data, scheduler="sync")
    assert calls == [(4, 5, 3)] * 3  # one kernel call per step chunk, shared by both metrics
    assert e.shape == c.shape == (12, 5, 5)


def test_metric_blocks_and_kernel_input_are_not_copied(monkeypatch):
    # each metric's block is a view of the kernel's stacked output and the kernel gets the
    # history block itself: dask's concatenate=True copied both (16 MB per metric and block at
    # 128 steps x 128 tokens, ~20 % of compute's time in its tasks)
    import dask_pdist.graphs.distances as graph

    seen, real = [], graph.pairwise_block
    monkeypatch.setattr(graph, "pairwise_block", lambda x, **kw: seen.append(x) or real(x, **kw))
    x = random_history((9, 7, 5))
    parts = [x[:4], x[4:8], x[8:]]  # the blocks themselves are the graph's values
    data = da.Array({("h", k, 0, 0): part for k, part in enumerate(parts)}, "h", ((4, 4, 1), (7,), (5,)), x.dtype)
    arrays = graph.pairwise_arrays(data)
    # each block as the graph's task returns it (compute() would concatenate the blocks)
    e, c = (dask.get(dict(arrays[m].__dask_graph__()), (arrays[m].name, 1, 0, 0)) for m in ("euclidean", "chebyshev"))
    assert e.base is not None and e.base.shape == (2, 4, 7, 7)  # out[0] of the kernel's block
    assert c.base is not None and c.base.shape == (2, 4, 7, 7)
    assert len(seen) == 2 and all(block is parts[1] for block in seen)  # the history's block, uncopied
    want_e, want_c = oracle(x[4:8])
    np.testing.assert_allclose(e, want_e, rtol=1e-6)
    np.testing.assert_array_equal(c, want_c.astype(np.float32))


def test_nothing_is_computed_until_asked(write_safetensors):
    path = write_safetensors("h.safetensors", {"h": random_history((9, 6, 4))})
    with raise_if_dask_computes():
        ds = pairwise_distances(open_history(path, chunks=2), token_chunk=4)
        ds.euclidean.sel(step=3)
        with pytest.raises(RuntimeError, match="nothing may be computed"):
            _ = ds.euclidean.values  # the guard itself works


def test_metric_subset_and_float16():
    x = random_history((6, 11, 5))
    cheb = pairwise_distances(history_array(x, (6, 11, 5), labelled=False), metrics=["chebyshev"], dtype="float16")
    assert list(cheb.data_vars) == ["chebyshev"] and cheb.chebyshev.dtype == np.float16
    full = pairwise_distances(history_array(x, (6, 11, 5), labelled=False))
    np.testing.assert_array_equal(cheb.chebyshev.values, full.chebyshev.values.astype(np.float16))


def test_float16_overflow_is_an_error_not_inf():
    x = random_history((2, 5, 3)) * 1e5
    ds = pairwise_distances(history_array(x, (2, 5, 3), labelled=False), dtype="float16")
    with pytest.raises(OverflowError, match=r"exceeds float16's largest finite value 65504.*float32"):
        _ = ds.euclidean.values


def test_float16_keeps_an_infinite_input_infinite_as_float32_does():
    # an inf in the history (nonfinite="propagate") gives infinite distances, as scipy and the
    # float32 output do: not an overflow error about float16's range
    x = random_history((3, 6, 4))
    x[1, 2, 0] = np.inf
    half = pairwise_distances(history_array(x, (2, 6, 4), labelled=False), dtype="float16")
    full = pairwise_distances(history_array(x, (2, 6, 4), labelled=False))
    for name in ("euclidean", "chebyshev"):
        got, want = half[name].values, full[name].values
        assert np.isinf(got[1, 2, [0, 1, 3, 4, 5]]).all() and np.isinf(want[1, 2, [0, 1, 3, 4, 5]]).all()
        np.testing.assert_array_equal(got, want.astype(np.float16))


def test_float16_names_a_finite_overflow_next_to_an_infinite_input_and_keeps_nan_blocks_quiet():
    # one block holds an infinite input (inf distances: kept) and a finite distance past
    # float16's range: the error names the finite one, where it is
    x = random_history((3, 7, 4))
    x[0, 3, 2] = np.inf
    x[2, 5] = x[2, 1] + np.float32(7e4)  # token 5 at step 20: ~sqrt(4) * 7e4 from every other
    ds = pairwise_distances(history_array(x, (3, 7, 4)), dtype="float16", metrics=["euclidean"])
    with pytest.raises(
        OverflowError, match=r"euclidean distance 1400\d\d at step 20 between tokens [0-6] and 5 exceeds"
    ):
        _ = ds.euclidean.values
    big = random_history((2, 5, 3)).astype(np.float64)
    big[1, 2, 0] = 1e200  # past float32 too: the suggestion is the dtype that holds it
    ds = pairwise_distances(history_array(big, (2, 5, 3)), dtype="float16", metrics=["euclidean"])
    with pytest.raises(OverflowError, match=r"distance 1e\+200 at step 10 .* use dtype='float64' \(--dtype float64\)"):
        _ = ds.euclidean.values
    nan = np.full((2, 5, 3), np.nan, np.float32)  # a block that is all NaN (nonfinite="propagate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice" warning either
        for dtype in ("float16", "float32"):
            got = pairwise_distances(history_array(nan, (2, 5, 3)), dtype=dtype)
            assert np.isnan(got.euclidean.values[:, 0, 1]).all()
        got = pairwise_distances(history_array(nan.astype(np.float64), (2, 5, 3)), dtype="float32")
        assert np.isnan(got.euclidean.values[:, 0, 1]).all()


def test_manhattan_past_float32_range_is_exact_in_float64_and_an_error_in_float32():
    # the kernels sum Manhattan's |a - b| in float32 for a float32 history: a sum past its range
    # (4e38 here, every term finite) is summed again in float64; never a silent inf
    from scipy.spatial.distance import cdist

    x = random_history((2, 5, 3))
    x[1, 0] = 0
    x[1, 1] = np.float32(1.5e38)
    x[1, 3] = np.float32(0.5e38)
    ds = pairwise_distances(history_array(x, (2, 5, 3)), metrics=["euclidean", "manhattan"], dtype="float64")
    for s in range(2):
        want = cdist(x[s].astype(np.float64), x[s].astype(np.float64), "cityblock")
        np.testing.assert_allclose(ds.manhattan.values[s], want, rtol=1e-6)  # (summed in float32)
        want = cdist(x[s].astype(np.float64), x[s].astype(np.float64))
        np.testing.assert_allclose(ds.euclidean.values[s], want, rtol=1e-6)
    assert ds.manhattan.values[1, 0, 1] == pytest.approx(4.5e38, rel=1e-7)
    ds32 = pairwise_distances(history_array(x, (2, 5, 3)), metrics=["euclidean", "manhattan"])
    with pytest.raises(
        OverflowError, match=r"manhattan distance 4.5e\+38 at step 10 between tokens 0 and 1 exceeds float32"
    ):
        _ = ds32.manhattan.values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metrics": ["euclid"]}, r"choose one or more of \['euclidean', 'chebyshev', 'manhattan', 'chebyshev_ulp'\]"),
        ({"dtype": "int8"}, r"choose one of \['float32', 'float16', 'float64'\]"),
        ({"token_chunk": 0}, r"positive int or 'auto'"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pairwise_distances(history_array(random_history((2, 3, 2)), (2, 3, 2), labelled=False), **kwargs)


def test_wrong_dims_rejected():
    with pytest.raises(ValueError, match=r"expected \('step', 'token', 'dim'\)"):
        pairwise_distances(xr.DataArray(np.zeros((2, 3, 4), np.float32), dims=("t", "v", "d")))


def test_large_vocab_is_tiled_with_bounded_tasks():
    from dask_pdist.planning import plan_token_chunk

    assert plan_token_chunk(16384, 2, 4) == 1448  # 16 MiB per task at V = 16384
    h = xr.DataArray(da.zeros((3, 16384, 8), chunks=(3, -1, -1), dtype=np.float32), dims=("step", "token", "dim"))
    ds = pairwise_distances(h)
    chunk = ds.euclidean.data.chunksize
    assert chunk == (1, 1448, 1448) and 2 * np.prod(chunk) * 4 <= 16 * 2**20


@settings(max_examples=25, deadline=None)
@given(
    s=st.integers(1, 13),
    v=st.integers(1, 23),
    d=st.integers(1, 9),
    step_chunk=st.integers(1, 13),
    token_chunk=st.integers(1, 23),
    seed=st.integers(0, 1000),
)
def test_bit_identical_for_any_chunking(s, v, d, step_chunk, token_chunk, seed):
    x = random_history((s, v, d), seed=seed)
    ref = pairwise_distances(history_array(x, (s, v, d), labelled=False))
    got = pairwise_distances(history_array(x, (step_chunk, max(1, v // 2), d), labelled=False), token_chunk=token_chunk)
    np.testing.assert_array_equal(got.euclidean.values, ref.euclidean.values)
    np.testing.assert_array_equal(got.chebyshev.values, ref.chebyshev.values)
    e, _ = oracle(x)
    mask = e > 0
    if mask.any():
        assert (np.abs(ref.euclidean.values - e)[mask] / e[mask]).max() <= 1e-6
