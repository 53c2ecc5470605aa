"""Checks of the CUDA engine under numba's CUDA simulator, run by tests/test_cuda.py.

Run as a script in a subprocess whose environment sets ``NUMBA_ENABLE_CUDASIM=1`` before
numba.cuda is imported (the test process itself never imports it). Prints one JSON object,
check name -> "ok" or the failure. Shapes are tiny (the simulator runs every GPU thread as a
Python thread) and never multiples of the tile edges; the tile geometry is made small so that
every shape spans several tiles, partial ones included, and once the real geometry is used.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import oracle, random_history  # noqa: E402

CHECKS = {}
#: tile geometry of the checks: (threads per side, pairs per thread per side, dims per stage),
#: a 6 x 6 tile staged 5 dims at a time
SMALL = (2, 3, 5)


def check(f):
    CHECKS[f.__name__] = f
    return f


def _small_geometry() -> None:
    import dask_pdist.kernels.cuda.clusters as cc
    import dask_pdist.kernels.cuda.distances as cd
    import dask_pdist.kernels.cuda.knn as ck

    cd.GEOMETRY = SMALL
    ck.LANES = 3
    cc.EDGE_THREADS = 5


def _equal(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
    assert same.all(), f"{what}: {int((~same).sum())} elements differ, first at {np.argwhere(~same)[0].tolist()}"


@check
def pairwise_equals_cpu_and_oracle():
    from dask_pdist.kernels.cuda.distances import cross_block_cuda, pairwise_block_cuda
    from dask_pdist.kernels.distances import cross_block, pairwise_block

    x = random_history((2, 11, 7), seed=3)  # tokens 9, 10: a one-ulp and an exact duplicate
    got = pairwise_block_cuda(x)
    _equal(got, pairwise_block(x), "pairwise vs CPU")
    e, c = oracle(x)
    _equal(got[1], c.astype(np.float32), "Chebyshev vs scipy (exact)")
    rel = np.abs(got[0] - e) / np.where(e > 0, e, 1)
    assert rel.max() <= 1e-6, f"Euclidean relative error {rel.max():.3g} > 1e-6"
    assert (got[:, :, np.arange(11), np.arange(11)] == 0).all(), "diagonal not exactly 0"
    assert (got[:, :, 0, 10] == 0).all(), "identical tokens not exactly 0"
    assert (got[:, :, 1, 9] > 0).all(), "one ulp apart is not 0"
    _equal(cross_block_cuda(x[:, :7], x[:, 7:]), cross_block(x[:, :7], x[:, 7:]), "cross vs CPU")


@check
def real_geometry_equals_cpu():
    import dask_pdist.kernels.cuda.distances as cd
    from dask_pdist.kernels.distances import pairwise_block

    geometry, cd.GEOMETRY = cd.GEOMETRY, (16, 4, 16)
    try:
        x = random_history((1, 6, 19), seed=4)
        _equal(cd.pairwise_block_cuda(x), pairwise_block(x), "64 x 64 tiles vs CPU")
    finally:
        cd.GEOMETRY = geometry


@check
def float64_and_half_inputs():
    import ml_dtypes

    from dask_pdist.kernels.cuda.distances import pairwise_block_cuda
    from dask_pdist.kernels.distances import pairwise_block

    x = random_history((1, 9, 11), seed=5)
    x64 = x.astype(np.float64) * np.float64(1 + 2**-40)  # digits float32 does not hold
    _equal(pairwise_block_cuda(x64), pairwise_block(x64), "float64")
    for half in (ml_dtypes.bfloat16, np.float16):
        h = x.astype(half)  # widened to float32 on the device
        _equal(pairwise_block_cuda(h), pairwise_block(h.astype(np.float32)), np.dtype(half).name)


@check
def float_edges_and_nan():
    from dask_pdist.kernels.cuda.distances import pairwise_block_cuda
    from dask_pdist.kernels.distances import pairwise_block

    y = np.zeros((1, 7, 3), np.float32)
    y[0, 1, 0] = 1e-30  # squares underflow: rescaled
    y[0, 2, 0] = 2e38  # squares overflow: rescaled
    y[0, 3, 0] = -1e38
    y[0, 4, 1] = 1e-40  # subnormal
    y[0, 5] = np.nan
    y[0, 6, 2] = -0.0
    with np.errstate(all="ignore"):
        _equal(pairwise_block_cuda(y), pairwise_block(y), "float edges")
        y[0, 3, 0] = -3e38  # tokens 2 and 3: 5e38 exceeds float32
        msgs = []
        for f in (pairwise_block_cuda, pairwise_block):
            try:
                f(y, step0=40)
            except OverflowError as exc:
                msgs.append(str(exc))
    assert len(msgs) == 2 and msgs[0] == msgs[1], msgs


@check
def knn_equals_cpu():
    from dask_pdist.kernels.cuda.knn import knn_block_cuda
    from dask_pdist.kernels.knn import knn_block

    x = random_history((2, 9, 7), seed=6)
    x[1, 3] = x[1, 4]  # ties at distance 0, broken by the smaller token
    x[1, 6] = x[1, 4]
    x[1, 5] = np.nan  # NaN distances rank last
    for metric, k in (("euclidean", 1), ("euclidean", 8), ("chebyshev", 4)):
        # a budget of 4 rows: three batches, the last one partial
        got = knn_block_cuda(x, k, metric, budget=4 * 9 * 2 * 4)
        want = knn_block(x, k, metric)
        _equal(got[0], want[0], f"{metric} k={k} neighbours")
        _equal(got[1], want[1], f"{metric} k={k} distances")


@check
def clusters_equal_cpu():
    from dask_pdist.kernels.cluster_tiles import tile_labels
    from dask_pdist.kernels.cuda.clusters import cluster_labels_cuda
    from dask_pdist.kernels.distances import pairwise_block

    x = random_history((2, 10, 7), seed=7)
    x[1, 3] = x[1, 4]
    d = pairwise_block(x)
    # the second overflows the pair buffer: joined on the host
    for metric, mi, max_edges in (("chebyshev", 1, 2**10), ("chebyshev", 1, 2), ("euclidean", 0, 2**10)):
        thr = np.array([np.sort(d[mi, 0].ravel())[24], 0.0])  # step 1: identical tokens only
        want = np.stack([tile_labels(d[mi, s : s + 1], thr[s : s + 1], 0, 0, 10)[0] for s in range(2)])
        assert (want != np.arange(10)).any(), "the threshold joins nothing: the check would be empty"
        got = cluster_labels_cuda(x, thr, metric, budget=4 * 10 * 2 * 4, max_edges=max_edges)
        _equal(got, want, f"{metric} labels, {max_edges} pair slots")


@check
def engines_give_identical_datasets():
    import dask
    import xarray as xr

    import dask_pdist as dp
    from dask_pdist.kernels.engine import resolve_engine

    assert resolve_engine("auto") == "cuda", "auto should pick the (simulated) GPU"
    x = random_history((3, 11, 5), seed=8)
    h = xr.DataArray(x, dims=("step", "token", "dim")).chunk({"step": 2})
    with dask.config.set(scheduler="threads"):
        got = dp.pairwise_distances(h, engine="cuda", token_chunk=4).compute()  # 3 x 3 tiles
        xr.testing.assert_identical(got, dp.pairwise_distances(h, token_chunk=4).compute())
        got = dp.neighbours(h, k=3, engine="cuda", token_chunk=4).compute()
        xr.testing.assert_identical(got, dp.neighbours(h, k=3, token_chunk=4).compute())
        got = dp.clusters(h, 0.7, engine="cuda").compute()
        want = dp.clusters(h, 0.7).compute()
        assert (want.n_clusters > 0).any(), "the threshold joins nothing: the check would be empty"
        xr.testing.assert_identical(got, want)


def main() -> None:
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1 (see tests/test_cuda.py)"
    _small_geometry()
    # the simulator's block runner polls its threads while they run: a shorter switch
    # interval than the default 5 ms makes it several times faster
    sys.setswitchinterval(0.0005)
    results = {}
    for name in sys.argv[1:] or CHECKS:
        try:
            CHECKS[name]()
            results[name] = "ok"
        except Exception:  # report every check, not only the first failure
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
