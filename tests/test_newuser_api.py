"""A new user's first hour with the Python API (issue 9): messages that name where, to_zarr."""

from __future__ import annotations

import io
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from conftest import random_history
from dask_pdist import open_distances, pairwise_distances, to_zarr


@pytest.mark.parametrize("token_chunk", ["auto", 2])
def test_float16_overflow_names_step_label_and_pair(token_chunk):
    x = np.zeros((5, 4, 3), np.float32)
    x[3, 3, 1] = 1e5  # step index 3 (label 400): token 3 is far from tokens 0, 1, 2
    steps = [100, 200, 300, 400, 500]
    history = xr.DataArray(da.from_array(x, chunks=(2, 4, 3)), dims=("step", "token", "dim"), coords={"step": steps})
    ds = pairwise_distances(history, dtype="float16", token_chunk=token_chunk)
    with pytest.raises(
        OverflowError, match=r"distance 100000 at step 400 between tokens ([012] and 3|3 and [012]) exceeds float16"
    ):
        ds.euclidean.values  # noqa: B018


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_to_zarr_returns_the_store_opened_and_shows_progress_when_watched(tmp_path, capsys, monkeypatch):
    x = random_history((11, 6, 3))
    history = xr.DataArray(da.from_array(x, chunks=(4, 6, 3)), dims=("step", "token", "dim"))
    ds = pairwise_distances(history)
    written = to_zarr(ds, tmp_path / "a.zarr")  # not a terminal (pytest captures): no bar
    assert isinstance(written, xr.Dataset) and written.euclidean.chunks[0] == (4, 4, 3)
    xr.testing.assert_identical(written, open_distances(tmp_path / "a.zarr"))
    np.testing.assert_array_equal(written.chebyshev.values, np.abs(x[:, :, None] - x[:, None]).max(-1))
    assert capsys.readouterr().err == ""
    to_zarr(ds, tmp_path / "b.zarr", progress=True)
    assert "writing: 100%" in capsys.readouterr().err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    to_zarr(ds, tmp_path / "c.zarr")  # default: on in a terminal
    assert "writing: 100%" in terminal.getvalue()
    before = terminal.getvalue()
    to_zarr(ds, tmp_path / "d.zarr", progress=False)
    assert terminal.getvalue() == before


def test_plots_never_switch_the_callers_matplotlib_backend(tmp_path, monkeypatch):
    import matplotlib

    from dask_pdist import summarize
    from dask_pdist.analyses.plotting import plot_summary

    def refuse(*args, **kwargs):
        raise AssertionError("plotting switched the matplotlib backend (a notebook would stop showing plots inline)")

    monkeypatch.setattr(matplotlib, "use", refuse)
    x = random_history((7, 5, 3))
    ds = pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")))
    plot_summary(summarize(ds).compute(), ds, 6, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
