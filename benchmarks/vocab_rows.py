"""The series at V = 10,000: cost per step and peak memory of ``clusters`` and ``neighbours`` (issue 25.3).

    python benchmarks/vocab_rows.py [--vocab 10000 --dim 64 --steps 20 60 --rounds 2]

A bf16 history (``dask-pdist synth``, 10,000 tokens x 64 dims: the issue's 5001 x 10,000 x 64
at fewer steps) is written at two step counts S1 < S2. Each command then runs as a fresh
process (``python -m dask_pdist ...``, its output removed before) on both, alternating sizes
within a round: ``clusters --threshold 0``, ``clusters --threshold bf16`` (Chebyshev),
``neighbours -k 10`` (Euclidean) and ``neighbours -k 10 --metric chebyshev``. The cost of one
step is the difference between the two sizes over S2 - S1 (the process start, imports and
store creation drop out): CPU seconds (user + sys of the child, every thread; what a cluster's
cores divide) and wall seconds on this machine's 2 cores. Peak RSS (the child's
``ru_maxrss``; this script imports nothing heavy, so a forked child's figure is its own) at
both sizes shows whether memory stays flat in S. Both sizes should span several step-chunks
(~13 steps at V = 10,000): a history of one chunk is one task, on one core, and its peak grows
with the chunk. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "clusters, threshold 0": ["clusters", "--threshold", "0"],
    "clusters, threshold bf16": ["clusters", "--threshold", "bf16"],
    "neighbours k=10, Euclidean": ["neighbours", "-k", "10"],
    "neighbours k=10, Chebyshev": ["neighbours", "-k", "10", "--metric", "chebyshev"],
}


def _child(argv: list[str]) -> tuple[float, float, float]:
    # wall s, CPU s (user + sys) and peak RSS MB of one whole process
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, nargs=2, default=[20, 60], metavar=("S1", "S2"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", help="folder for the histories and outputs (default: the temp folder)")
    a = p.parse_args()
    s1, s2 = a.steps
    if not 0 < s1 < s2:
        p.error("--steps S1 S2 with 0 < S1 < S2")
    work = Path(tempfile.mkdtemp(prefix="vocab_rows_", dir=a.workdir))
    cli = [sys.executable, "-m", "dask_pdist"]
    try:
        hist = {}
        for s in (s1, s2):
            hist[s] = work / f"h{s}.safetensors"
            subprocess.run(
                [*cli, "synth", str(hist[s]), "--steps", str(s), "--vocab", str(a.vocab), "--dim", str(a.dim)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        out = work / "out.zarr"
        _child([*cli, *COMMANDS["neighbours k=10, Euclidean"], str(hist[s1]), "-o", str(out), "--no-progress"])
        shutil.rmtree(out, ignore_errors=True)  # (untimed: fills the numba cache and the page cache)
        rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        load0 = os.getloadavg()[0]
        for r in range(a.rounds):
            for name, argv in COMMANDS.items():
                for s in (s1, s2) if r % 2 == 0 else (s2, s1):
                    shutil.rmtree(out, ignore_errors=True)
                    got = _child([*cli, *argv, str(hist[s]), "-o", str(out), "--no-progress"])
                    rows.setdefault((name, s), []).append(got)
                    print(
                        f"round {r + 1} {name} S={s}: wall {got[0]:.2f} s, CPU {got[1]:.2f} s, peak {got[2]:.0f} MB",
                        file=sys.stderr,
                    )
        print(
            f"`python benchmarks/vocab_rows.py --vocab {a.vocab} --dim {a.dim} --steps {s1} {s2} --rounds {a.rounds}`"
            f" on {time.strftime('%Y-%m-%d %H:%M')}, load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after;"
            f" {a.vocab:,} tokens x {a.dim} dims bf16; medians of {a.rounds} rounds.\n"
        )
        print(f"| command | CPU s per step | wall s per step | peak RSS MB at {s1} / {s2} steps |")
        print("|---|---:|---:|---:|")
        for name in COMMANDS:
            med = {s: [statistics.median(v[i] for v in rows[(name, s)]) for i in range(3)] for s in (s1, s2)}
            cpu = (med[s2][1] - med[s1][1]) / (s2 - s1)
            wall = (med[s2][0] - med[s1][0]) / (s2 - s1)
            print(f"| `{name}` | {cpu:.3f} | {wall:.3f} | {med[s1][2]:.0f} / {med[s2][2]:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
