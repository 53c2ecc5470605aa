"""The fast path of an append (store/fast_append.py) writes what the write graph writes, byte
for byte, in the graph's order: a kill between its phases is finished like a killed graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle, random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr, verify_store
from dask_pdist.store import append, fast_append, writer

SHAPE = (15, 11, 6)  # not powers of two; 11 tokens in tiles of 6: 2 x 2 tiles per step-block


@pytest.fixture
def write(write_safetensors):
    x = random_history(SHAPE, seed=5)
    steps = np.arange(SHAPE[0]) * 7 + 3

    def _write(n: int):
        return write_safetensors(f"h{n}.safetensors", {"embedding_history": x[:n], "steps": steps[:n]})

    return x, _write


def _distances(path: Path, chunks: int, **kwargs):
    return pairwise_distances(open_history(path, chunks=chunks), **kwargs)


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture
def paths_taken(monkeypatch):
    # which way each append's blocks were written: "fast" or "graph"
    taken: list[str] = []
    real_fast, real_graph = writer.fast_job, writer._write_graph

    def fast(*args, **kwargs):
        job = real_fast(*args, **kwargs)
        if job is not None:
            taken.append("fast")
        return job

    def graph(*args, **kwargs):
        taken.append("graph")
        return real_graph(*args, **kwargs)

    monkeypatch.setattr(writer, "fast_job", fast)
    monkeypatch.setattr(writer, "_write_graph", graph)
    return taken


@pytest.mark.parametrize(
    ("start", "end", "chunks", "kwargs"),
    [
        (9, 10, 1, {}),  # one step per chunk, as --follow makes them
        (10, 14, 4, {}),  # the partly filled last chunk (steps 8..11) rewritten whole, then a new one
        (7, 9, 3, {"compressor": "zstd"}),
        (12, 13, 1, {"token_chunk": 6}),  # 2 x 2 token tiles
        (5, 6, 1, {"metrics": ["euclidean", "chebyshev", "manhattan"], "dtype": "float64"}),
    ],
)
def test_fast_append_writes_the_graphs_bytes(write, tmp_path, paths_taken, start, end, chunks, kwargs):
    x, write_history = write
    compressor = kwargs.pop("compressor", None)
    base = tmp_path / "base.zarr"
    to_zarr(_distances(write_history(start), chunks, **kwargs), base, compressor=compressor)
    fast, graph = tmp_path / "fast.zarr", tmp_path / "graph.zarr"
    shutil.copytree(base, fast)  # the same store (its id: the digests are keyed with it)
    shutil.copytree(base, graph)
    paths_taken.clear()  # (the store's creation: the graph)
    to_zarr(_distances(write_history(end), chunks, **kwargs), fast, append=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_append, "FAST_BLOCKS", 0)  # the write graph, the reference
        # and a growth that reads the labels and versions again instead of taking the checks'
        mp.setattr(writer, "grow", lambda ds, path, fingerprint, seen=None: append.grow(ds, path, fingerprint))
        to_zarr(_distances(write_history(end), chunks, **kwargs), graph, append=True)
    assert paths_taken == ["fast", "graph"]
    left, right = _files(fast), _files(graph)
    assert sorted(left) == sorted(right)
    differ = [name for name in left if left[name] != right[name]]
    assert differ == []  # every chunk file, every array's and group's zarr.json, the root's
    assert verify_store(fast) == []
    ds = open_distances(fast)
    np.testing.assert_array_equal(ds["step"].values, np.arange(end) * 7 + 3)
    euclidean, chebyshev = oracle(x[:end])  # scipy, float64
    np.testing.assert_allclose(ds.euclidean.values, euclidean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.chebyshev.values, chebyshev, rtol=1e-5, atol=1e-5)


def test_a_large_append_goes_through_the_graph(write, tmp_path, paths_taken):
    _, write_history = write
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write_history(3), 1), store)
    paths_taken.clear()
    to_zarr(_distances(write_history(3 + fast_append.FAST_BLOCKS + 1), 1), store, append=True)
    to_zarr(_distances(write_history(3 + fast_append.FAST_BLOCKS + 2), 1), store, append=True)
    assert paths_taken == ["graph", "fast"]
    assert verify_store(store) == []


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
@pytest.mark.parametrize("how", ["append", "resume"])
def test_a_fast_append_killed_between_phases_is_finished(write, tmp_path, monkeypatch, paths_taken, phase, how):
    # killed before its chunks (1), its digests (2), its done flags (3) or its completion (4)
    # were written: --append and --resume finish it to the bytes of a one-shot store
    _, write_history = write
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write_history(14), 4), whole)
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write_history(10), 4), store)
    paths_taken.clear()
    real_sync, real_root, calls = fast_append._sync, fast_append.write_root_attrs, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == phase:
            for coro in args[0] if args and isinstance(args[0], list) else []:
                coro.close()  # never awaited
            raise KeyboardInterrupt
        return (real_sync if len(calls) < 4 else real_root)(*args, **kwargs)

    monkeypatch.setattr(fast_append, "_sync", killed)
    monkeypatch.setattr(fast_append, "write_root_attrs", killed)
    with pytest.raises(KeyboardInterrupt):
        to_zarr(_distances(write_history(14), 4), store, append=True)
    monkeypatch.setattr(fast_append, "_sync", real_sync)
    monkeypatch.setattr(fast_append, "write_root_attrs", real_root)
    assert paths_taken[0] == "fast"
    with pytest.raises(StoreError, match="incomplete"):
        open_distances(store)
    to_zarr(_distances(write_history(14), 4), store, **{how: True})
    a, b = open_distances(whole), open_distances(store)
    for name in ("euclidean", "chebyshev", "embedding_rms", "step"):
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
    assert verify_store(store) == []
