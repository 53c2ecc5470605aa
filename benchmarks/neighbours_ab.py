"""Two versions of ``dask-pdist neighbours`` and torch, alternating, on one shared machine.

    git archive BASE_COMMIT | tar -x -C /tmp/base   # the other version, as plain files
    python benchmarks/neighbours_ab.py --base /tmp/base --shape 2 16384 512 --rounds 3

Each round runs, one after the other, the base checkout's CLI (``python -m dask_pdist`` with
PYTHONPATH at ``--base``), this checkout's, and (``--torch``) ``methods.py torch-knn --rows
2048``, on the same Gaussian bf16 history (seed 0, scale 0.02, as neighbours_rows.py). A
machine shared with other jobs slows wall times by up to 3x; CPU seconds (user + sys of the
child) suffer less, so both are printed: per method the medians over rounds, and the ratios
against torch taken within each round, then their median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from harness import METHODS_PY, _remove, _run_child
from neighbours_rows import TORCH_ROWS, _gaussian_history

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="another checkout (plain files) of dask_pdist")
    p.add_argument("--shape", nargs=3, type=int, default=[2, 16384, 512], metavar=("S", "V", "D"))
    p.add_argument("--metric", default="euclidean")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch", action="store_true", help="also torch.topk(torch.cdist) in row blocks")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nb_ab_"))
    hist = work / "h.safetensors"
    _gaussian_history(hist, tuple(args.shape))
    out = work / "out"
    cli = ["neighbours", str(hist), "-k", str(args.k), "--metric", args.metric, "-o", str(out), "--no-progress"]
    # PYTHONSAFEPATH: `python -m` would put the current folder first on sys.path, so a run
    # from a checkout's root would import that checkout's package for both versions
    envs = {
        "base": {**os.environ, "PYTHONPATH": str(Path(args.base).resolve()), "PYTHONSAFEPATH": "1"},
        "this": {**os.environ, "PYTHONPATH": str(HERE.parent), "PYTHONSAFEPATH": "1"},
    }
    cmds = {name: ([sys.executable, "-m", "dask_pdist", *cli], env) for name, env in envs.items()}
    if args.torch:
        torch_cmd = [sys.executable, str(METHODS_PY), "torch-knn", str(hist), str(out), "-k", str(args.k)]
        cmds["torch"] = ([*torch_cmd, "--rows", str(TORCH_ROWS)], dict(os.environ))
    runs: dict[str, list] = {name: [] for name in cmds}
    for r in range(args.rounds + 1):  # round 0: untimed warm-up (page cache, numba cache)
        for name, (cmd, env) in cmds.items():
            run = _run_child(cmd, env, work / "log")
            _remove(out)
            if r:
                runs[name].append(run)
                cpu = run.user_s + run.sys_s
                print(f"round {r} {name:6s} wall {run.wall_s:7.2f} s  cpu {cpu:7.2f} s  load {os.getloadavg()[0]:.1f}")
    _remove(hist)
    print(f"\n{args.shape} {args.metric} k={args.k}, {args.rounds} rounds: medians")
    for name, rs in runs.items():
        line = f"{name:6s} wall {statistics.median(x.wall_s for x in rs):7.2f} s  cpu"
        line += (
            f" {statistics.median(x.user_s + x.sys_s for x in rs):7.2f} s  rss {max(x.maxrss_mb for x in rs):6.0f} MB"
        )
        if "torch" in runs and name != "torch":
            t = runs["torch"]
            wall = statistics.median(a.wall_s / b.wall_s for a, b in zip(rs, t, strict=True))
            cpu = statistics.median((a.user_s + a.sys_s) / (b.user_s + b.sys_s) for a, b in zip(rs, t, strict=True))
            line += f"  vs torch (per-round median): wall {wall:.3f}x, cpu {cpu:.3f}x"
        print(line)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
