"""to_safetensors / dask-pdist export: the notebook's file, streamed, read back by the official loaders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import ml_dtypes  # noqa: F401  (safetensors' numpy loader needs it registered for BF16)
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

import dask_pdist.graphs.distances
from conftest import random_history
from dask_pdist import (
    StoreError,
    __version__,
    open_distances,
    open_history,
    pairwise_distances,
    to_safetensors,
    to_zarr,
)
from dask_pdist.cli.main import main
from dask_pdist.store.export import _segments

KEYS = {"euclidean": "euclidean_distances", "chebyshev": "chebyshev_distances"}


@pytest.fixture
def history(write_safetensors):
    x = random_history((23, 29, 7), seed=3, scale=0.1)
    steps = np.arange(23, dtype=np.int64) * 50 + 7
    return open_history(write_safetensors("h.safetensors", {"embedding_history": x, "steps": steps}, "BF16"), chunks=5)


@pytest.fixture
def store(history, tmp_path):
    path = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(history), path)
    return path


def _loaded(path) -> dict[str, dict[str, np.ndarray]]:
    out = {"np": {}, "pt": {}, "load_file": {}}
    for framework in ("np", "pt"):
        with safe_open(str(path), framework=framework) as f:
            for key in f.keys():
                t = f.get_tensor(key)
                out[framework][key] = t.numpy() if isinstance(t, torch.Tensor) else t
    out["load_file"] = {k: v.numpy() for k, v in load_file(str(path)).items()}
    return out


def test_round_trip_through_official_loaders_is_bit_identical(store, tmp_path):
    ds = open_distances(store)
    out = tmp_path / "pairwise_distances.safetensors"
    to_safetensors(ds, out)
    for loader, tensors in _loaded(out).items():
        assert sorted(tensors) == sorted(KEYS.values()), loader
        for metric, key in KEYS.items():
            want = ds[metric].values
            got = tensors[key]
            assert got.shape == (23, 29, 29) and got.dtype == np.float32, loader
            # bitwise: NaN-safe and distinguishes -0.0
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=loader)


def test_metadata_names_steps_tokens_metrics_source_version(store, history, tmp_path):
    out = tmp_path / "d.safetensors"
    to_safetensors(open_distances(store), out)
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert json.loads(meta["steps"]) == history["step"].values.tolist()
    assert meta["n_tokens"] == "29" and meta["n_steps"] == "23"
    assert meta["metrics"] == "euclidean,chebyshev"
    assert meta["source"] == history.attrs["source"] and meta["source"].endswith("h.safetensors")
    assert meta["dask_pdist_version"] == __version__
    assert meta["dtype"] == "float32"


def test_token_tiled_store_exports_row_by_row(history, tmp_path):
    path = tmp_path / "tiled.zarr"
    to_zarr(pairwise_distances(history, token_chunk=6), path)
    ds = open_distances(path)
    assert len(ds.euclidean.chunks[1]) > 1 and len(ds.euclidean.chunks[2]) > 1  # really tiled
    out = tmp_path / "tiled.safetensors"
    to_safetensors(ds, out)
    tensors = _loaded(out)["load_file"]
    for metric, key in KEYS.items():
        np.testing.assert_array_equal(tensors[key], ds[metric].values)


def test_one_metric_gives_one_key(history, tmp_path):
    ds = pairwise_distances(history, metrics=["chebyshev"])
    to_safetensors(ds, tmp_path / "c.safetensors")
    tensors = _loaded(tmp_path / "c.safetensors")["np"]
    assert list(tensors) == ["chebyshev_distances"]
    np.testing.assert_array_equal(tensors["chebyshev_distances"], ds.chebyshev.values)


def test_both_metrics_from_one_compute_and_one_kernel_pass(history, tmp_path, monkeypatch):
    calls = []
    original = dask_pdist.graphs.distances._distance_block

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dask_pdist.graphs.distances, "_distance_block", counting)
    ds = pairwise_distances(history, token_chunk=10)
    n_blocks = ds.euclidean.data.numblocks
    computes = []
    real_get = dask.threaded.get

    def counting_get(dsk, keys, **kwargs):
        computes.append(keys)
        return real_get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_get):
        to_safetensors(ds, tmp_path / "d.safetensors")
    assert len(computes) == 1
    assert len(calls) == n_blocks[0] * n_blocks[1] * n_blocks[2]
    assert not calls or len(calls) > 1  # the graph really has several blocks


def test_float16_export(store, tmp_path):
    ds = open_distances(store)
    out = tmp_path / "d16.safetensors"
    to_safetensors(ds, out, dtype="float16")
    tensors = _loaded(out)
    for metric, key in KEYS.items():
        f32 = ds[metric].values
        for loader in tensors:
            got = tensors[loader][key]
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, f32.astype(np.float16))
        mask = f32 > 1e-4  # normal float16 range
        assert (np.abs(got[mask].astype(np.float32) - f32[mask]) / f32[mask]).max() <= 2.0**-11


def test_float16_overflow_names_the_largest_value_and_leaves_no_file(write_safetensors, tmp_path):
    x = random_history((6, 9, 4), seed=1, scale=3e4)
    h = open_history(write_safetensors("big.safetensors", {"h": x}), chunks=6)
    ds = pairwise_distances(h, metrics=["euclidean"])  # float32: fits
    e = ds.euclidean.values
    top, step = float(e.max()), int(np.unravel_index(e.argmax(), e.shape)[0])
    assert top > 65504
    out = tmp_path / "d16.safetensors"
    match = rf"{out}: euclidean_distances: distance {top:.6g} at step index {step} exceeds float16's largest finite"
    with pytest.raises(OverflowError, match=match + r" value 65504.*dtype='float32'"):
        to_safetensors(ds, out, dtype="float16")
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial")), "the temporary file must be removed"


def test_float16_export_keeps_an_infinite_distance_infinite(write_safetensors, tmp_path):
    # an inf in the history (nonfinite="propagate") gives infinite distances: exported as
    # float16 they stay inf, as in the float32 export; only a finite distance above float16's
    # range is an error
    x = random_history((4, 7, 3), seed=2)
    x[2, 5, 1] = np.inf
    h = open_history(write_safetensors("inf.safetensors", {"h": x}), chunks=2, nonfinite="propagate")
    ds = pairwise_distances(h)
    out = tmp_path / "d16.safetensors"
    to_safetensors(ds, out, dtype="float16")
    for metric, key in KEYS.items():
        want = ds[metric].values
        assert np.isinf(want[2, 5, [0, 1, 2, 3, 4, 6]]).all()
        np.testing.assert_array_equal(_loaded(out)["load_file"][key], want.astype(np.float16))


def test_narrowing_export_past_float32_suggests_float64(write_safetensors, tmp_path):
    # a float64 store's distance above float32's range: the export to float32 names it and
    # suggests the dtype that holds it (the store's own), not float32 again
    x = random_history((3, 5, 2), seed=3).astype(np.float64)
    x[1, 2, 0] = 1e200
    h = open_history(write_safetensors("big64.safetensors", {"h": x}, "F64"), chunks=3)
    ds = pairwise_distances(h, metrics=["euclidean"], dtype="float64")
    out = tmp_path / "d32.safetensors"
    match = rf"{out}: euclidean_distances: distance 1e\+200 at step index 1 exceeds float32's largest finite value"
    with pytest.raises(OverflowError, match=match + r" 3.40282e\+38; export with dtype='float64' \(--dtype float64\)"):
        to_safetensors(ds, out, dtype="float32")
    assert not out.exists()


def test_refuses_to_overwrite_unless_asked(store, tmp_path):
    ds = open_distances(store)
    out = tmp_path / "d.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(StoreError, match=rf"{out}: already exists; pass overwrite=True"):
        to_safetensors(ds, out)
    assert out.read_bytes() == b"precious"
    to_safetensors(ds, out, overwrite=True)
    np.testing.assert_array_equal(_loaded(out)["load_file"]["chebyshev_distances"], ds.chebyshev.values)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        to_safetensors(ds, tmp_path / "dir.safetensors", overwrite=True)
    with pytest.raises(ValueError, match=r"dtype='int8': choose one of \['float32', 'float16', 'float64'\]"):
        to_safetensors(ds, tmp_path / "x.safetensors", dtype="int8")


def test_compute_false_is_lazy_and_renames_at_the_end(history, tmp_path, no_compute):
    out = tmp_path / "d.safetensors"
    ds = pairwise_distances(history)
    with no_compute():
        delayed = to_safetensors(ds, out, compute=False)
    assert not out.exists() and len(list(tmp_path.glob(".d.safetensors.*.partial"))) == 1
    delayed.compute()
    assert not list(tmp_path.glob("*.partial"))
    np.testing.assert_array_equal(_loaded(out)["np"]["euclidean_distances"], ds.euclidean.values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4).flatmap(
        lambda shape: st.tuples(
            st.just(tuple(shape)),
            st.tuples(*[st.tuples(st.integers(0, n - 1), st.integers(1, n)) for n in shape]),
        )
    )
)
def test_segments_cover_a_block_exactly(case):
    shape, raw = case
    region = tuple((min(a, b - 1), max(a + 1, b)) for a, b in raw)
    block = np.arange(np.prod([hi - lo for lo, hi in region])).reshape([hi - lo for lo, hi in region]) + 1
    flat = np.zeros(int(np.prod(shape)), dtype=block.dtype)
    for elem, idx in _segments(region, shape):
        run = block[idx].ravel()
        flat[elem : elem + run.size] += run
    want = np.zeros(shape, dtype=block.dtype)
    want[tuple(slice(lo, hi) for lo, hi in region)] = block
    np.testing.assert_array_equal(flat.reshape(shape), want)  # += : no byte written twice


def test_cli_export_and_compute_safetensors(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "41", "--vocab", "21", "--dim", "8"])
    zarr_out, st_out = tmp_path / "d.zarr", tmp_path / "d.safetensors"
    args = ["compute", str(src), "-o", str(zarr_out), "--chunk-steps", "6", "--no-progress"]
    code = main([*args, "--safetensors", str(st_out)])
    assert code == 0
    ds = open_distances(zarr_out)
    tensors = load_file(str(st_out))
    for metric, key in KEYS.items():
        np.testing.assert_array_equal(tensors[key].numpy(), ds[metric].values)
    capsys.readouterr()

    assert main(["export", str(zarr_out), str(st_out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{st_out}: already exists" in err and "overwrite" in err
    assert main(["export", str(zarr_out), str(st_out), "--dtype", "float16", "--overwrite", "--no-progress"]) == 0
    assert load_file(str(st_out))["euclidean_distances"].dtype == torch.float16
    assert main(["export", str(tmp_path / "nope.zarr"), str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    assert "nope.zarr: store not found" in capsys.readouterr().err
    # refused before computing anything: no store is created
    args = ["compute", str(src), "-o", str(tmp_path / "e.zarr"), "--no-progress", "--safetensors", str(st_out)]
    assert main(args) == 2
    assert not (tmp_path / "e.zarr").exists()


_CHILD = textwrap.dedent(
    """
    import json, sys
    import dask
    import dask_pdist as dp

    def peak():
        # this process's own high-water RSS (VmHWM, kB): ru_maxrss would start at the peak of
        # the pytest process it was forked from, which can exceed everything measured here
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024

    dask.config.set(num_workers=4)  # memory is a few chunks per thread: fix the thread count
    ds = dp.open_distances(sys.argv[1])
    before = peak()
    dp.to_safetensors(ds, sys.argv[2], progress=False)
    print(json.dumps({"increase_bytes": peak() - before}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is read from Linux's /proc")
def test_export_memory_is_bounded_by_chunks_not_the_result(tmp_path):
    src = tmp_path / "h.safetensors"
    assert main(["synth", str(src), "--steps", "2400", "--vocab", "128", "--dim", "16"]) == 0
    store = tmp_path / "d.zarr"
    assert main(["compute", str(src), "-o", str(store), "--chunk-steps", "16", "--no-progress"]) == 0
    out = tmp_path / "d.safetensors"
    cmd = [sys.executable, "-c", _CHILD, str(store), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    increase = json.loads(proc.stdout.splitlines()[-1])["increase_bytes"]
    result = out.stat().st_size
    assert result > 300e6
    assert result > 3 * increase, f"export grew peak RSS by {increase / 1e6:.0f} MB for a {result / 1e6:.0f} MB result"
    with safe_open(str(out), framework="np") as f:  # spot check the far end of the file
        ds = open_distances(store)
        np.testing.assert_array_equal(f.get_slice("chebyshev_distances")[2399], ds.chebyshev[2399].values)
