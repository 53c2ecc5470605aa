"""pytest's doctest collection of the package (``--doctest-modules``): names the examples use."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

collect_ignore = ["dask_pdist/__main__.py"]  # runs the CLI when imported


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(np=np, xr=xr, da=da)
