"""Benchmark rows for ``dask-pdist neighbours``, called by ``run.py``.

(a) V = 16,384, D = 64, S = 4, k = 10: ``dask-pdist neighbours`` against
    ``torch.topk(torch.cdist(x, x), k + 1)`` per step (``methods.py torch-knn``), whole
    processes alternating; torch's largest self-distance and its neighbour disagreements
    with the exact lists are reported.
(b) V = 50,304, D = 512, S = 1: ``dask-pdist neighbours`` wall time and peak RSS. No torch
    row: its V x V float32 matrix alone is 10 GB. The history is Gaussian bf16 (seed 0, scale
    0.02): a one-step synthetic history is its all-identical initial state (every distance 0).
(c) V = 16,384, D = 512, S = 2, Gaussian bf16 as (b): ``dask-pdist neighbours`` against
    ``methods.py torch-knn --rows 2048`` (``topk(cdist)`` of 2,048 rows at a time, saved),
    whole processes alternating, medians: the size where torch spends most of its time in one
    float32 GEMM, as the BLAS method does.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
K = 10
TARGET_VS_TORCH = 1.0
TARGET_RSS_MB = 2000.0
TARGET_BIG_S = 8.0  # (b), wall seconds for one step on the 2-core development machine
TARGET_VS_TORCH_D512 = 0.6  # (c)
TORCH_ROWS = 2048
SECTION_BEGIN = "<!-- neighbours rows: begin -->"
SECTION_END = "<!-- neighbours rows: end -->"


def _disagreements(history: Path, ours_path: Path, torch_path: Path, k: int) -> dict[str, float]:
    """Compare torch's lists with the exact ones.

    ``differ``: (step, token) lists whose set differs at all; ``wrong``: lists holding a token
    farther (float64 distance of the history's values) than the farthest of the exact list,
    i.e. not a valid k-nearest set even allowing other tie-breaks; ``wrong_entries``: such tokens.
    """
    import numpy as np
    from safetensors.numpy import load_file

    import dask_pdist as dp

    x = dp.open_history(history).values.astype(np.float64)
    ours = dp.open_neighbours(ours_path).neighbour.values.astype(np.int64)
    theirs = load_file(str(torch_path))
    idx = theirs["indices"]
    s, v, _ = idx.shape
    self_ = idx == np.arange(v)[None, :, None]
    # drop the token itself; if the Gram trick pushed it out of the k + 1, drop the last entry
    keep = ~self_
    keep[..., -1] &= self_.any(axis=-1)
    lists = idx[keep].reshape(s, v, k)
    both = np.sort(np.concatenate([ours, lists], axis=-1), axis=-1)
    shared = (both[..., 1:] == both[..., :-1]).sum(axis=-1)

    def dist(nbr: np.ndarray) -> np.ndarray:
        steps = np.arange(s)[:, None, None]
        return np.sqrt(((x[steps, np.arange(v)[None, :, None]] - x[steps, nbr]) ** 2).sum(-1))

    far = dist(lists) > dist(ours).max(axis=-1, keepdims=True)
    return {
        "lists": s * v,
        "differ": int((shared < k).sum()),
        "wrong": int(far.any(axis=-1).sum()),
        "wrong_entries": int(far.sum()),
        "self_max": float(theirs["self_distance_max"].max()),
    }


def _gaussian_history(path: Path, shape: tuple[int, int, int]) -> None:
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 0.02
    save_file({"embedding_history": x.astype(ml_dtypes.bfloat16)}, str(path))


def _alternate(cmds: dict, outs: dict, env: dict, work: Path, repeats: int, tag: str) -> dict[str, list]:
    """Untimed run of each, then ``repeats`` rounds alternating; the last round's outputs are kept."""
    import os

    from harness import _log, _remove, _run_child

    runs: dict[str, list] = {key: [] for key in cmds}
    for key, cmd in cmds.items():  # untimed warm-up: page cache, numba cache
        _run_child(cmd, env, work / "nb.log")
        _remove(outs[key])
    for r in range(repeats):
        for key, cmd in cmds.items():
            os.sync()
            run = _run_child(cmd, env, work / "nb.log")
            if r < repeats - 1:  # the last round's outputs are compared
                _remove(outs[key])
            runs[key].append(run)
            _log(f"[neighbours {tag}] round {r + 1}: {key:<24} {run.wall_s:7.2f} s  {run.maxrss_mb:7.0f} MB")
    return runs


def _table(runs: dict[str, list], base: str) -> tuple[list[str], dict[str, float]]:
    med = {key: statistics.median(r.wall_s for r in v) for key, v in runs.items()}
    lines = [
        "| method | runs | wall s (median) | min-max s | vs torch | peak RSS MB | user s | sys s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, rs in runs.items():
        walls = [r.wall_s for r in rs]
        lines.append(
            f"| {key} | {len(rs)} | {med[key]:.2f} | {min(walls):.2f}-{max(walls):.2f}"
            f" | {med[key] / med[base]:.3f} | {statistics.median(r.maxrss_mb for r in rs):.0f}"
            f" | {statistics.median(r.user_s for r in rs):.2f} | {statistics.median(r.sys_s for r in rs):.2f} |"
        )
    return lines, med


def run_rows(work: Path, env: dict[str, str], quick: bool, repeats: int) -> list[str]:
    """Run the three rows; returns the markdown section (between the section markers)."""
    import os

    from harness import METHODS_PY, _dask_pdist_cmd, _log, _remove, _run_child

    from dask_pdist.io.synthetic import write_synthetic_history

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    dask_cmd, dask_name = _dask_pdist_cmd()
    a = (4, 512, 16) if quick else (4, 16384, 64)
    b = (1, 2048, 64) if quick else (1, 50304, 512)
    c = (2, 1024, 64) if quick else (2, 16384, 512)
    load = os.getloadavg()
    ours, peer = "dask-pdist neighbours", "torch.topk(torch.cdist)"

    def commands(hist: Path, ours_out: Path, torch_out: Path, rows: int) -> dict[str, list[str]]:
        torch_cmd = [sys.executable, str(METHODS_PY), "torch-knn", str(hist), str(torch_out), "-k", str(K)]
        return {
            ours: dask_cmd + ["neighbours", str(hist), "-k", str(K), "-o", str(ours_out), "--no-progress"],
            peer: torch_cmd + (["--rows", str(rows)] if rows else []),
        }

    hist = work / "nb_a.safetensors"
    write_synthetic_history(hist, steps=a[0], vocab=a[1], dim=a[2], overwrite=True)
    ours_out, torch_out = work / "nb_ours.zarr", work / "nb_torch.safetensors"
    outs = {ours: ours_out, peer: torch_out}
    runs = _alternate(commands(hist, ours_out, torch_out, 0), outs, env, work, repeats, "a")
    cmp = _disagreements(hist, ours_out, torch_out, K)
    for path in (ours_out, torch_out, hist):
        _remove(path)

    hist_c = work / "nb_c.safetensors"
    _gaussian_history(hist_c, c)
    runs_c = _alternate(commands(hist_c, ours_out, torch_out, TORCH_ROWS), outs, env, work, repeats, "c")
    self_c = _self_distance_max(torch_out)
    for path in (ours_out, torch_out, hist_c):
        _remove(path)

    hist_b = work / "nb_b.safetensors"
    _gaussian_history(hist_b, b)
    out_b = work / "nb_b.zarr"
    run_b = _run_child(
        dask_cmd + ["neighbours", str(hist_b), "-k", str(K), "-o", str(out_b), "--no-progress"], env, work / "nb.log"
    )
    _log(f"[neighbours b] {run_b.wall_s:7.2f} s  {run_b.maxrss_mb:7.0f} MB")
    _remove(out_b)
    _remove(hist_b)
    load_after = os.getloadavg()

    table_a, med = _table(runs, peer)
    table_c, med_c = _table(runs_c, peer)
    ratio = med[ours] / med[peer]
    ratio_c = med_c[ours] / med_c[peer]

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    lines = [
        SECTION_BEGIN,
        "## Neighbours",
        "",
        f"k = {K} nearest tokens per token and step, Euclidean. Whole processes, bf16 safetensors in, results"
        f" written to disk; dask-pdist runs as `{dask_name} neighbours IN -k {K} -o OUT.zarr --no-progress`"
        " (Euclidean: the BLAS method, every list exact, see docs/neighbours.md), torch as `methods.py"
        " torch-knn` (per step `torch.topk(torch.cdist(x, x), k + 1, largest=False)`, default compute mode,"
        f" the token itself dropped, results saved; in (c) {TORCH_ROWS:,} rows at a time). Run on {started};"
        f" load average before {load[0]:.2f}, after {load_after[0]:.2f} (other work on the machine slows every"
        " wall time; user s is CPU time and suffers less).",
        "",
        "```",
        f"{verdict(ratio <= TARGET_VS_TORCH)}  {a[0]} x {a[1]} x {a[2]}: dask-pdist neighbours /"
        f" torch.topk(torch.cdist) = {ratio:.3f} (target <= {TARGET_VS_TORCH})",
        f"{verdict(ratio_c <= TARGET_VS_TORCH_D512)}  {c[0]} x {c[1]} x {c[2]}: dask-pdist neighbours /"
        f" torch.topk(torch.cdist) in row blocks = {ratio_c:.3f} (target <= {TARGET_VS_TORCH_D512})",
        f"{verdict(run_b.wall_s <= TARGET_BIG_S)}  {b[0]} x {b[1]} x {b[2]}: dask-pdist neighbours"
        f" wall = {run_b.wall_s:.2f} s (target <= {TARGET_BIG_S:.0f} s)",
        f"{verdict(run_b.maxrss_mb <= TARGET_RSS_MB)}  {b[0]} x {b[1]} x {b[2]}: dask-pdist neighbours"
        f" peak RSS = {run_b.maxrss_mb:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)",
        "```",
        "",
        f"### (a) {a[0]} x {a[1]} x {a[2]} bf16 (`dask-pdist synth`), k = {K} (baseline: torch.topk(torch.cdist))",
        "",
        *table_a,
        "",
        f"torch's exactness (last round's outputs): largest self-distance {cmp['self_max']:.3g} (exactly 0 in"
        f" dask-pdist); {cmp['wrong']:,} of {cmp['lists']:,} (step, token) lists hold a token farther than the"
        f" exact k-th nearest ({cmp['wrong_entries']:,} of {cmp['lists'] * K:,} neighbours wrong);"
        f" {cmp['differ']:,} lists differ from dask-pdist's at all (the rest of the difference: exact ties,"
        " e.g. duplicate tokens, broken another way; dask-pdist breaks them by the smaller token index).",
        "",
        f"### (c) {c[0]} x {c[1]} x {c[2]} bf16 (Gaussian, seed 0), k = {K} (baseline: torch.topk(torch.cdist),"
        f" {TORCH_ROWS:,} rows at a time)",
        "",
        *table_c,
        "",
        f"torch's largest self-distance: {self_c:.3g} (exactly 0 in dask-pdist).",
        "",
        f"### (b) {b[0]} x {b[1]} x {b[2]} bf16 (Gaussian, seed 0), k = {K}",
        "",
        "| method | wall s | peak RSS MB | user s | sys s |",
        "|---|---|---|---|---|",
        f"| dask-pdist neighbours | {run_b.wall_s:.2f} | {run_b.maxrss_mb:.0f} | {run_b.user_s:.2f}"
        f" | {run_b.sys_s:.2f} |",
        "",
        f"One run. Work: V(V-1)/2 x D = {b[1] * (b[1] - 1) // 2 * b[2]:.3g} pair-dims (each unordered pair"
        " once, in the float32 product). No torch row: its V x V float32 matrix alone would be"
        f" {b[1] * b[1] * 4 / 1e9:.1f} GB per step.",
        SECTION_END,
        "",
    ]
    return lines


def _self_distance_max(torch_out: Path) -> float:
    from safetensors.numpy import load_file

    return float(load_file(str(torch_out))["self_distance_max"].max())


def replace_section(text: str, lines: list[str]) -> str:
    """``text`` with its neighbours section replaced by ``lines`` (appended if absent)."""
    new = "\n".join(lines)
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        _, tail = rest.split(SECTION_END, 1)
        return head + new.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + new
