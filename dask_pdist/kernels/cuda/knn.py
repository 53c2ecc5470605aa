"""Exact k nearest neighbours on the GPU: distance rows from the tile kernel, then a top-k pass.

Each snapshot goes to the device once; its rows are taken a batch at a time (as many as the
device budget holds of (rows, V) distances), every distance coming from the tile kernel of
:mod:`.distances`, so bit-identical to the CPU kernels' and to the distance store's. A second
kernel keeps each row's k nearest: one thread block per row, each of its ``lanes`` threads
scanning every ``lanes``-th candidate (coalesced reads) into its own sorted list, then one
thread merging the lists. The order is the CPU's: (distance, token), NaN last, a token never
its own neighbour; a top-k under one total order does not depend on the order candidates
arrive in, so the lists equal :func:`dask_pdist.kernels.knn.knn_block`'s.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import from_dtype, int64

from dask_pdist.conventions import Metric, check_metric
from dask_pdist.kernels.cuda.device import DEVICE_BYTES, cuda, gpu_lock, rows_per_batch, to_device_float
from dask_pdist.kernels.cuda.distances import _NO_PAIR, launch_pairs
from dask_pdist.kernels.distances import _raise_overflow
from dask_pdist.kernels.knn import check_k

__all__ = ["MAX_K", "LANES", "lanes_for", "select_kernel", "knn_block_cuda"]

#: The largest k of the CUDA engine: the lanes' lists of one row share 2048 entries of shared memory.
MAX_K = 2048
#: Threads per row of the top-k kernel (a warp). Read at each call; the simulator tests use fewer.
LANES = 32


@cuda.jit(device=True)
def _before(v, j, w, jw):
    # (distance, token) order: smaller distance first, then smaller token; NaN last
    if v != v:
        return w != w and j < jw
    if w != w or v < w:
        return True
    return v == w and j < jw


@cuda.jit(device=True)
def _insert(nr, dr, v, j, k):
    # offer candidate j at distance v to one sorted top-k; empty slots hold -1
    if nr[k - 1] != -1 and not _before(v, j, dr[k - 1], nr[k - 1]):
        return
    p = k - 1
    while p > 0 and (nr[p - 1] == -1 or _before(v, j, dr[p - 1], nr[p - 1])):
        nr[p] = nr[p - 1]
        dr[p] = dr[p - 1]
        p -= 1
    nr[p] = j
    dr[p] = v


def lanes_for(k: int) -> int:
    """Threads per row of the top-k kernel: :data:`LANES`, fewer for a large k (their lists share 2048 slots).

    >>> lanes_for(10), lanes_for(100), lanes_for(2048)
    (32, 20, 1)
    """
    return max(1, min(LANES, MAX_K // k))


@functools.cache
def select_kernel(dtype_name: str, k: int, lanes: int):  # noqa: ANN201 - a numba CUDA kernel
    """The top-k kernel for one dtype, k and lane count (compiled on first use, then cached).

    ``kernel[rows, lanes](dist, r0, nbr, out)``: ``dist`` (rows, V) distances of tokens
    ``r0 ..`` to every token; writes each row's k nearest (int64 tokens, distances).
    """
    ntype = from_dtype(np.dtype(dtype_name))

    @cuda.jit
    def kernel(dist, r0, nbr, out):
        r = cuda.blockIdx.x
        lane = cuda.threadIdx.x
        i = r0 + r
        nv = dist.shape[1]
        ln = cuda.local.array(k, int64)
        ld = cuda.local.array(k, ntype)
        for q in range(k):
            ln[q] = -1
            ld[q] = math.nan
        for j in range(lane, nv, lanes):
            if j != i:
                _insert(ln, ld, dist[r, j], j, k)
        sn = cuda.shared.array((lanes, k), int64)
        sd = cuda.shared.array((lanes, k), ntype)
        for q in range(k):
            sn[lane, q] = ln[q]
            sd[lane, q] = ld[q]
        cuda.syncthreads()
        if lane == 0:
            for p in range(1, lanes):
                for q in range(k):
                    if sn[p, q] != -1:
                        _insert(ln, ld, sd[p, q], sn[p, q], k)
            for q in range(k):
                nbr[r, q] = ln[q]
                out[r, q] = ld[q]

    return kernel


def knn_block_cuda(
    x: np.ndarray, k: int, metric: Metric = "euclidean", *, step0: int = 0, budget: int = DEVICE_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dask_pdist.kernels.knn.knn_block` on the GPU: the same lists, bit for bit.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32, float64, bf16 or f16
        bf16/f16 are widened to float32 on the device.
    k : int
        ``1 <= k <= min(token - 1, MAX_K)``.
    metric : {"euclidean", "chebyshev"}
    step0 : int
        Position of the first step in the history, to name a pair in an error.
    budget : int
        Device bytes for the (rows, V) distance buffers of one batch.

    Returns
    -------
    (neighbour, distance) : ndarrays, shape (step, token, k)
        int64 token positions and distances (float32, or float64 for float64 input).

    Examples
    --------
    >>> knn_block_cuda(np.array([[[0.0], [3.0], [1.0], [1.0]]]), 2)[0][0].tolist()  # doctest: +SKIP
    [[2, 3], [2, 3], [3, 0], [2, 0]]
    """
    m = check_metric(metric)
    if x.ndim != 3:
        raise ValueError(f"expected a (step, token, dim) block, got shape {x.shape}")
    nstep, ntok, _ = x.shape
    k = check_k(k, ntok)
    if k > MAX_K:
        raise ValueError(f"k={k}: engine='cuda' takes k <= {MAX_K}; use engine='cpu' for a larger k")
    lanes = lanes_for(k)
    with gpu_lock():
        dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)  # bf16/f16 widen to float32
        rows = min(ntok, rows_per_batch(ntok, 2 * dtype.itemsize, budget))
        de = cuda.device_array((1, rows, ntok), dtype=dtype)
        dc = cuda.device_array((1, rows, ntok), dtype=dtype)
        select = select_kernel(dtype.name, k, lanes)
        nbr = np.empty((nstep, ntok, k), dtype=np.int64)
        dist = np.empty((nstep, ntok, k), dtype=dtype)
        dn = cuda.device_array((ntok, k), dtype=np.int64)
        dd = cuda.device_array((ntok, k), dtype=dtype)
        for s in range(nstep):
            dx = to_device_float(x[s : s + 1])  # one snapshot on the device at a time
            for r0 in range(0, ntok, rows):
                n = min(rows, ntok - r0)
                over = cuda.to_device(np.full(1, _NO_PAIR, dtype=np.int64))
                launch_pairs(dx[:, r0 : r0 + n], dx, de[:, :n], dc[:, :n], over)
                select[n, lanes]((de if m == 0 else dc)[0, :n], r0, dn[r0 : r0 + n], dd[r0 : r0 + n])
                first = int(over.copy_to_host()[0])
                if first != _NO_PAIR:
                    i, j = divmod(first, ntok)  # within the batch: its rows are tokens r0 ..
                    _raise_overflow((s, r0 + i, j), dtype, step0, 0, 0)
            nbr[s] = dn.copy_to_host()
            dist[s] = dd.copy_to_host()
    return nbr, dist
