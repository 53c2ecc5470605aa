"""``dask-pdist compute`` against the sum of its parts at several sizes (issue 25.1).

    python benchmarks/compute_parts.py [--steps 5001 20004] [--rounds 3] [--workdir DIR]

For each step count (128 tokens x 64 dims, bf16, written as by ``dask-pdist synth``) one
untimed ``compute`` fills a fresh numba cache, then every round runs, alternating, each in its
own process: ``dask-pdist compute IN -o OUT.zarr --no-progress`` (the output removed and
``os.sync()`` called before, outside the timed region; wall time from ``Popen``, CPU time from
``os.wait4``), the start-up probe (``probes.py startup``: seconds from ``Popen`` to the kernel
ready in the same command), the kernel alone on 2 threads at the same size (``methods.py
kernel``) and the I/O floor (``probes.py write-floor``: the store's chunk bytes, incompressible,
into as many new files on the same disk, no fsync, one writer thread per CPU). Prints a Markdown
table of the medians: compute / (start-up + kernel + I/O floor), the target being <= 1.3, and
what is left over per 1,000 steps (the target: it must not grow with S). ``--baseline DIR``: a
checkout whose ``dask_pdist`` also runs ``compute`` and the start-up probe in every round
(alternating with this one), for a before/after ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import parts  # noqa: E402  (benchmarks/parts.py)

TARGET = 1.3


def _cli() -> list[str]:
    return [sys.executable, "-m", "dask_pdist"]


def _compute(hist: Path, out: Path, env: dict[str, str]) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*_cli(), "compute", str(hist), "-o", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"compute failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _kernel(steps: int, env: dict[str, str]) -> float:
    cmd = [sys.executable, str(HERE / "methods.py"), "kernel", "--steps", str(steps), "--repeats", "1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout)["times"]["2"])


def measure(steps: int, rounds: int, work: Path, env: dict[str, str], base_env: dict[str, str] | None) -> dict:
    hist = work / f"h{steps}.safetensors"
    subprocess.run([*_cli(), "synth", str(hist), "--steps", str(steps)], env=env, check=True, stdout=subprocess.DEVNULL)
    out = work / "d.zarr"
    _compute(hist, out, env)  # untimed: fills the numba cache, the page cache
    size = parts.store_bytes(out)
    nbytes = sum(size["variables"].values())
    keys = ("compute", "cpu", "start-up", "kernel", "floor")
    rows: dict[str, list[float]] = {k: [] for k in (*keys, *(f"baseline {k}" for k in keys[:3]))}
    for r in range(rounds):
        for prefix, e in (("", env), ("baseline ", base_env)):
            if e is None:
                continue
            wall, cpu = _compute(hist, out, e)
            rows[f"{prefix}compute"].append(wall)
            rows[f"{prefix}cpu"].append(cpu)
            start = parts.startup(["compute"], hist, work, e, 1, importtime=False, plain=False)
            rows[f"{prefix}start-up"].append(parts.first_kernel_median(start))
        rows["kernel"].append(_kernel(steps, env))
        rows["floor"].append(parts.io_floor(work, nbytes, size["chunk_files"], env))
        done = ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items() if v)
        print(f"[{steps}] round {r + 1}: {done}", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    hist.unlink()
    return {"steps": steps, "bytes": nbytes, "files": size["chunk_files"], **rows}


def fmt(results: list[dict], rounds: int) -> list[str]:
    head = " | ".join(f"{r['steps']:,} steps" for r in results)
    lines = [f"| median of {rounds} alternating rounds, s | {head} |", "|---|" + "---:|" * len(results)]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    med = [{k: statistics.median(v) for k, v in r.items() if isinstance(v, list) and v} for r in results]
    row(
        "start-up: process start to the kernel ready (first call less its block)", [f"{m['start-up']:.3f}" for m in med]
    )
    row("kernel alone, 2 threads", [f"{m['kernel']:.3f}" for m in med])
    row(
        "I/O floor: the store's chunk bytes into as many new files",
        [
            f"{m['floor']:.3f} ({r['bytes'] / 1e6:,.0f} MB, {r['files']} files)"
            for m, r in zip(med, results, strict=True)
        ],
    )
    parts_sum = [m["start-up"] + m["kernel"] + m["floor"] for m in med]
    row("sum of the parts", [f"{p:.3f}" for p in parts_sum])
    row("`dask-pdist compute` end to end", [f"{m['compute']:.3f}" for m in med])
    row("its CPU time (user + sys)", [f"{m['cpu']:.3f}" for m in med])
    row(
        "over the parts, per 1,000 steps",
        [f"{(m['compute'] - p) / r['steps'] * 1000:.3f}" for m, p, r in zip(med, parts_sum, results, strict=True)],
    )
    ratios = [m["compute"] / p for m, p in zip(med, parts_sum, strict=True)]
    row("compute / (start-up + kernel + I/O floor)", [f"{q:.2f}" for q in ratios])
    if "baseline compute" in med[0]:
        for key, label in (("compute", "compute"), ("cpu", "CPU time"), ("start-up", "start-up")):
            cells = []
            for m, r in zip(med, results, strict=True):
                per_round = statistics.median(a / b for a, b in zip(r[key], r[f"baseline {key}"], strict=True))
                cells.append(f"{m[f'baseline {key}']:.3f}; {per_round:.3f}")
            row(f"baseline's {label} (same rounds); this / baseline, median per round", cells)
    lines.append("")
    for r, q in zip(results, ratios, strict=True):
        verdict = "PASS" if q <= TARGET else "MISS"
        lines.append(
            f"{verdict}  {r['steps']} x 128 x 64: compute / (start-up + kernel + I/O floor) = {q:.2f}"
            f" (target <= {TARGET})"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[5001, 20004])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p.add_argument("--baseline", default=None, help="a checkout to compare with (its dask_pdist), same rounds")
    a = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0]
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dask_pdist_parts_", dir=a.workdir) as tmp:
        work = Path(tmp)
        # PYTHONSAFEPATH: `python -m dask_pdist` would put the current folder first on sys.path,
        # so a run from a checkout's root would import that checkout's package for the baseline too
        this = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "numba_cache"), PYTHONPATH=this, PYTHONSAFEPATH="1")
        base = None
        if a.baseline:  # its own numba cache: the kernels' source may differ
            path = os.pathsep.join([str(Path(a.baseline).resolve()), env.get("PYTHONPATH", "")])
            base = dict(env, PYTHONPATH=path, NUMBA_CACHE_DIR=str(work / "numba_cache_baseline"))
            base_hist = work / "warm.safetensors"
            subprocess.run(
                [*_cli(), "synth", str(base_hist), "--steps", "16"], env=base, check=True, stdout=subprocess.DEVNULL
            )
            _compute(base_hist, work / "warm.zarr", base)  # fills the baseline's numba cache
        results = [measure(s, a.rounds, work, env, base) for s in a.steps]
    print(
        f"`python benchmarks/compute_parts.py` on {started}, load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores.\n"
    )
    print("\n".join(fmt(results, a.rounds)))


if __name__ == "__main__":
    main()
