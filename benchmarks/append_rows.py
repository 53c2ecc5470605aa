"""What an append costs: bytes written and time per appended step, against that step's own
bytes and its own kernel, in one process (issue 21.5).

    python benchmarks/append_rows.py [--start 200 --appends 20 --vocab 128 --dim 64]
                                     [--input checkpoints|history]

``start`` steps are computed into a store with one step per chunk (what ``compute --follow``
makes), then the store is grown one step at a time with ``to_zarr(..., append=True)`` (as
``--append`` / ``--follow`` do) from an input one step longer each time:

- ``--input checkpoints`` (default; what ``--follow`` of a training run sees): one
  safetensors file per step, saved well before the append (their identities vouch for the
  stored steps' input, which is not re-read);
- ``--input history``: one history file per length, a new file each time, so the stored
  steps' input is re-read and checked against its recorded checksums (O(stored steps)).

Each append's time counts opening the input and building the Dataset too. For every append:

- **bytes**: the bytes of every file of the store that is new or changed (size and mtime),
  against **own bytes**, the chunk files of the new step's distances alone;
- **wall**: the append's wall time (opening the input, building the Dataset, ``to_zarr``),
  against **kernel**: the fused kernel on that step's array in memory (``pairwise_block``, no
  dask, no I/O; the best of 3), timed right after it.

Prints a markdown table (medians over the appends) to paste into results.md. Targets: bytes
per append <= 2x the step's own bytes; wall - kernel < 50 ms at V=128.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _files(store: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, names in os.walk(store):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), store)] = (st.st_size, st.st_mtime_ns)
    return out


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    f(*args)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=200)
    p.add_argument("--appends", type=int, default=20)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--input", choices=("checkpoints", "history"), default="checkpoints")
    a = p.parse_args()

    import numpy as np
    from safetensors.numpy import save_file  # the bench extra

    import dask_pdist as dp
    from dask_pdist.kernels.distances import pairwise_block  # the step's kernel, without dask or I/O

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        work = Path(tmp)
        total = a.start + a.appends
        x = np.random.default_rng(0).standard_normal((total, a.vocab, a.dim)).astype(np.float32)
        # the inputs of every append (writing them is not timed), saved a minute "ago"
        settled = time.time() - 60
        if a.input == "checkpoints":
            for i in range(total):
                save_file({"embedding": x[i]}, str(work / f"step-{i:06d}.safetensors"))
            inputs = {n: [str(work / f"step-{i:06d}.safetensors") for i in range(n)] for n in range(a.start, total + 1)}
        else:
            inputs = {}
            for n in range(a.start, total + 1):
                inputs[n] = str(work / f"h{n}.safetensors")
                save_file({"embedding_history": x[:n], "steps": np.arange(n, dtype=np.int64)}, inputs[n])
        for f in work.iterdir():
            os.utime(f, (settled, settled))
        time.sleep(2.1)  # a file's change time (set by utime too) must be 2 s old to vouch for it
        store = work / "d.zarr"
        dp.to_zarr(dp.pairwise_distances(dp.open_history(inputs[a.start], chunks=1)), store, progress=False)
        rows = []
        for n in range(a.start + 1, total + 1):
            before = _files(store)
            t0 = time.perf_counter()
            ds = dp.pairwise_distances(dp.open_history(inputs[n], chunks=1))
            dp.to_zarr(ds, store, append=True, progress=False)
            wall = time.perf_counter() - t0
            after = _files(store)
            last = sorted(((size, k) for k, (size, mt) in after.items() if before.get(k) != (size, mt)), reverse=True)
            changed = sum(size for size, _ in last)
            own = sum(after[k][0] for k in after if k.split("/")[0] in ds.data_vars and f"/c/{n - 1}/" in k)
            kernel = min(_timed(pairwise_block, x[n - 1 : n]) for _ in range(3))
            rows.append((changed, own, wall, kernel))
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(
            f"# append, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{a.start}+{a.appends} steps x {a.vocab} x {a.dim} float32, one step per chunk, input: {a.input}\n"
        )
        print(f"| per appended step (median of {len(rows)}) | value |")
        print("|---|---:|")
        print(f"| bytes written | {med[0] / 1e3:,.1f} kB |")
        print(f"| the step's own chunk bytes | {med[1] / 1e3:,.1f} kB |")
        print(f"| ratio (target <= 2) | {med[0] / med[1]:.2f}x |")
        print(f"| append wall | {med[2] * 1e3:.0f} ms |")
        print(f"| the step's kernel, in memory | {med[3] * 1e3:.1f} ms |")
        print(f"| overhead: wall - kernel (target < 50 ms) | {(med[2] - med[3]) * 1e3:.0f} ms |")
        print(f"\nthe last append wrote {len(last)} files; the largest:")
        for size, k in last[:8]:
            print(f"  {size / 1e3:8.1f} kB  {k}")


if __name__ == "__main__":
    main()
