"""pytest's doctest collection of the package (``--doctest-modules``): names the examples use."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

collect_ignore = ["dask_pdist/__main__.py"]  # runs the CLI when imported
# the CUDA engine's modules import numba.cuda: they are tested under numba's CUDA simulator in
# subprocesses (tests/test_cuda.py), never imported by this process
collect_ignore_glob = ["dask_pdist/kernels/cuda/*"]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(np=np, xr=xr, da=da)


def pytest_collection_modifyitems(items):
    # a docstring whose every example is marked +SKIP (it needs a real history or store) is
    # documentation, not a test: drop it instead of reporting it as a skipped test
    import doctest

    from _pytest.doctest import DoctestItem

    items[:] = [
        item
        for item in items
        if not (
            isinstance(item, DoctestItem)
            and item.dtest is not None
            and item.dtest.examples
            and all(ex.options.get(doctest.SKIP) for ex in item.dtest.examples)
        )
    ]
