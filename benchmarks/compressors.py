"""Store compressor choice: end-to-end `dask-pdist compute` per compressor, whole processes.

Runs each compressor in turn (A B C A B C ...), reports the median wall time, the ratio to no
compression in the same run, and the store size. Usage:

    python benchmarks/compressors.py [--steps 5001] [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPRESSORS = ("none", "auto", "lz4", "zstd")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5001)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dask_pdist_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "dask_pdist"]
    hist = work / "history.safetensors"
    subprocess.run(cli + ["synth", str(hist), "--steps", str(args.steps)], check=True, capture_output=True)
    # warm-up: loads (or compiles and caches) the numba kernels outside the timed runs
    subprocess.run(
        cli + ["compute", str(hist), "-o", str(work / "warm.zarr"), "--no-progress", "--overwrite"],
        check=True,
        capture_output=True,
    )
    times: dict[str, list[float]] = {c: [] for c in COMPRESSORS}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        for comp in COMPRESSORS:
            out = work / f"{comp}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run(
                cli + ["compute", str(hist), "-o", str(out), "--compressor", comp, "--no-progress"],
                check=True,
                capture_output=True,
            )
            times[comp].append(time.perf_counter() - t0)
            sizes[comp] = _size(out)
    base = statistics.median(times["none"])
    print(f"history {args.steps} x 128 x 64 bf16, {args.rounds} rounds, whole-process median")
    print(f"{'compressor':<10} {'wall s':>8} {'vs none':>8} {'store MB':>9} {'vs none':>8}")
    for comp in COMPRESSORS:
        med = statistics.median(times[comp])
        print(f"{comp:<10} {med:8.2f} {med / base:8.2f} {sizes[comp] / 1e6:9.0f} {sizes[comp] / sizes['none']:8.2f}")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
