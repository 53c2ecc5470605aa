"""A new user's first hour with the Python API (issue 9): messages that name where, to_zarr."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from dask_pdist import pairwise_distances


@pytest.mark.parametrize("token_chunk", ["auto", 2])
def test_float16_overflow_names_step_label_and_pair(token_chunk):
    x = np.zeros((5, 4, 3), np.float32)
    x[3, 3, 1] = 1e5  # step index 3 (label 400): token 3 is far from tokens 0, 1, 2
    steps = [100, 200, 300, 400, 500]
    history = xr.DataArray(da.from_array(x, chunks=(2, 4, 3)), dims=("step", "token", "dim"), coords={"step": steps})
    ds = pairwise_distances(history, dtype="float16", token_chunk=token_chunk)
    with pytest.raises(OverflowError, match=r"distance 100000 at step 400 between tokens [012] and 3 exceeds float16"):
        ds.euclidean.values  # noqa: B018
