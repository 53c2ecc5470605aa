"""Cost model: CPU seconds and bytes per step of compute, neighbours and clusters as functions of V and D.

    python benchmarks/cost_model.py            # about 5 CPU-minutes on the 2-core machine
    python benchmarks/cost_model.py --quick    # tiny sizes: a smoke test of the script, no result

For docs/scaling.md (issue 25.5). Each operation runs in this process through the public API
(``to_zarr(pairwise_distances(...))``, ``neighbours_to_zarr(neighbours(...))``,
``write_clusters(clusters(...))``) on a bf16 history written by ``write_synthetic_history``, at
a grid of vocabulary sizes V and dims D (none a power of two), each at two step counts S and 2S:
the cost of one step is the difference divided by S, so the fixed cost of a call (creating the
store, building the graph) drops out. Time is the process's CPU time (every thread: core
seconds, what a cluster of N cores divides), with wall time beside it; bytes are what the output
store holds per step. Then a least-squares fit per operation on the terms its algorithm has
(V^2 D for pair work, bytes written, V^2 or V for per-row work), checked on shapes left out of
the fit, and the predictions for the two jobs of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

GRID_V = (200, 700, 1900)
GRID_D = (62, 250, 766)
CHECK = ((128, 64), (1000, 512))  # left out of the fit: the notebook's shape, and a larger one
QUICK_V, QUICK_D, QUICK_CHECK = (40, 90), (6, 14), ((50, 10),)
K = 10

#: per operation: the fitted terms, as functions of (V, D, bytes per step)
TERMS = {
    "compute": (("V^2 D", lambda v, d, b: v * v * d), ("bytes", lambda v, d, b: b)),
    "neighbours euclidean": (("V^2 D", lambda v, d, b: v * v * d), ("V^2", lambda v, d, b: v * v)),
    "neighbours chebyshev": (("V^2 D", lambda v, d, b: v * v * d), ("V^2", lambda v, d, b: v * v)),
    "clusters 0": (("V D", lambda v, d, b: v * d), ("V", lambda v, d, b: v)),
    "clusters bf16": (("V^2 D", lambda v, d, b: v * v * d), ("V^2", lambda v, d, b: v * v)),
}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _run(op: str, history: Path, out: Path) -> None:
    import dask_pdist as dp

    h = dp.open_history(history)
    if op == "compute":
        dp.to_zarr(dp.pairwise_distances(h), out, progress=False)
    elif op.startswith("neighbours"):
        dp.neighbours_to_zarr(dp.neighbours(h, K, op.split()[1]), out)
    else:
        dp.write_clusters(dp.clusters(h, 0.0 if op == "clusters 0" else "bf16"), out)


def _measure(op: str, history: Path, out: Path) -> tuple[float, float, int]:
    shutil.rmtree(out, ignore_errors=True)
    c0, w0 = time.process_time(), time.perf_counter()
    _run(op, history, out)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    size = _size(out)
    shutil.rmtree(out)
    return cpu, wall, size


def _steps(op: str, v: int, d: int, budget: float) -> int:
    # S for the first run: about `budget` units of the operation's main term, within 2..400
    main = v * d if op == "clusters 0" else v * v * d
    return int(min(400, max(2, budget // main)))


def per_step(op: str, v: int, d: int, work: Path, budget: float) -> dict:
    """CPU s, wall s and bytes of one step of ``op`` at (V, D): runs at S and 2S, the difference over S."""
    from dask_pdist.io.synthetic import write_synthetic_history

    s = _steps(op, v, d, budget)
    rows = []
    for steps in (s, 2 * s):
        hist = write_synthetic_history(
            work / f"h{steps}x{v}x{d}.safetensors", steps=steps, vocab=v, dim=d, overwrite=True
        )
        rows.append(_measure(op, hist, work / "out.zarr"))
        hist.unlink()
    (c1, w1, b1), (c2, w2, b2) = rows
    return {"op": op, "V": v, "D": d, "S": s, "cpu": (c2 - c1) / s, "wall": (w2 - w1) / s, "bytes": (b2 - b1) / s}


def fit(points: list[dict], op: str) -> np.ndarray:
    """Coefficients of the operation's terms (CPU s per unit): nonnegative least squares on the
    relative error (the grid spans three orders of magnitude; each point weighs the same)."""
    from scipy.optimize import nnls

    pts = [p for p in points if p["op"] == op]
    a = np.array([[f(p["V"], p["D"], p["bytes"]) for _, f in TERMS[op]] for p in pts], dtype=float)
    y = np.array([p["cpu"] for p in pts])
    w = 1 / np.maximum(y, 1e-6)
    scale = a.max(axis=0)
    coef, _ = nnls(a / scale * w[:, None], y * w)
    return coef / scale


def read_points(path: Path) -> tuple[list[dict], list[dict]]:
    """The grid and check rows of an earlier run's printed table (``--points``): refit without measuring."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in TERMS:
            v, d = int(cells[1].replace(",", "")), int(cells[2])
            s = int(cells[3].split(",")[0])
            cpu, wall, size = (float(cells[i].replace(",", "")) for i in (4, 5, 6))
            rows.append({"op": cells[0], "V": v, "D": d, "S": s, "cpu": cpu / 1e3, "wall": wall / 1e3, "bytes": size})
    grid = [r for r in rows if (r["V"], r["D"]) not in CHECK]
    return grid, [r for r in rows if (r["V"], r["D"]) in CHECK]


