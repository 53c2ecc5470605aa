"""Per-task throughput for docs/scaling.md: the kernel alone (one thread) at the two job
shapes, and a whole compute task (read + kernel + zarr write) on one thread.

    python benchmarks/scaling_probe.py [--rounds 5]

Prints medians. Single-threaded on purpose: a cluster's throughput is per-core rate x cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dask
import numpy as np


def _median_time(fn, rounds: int) -> float:
    fn()  # warm: compile / cache load, first touch
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import dask_pdist as dp
    from dask_pdist.kernels.distances import cross_block, pairwise_block

    rng = np.random.default_rng(0)
    rows = []

    # 1. the 16-run job's task: 128 steps x 128 tokens x 128 dims (auto chunk at V=128)
    x = rng.standard_normal((128, 128, 128)).astype(np.float32)
    t = _median_time(lambda: pairwise_block(x), args.rounds)
    rows.append(("kernel, 128 steps x 128 tokens x 128 dims (one task)", t, 128 * 128 * 128 * 128))

    # 2. the subset job's tile: one step, a 1448 x 1448 tile (auto tile edge), 512 dims
    a = rng.standard_normal((1, 1448, 512)).astype(np.float32)
    b = rng.standard_normal((1, 1448, 512)).astype(np.float32)
    t = _median_time(lambda: cross_block(a, b), max(1, args.rounds // 2))
    rows.append(("kernel, 1448 x 1448 tile, 512 dims (one task)", t, 1448 * 1448 * 512))

    for label, t, pair_dims in rows:
        print(f"{label}: {t * 1e3:.0f} ms, {pair_dims / t / 1e9:.2f} G pair-dims/s")

    # 3. whole tasks on one thread: read bf16 history, kernel, write both metrics (lz4 + crc32c)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "h.safetensors"
        dp.write_synthetic_history(src, steps=1024, vocab=128, dim=128, seed=1)
        history = dp.open_history(src)
        n_tasks = len(history.chunks[0])
        out_bytes = 2 * 1024 * 128 * 128 * 4
        k = 0

        def run() -> None:
            nonlocal k
            k += 1
            ds = dp.pairwise_distances(history)
            with dask.config.set(scheduler="synchronous"):
                dp.to_zarr(ds, Path(tmp) / f"d{k}.zarr")

        t = _median_time(run, max(1, args.rounds // 2))
        print(
            f"whole compute, 1024 x 128 x 128 bf16 -> 2 x float32 ({n_tasks} tasks, one thread): {t:.2f} s,"
            f" {t / n_tasks * 1e3:.0f} ms per task, {out_bytes / t / 1e6:.0f} MB/s written"
        )


if __name__ == "__main__":
    main()
