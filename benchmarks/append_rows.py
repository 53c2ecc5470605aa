"""What an append costs: bytes written and time per appended step, against that step's own
bytes and its own kernel, in one process (issue 21.5).

    python benchmarks/append_rows.py [--start 200 --appends 20 --vocab 128 --dim 64]
                                     [--input checkpoints|history] [--baseline DIR --rounds 3]

``start`` steps are computed into a store with one step per chunk (what ``compute --follow``
makes), then the store is grown one step at a time, as ``compute --append`` / ``--follow``
and ``DistancesCallback`` do it (``open_history``, ``pairwise_distances``,
``to_zarr(..., append=True, compute=False)`` run by the job runner), from an input one step
longer each time:

- ``--input checkpoints`` (default; what ``--follow`` of a training run sees): one
  safetensors file per step, saved well before the append (their identities vouch for the
  stored steps' input, which is not re-read);
- ``--input history``: one history file per length, a new file each time, so the stored
  steps' input is re-read and checked against its recorded checksums (O(stored steps)).

For every append:

- **bytes**: the bytes of every file of the store that is new or changed (size and mtime),
  against **own bytes**, the chunk files of the new step's distances alone;
- **wall**: the append's wall time (opening the input, building the Dataset, writing),
  against **kernel**: the fused kernel on that step's array in memory (``pairwise_block``, no
  dask, no I/O; the best of 3), timed right after it;
- **open**: ``open_distances`` of the grown store afterwards (what ``to_zarr(...)`` with
  ``compute=True`` adds, returning it; the CLI and the callback do not open it).

Prints a markdown table (medians over the appends) to paste into results.md. Targets: bytes
per append <= 2x the step's own bytes; wall - kernel < 50 ms at V=128.

``--baseline DIR``: also measure the dask_pdist of another checkout (``DIR``, e.g. the main
branch's worktree), in alternating rounds of fresh processes (``--rounds``), and print the
medians of both with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_KEYS = ("bytes", "own", "wall", "kernel", "cpu", "open")


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


def measure(a: argparse.Namespace) -> tuple[dict[str, float], list[tuple[int, str]]]:
    """Medians over ``a.appends`` appends, and the files the last one wrote."""
    import numpy as np
    from safetensors.numpy import save_file  # the bench extra

    import dask_pdist as dp
    from dask_pdist.kernels.distances import pairwise_block  # the step's kernel, without dask or I/O
    from dask_pdist.store.job import Job

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
            t0, c0 = time.perf_counter(), time.process_time()
            ds = dp.pairwise_distances(dp.open_history(inputs[n], chunks=1))
            Job(dp.to_zarr(ds, store, append=True, compute=False)).execute(progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            opened = _timed(dp.open_distances, store)
            after = _files(store)
            last = sorted(((size, k) for k, (size, mt) in after.items() if before.get(k) != (size, mt)), reverse=True)
            changed = sum(size for size, _ in last)
            own = sum(after[k][0] for k in after if k.split("/")[0] in ds.data_vars and f"/c/{n - 1}/" in k)
            kernel = min(_timed(pairwise_block, x[n - 1 : n]) for _ in range(3))
            rows.append((changed, own, wall, kernel, cpu, opened))
        return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(_KEYS)}, last


def _table(a: argparse.Namespace, med: dict[str, float], base: dict[str, float] | None) -> None:
    print(
        f"# append, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{a.start}+{a.appends} steps x {a.vocab} x {a.dim} float32, one step per chunk, input: {a.input}\n"
    )
    rows = [
        ("bytes written", lambda m: f"{m['bytes'] / 1e3:,.1f} kB"),
        ("the step's own chunk bytes", lambda m: f"{m['own'] / 1e3:,.1f} kB"),
        ("ratio (target <= 2)", lambda m: f"{m['bytes'] / m['own']:.2f}x"),
        ("append wall", lambda m: f"{m['wall'] * 1e3:.0f} ms"),
        ("append CPU time (this process)", lambda m: f"{m['cpu'] * 1e3:.0f} ms"),
        ("the step's kernel, in memory", lambda m: f"{m['kernel'] * 1e3:.1f} ms"),
        ("overhead: wall - kernel (target < 50 ms)", lambda m: f"{(m['wall'] - m['kernel']) * 1e3:.0f} ms"),
        ("then open_distances of the grown store", lambda m: f"{m['open'] * 1e3:.0f} ms"),
    ]
    if base is None:
        print(f"| per appended step (median of {a.appends}) | value |\n|---|---:|")
        for label, show in rows:
            print(f"| {label} | {show(med)} |")
        return
    print(f"| per appended step (median of {a.rounds} rounds' medians) | this | baseline | this / baseline |")
    print("|---|---:|---:|---:|")
    ratios = {"bytes written": "bytes", "append wall": "wall", "append CPU time (this process)": "cpu"}
    ratios["then open_distances of the grown store"] = "open"
    for label, show in rows:
        key = ratios.get(label)
        ratio = f"{med[key] / base[key]:.2f}" if key else ""
        print(f"| {label} | {show(med)} | {show(base)} | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=int, default=200)
    p.add_argument("--appends", type=int, default=20)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--input", choices=("checkpoints", "history"), default="checkpoints")
    p.add_argument("--baseline", help="another checkout's root, measured in alternating rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one round, for --baseline
    a = p.parse_args()
    if a.json:
        print(json.dumps(measure(a)[0]))
        return
    if a.baseline is None:
        med, last = measure(a)
        _table(a, med, None)
        print(f"\nthe last append wrote {len(last)} files; the largest:")
        for size, k in last[:8]:
            print(f"  {size / 1e3:8.1f} kB  {k}")
        return
    here = str(Path(__file__).resolve().parents[1])
    args = [sys.executable, __file__, "--json", *sys.argv[1:]]
    args = [x for i, x in enumerate(args) if x != "--baseline" and (i == 0 or args[i - 1] != "--baseline")]
    got: dict[str, list[dict[str, float]]] = {here: [], a.baseline: []}
    for r in range(a.rounds):
        for root in (here, a.baseline) if r % 2 == 0 else (a.baseline, here):
            env = {**os.environ, "PYTHONPATH": root}
            out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
            got[root].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}, {'baseline' if root == a.baseline else 'this'}: {got[root][-1]}", file=sys.stderr)

    def med(root: str) -> dict[str, float]:
        return {k: statistics.median(m[k] for m in got[root]) for k in _KEYS}

    _table(a, med(here), med(a.baseline))


if __name__ == "__main__":
    main()