def predict(op: str, coef: np.ndarray, v: int, d: int, bytes_per_step: float) -> float:
    """CPU seconds per step of ``op`` at (V, D) by the fitted model."""
    return float(sum(c * f(v, d, bytes_per_step) for c, (_, f) in zip(coef, TERMS[op], strict=True)))


def main() -> None:
    """Measure the grid, fit, check and print Markdown for docs/scaling.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, not a result")
    p.add_argument("--ops", default=",".join(TERMS), help="comma-separated subset of: " + ", ".join(TERMS))
    p.add_argument("--workdir", help="folder for the temporary histories and stores (default: the temp folder)")
    p.add_argument("--points", help="refit from an earlier run's printed output instead of measuring")
    args = p.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    unknown = set(ops) - set(TERMS)
    if unknown:
        p.error(f"unknown --ops {sorted(unknown)}; choose from {list(TERMS)}")
    grid_v, grid_d, check = (QUICK_V, QUICK_D, QUICK_CHECK) if args.quick else (GRID_V, GRID_D, CHECK)
    if args.points:
        points, checks = read_points(Path(args.points))
        points, checks = [r for r in points if r["op"] in ops], [r for r in checks if r["op"] in ops]
        print(f"# cost model refitted from the measurements in {args.points}")
    else:
        points, checks = measure(ops, grid_v, grid_d, check, 2e4 if args.quick else 3e9, args.workdir)
    print(
        "| operation | V | D | S, 2S | CPU ms / step | wall ms / step | bytes / step |\n|---|---|---|---|---|---|---|"
    )
    for r in points + checks:
        print(
            f"| {r['op']} | {r['V']:,} | {r['D']} | {r['S']}, {2 * r['S']} | {r['cpu'] * 1e3:.2f} | "
            f"{r['wall'] * 1e3:.2f} | {r['bytes']:,.0f} |"
        )
    print(
        "\n| operation | model: CPU s per step | check shape | measured CPU ms | model CPU ms |\n|---|---|---|---|---|"
    )
    coefs = {op: fit(points, op) for op in ops}
    for op, coef in coefs.items():
        model = " + ".join(f"{c:.3g} x {name}" for c, (name, _) in zip(coef, TERMS[op], strict=True))
        for r in (c for c in checks if c["op"] == op):
            m = predict(op, coef, r["V"], r["D"], r["bytes"])
            print(f"| {op} | {model} | V={r['V']:,} D={r['D']} | {r['cpu'] * 1e3:.2f} | {m * 1e3:.2f} |")
    print("\n" + "\n".join(jobs(points + checks, coefs)))


def measure(ops: list[str], grid_v, grid_d, check, budget: float, workdir: str | None) -> tuple[list, list]:  # noqa: ANN001
    """Every operation at every grid shape and check shape (after an untimed warm-up of each)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the CLI sets: BLAS inside every dask thread
    print(f"# cost model, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    points, checks = [], []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        for op in ops:  # untimed: numba's cache, imports, BLAS
            per_step(op, grid_v[0], grid_d[0], work, 2e4)
        for op in ops:
            for v in grid_v:
                for d in grid_d:
                    points.append(per_step(op, v, d, work, budget))
                    print(f"  {op:22s} V={v:5d} D={d:4d}: {points[-1]['cpu'] * 1e3:9.2f} CPU-ms/step", flush=True)
            for v, d in check:
                checks.append(per_step(op, v, d, work, budget))
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}\n")
    return points, checks


#: the two jobs of docs/scaling.md: (name, runs, steps, V, D)
JOBS = (("16 runs x 10,001 steps x V=128, D=64", 16, 10_001, 128, 64), ("154 x V=50,304, D=768", 1, 154, 50_304, 768))
CORES = (2, 16, 64, 256)


def _bytes_per_step(points: list[dict], op: str, v: int) -> float:
    # bytes scale with V^2 (distances) or V (lists, labels): from the measured shape nearest in V
    near = min((p for p in points if p["op"] == op), key=lambda p: (abs(np.log(p["V"] / v)), -p["D"]))
    power = 2 if op == "compute" else 1
    return near["bytes"] * (v / near["V"]) ** power


def jobs(points: list[dict], coefs: dict[str, np.ndarray]) -> list[str]:
    """Markdown: per job and operation, CPU per step, core-hours, bytes, and wall on N cores (work only)."""
    head = " | ".join(f"{n} cores" for n in CORES)
    lines = [f"| job | operation | CPU s / step | core-hours | written | {head} |", "|---" * (5 + len(CORES)) + "|"]
    for name, runs, steps, v, d in JOBS:
        for op, coef in coefs.items():
            b = _bytes_per_step(points, op, v)
            per = predict(op, coef, v, d, b)
            total = per * steps * runs
            walls = " | ".join(_duration(total / n) for n in CORES)
            lines.append(
                f"| {name} | {op} | {per:.4g} | {total / 3600:.3g} | {b * steps * runs / 1e9:.3g} GB | {walls} |"
            )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    main()
