"""iter_steps / step_blocks and the no-dask one-step reader (open_distances(chunks=None))."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import dask_pdist as dp
from conftest import random_history
from dask_pdist.store.reading import step_blocks


@pytest.fixture
def history(write_safetensors):
    x = random_history((23, 11, 6), scale=0.1)
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": np.arange(0, 230, 10)}, "BF16")
    return dp.open_history(path, chunks=5)


@pytest.fixture
def distances(history):
    return dp.pairwise_distances(history, token_chunk=4)  # tiles: several chunks per block of steps


def _dataset(steps: int, vocab: int, step_chunk: int, token_chunk: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    dims = ("step", "token_i", "token_j")
    data = {
        name: (
            dims,
            da.from_array(
                rng.random((steps, vocab, vocab), dtype=np.float32), chunks=(step_chunk, token_chunk, token_chunk)
            ),
        )
        for name in ("euclidean", "chebyshev")
    }
    return xr.Dataset(data, coords={"step": np.arange(steps) * 7 + 3})


@settings(max_examples=25, deadline=None)
@given(
    steps=st.integers(1, 23),
    vocab=st.integers(1, 9),
    step_chunk=st.integers(1, 11),
    token_chunk=st.integers(1, 9),
    prefetch=st.booleans(),
)
def test_iter_steps_equals_slicing(steps, vocab, step_chunk, token_chunk, prefetch):
    ds = _dataset(steps, vocab, step_chunk, token_chunk)
    seen = []
    for label, arrays in dp.iter_steps(ds, prefetch=prefetch):
        k = len(seen)
        assert label == ds["step"].values[k]
        for name in ("euclidean", "chebyshev"):
            np.testing.assert_array_equal(arrays[name], ds[name].isel(step=k).values)
        seen.append(label)
    assert seen == list(ds["step"].values)


def test_iter_steps_reads_each_chunk_once():
    reads: dict[tuple, int] = {}
    rng = np.random.default_rng(1)
    full = rng.random((2, 13, 5, 5)).astype(np.float32)

    def load(block_id):
        if not isinstance(block_id, tuple):  # map_blocks probing for meta, not a read
            return np.zeros((0, 0, 0, 0), np.float32)
        reads[block_id] = reads.get(block_id, 0) + 1
        v, s, i, j = block_id
        return full[v, s * 4 : s * 4 + 4, i * 3 : i * 3 + 3, j * 3 : j * 3 + 3][None]

    src = da.map_blocks(
        lambda block_id=None: load(block_id),
        chunks=((1, 1), (4, 4, 4, 1), (3, 2), (3, 2)),
        dtype=np.float32,
        meta=np.zeros((0, 0, 0, 0), np.float32),
    )
    ds = xr.Dataset(
        {name: (("step", "token_i", "token_j"), src[v]) for v, name in enumerate(("euclidean", "chebyshev"))}
    )
    out = {name: [] for name in ("euclidean", "chebyshev")}
    for _, arrays in dp.iter_steps(ds):
        for name, a in arrays.items():
            out[name].append(a.copy())
    np.testing.assert_array_equal(np.stack(out["euclidean"]), full[0])
    np.testing.assert_array_equal(np.stack(out["chebyshev"]), full[1])
    assert len(reads) == 2 * 4 * 2 * 2  # every chunk read ...
    assert set(reads.values()) == {1}  # ... exactly once


def test_iter_steps_store_chunks_once(distances, tmp_path, monkeypatch):
    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    import zarr.storage

    counts: dict[str, int] = {}
    original = zarr.storage.LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        # a store may be opened at its root or at one array's folder: count by the file read
        full = (Path(self.root) / key).resolve()
        if full.is_relative_to(store.resolve()):
            rel = full.relative_to(store.resolve()).as_posix()
            if rel.startswith(("euclidean/c/", "chebyshev/c/")):
                counts[rel] = counts.get(rel, 0) + 1
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    # whole chunks of a local store are read by dask_pdist itself (store/chunk_files.py)
    from dask_pdist.store.chunk_files import ChunkReader

    read = ChunkReader.read

    def counting_read(self, idx, expected):
        rel = self.key(idx)
        counts[rel] = counts.get(rel, 0) + 1
        return read(self, idx, expected)

    monkeypatch.setattr(ChunkReader, "read", counting_read)
    for chunks in ("store", None):
        counts.clear()
        ds = dp.open_distances(store, chunks=chunks)
        n = sum(1 for _ in dp.iter_steps(ds))
        assert n == distances.sizes["step"]
        files = {
            p.relative_to(store).as_posix()
            for name in ("euclidean", "chebyshev")
            for p in (store / name / "c").rglob("*")
            if p.is_file()
        }
        assert set(counts) == files
        assert set(counts.values()) == {1}


def test_iter_steps_lazy_dataset_equals_compute(history):
    ds = dp.pairwise_distances(history)
    with dask.config.set(scheduler="sync"):
        steps = [(label, {k: v.copy() for k, v in arrays.items()}) for label, arrays in dp.iter_steps(ds)]
    np.testing.assert_array_equal(np.stack([a["euclidean"] for _, a in steps]), ds.euclidean.values)


def test_iter_steps_errors():
    ds = _dataset(5, 3, 2, 3)
    with pytest.raises(KeyError, match="no variable"):
        list(dp.iter_steps(ds, ["manhattan"]))
    ds["chebyshev"] = ds["chebyshev"].chunk(step=3)
    with pytest.raises(ValueError, match="chunked differently along step"):
        step_blocks(ds)


def test_open_distances_without_dask(distances, tmp_path):
    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    light = dp.open_distances(store, chunks=None)
    assert light.euclidean.chunks is None  # no dask
    step = int(distances["step"].values[-2])
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(light[name].sel(step=step).values, distances[name].sel(step=step).values)
    with pytest.raises(ValueError, match="chunks='store'"):
        dp.open_distances(store, chunks=None, allow_incomplete=True)
    with pytest.raises(ValueError, match="choose 'store'"):
        dp.open_distances(store, chunks="auto")


def test_one_step_through_dask_reads_that_step_only(distances, tmp_path, monkeypatch):
    # dask fuses the selection into the read: the store source is asked for the one step,
    # not for its whole block of steps (then copied and cut), and gives the same values
    from dask_pdist.store.integrity import CheckedChunks

    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    ds = dp.open_distances(store)
    asked = []
    read = CheckedChunks.__getitem__
    monkeypatch.setattr(CheckedChunks, "__getitem__", lambda self, key: asked.append(key) or read(self, key))
    step = int(distances["step"].values[7])  # inside a block of 5 steps, not its first
    for name in ("euclidean", "chebyshev"):
        asked.clear()
        got = ds[name].sel(step=step).values
        np.testing.assert_array_equal(got, distances[name].sel(step=step).values)
        assert asked and all(isinstance(key[0], (int, np.integer)) for key in asked), asked


def test_per_step_coordinate_read_in_one_task(distances, tmp_path, monkeypatch):
    # embedding_rms (5 blocks of 5 steps here) is read by one zarr call for all its chunks,
    # then shown in the store's chunks; the same values as the store holds
    from dask_pdist.store import reader
    from dask_pdist.store.integrity import CheckedChunks

    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    asked = []
    read = CheckedChunks.__getitem__
    monkeypatch.setattr(CheckedChunks, "__getitem__", lambda self, key: asked.append(self.name) or read(self, key))
    for per_step_read, calls in ((1 << 20, 1), (10, 3)):  # all 23 steps at once, or 10 at a time (5 + 5)
        monkeypatch.setattr(reader, "_PER_STEP_READ", per_step_read)
        rms = dp.open_distances(store)["embedding_rms"]
        assert rms.chunks == ((5, 5, 5, 5, 3),)
        asked.clear()
        np.testing.assert_array_equal(rms.values, distances["embedding_rms"].values)
        assert asked == ["embedding_rms"] * calls


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)))
def test_checked_read_box_keeps_numpy_indexing(data, shape):
    # what a source gets from dask (from_array(fancy=True)): ints, slices, integer and boolean
    # arrays, None; reading the bounding box and indexing it gives what numpy gives
    from dask_pdist.store.integrity import _box

    x = np.arange(math.prod(shape)).reshape(shape)

    def one(n):
        return st.one_of(
            st.integers(-n, n - 1),
            st.builds(
                slice, st.none() | st.integers(-n, n), st.none() | st.integers(-n, n), st.sampled_from([None, 1, 2, -1])
            ),
            st.lists(st.integers(-n, n - 1), max_size=4).map(lambda v: np.array(v, dtype=np.intp)),
            st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v, dtype=bool)),
        )

    key = tuple(data.draw(one(n)) for n in shape)
    if sum(isinstance(k, np.ndarray) for k in key) > 1:  # numpy broadcasts several arrays together
        key = tuple(k if not isinstance(k, np.ndarray) or i == 0 else slice(None) for i, k in enumerate(key))
    if data.draw(st.booleans()):
        key = (None, *key)
    box, rel = _box(key, shape)
    region = x[tuple(slice(lo, hi) for lo, hi in box)]
    np.testing.assert_array_equal(region[rel], x[key])


def test_auto_codecs_per_variable_recorded(distances, tmp_path):
    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)  # default: compressor="auto"
    codecs = {}
    for name in ("euclidean", "chebyshev"):
        meta = json.loads((store / name / "zarr.json").read_text())
        codecs[name] = [c["name"] for c in meta["codecs"]]
    assert "blosc" not in codecs["euclidean"]
    blosc = next(
        c for c in json.loads((store / "chebyshev" / "zarr.json").read_text())["codecs"] if c["name"] == "blosc"
    )
    assert blosc["configuration"]["shuffle"] == "bitshuffle" and blosc["configuration"]["cname"] == "lz4"
    fingerprint = json.loads(json.loads((store / "zarr.json").read_text())["attributes"]["dask_pdist_fingerprint"])
    assert fingerprint["compressor"] == "auto"
    assert fingerprint["codecs"] == {"chebyshev": "lz4-5+bitshuffle", "euclidean": "none"}
    back = dp.open_distances(store)
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(back[name].values, distances[name].values)


def test_resume_refuses_other_compressor(distances, tmp_path):
    store = tmp_path / "d.zarr"
    job = dp.to_zarr(distances, store, compute=False)  # created, nothing written: a job to resume
    del job
    with pytest.raises(dp.StoreError, match="compressor"):
        dp.to_zarr(distances, store, resume=True, compressor="lz4")


def test_summarize_same_with_or_without_dask(distances, tmp_path):
    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    a = dp.summarize(dp.open_distances(store)).compute()
    b = dp.summarize(dp.open_distances(store, chunks=None)).compute()
    xr.testing.assert_identical(a, b)


def test_verify_reports_progress(distances, tmp_path):
    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    calls = []
    assert dp.verify_store(store, progress=lambda checked, total: calls.append((checked, total))) == []
    group = zarr.open_group(str(store), mode="r")
    total = sum(
        math.prod(node.cdata_shape) for _, node in group.members(max_depth=None) if hasattr(node, "cdata_shape")
    )
    assert total > 2 * 5 * 3 * 3  # the distances' chunks (23 steps in chunks of 5, tiles of 4) and more
    assert calls == [(k, total) for k in range(1, total + 1)]


@pytest.mark.parametrize("command", ["summary", "verify", "export"])
def test_progress_commands_quiet_off_a_terminal(distances, tmp_path, capsys, command):
    from dask_pdist.cli.main import main

    store = tmp_path / "d.zarr"
    dp.to_zarr(distances, store)
    argv = {"summary": ["summary", str(store)], "verify": ["verify", str(store)]}.get(
        command, ["export", str(store), str(tmp_path / "d.safetensors")]
    )
    assert main(argv) == 0
    assert main([*argv, "--no-progress"] + (["--overwrite"] if command == "export" else [])) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "it/s" not in err and "task/s" not in err  # no bar: stderr is not a terminal
