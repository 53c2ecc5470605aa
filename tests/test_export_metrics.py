"""to_safetensors / dask-pdist export of every metric a store holds: manhattan (in the export
dtype) and chebyshev_ulp (in its stored unsigned dtype), read back with safetensors.numpy and
compared with the store, locally and to a memory:// URL."""

from __future__ import annotations

import json
import uuid

import fsspec
import ml_dtypes  # noqa: F401  (safetensors' numpy loader needs it registered for BF16)
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import dask_pdist as dp
from conftest import random_history
from dask_pdist.cli.main import main

ALL = ("euclidean", "chebyshev", "manhattan", "chebyshev_ulp")


@pytest.fixture(params=["BF16", "F32"])
def store(request, tmp_path, write_safetensors):
    x = random_history((17, 23, 6), seed=5, scale=0.2)
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": np.arange(17) * 3}, request.param)
    out = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=4), metrics=ALL), out, progress=False)
    return out


@pytest.mark.parametrize("dtype", [None, "float64", "float16"])
def test_every_metric_round_trips_through_safetensors_numpy(store, tmp_path, dtype):
    ds = dp.open_distances(store)
    assert set(ALL) <= set(ds.data_vars)
    out = tmp_path / "all.safetensors"
    dp.to_safetensors(ds, out, dtype=dtype, progress=False)
    tensors = load_file(str(out))
    assert sorted(tensors) == sorted(f"{m}_distances" for m in ALL)
    want_float = np.dtype(dtype or ds.euclidean.dtype)
    for m in ("euclidean", "chebyshev", "manhattan"):
        got = tensors[f"{m}_distances"]
        assert got.dtype == want_float and got.shape == (17, 23, 23)
        np.testing.assert_array_equal(got, ds[m].values.astype(want_float))
    ulp = tensors["chebyshev_ulp_distances"]
    assert ulp.dtype == ds.chebyshev_ulp.dtype and ulp.dtype.kind == "u"  # counts: never the float dtype
    np.testing.assert_array_equal(ulp, ds.chebyshev_ulp.values)
    assert ulp.max() > 0
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["metrics"] == ",".join(ALL)
    assert json.loads(meta["key_dtypes"]) == {
        **{f"{m}_distances": want_float.name for m in ("euclidean", "chebyshev", "manhattan")},
        "chebyshev_ulp_distances": ds.chebyshev_ulp.dtype.name,
    }


def test_one_integer_metric_alone(tmp_path, write_safetensors):
    x = random_history((5, 7, 3), seed=1)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = dp.pairwise_distances(dp.open_history(path, chunks=2), metrics=("chebyshev_ulp",))
    dp.to_safetensors(ds, tmp_path / "u.safetensors", progress=False)
    tensors = load_file(str(tmp_path / "u.safetensors"))
    assert list(tensors) == ["chebyshev_ulp_distances"] and tensors["chebyshev_ulp_distances"].dtype == np.uint16
    np.testing.assert_array_equal(tensors["chebyshev_ulp_distances"], ds.chebyshev_ulp.values)


def test_memory_url_export_is_the_local_file(store, tmp_path):
    ds = dp.open_distances(store)
    local = tmp_path / "l.safetensors"
    dp.to_safetensors(ds, local, progress=False)
    url = f"memory://export-{uuid.uuid4().hex[:8]}/d.safetensors"
    fs = fsspec.filesystem("memory")
    try:
        dp.to_safetensors(ds, url, progress=False)
        assert fs.cat_file(url) == local.read_bytes()
    finally:
        fs.rm(url.rsplit("/", 1)[0], recursive=True)


def test_cli_export_writes_every_metric(store, tmp_path):
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(store), str(out), "--no-progress"]) == 0
    ds = dp.open_distances(store)
    tensors = load_file(str(out))
    for m in ALL:
        np.testing.assert_array_equal(tensors[f"{m}_distances"], ds[m].values)
