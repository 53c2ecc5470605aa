"""Every metric of ``pairwise_distances`` against the default pair, same input, one process,
alternating (issue 22.3: each metric has a benchmark row).

    python benchmarks/metrics_rows.py [--steps 5001 --vocab 128 --dim 64 --repeats 3]

A bf16 history (the function behind ``dask-pdist synth``) is written to a temporary folder.
Each round times, on the local threaded scheduler, ``to_zarr(pairwise_distances(h,
metrics=m), store)`` into a new store (deleted after) for ``m`` in: ``("euclidean",
"chebyshev")`` (the default, the baseline), ``("manhattan",)``, ``("chebyshev_ulp",)`` and all
four at once. Prints one markdown table (medians, ratio to the default pair in the same run).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SETS = {
    "euclidean + chebyshev (default)": ("euclidean", "chebyshev"),
    "manhattan": ("manhattan",),
    "chebyshev_ulp": ("chebyshev_ulp",),
    "all four": ("euclidean", "chebyshev", "manhattan", "chebyshev_ulp"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5001)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    import dask_pdist as dp

    work = Path(tempfile.mkdtemp(prefix="metrics-bench-", dir=args.workdir))
    try:
        path = work / "h.safetensors"
        dp.write_synthetic_history(path, steps=args.steps, vocab=args.vocab, dim=args.dim)

        def run(metrics: tuple[str, ...]) -> float:
            store = work / "d.zarr"
            t0 = time.perf_counter()
            dp.to_zarr(dp.pairwise_distances(dp.open_history(path), metrics=metrics), store, progress=False)
            dt = time.perf_counter() - t0
            shutil.rmtree(store)
            return dt

        for metrics in SETS.values():  # untimed: page cache warm, kernels compiled
            run(metrics)
        times: dict[str, list[float]] = {name: [] for name in SETS}
        for _ in range(args.repeats):
            for name, metrics in SETS.items():
                times[name].append(run(metrics))
        base = statistics.median(times["euclidean + chebyshev (default)"])
        print(
            f"{args.steps} x {args.vocab} x {args.dim} bf16, to_zarr of pairwise_distances, median of"
            f" {args.repeats}, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}"
        )
        print("\n| metrics | wall s (median) | vs euclidean + chebyshev |\n|---|---|---|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.3f} | {med / base:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
