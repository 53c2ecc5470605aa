"""Where ``dask-pdist compute`` spends its time: py-spy samples of every thread, classified
by what the innermost interesting frame does (issue 25.1).

    python benchmarks/profile_compute.py [--steps 5001 20004 --vocab 128 --dim 64 --rate 100]

For each step count a bf16 synthetic history (``dask-pdist synth``) is written to a temporary
folder, then ``dask-pdist compute h.safetensors -o d.zarr --no-progress`` runs under
``py-spy record --threads --format raw`` (``pip install py-spy``). Every sample of a thread
that is running Python (not blocked) is put in the first category whose pattern one of its
frames matches, in the order of ``CATEGORIES``; blocked threads (waiting on a lock, a queue or
the event loop) count as idle. Prints a markdown table: busy CPU-seconds per category (the
samples divided by the rate; two dask worker threads and zarr's I/O threads overlap, so the
column can sum to more than the wall time) next to the command's wall time.

A sampling profiler sees Python frames: time inside numba kernels is attributed to the Python
frame that called them (``kernels/distances.py``), time in C extensions (numcodecs, crc32c) to
theirs. py-spy adds a few percent to the wall time (on this shared VM one run of each can still read
the profiled run faster than the plain one: compare CPU rows, not the two wall rows).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Lines of the store's chunk files module by what they do (``ChunkWriter.write``, and the
#: checksum line of ``ChunkReader.read``): py-spy names a frame by file and line, and the
#: encoding, checksum and file writes share one function. Each needle is looked up in the
#: current source, so the rows follow edits of that file.
_CHUNK_FILES = Path(__file__).resolve().parents[1] / "dask_pdist" / "store" / "chunk_files.py"
_LINE_NEEDLES = {
    "compression": ("_blosc(self.blosc).encode",),
    "checksums": ("google_crc32c.value(",),
    "writes": ("folder.mkdir(", "open(temp", "f.write(", "os.replace(temp"),
}


def _lines(kind: str) -> str:
    text = _CHUNK_FILES.read_text().splitlines()
    found = [str(n) for n, line in enumerate(text, 1) if any(k in line for k in _LINE_NEEDLES[kind])]
    if not found:
        raise SystemExit(f"{_CHUNK_FILES}: none of {_LINE_NEEDLES[kind]} found; update _LINE_NEEDLES")
    return r"store/chunk_files\.py:(?:" + "|".join(found) + r")\)"


#: (category, pattern of a frame): the first match wins, so specific rows come first
CATEGORIES = (
    ("imports", r"_find_and_load"),
    ("kernel (numba, both metrics)", r"kernels/distances\.py"),
    (
        "bookkeeping (done flags and their files, root zarr.json)",
        r"store/layout\.py|store/guards\.py|consolidate|_mark_done",
    ),
    ("compression (numcodecs / blosc)", r"numcodecs|blosc|zstd|lz4|BytesBytesCodec|" + _lines("compression")),
    ("chunk checksums (crc32c, our digests)", r"crc32c|dask_pdist/store/digests\.py|" + _lines("checksums")),
    ("chunk files: folders, writes, renames", r"LocalStore|zarr/storage|os\.replace|" + _lines("writes")),
    ("reading and widening the input", r"safetensors_format|read_range|sources\.py|ml_dtypes"),
    ("input checksums and RMS", r"input_checksum|step_rms|io/history\.py"),
    ("summary printed at the end", r"analyses/summary|format_summary|iter_steps"),
    ("building the graph", r"to_zarr \(dask_pdist|_write_graph|pairwise_distances|blockwise|map_blocks|from_array"),
    ("zarr async machinery", r"zarr/core/|asyncio"),
    ("store writer, other lines", r"store/chunk_files\.py|store/writer\.py"),
    ("dask scheduler", r"dask/local\.py|dask/threaded\.py|dask/core\.py|_task_spec|dask/base\.py|dask/_expr"),
)
_IDLE_LEAF = re.compile(
    r"Condition\.wait|Event\.wait|queue\.py|acquire|select|_run_once \(asyncio/base_events\.py|_worker \(concurrent"
)


def classify(raw: Path, rate: float) -> tuple[collections.Counter, float]:
    busy: collections.Counter = collections.Counter()
    idle = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")[1:]  # the first entry names the thread
        n = int(count)
        if not frames or _IDLE_LEAF.search(frames[-1]):
            idle += n
            continue
        for name, pattern in CATEGORIES:
            if any(re.search(pattern, f) for f in frames):
                busy[name] += n
                break
        else:
            busy["other Python"] += n
    return collections.Counter({k: v / rate for k, v in busy.items()}), idle / rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[5001, 20004])
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rate", type=float, default=100)
    a = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cli = str(Path(sys.executable).with_name("dask-pdist"))
    results = {}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for steps in a.steps:
            work = Path(tmp) / str(steps)
            work.mkdir()
            h = work / "h.safetensors"
            subprocess.run(
                [cli, "synth", str(h), "--steps", str(steps), "--vocab", str(a.vocab), "--dim", str(a.dim)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            compute = [cli, "compute", str(h), "-o", str(work / "d.zarr"), "--no-progress", "--overwrite"]
            t0 = time.perf_counter()  # once without the profiler: the wall time it inflates
            subprocess.run(compute, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            plain = time.perf_counter() - t0
            raw = work / "profile.txt"
            t0 = time.perf_counter()
            subprocess.run(
                [spy, "record", "-r", str(a.rate), "--threads", "-f", "raw", "-o", str(raw), "--", *compute],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - t0
            results[steps] = (*classify(raw, a.rate), wall, plain)
            shutil.rmtree(work)
    names = [n for n, _ in CATEGORIES] + ["other Python"]
    head = " | ".join(f"{s} steps: CPU-s | per 1000 steps" for s in results)
    print(f"# compute, {a.vocab} tokens x {a.dim} dims bf16, {os.cpu_count()} cores, py-spy at {a.rate:g} Hz\n")
    print(f"| where | {head} |")
    print("|---|" + "---:|---:|" * len(results))
    for name in names:
        cells = " | ".join(f"{busy[name]:.2f} | {busy[name] / s * 1000:.3f}" for s, (busy, _, _, _) in results.items())
        print(f"| {name} | {cells} |")
    cells = " | ".join(f"{sum(busy.values()):.2f} | " for busy, _, _, _ in results.values())
    print(f"| **busy, all threads** | {cells} |")
    cells = " | ".join(f"{idle:.2f} | " for _, idle, _, _ in results.values())
    print(f"| blocked (thread samples waiting) | {cells} |")
    cells = " | ".join(f"{wall:.2f} | {wall / s * 1000:.3f}" for s, (_, _, wall, _) in results.items())
    print(f"| **wall, under py-spy** | {cells} |")
    cells = " | ".join(f"{plain:.2f} | {plain / s * 1000:.3f}" for s, (_, _, _, plain) in results.items())
    print(f"| **wall, without the profiler** | {cells} |")


if __name__ == "__main__":
    main()
