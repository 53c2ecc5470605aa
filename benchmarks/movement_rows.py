"""Movement, divergence and distinct-count throughput against plain reading of the same input, in
one process, alternating (issue 22).

    python benchmarks/movement_rows.py [--steps 501 --vocab 4096 --dim 64 --repeats 3]
    python benchmarks/movement_rows.py --input big.safetensors  # an existing bf16 history, kept

A bf16 history (the function behind ``dask-pdist synth``) is written to a temporary folder
(``--input``: that file instead; at 5001 x 10,000 x 64, 6.4 GB, writing it takes minutes).
Each round times, on the local threaded scheduler, in this order:

- **read**: ``open_history(p, chunks=c).data.max().compute()`` (read, widen, finiteness check,
  a reduction: the floor any pass over the input pays);
- **movement**: ``movement(open_history(p, chunks=c)).compute()`` (lag 1, every variable, in
  memory);
- **movement -> zarr**: :func:`write_comparison` of the same into a new store (deleted after);
- **divergence**: the history against itself shifted by nothing (two runs, same file), in memory;
- **distinct**: :func:`distinct_count`.

``c`` is the chunk ``dask-pdist movement`` reads with. Prints one markdown table (medians,
GB/s of bf16 input read) to paste into results.md.

``--rss-steps 301,2001``: then also the peak RSS (VmHWM) of writing movement to a store, each in
a fresh process, for histories of those step counts (``--vocab`` x ``--dim``, written first):
it should not grow with the steps.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RSS_CHILD = """
import sys, dask_pdist as dp
from dask_pdist.graphs.movement import movement_step_chunk
h = dp.open_history(sys.argv[1])
c = movement_step_chunk(h.sizes["token"], h.sizes["dim"])
dp.write_comparison(dp.movement(dp.open_history(sys.argv[1], chunks=c)), sys.argv[2])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def _peak_rss(work: Path, steps: int, vocab: int, dim: int) -> float:
    # MB: the peak RSS of a fresh process writing movement of a new history of `steps` steps
    import dask_pdist as dp

    path = work / f"rss{steps}.safetensors"
    dp.write_synthetic_history(path, steps=steps, vocab=vocab, dim=dim)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(path), str(work / f"rss{steps}.zarr")],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        path.unlink()
        shutil.rmtree(work / f"rss{steps}.zarr", ignore_errors=True)
    return int(out.stdout.split()[-1]) / 1024


def _time(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=501)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--input", default=None, help="an existing bf16 history (its shape overrides --steps etc.)")
    p.add_argument("--rss-steps", default="", help="comma-separated step counts: peak RSS of movement -> zarr")
    args = p.parse_args()

    import dask_pdist as dp
    from dask_pdist.graphs.movement import movement_step_chunk

    work = Path(tempfile.mkdtemp(prefix="movement-bench-", dir=args.workdir))
    try:
        if args.input:
            path = Path(args.input)
            args.steps, args.vocab, args.dim = dp.open_history(path).shape
        else:
            path = work / "h.safetensors"
            dp.write_synthetic_history(path, steps=args.steps, vocab=args.vocab, dim=args.dim)
        nbytes = args.steps * args.vocab * args.dim * 2
        chunk = movement_step_chunk(args.vocab, args.dim)

        def history():  # noqa: ANN202
            return dp.open_history(path, chunks=chunk)

        def to_store() -> None:
            dp.write_comparison(dp.movement(history()), work / "m.zarr")
            shutil.rmtree(work / "m.zarr")

        methods = {
            "read (max of the widened input)": lambda: history().data.max().compute(),
            "movement, in memory": lambda: dp.movement(history()).compute(),
            "movement -> zarr store": to_store,
            "divergence of 2 runs, in memory": lambda: dp.divergence([history(), history()]).compute(),
            "distinct_count": lambda: dp.distinct_count(history()).compute(),
        }
        for fn in methods.values():  # untimed: page cache warm, imports done
            fn()
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(_time(fn))
        read = statistics.median(times["read (max of the widened input)"])
        print(
            f"{args.steps} x {args.vocab} x {args.dim} bf16 ({nbytes / 1e6:.0f} MB), chunks of {chunk} steps,"
            f" median of {args.repeats}, {platform.processor() or platform.machine()},"
            f" {time.strftime('%Y-%m-%d')}"
        )
        print("\n| what | wall s (median) | vs read | GB/s of input |\n|---|---|---|---|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.3f} | {med / read:.2f} | {nbytes / med / 1e9:.2f} |")
        if args.rss_steps:
            print("\n| movement -> zarr store, fresh process | peak RSS (VmHWM) MB |\n|---|---|")
            for steps in (int(n) for n in args.rss_steps.split(",")):
                rss = _peak_rss(work, steps, args.vocab, args.dim)
                print(f"| {steps} x {args.vocab} x {args.dim} bf16 | {rss:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
