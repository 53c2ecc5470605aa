"""Where the CUDA pair kernel's time goes: one short run on a GPU machine (issue 24 follow-up).

    python benchmarks/gpu_probe.py            # about a minute on one H200
    python benchmarks/gpu_probe.py --quick    # tiny, under numba's simulator too: a smoke test

benchmarks/gpu.py found exact k=10 neighbours at V=50,304, D=512 taking 61 s on an H200 against
0.11 s for torch (the CPU engine takes 16 s on 2 cores). This times, at one (V, V) batch of
float32 pairs, the tile kernel alone in several geometries, with the correctly rounded
intrinsics and with plain operators (to see what the exactness costs), the top-k kernel alone,
and torch.cdist on the same data; and counts the local-memory loads and stores in each
variant's PTX (arrays the compiler could not keep in registers).
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np


def _sync() -> None:
    from numba import cuda

    cuda.synchronize()


def _time(f, repeat: int = 2) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        f()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    """Print one line per variant: seconds, pair-dims per second, local loads/stores in PTX."""
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    from numba import cuda

    import dask_pdist.kernels.cuda.distances as dist
    from dask_pdist.kernels.cuda import device
    from dask_pdist.kernels.cuda.knn import select_kernel

    v, d = (67, 9) if args.quick else (8192, 512)
    x = np.random.default_rng(0).standard_normal((1, v, d), dtype=np.float32)
    dx = cuda.to_device(x)
    de = cuda.device_array((1, v, v), dtype=np.float32)
    dc = cuda.device_array((1, v, v), dtype=np.float32)
    over = cuda.to_device(np.full(1, dist._NO_PAIR, dtype=np.int64))
    e_low = dist._scaling_bound(np.dtype(np.float32), d)

    @cuda.jit(device=True, inline=True)
    def plain_mul(a, b):
        return a * b

    @cuda.jit(device=True, inline=True)
    def plain_add(a, b):
        return a + b

    exact_arith = device.arith
    print(f"# V={v} D={d} float32, one launch: {v * v * d:.3g} pair-dims")
    ref = None
    for arith_name in ("rn intrinsics", "plain ops"):
        dist.arith = exact_arith if arith_name == "rn intrinsics" else (lambda dt: (plain_mul, plain_add))
        for geometry in ((16, 4, 16), (16, 2, 16), (16, 1, 16), (8, 4, 16), (16, 4, 32), (16, 8, 8)):
            dist.pair_kernel.cache_clear()
            threads, micro, _ = geometry
            tile = threads * micro
            grid = ((v + tile - 1) // tile, (v + tile - 1) // tile, 1)
            kern = dist.pair_kernel("float32", geometry)
            t_compile = _time(
                lambda kern=kern, grid=grid, threads=threads: kern[grid, (threads, threads)](
                    dx, dx, de, dc, e_low, over
                ),
                repeat=1,
            )
            t = _time(
                lambda kern=kern, grid=grid, threads=threads: kern[grid, (threads, threads)](
                    dx, dx, de, dc, e_low, over
                )
            )
            local = "n/a"
            try:
                ptx = next(iter(kern.inspect_asm().values()))
                local = f"{len(re.findall(r'ld.local', ptx))} ld.local, {len(re.findall(r'st.local', ptx))} st.local"
            except Exception as e:  # noqa: BLE001 - the simulator has no PTX
                local = f"no PTX ({type(e).__name__})"
            out = de.copy_to_host()
            same = "" if ref is None else ("same bits" if np.array_equal(out, ref, equal_nan=True) else "BITS DIFFER")
            ref = out if ref is None else ref
            rate = f"{v * v * d / t:.3g} pair-dims/s; first call {t_compile:.2f} s"
            print(f"pairs {arith_name:14s} geometry {geometry}: {t:.4f} s ({rate}) {local} {same}", flush=True)
    dist.arith = exact_arith
    sel = select_kernel("float32", 10, 32)
    nbr = cuda.device_array((v, 10), dtype=np.int64)
    out = cuda.device_array((v, 10), dtype=np.float32)
    t = _time(lambda: sel[v, 32](de[0], 0, nbr, out))
    print(f"top-k select k=10, {v} rows x {v}: {t:.4f} s", flush=True)
    try:
        import torch

        if torch.cuda.is_available():
            tx = torch.from_numpy(x[0]).cuda()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(2):
                torch.cdist(tx, tx)
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            torch.cdist(tx, tx, p=float("inf"))
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            torch.cdist(tx, tx, p=float("inf"))
            torch.cuda.synchronize()
            print(f"torch.cdist p=2 {(t1 - t0) / 2:.4f} s, p=inf {time.perf_counter() - t2:.4f} s", flush=True)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
