"""Clusters at a positive threshold on the GPU: the pairs within it found on the device, joined on the host.

Each snapshot goes to the device once; rows are taken a batch at a time (the device budget's
worth of (rows, V) distances, from the tile kernel of :mod:`.distances`, so bit-identical to
the CPU's); a second kernel lists the pairs ``i < j`` with ``distance <= threshold`` (NaN never
joins) into a bounded buffer, and the host joins them with the CPU engine's union-find. Where
a batch has more pairs than the buffer holds, its distances come to the host and are joined
as the CPU engine joins a tile. Labels are canonical (the smallest position of the
component), so they equal the CPU engine's whatever order the pairs are joined in.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.conventions import check_metric
from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.cluster_tiles import _flatten, _union, _union_tile
from dask_pdist.kernels.cuda.device import DEVICE_BYTES, cuda, gpu_lock, rows_per_batch, to_device_float
from dask_pdist.kernels.cuda.distances import _NO_PAIR, launch_pairs
from dask_pdist.kernels.distances import _raise_overflow

__all__ = ["EDGES", "EDGE_THREADS", "cluster_labels_cuda"]

#: Pairs one batch may list on the device (int32 pairs: 32 MiB); a batch with more is joined on the host.
EDGES = 2**22
#: Threads per block of the pair-listing kernel. Read at each call; the simulator tests use fewer.
EDGE_THREADS = 256


@cuda.jit
def _edges(dist, r0, thr, count, edges):
    # every (r0 + r, j), j > r0 + r, with dist[r, j] <= thr; count[0] may exceed the buffer
    nv = dist.shape[1]
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for e in range(start, dist.shape[0] * nv, stride):
        r = e // nv
        j = e - r * nv
        i = r0 + r
        if j > i and dist[r, j] <= thr:
            slot = cuda.atomic.add(count, 0, 1)
            if slot < edges.shape[0]:
                edges[slot, 0] = i
                edges[slot, 1] = j


@numba.njit(nogil=True, cache=True)
def _union_edges(parent, edges):
    for e in range(edges.shape[0]):
        _union(parent, edges[e, 0], edges[e, 1])


def cluster_labels_cuda(
    x: np.ndarray,
    thr: np.ndarray,
    metric: str = "chebyshev",
    *,
    step0: int = 0,
    budget: int = DEVICE_BYTES,
    max_edges: int = EDGES,
) -> np.ndarray:
    """Canonical cluster labels of each snapshot at a threshold, on the GPU.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32, float64, bf16 or f16
    thr : ndarray, shape (step,)
        A pair joins when its distance is ``<=`` the step's threshold (NaN never joins).
    metric : {"euclidean", "chebyshev"}
    step0 : int
        Position of the first step in the history, to name a pair in an error.
    budget, max_edges : int
        Device bytes for one batch's distances; pairs one batch may list on the device.

    Returns
    -------
    ndarray, shape (step, token), int32
        The smallest token position of each token's component, as the CPU engine gives.

    Examples
    --------
    >>> x = np.array([[[0.0], [0.5], [3.0]]])
    >>> cluster_labels_cuda(x, np.array([1.0]))  # doctest: +SKIP
    array([[0, 0, 2]], dtype=int32)
    """
    mi = check_metric(metric)
    if x.ndim != 3:
        raise ValueError(f"expected a (step, token, dim) block, got shape {x.shape}")
    nstep, ntok, _ = x.shape
    thr = np.asarray(thr, dtype=np.float64).reshape(-1)
    if thr.shape != (nstep,):
        raise ValueError(f"thr has shape {thr.shape}; expected one threshold per step, ({nstep},)")
    parent = np.empty((nstep, ntok), dtype=np.int32)
    parent[:] = np.arange(ntok, dtype=np.int32)
    if ntok == 0:
        return parent
    with gpu_lock():
        dtype = np.dtype(np.float64 if x.dtype == np.float64 else np.float32)  # bf16/f16 widen to float32
        rows = min(ntok, rows_per_batch(ntok, 2 * dtype.itemsize, budget))
        de = cuda.device_array((1, rows, ntok), dtype=dtype)
        dc = cuda.device_array((1, rows, ntok), dtype=dtype)
        edges = cuda.device_array((max(1, max_edges), 2), dtype=np.int32)
        for s in range(nstep):
            dx = to_device_float(x[s : s + 1])  # one snapshot on the device at a time
            for r0 in range(0, ntok, rows):
                n = min(rows, ntok - r0)
                over = cuda.to_device(np.full(1, _NO_PAIR, dtype=np.int64))
                launch_pairs(dx[:, r0 : r0 + n], dx, de[:, :n], dc[:, :n], over)
                first = int(over.copy_to_host()[0])
                if first != _NO_PAIR:
                    i, j = divmod(first, ntok)
                    _raise_overflow((s, r0 + i, j), dtype, step0, 0, 0)
                d = (de if mi == 0 else dc)[0, :n]
                count = cuda.to_device(np.zeros(1, dtype=np.int64))
                blocks = min(4096, (n * ntok + EDGE_THREADS - 1) // EDGE_THREADS)
                _edges[blocks, EDGE_THREADS](d, r0, thr[s], count, edges)
                found = int(count.copy_to_host()[0])
                if found <= edges.shape[0]:
                    _union_edges(parent[s], edges[:found].copy_to_host() if found else np.empty((0, 2), np.int32))
                else:  # more pairs than the buffer: join this batch on the host, as the CPU engine does
                    _union_tile(d.copy_to_host()[None], thr[s : s + 1], r0, 0, parent[s : s + 1])
    _flatten(parent)
    return parent
