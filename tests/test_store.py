"""to_zarr / open_distances: zarr format 3, NaN fill, aligned chunks, lazy step slicing."""

from __future__ import annotations

import json
from collections.abc import Mapping

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from conftest import random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.store.codecs import codec_choice


@pytest.fixture
def distances(write_safetensors):
    x = random_history((23, 11, 6), scale=0.1)
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": np.arange(0, 230, 10)}, "BF16")
    return pairwise_distances(open_history(path, chunks=5))


@pytest.mark.parametrize("compressor", ["lz4", "zstd", "none", "auto"])
def test_round_trip_bit_identical(distances, tmp_path, compressor):
    store = tmp_path / "d.zarr"
    to_zarr(distances, store, compressor=compressor)
    back = open_distances(store)
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(back[name].values, distances[name].values)
        meta = json.loads((store / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["fill_value"] == "NaN"
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [5, 11, 11]
        assert meta["dimension_names"] == ["step", "token_i", "token_j"]
        assert any(c["name"] == "blosc" for c in meta["codecs"]) == (codec_choice(compressor, name) is not None)
    np.testing.assert_array_equal(back["step"].values, np.arange(0, 230, 10))
    assert back.attrs["input_dtype"] == "BF16"


def test_lazy_slice_by_step_reads_one_chunk(distances, tmp_path):
    to_zarr(distances, tmp_path / "d.zarr")
    back = open_distances(tmp_path / "d.zarr")
    assert isinstance(back.euclidean.data, da.Array)
    one = back.euclidean.sel(step=120)
    assert one.data.npartitions == 1
    np.testing.assert_array_equal(one.values, distances.euclidean.isel(step=12).values)


def test_opens_with_plain_xarray(distances, tmp_path):
    to_zarr(distances, tmp_path / "d.zarr")
    plain = xr.open_zarr(tmp_path / "d.zarr")
    assert plain.euclidean.dims == ("step", "token_i", "token_j")
    np.testing.assert_array_equal(plain.chebyshev.values, distances.chebyshev.values)


def test_unwritten_chunk_reads_nan_not_zero(distances, tmp_path):
    store = tmp_path / "d.zarr"
    to_zarr(distances, store)
    # an interrupted job: the block is neither written nor marked done (a complete store
    # with an absent chunk raises instead: tests/test_integrity.py)
    (store / "euclidean" / "c" / "2" / "0" / "0").unlink()
    (store / "_dask_pdist" / "chunk_done" / "c" / "2" / "0" / "0").unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    e = open_distances(store, allow_incomplete=True).euclidean.values
    assert np.isnan(e[10:15]).all() and not np.isnan(e[:10]).any()


def test_irregular_dask_chunks_are_made_regular(distances, tmp_path):
    uneven = distances.chunk({"step": (3, 7, 7, 6)})
    to_zarr(uneven, tmp_path / "d.zarr")
    back = open_distances(tmp_path / "d.zarr")
    np.testing.assert_array_equal(back.euclidean.values, distances.euclidean.values)


def test_a_history_in_irregular_step_chunks_is_stored(tmp_path):
    # the per-step arrays were cut as (3, 3, 3, 1) instead of (3, 4, 3): a 1-D rechunk given a
    # bare tuple of ints takes its first as one chunk size; xarray then refused the dataset
    from conftest import history_array, oracle

    x = random_history((10, 7, 3), seed=5)
    ds = pairwise_distances(history_array(x, ((3, 4, 3), 7, 3)))
    assert ds.embedding_rms.data.chunks == ((3, 4, 3),) == ds.input_checksum.data.chunks
    to_zarr(ds, tmp_path / "d.zarr")
    back = open_distances(tmp_path / "d.zarr")
    euclidean, chebyshev = oracle(x)
    np.testing.assert_allclose(back.euclidean.values, euclidean, rtol=1e-6)
    np.testing.assert_array_equal(back.chebyshev.values, chebyshev.astype(np.float32))
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(back.embedding_rms.values, rms, rtol=1e-6)


def test_refuses_to_overwrite_and_never_deletes_foreign_data(distances, tmp_path):
    store = tmp_path / "d.zarr"
    to_zarr(distances, store)
    with pytest.raises(StoreError, match=r"d.zarr: already exists; pass overwrite=True \(--overwrite\)"):
        to_zarr(distances, store)
    to_zarr(distances, store, overwrite=True)
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not a dask_pdist store; refusing to write into or delete it"):
        to_zarr(distances, foreign, overwrite=True)
    assert (foreign / "thesis.tex").exists()


def test_bad_output_locations(distances, tmp_path):
    with pytest.raises(StoreError, match="parent directory .* does not exist"):
        to_zarr(distances, tmp_path / "no" / "d.zarr")
    with pytest.raises(ValueError, match=r"choose one of \['auto', 'none', 'lz4', 'zstd'\]"):
        to_zarr(distances, tmp_path / "d.zarr", compressor="gzip")
    with pytest.raises(FileNotFoundError, match="store not found"):
        open_distances(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match="not a dask_pdist store"):
        open_distances(tmp_path)


def test_compute_false_writes_metadata_only(distances, tmp_path):
    delayed = to_zarr(distances, tmp_path / "d.zarr", compute=False)
    # the job (not run yet) holds the writer lock: the reader is told a job is writing the store
    with pytest.raises(StoreError, match=r"incomplete, 5 of 5 blocks missing \(a job is writing it now"):
        open_distances(tmp_path / "d.zarr")
    assert np.isnan(open_distances(tmp_path / "d.zarr", allow_incomplete=True).euclidean.values).all()
    assert delayed.compute() == 5
    np.testing.assert_array_equal(open_distances(tmp_path / "d.zarr").euclidean.values, distances.euclidean.values)


def test_auto_tiling_with_explicit_step_chunks_round_trips(tmp_path):
    # V large enough that one snapshot's matrices exceed the task budget: tiles, one step per
    # task, while the history was chunked 4 steps at a time
    x = random_history((5, 1500, 2))
    h = xr.DataArray(da.from_array(x, chunks=(4, -1, -1)), dims=("step", "token", "dim"))
    ds = pairwise_distances(h)
    assert ds.chebyshev.data.chunksize[0] == 1 and ds.chebyshev.data.numblocks[1] > 1
    assert ds.embedding_rms.chunks == ds.chebyshev.chunks[:1]
    to_zarr(ds, tmp_path / "d.zarr", compressor="none")
    back = open_distances(tmp_path / "d.zarr")
    np.testing.assert_array_equal(back.chebyshev[3].values, np.abs(x[3][:, None] - x[3][None]).max(-1))
    np.testing.assert_allclose(back.embedding_rms.values, np.sqrt((x.astype(np.float64) ** 2).mean((1, 2))))


def test_to_zarr_does_not_import_dask_distributed(tmp_path):
    """dask's scheduler look-up imports dask.distributed (~0.2-0.5 s) whenever it is installed;
    a plain local to_zarr has no client to find and passes the threaded scheduler itself."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, xarray as xr, dask_pdist as dp\n"
        "x = np.random.default_rng(0).standard_normal((7, 5, 3)).astype(np.float32)\n"
        f"ds = dp.to_zarr(dp.pairwise_distances(xr.DataArray(x, dims=('step', 'token', 'dim'))), {str(tmp_path / 'd.zarr')!r})\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert open_distances(tmp_path / "d.zarr").sizes["step"] == 7


def test_step_rms_of_token_chunked_input_with_nonfinite_values():
    # one task per step-block over whole steps: a history chunked along token too gives the
    # RMS of each step's finite coordinates (float64 oracle), NaN for a step with none
    from dask_pdist.io.history import step_rms

    x = random_history((9, 13, 5)).astype(np.float32)
    x[2, 3, 1], x[4, 0, 0], x[6] = np.nan, np.inf, np.nan
    got = step_rms(da.from_array(x, chunks=(4, 6, 2))).compute()
    want = []
    for step in x.astype(np.float64):
        finite = step[np.isfinite(step)]
        want.append(np.sqrt(np.mean(finite**2)) if finite.size else np.nan)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert np.isnan(got[6]) and np.isfinite(got).sum() == 8


def test_write_graph_tasks_per_block(distances, tmp_path):
    # what each step-block costs the scheduler: read, the distance kernel, the two per-step
    # coordinates, a write per variable and coordinate, the done flag (and the graph's few
    # labels); ten array operations per block for embedding_rms used to double it
    job = to_zarr(distances, tmp_path / "d.zarr", compute=False)
    blocks = len(distances.chunksizes["step"])
    tasks = len(dict(job.__dask_graph__()))
    assert tasks <= 14 * blocks + 3, f"{tasks} tasks for {blocks} blocks"
    job.compute()
    np.testing.assert_array_equal(open_distances(tmp_path / "d.zarr").euclidean.values, distances.euclidean.values)


class _Untouchable(Mapping):
    """A graph layer that fails when anything iterates or reads it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        raise AssertionError("the graph of the distances was built")

    def __iter__(self):  # noqa: ANN204
        raise AssertionError("the graph of the distances was built")

    def __len__(self) -> int:
        return self.n


def test_planning_a_store_does_not_build_the_graph_of_its_distances(write_safetensors, tmp_path):
    # creating the store writes its metadata through xarray's to_zarr(compute=False), whose write
    # graph nobody runs (our own tasks write the chunks): built from the kernels' graph it cost
    # 0.2-0.3 s before the first kernel call at 20,004 steps, growing with the steps
    from dask.highlevelgraph import HighLevelGraph

    import dask_pdist as dp

    path = write_safetensors("h.safetensors", {"h": random_history((10, 7, 3))})
    h = dp.open_history(path, chunks=4)
    graph = HighLevelGraph.from_collections("untouchable", _Untouchable(3))
    h = h.copy(data=da.Array(graph, "untouchable", h.data.chunks, h.dtype))
    dp.to_zarr(dp.pairwise_distances(h), tmp_path / "d.zarr", compute=False)
    assert (tmp_path / "d.zarr" / "euclidean" / "zarr.json").exists()
