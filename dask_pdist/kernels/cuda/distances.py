"""Both metrics in one pass on the GPU: shared-memory tiles, the CPU kernels' results bit for bit.

A block of ``THREADS x THREADS`` threads computes a ``TILE x TILE`` tile of pairs, each thread
``MICRO x MICRO`` of them; the rows of both sides are staged in shared memory ``DIMS`` dims at
a time (:data:`GEOMETRY`). Each pair is reduced over the dims in ascending order with separately rounded
products and sums (:mod:`.device`), exactly as :mod:`dask_pdist.kernels.distances` does on the
CPU, so the Euclidean distance is the CPU's bit for bit (and the Chebyshev distance, a max of
exact differences, is in any order). The rare pairs whose sum of squares overflowed or lost
digits to underflow are recomputed on the device, scaled by their Chebyshev distance in
float64, as the CPU's ``_scaled`` does.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import from_dtype

from dask_pdist.conventions import METRICS
from dask_pdist.kernels.cuda.device import arith, cuda, gpu_lock, to_device_float
from dask_pdist.kernels.distances import _raise_overflow, _scaling_bound

__all__ = ["GEOMETRY", "pair_kernel", "launch_pairs", "pairwise_block_cuda", "cross_block_cuda"]

#: (threads per side of a block, pairs per thread per side, dims staged in shared memory at a
#: time): a block computes a 64 x 64 tile. Read at each launch; the simulator tests use a
#: smaller one (the simulator runs every thread as a Python thread).
GEOMETRY = (16, 4, 16)

_NO_PAIR = np.iinfo(np.int64).max


@functools.cache
def pair_kernel(dtype_name: str, geometry: tuple[int, int, int] = GEOMETRY):  # noqa: ANN201 - a CUDA kernel
    """The tile kernel for one float dtype and geometry (compiled on first use, then cached).

    ``kernel[grid, (THREADS, THREADS)](xa, xb, out_e, out_c, e_low, over)``: ``xa`` (S, Na, D)
    and ``xb`` (S, Nb, D) on the device, one step per ``blockIdx.z``; writes the (S, Na, Nb)
    Euclidean and Chebyshev distances; ``over[s]`` receives the smallest flat index
    ``i * Nb + j`` of a distance of step s that exceeds the dtype although the input is
    finite (left alone otherwise).
    """
    THREADS, MICRO, DIMS = geometry  # noqa: N806 - constants of the compiled kernel
    TILE = THREADS * MICRO  # noqa: N806
    dtype = np.dtype(dtype_name)
    mul, add = arith(dtype)
    _, dadd = arith(np.float64)
    dmul, _ = arith(np.float64)
    ntype = from_dtype(dtype)
    narrow = np.float32 if dtype == np.float32 else np.float64

    @cuda.jit(device=True)
    def rescaled(xa, s, i, xb, j, m, over, flat):
        # the CPU's _scaled: m * sqrt(sum(((a - b) / m)^2)) in float64, rounded once by the store
        nd = xa.shape[2]
        if m == math.inf:
            for d in range(nd):
                if not (math.isfinite(xa[s, i, d]) and math.isfinite(xb[s, j, d])):
                    return math.inf  # an infinite input: an infinite distance, as scipy gives
            cuda.atomic.min(over, s, flat)
            return math.inf
        m64 = np.float64(m)
        acc = np.float64(0.0)
        for d in range(nd):
            t = (np.float64(xa[s, i, d]) - np.float64(xb[s, j, d])) / m64
            acc = dadd(acc, dmul(t, t))
        r = m64 * math.sqrt(acc)
        if narrow(r) == math.inf:
            cuda.atomic.min(over, s, flat)
        return r

    @cuda.jit
    def kernel(xa, xb, out_e, out_c, e_low, over):
        na = xa.shape[1]
        nb = xb.shape[1]
        nd = xa.shape[2]
        s = cuda.blockIdx.z
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.y * TILE
        j0 = cuda.blockIdx.x * TILE
        sa = cuda.shared.array((DIMS, TILE), ntype)
        sb = cuda.shared.array((DIMS, TILE), ntype)
        acc = cuda.local.array((MICRO, MICRO), ntype)
        mx = cuda.local.array((MICRO, MICRO), ntype)
        av = cuda.local.array(MICRO, ntype)
        bv = cuda.local.array(MICRO, ntype)
        for a in range(MICRO):
            for b in range(MICRO):
                acc[a, b] = 0
                mx[a, b] = 0
        tid = ty * THREADS + tx
        for d0 in range(0, nd, DIMS):
            # consecutive threads read consecutive dims of a row: coalesced
            for e in range(tid, DIMS * TILE, THREADS * THREADS):
                r = e // DIMS
                dd = e - r * DIMS
                d = d0 + dd
                if d < nd and i0 + r < na:
                    sa[dd, r] = xa[s, i0 + r, d]
                else:
                    sa[dd, r] = 0
                if d < nd and j0 + r < nb:
                    sb[dd, r] = xb[s, j0 + r, d]
                else:
                    sb[dd, r] = 0
            cuda.syncthreads()
            for dd in range(min(DIMS, nd - d0)):
                for a in range(MICRO):
                    av[a] = sa[dd, ty + a * THREADS]
                for b in range(MICRO):
                    bv[b] = sb[dd, tx + b * THREADS]
                for a in range(MICRO):
                    for b in range(MICRO):
                        t = av[a] - bv[b]
                        acc[a, b] = add(acc[a, b], mul(t, t))
                        u = abs(t)
                        if u > mx[a, b]:  # NaN compares False: see the NaN copy below
                            mx[a, b] = u
            cuda.syncthreads()
        for a in range(MICRO):
            i = i0 + ty + a * THREADS
            if i >= na:
                continue
            for b in range(MICRO):
                j = j0 + tx + b * THREADS
                if j >= nb:
                    continue
                v = acc[a, b]
                e = math.sqrt(v)
                m = mx[a, b]
                if v != v:
                    m = v  # a NaN in the pair: NaN for both metrics, as the CPU kernels give
                if (e < e_low and m > 0) or e == math.inf:
                    out_e[s, i, j] = rescaled(xa, s, i, xb, j, m, over, i * nb + j)
                else:
                    out_e[s, i, j] = e
                out_c[s, i, j] = m

    return kernel


def launch_pairs(xa, xb, out_e, out_c, over) -> None:  # noqa: ANN001 - numba device arrays
    """Run the tile kernel on device arrays ``xa`` (S, Na, D), ``xb`` (S, Nb, D) into (S, Na, Nb) outputs.

    ``over`` (S,) int64, filled with the largest int64: see :func:`pair_kernel`.
    """
    nstep, na, nd = xa.shape
    nb = xb.shape[1]
    dtype = np.dtype(xa.dtype)
    e_low = _scaling_bound(dtype, nd)
    threads, micro, _ = GEOMETRY
    tile = threads * micro
    grid = ((nb + tile - 1) // tile, (na + tile - 1) // tile, nstep)
    pair_kernel(dtype.name, GEOMETRY)[grid, (threads, threads)](xa, xb, out_e, out_c, e_low, over)


def _blocks(xa: np.ndarray, xb: np.ndarray | None, step0: int, token0_a: int, token0_b: int) -> np.ndarray:
    if xa.ndim != 3 or (xb is not None and xb.ndim != 3):
        shapes = f"{xa.shape}" if xb is None else f"{xa.shape}, {xb.shape}"
        raise ValueError(f"expected (step, token, dim) blocks, got shapes {shapes}")
    if xb is not None and (xa.dtype != xb.dtype or xa.shape[0] != xb.shape[0] or xa.shape[2] != xb.shape[2]):
        raise ValueError(f"mismatched blocks: {xa.shape} {xa.dtype} vs {xb.shape} {xb.dtype}")
    with gpu_lock():
        da = to_device_float(xa)
        db = da if xb is None else to_device_float(xb)
        dtype = np.dtype(da.dtype)
        nstep, na, nd = da.shape
        nb = db.shape[1]
        out = cuda.device_array((len(METRICS), nstep, na, nb), dtype=dtype)
        over = cuda.to_device(np.full(nstep, _NO_PAIR, dtype=np.int64))
        launch_pairs(da, db, out[0], out[1], over)
        host = out.copy_to_host()
        first = over.copy_to_host()
    bad = np.flatnonzero(first != _NO_PAIR)
    if bad.size:
        s = int(bad[0])
        i, j = divmod(int(first[s]), nb)
        _raise_overflow((s, i, j), dtype, step0, token0_a, token0_b)
    return host


def pairwise_block_cuda(x: np.ndarray, *, step0: int = 0, token0: int = 0) -> np.ndarray:
    """:func:`dask_pdist.kernels.distances.pairwise_block` on the GPU, bit for bit.

    Also takes bf16 and f16 blocks, widened to float32 on the device (half the transfer).

    Examples
    --------
    >>> pairwise_block_cuda(np.array([[[0.0, 0.0], [3.0, -4.0]]]))[:, 0, 0, 1]  # doctest: +SKIP
    array([5., 4.])
    """
    return _blocks(x, None, step0, token0, token0)


def cross_block_cuda(
    xa: np.ndarray, xb: np.ndarray, *, step0: int = 0, token0_a: int = 0, token0_b: int = 0
) -> np.ndarray:
    """:func:`dask_pdist.kernels.distances.cross_block` on the GPU, bit for bit.

    Examples
    --------
    >>> cross_block_cuda(np.zeros((1, 1, 2)), np.array([[[3.0, -4.0]]]))[:, 0, 0, 0]  # doctest: +SKIP
    array([5., 4.])
    """
    return _blocks(xa, xb, step0, token0_a, token0_b)
