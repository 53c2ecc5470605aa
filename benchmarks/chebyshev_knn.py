"""Chebyshev neighbours' kernels against the machine's read rates and torch, in one process.

    python benchmarks/chebyshev_knn.py --vocab 8192 --dim 512 --rounds 3

One thread each (numba's kernels are single-threaded; torch is set to one thread), CPU
seconds of this process, alternating rounds, medians. On one snapshot of V Gaussian float32
tokens, k = 10, every unordered pair once (V (V - 1) / 2 x D pair-dims):

* ``tile kernel``: the shared row routine (Euclidean, Chebyshev and L1 accumulators), one row
  at a time over a (D x tile) tile;
* ``max-only``: :mod:`dask_pdist.kernels.knn_chebyshev` (what ``knn_pairs`` takes now);
* ``torch``: ``torch.topk(torch.cdist(x[r0:r1], x, p=inf), k + 1)`` in 1,024-row blocks (it
  computes both (i, j) and (j, i): V^2 x D pair-dims, reported as work per unordered pair).

And the read rates one core reaches here (a float32 sum in numba): from memory (256 MiB) and
from L2 (256 KiB); a one-row kernel loads one float per pair-dim, so these bound it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dask_pdist.kernels._jit import numba
from dask_pdist.kernels.distances import _scaling_bound
from dask_pdist.kernels.knn import QUERY_ROWS, _knn_pairs, knn_pairs, knn_tile
from dask_pdist.kernels.knn_lists import _empty_lists


@numba.njit(fastmath=True)
def _read(a, reps):  # floats read per second bound a kernel that loads one per pair-dim
    s = np.float32(0)
    for _ in range(reps):
        for i in range(a.shape[0]):
            s += a[i]
    return s


def _rate(n: int, reps: int) -> float:
    a = np.ones(n, np.float32)
    _read(a, 1)
    t = time.process_time()
    _read(a, reps)
    return n * reps / (time.process_time() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-k", type=int, default=10)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    v, d, k = args.vocab, args.dim, args.k
    x = np.random.default_rng(0).standard_normal((1, v, d), dtype=np.float32) * 0.02
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    tile = knn_tile(d, v, 4)
    e_low = _scaling_bound(np.dtype(np.float32), d)

    def tile_kernel():
        rn, rd = _empty_lists(1, v, k, np.float32)
        _knn_pairs(xt, 0, 0, v, 1, QUERY_ROWS, tile, rn, rd, rn, rd, e_low)
        return rn, rd

    def max_only():
        return knn_pairs(xt, (0, v), (0, v), k, 1, QUERY_ROWS, tile)[:2]

    xx = torch.from_numpy(x[0])

    def torch_cdist():
        for r0 in range(0, v, 1024):
            torch.topk(torch.cdist(xx[r0 : r0 + 1024], xx, p=float("inf")), k + 1, largest=False)

    a, b = tile_kernel(), max_only()  # warm-up (compiles), and the two agree bit for bit
    assert (a[0] == b[0]).all() and (a[1].view(np.int32) == b[1].view(np.int32)).all()
    torch_cdist()
    methods = {"tile kernel": tile_kernel, "max-only": max_only, "torch.cdist(p=inf)": torch_cdist}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for name, f in methods.items():
            t = time.process_time()
            f()
            cpu[name].append(time.process_time() - t)
    pair_dims = v * (v - 1) / 2 * d
    mem, l2 = _rate(64 * 2**20, 3), _rate(2**16, 3000)
    print(f"V = {v}, D = {d}, k = {k}, one thread, {args.rounds} alternating rounds, CPU s medians")
    print(
        f"read rate, one core: memory {mem / 1e9:.1f} G floats/s ({mem * 4 / 1e9:.0f} GB/s),"
        f" L2 {l2 / 1e9:.1f} G floats/s"
    )
    base = statistics.median(cpu["tile kernel"])
    for name, ts in cpu.items():
        med = statistics.median(ts)
        print(
            f"{name:20s} {med:7.3f} s  {pair_dims / med / 1e9:6.2f} G pair-dims/s (per unordered pair)"
            f"  {pair_dims / med / l2:5.2f}x the L2 read rate  {med / base:5.3f}x the tile kernel"
        )


if __name__ == "__main__":
    main()
