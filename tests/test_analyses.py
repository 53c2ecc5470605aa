"""summarize, `dask-pdist summary`, `dask-pdist info`."""

from __future__ import annotations

import builtins
import struct

import ml_dtypes
import numpy as np
import pytest

from conftest import raise_if_dask_computes, random_history
from dask_pdist import open_distances, open_history, pairwise_distances, summarize, to_zarr
from dask_pdist.cli.main import main
from dask_pdist.kernels.spacing import bf16_spacing


@pytest.fixture
def store(write_safetensors, tmp_path):
    x = random_history((29, 13, 7), scale=0.05).astype(ml_dtypes.bfloat16).astype(np.float32)
    x[:, 5] = x[:, 4]
    x[3:, 6] = x[3:, 4]
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": np.arange(29) * 3}, "BF16")
    to_zarr(pairwise_distances(open_history(path, chunks=6)), tmp_path / "d.zarr")
    return tmp_path / "d.zarr", x


def test_summarize_matches_numpy(store):
    path, x = store
    ds = open_distances(path)
    with raise_if_dask_computes():
        lazy = summarize(ds)
    s = lazy.compute()
    e = np.sqrt(((x[:, :, None] - x[:, None]) ** 2).astype(np.float64).sum(-1))
    c = np.abs(x[:, :, None] - x[:, None]).max(-1).astype(np.float64)
    off = ~np.eye(13, dtype=bool)
    np.testing.assert_allclose(s.euclidean_mean, e[:, off].mean(1), rtol=1e-6)
    np.testing.assert_allclose(s.euclidean_max, e[:, off].max(1), rtol=1e-6)
    np.testing.assert_array_equal(s.chebyshev_min, c[:, off].min(1))
    np.testing.assert_array_equal(s.chebyshev_max, c[:, off].max(1))
    np.testing.assert_allclose(s.chebyshev_mean, c[:, off].mean(1), rtol=1e-12)
    rms = np.sqrt((x.astype(np.float64) ** 2).mean((1, 2)))
    thr = 2.0 ** (np.floor(np.log2(rms)) - 7)
    np.testing.assert_array_equal(s.threshold, thr)
    iu = np.triu_indices(13, 1)
    np.testing.assert_array_equal(s.quantization_neighbours, (c[:, iu[0], iu[1]] < thr[:, None]).sum(1))
    assert s.quantization_neighbours.values[0] >= 3 and s.quantization_neighbours.values[-1] >= 3
    assert list(s["step"].values) == list(np.arange(29) * 3)


def test_explicit_threshold_and_bf16_spacing(store):
    path, x = store
    s = summarize(open_distances(path), threshold=10.0).compute()
    assert (s.quantization_neighbours == 13 * 12 // 2).all()
    assert float(bf16_spacing(1.0)) == 2.0**-7 and float(bf16_spacing(0.3)) == 2.0**-9
    with pytest.raises(ValueError, match="must be a positive distance"):
        summarize(open_distances(path), threshold=-1)


def test_summary_command_prints_and_plots(store, capsys, tmp_path):
    path, _ = store
    png = tmp_path / "s.png"
    assert main(["summary", str(path), "--plot", str(png), "--step", "30", "--rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "Initial distances (step 0)" in out and "Final distances (step 84)" in out
    assert "quantization_neighbours" in out
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (1200, 400)


def test_summary_bad_step(store, capsys):
    path, _ = store
    assert main(["summary", str(path), "--step", "31"]) == 2
    assert "no step 31; steps run 0..84" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(store, monkeypatch, capsys, tmp_path):
    path, _ = store
    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["summary", str(path), "--plot", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "plotting needs matplotlib: pip install matplotlib" in err and "dask_pdist[plot]" not in err


def test_info_on_store_and_inputs(store, capsys, tmp_path):
    path, _ = store
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "steps: 29 (0..84)" in out and "blocks written: 5/5 (complete)" in out and "[29, 13, 13] float32" in out
    assert main(["info", str(tmp_path / "h.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "embedding_history: shape [29, 13, 7] BF16" in out and "steps: shape [29] I64" in out
