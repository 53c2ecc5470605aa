"""The CUDA engine against torch on the same GPU, in one short run (issue 24).

    pip install -e ".[cuda,bench]"
    python benchmarks/gpu.py             # about 5 minutes on one H200 (budget: under 8)
    python benchmarks/gpu.py --quick     # tiny sizes: a smoke test of the script, no result

Each case times dask_pdist and torch on the same device in the same process, one after the
other, after an untimed warm-up of both at a tiny size (numba-cuda compiles its kernels on
first use; torch loads cuBLAS). Times are wall clock around the call, after a device
synchronise, including host <-> device copies (both sides start from host memory and end
with the result in host memory). Printed as a Markdown table, with the device named; paste
it into benchmarks/results.md.

- **end to end**: the notebook's history (5001 x 128 x 64, bf16 safetensors) to both
  distance matrices on disk: ``pairwise_distances(engine=...)`` + ``to_zarr`` against
  ``torch.cdist`` (p=2 and p=inf) in batches of snapshots + ``save_file``.
- **k=10 neighbours, one step**: V=50,304 x D=512 and V=151,936 x D=2560 (float32, random
  normal with planted duplicates): the exact kernel against ``torch.topk(torch.cdist(...))``
  in row batches (Gram-matrix distances: not exact, self-distance not 0), Euclidean; the
  Chebyshev row only at the smaller size (torch's p=inf path does not use GEMM).
- **clusters, one step, V=151,936 x D=2560**: threshold 0 (equal rows: dask_pdist compares
  row bytes on the CPU with any engine; torch: ``torch.unique(dim=0)`` on the GPU) and
  threshold 2 ulp of the RMS coordinate, Chebyshev (dask_pdist: the CUDA pair kernel + host
  union-find; torch: ``cdist(p=inf)`` in row batches, ``nonzero``, scipy connected components).

Without a GPU (``torch.cuda.is_available()`` false, or no numba-cuda) the engine is "cpu" and
torch runs on the CPU: the script still runs (that is what ``--quick`` checks on machines
without a GPU), and says so above the table: those numbers are not GPU results.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = {"e2e": (5001, 128, 64), "knn": [(50_304, 512), (151_936, 2560)], "clusters": (151_936, 2560)}
QUICK = {"e2e": (40, 24, 8), "knn": [(301, 24), (517, 40)], "clusters": (409, 24)}
K = 10


def _device():  # noqa: ANN202 - a torch.device
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(f, *args, **kwargs) -> tuple[float, object]:  # noqa: ANN001
    _sync()
    t0 = time.perf_counter()
    out = f(*args, **kwargs)
    _sync()
    return time.perf_counter() - t0, out


def _history(v: int, d: int, seed: int = 0) -> np.ndarray:
    # one float32 snapshot with exact duplicates and one-ulp neighbours, as histories have
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((v, d), dtype=np.float32)
    m, n = max(1, v // 100), max(1, v // 200)
    x[v - m :] = x[:m]  # exact duplicates
    x[v // 2 : v // 2 + n] = x[m : m + n]
    x[v // 2 : v // 2 + n, 0] = np.nextafter(x[m : m + n, 0], np.float32(np.inf))  # one ulp apart
    return x


def _torch_rows(v: int, d: int) -> int:
    # rows of a (rows, V) torch distance batch: about 2 GiB, as the CUDA engine's budget
    return max(1, min(v, (2 << 30) // (4 * v)))


# ------------------------------------------------------------------ end to end


def e2e_ours(history: Path, out: Path, engine: str) -> None:
    """History file to a distance store with dask_pdist."""
    import dask_pdist as dp

    dp.to_zarr(dp.pairwise_distances(dp.open_history(history), engine=engine), out, progress=False)


def e2e_torch(history: Path, out: Path) -> None:
    """History file to both matrices in a safetensors file with torch.cdist on the device."""
    import torch
    from safetensors.torch import load_file, save_file

    h = load_file(history)["embedding_history"]
    n, v, _ = h.shape
    euclidean = torch.empty((n, v, v), dtype=torch.float32)
    chebyshev = torch.empty((n, v, v), dtype=torch.float32)
    b = max(1, (256 << 20) // (2 * 4 * v * v))
    for s in range(0, n, b):
        x = h[s : s + b].to(_device()).float()
        euclidean[s : s + b] = torch.cdist(x, x).cpu()
        chebyshev[s : s + b] = torch.cdist(x, x, p=float("inf")).cpu()
    save_file({"euclidean_distances": euclidean, "chebyshev_distances": chebyshev}, out)


# ------------------------------------------------------------------ neighbours


def knn_ours(x: np.ndarray, metric: str, engine: str) -> np.ndarray:
    """(V, k) exact neighbours of one snapshot with dask_pdist's kernel."""
    if engine == "cuda":
        from dask_pdist.kernels.cuda.knn import knn_block_cuda

        return knn_block_cuda(x[None], K, metric)[0][0]
    from dask_pdist.kernels.knn import knn_block

    return knn_block(x[None], K, metric)[0][0]


def knn_torch(x: np.ndarray, metric: str) -> np.ndarray:
    """(V, k + 1) neighbours (the token itself included) with torch.cdist + topk in row batches."""
    import torch

    v, d = x.shape
    t = torch.from_numpy(x).to(_device())
    p = 2.0 if metric == "euclidean" else float("inf")
    rows = _torch_rows(v, d)
    out = torch.empty((v, K + 1), dtype=torch.int64)
    for r in range(0, v, rows):
        dist = torch.cdist(t[r : r + rows], t, p=p)
        out[r : r + rows] = torch.topk(dist, K + 1, largest=False).indices.cpu()
    return out.numpy()


# ------------------------------------------------------------------ clusters


def clusters_ours(x: np.ndarray, threshold: float, engine: str) -> np.ndarray:
    """(V,) canonical cluster labels of one snapshot with dask_pdist."""
    if threshold == 0:
        from dask_pdist.kernels.cluster_rows import equal_row_labels

        return equal_row_labels(x[None])[0]
    if engine == "cuda":
        from dask_pdist.kernels.cuda.clusters import cluster_labels_cuda

        return cluster_labels_cuda(x[None], np.array([threshold]), "chebyshev")[0]
    from dask_pdist.kernels.cluster_tiles import _history_tiles_task

    v = x.shape[0]  # one tile: the whole snapshot
    return _history_tiles_task(x[None], np.array([threshold]), tiles=(((0, v), (0, v)),), metric=1, n_tokens=v)[0]


def clusters_torch(x: np.ndarray, threshold: float) -> np.ndarray:
    """(V,) cluster labels with torch (unique rows, or cdist + nonzero + connected components)."""
    import torch

    t = torch.from_numpy(x).to(_device())
    if threshold == 0:
        _, inverse = torch.unique(t, dim=0, return_inverse=True)
        return inverse.cpu().numpy()
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    v, d = x.shape
    rows = _torch_rows(v, d)
    pairs = []
    for r in range(0, v, rows):
        near = (torch.cdist(t[r : r + rows], t, p=float("inf")) <= threshold).nonzero()
        near[:, 0] += r
        pairs.append(near.cpu().numpy())
    ij = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(ij), dtype=np.int8), (ij[:, 0], ij[:, 1])), shape=(v, v))
    return connected_components(graph, directed=False)[1]


# ------------------------------------------------------------------ the run


def _row(case: str, ours: float, theirs: float | None, note: str = "") -> str:
    ratio = f"{theirs / ours:.2f}x" if theirs else "n/a"
    torch_s = f"{theirs:.3f}" if theirs is not None else "skipped"
    return f"| {case} | {ours:.3f} | {torch_s} | {ratio} | {note} |"


def ptx_check() -> str:
    """One line: whether any kernel, compiled for this GPU, fuses a multiply-add (it must not)."""
    from numba import cuda

    from dask_pdist.kernels.cuda.ptx import float_ops

    cc = cuda.get_current_device().compute_capability
    fused = sorted({op for ops in float_ops(cc).values() for op in ops if op.startswith(("fma", "mad"))})
    return f"PTX for sm_{cc[0]}{cc[1]}: " + (f"FUSED {fused}: not bit-identical" if fused else "no fma in any kernel")


def warm_up(engine: str, work: Path) -> None:
    """Compile the engine's kernels and load torch's and zarr's libraries on tiny inputs (untimed)."""
    import dask_pdist as dp

    history = dp.write_synthetic_history(work / "warm.safetensors", steps=3, vocab=9, dim=4)
    e2e_ours(history, work / "warm.zarr", engine)
    e2e_torch(history, work / "warm-torch.safetensors")
    x = _history(97, 19)
    knn_ours(x, "euclidean", engine)
    knn_ours(x, "chebyshev", engine)
    clusters_ours(x, 0.5, engine)
    knn_torch(x, "euclidean")
    clusters_torch(x, 0.5)


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script, not a result")
    p.add_argument("--engine", choices=("auto", "cuda", "cpu"), default="auto", help="dask_pdist's engine")
    p.add_argument("--sections", default="e2e,knn,clusters", help="comma-separated subset of e2e,knn,clusters")
    p.add_argument("--no-torch", action="store_true", help="time dask_pdist only")
    p.add_argument("--workdir", help="folder for the temporary history and outputs (default: the temp folder)")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"e2e", "knn", "clusters"}:
        p.error(f"--sections {args.sections}: choose from e2e,knn,clusters")
    import torch

    from dask_pdist.kernels.engine import resolve_engine

    engine = resolve_engine(args.engine)
    sizes = QUICK if args.quick else FULL
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# dask_pdist engine={engine} against torch {torch.__version__} on {device}")
    if engine != "cuda" or not torch.cuda.is_available():
        print("\nNo CUDA GPU (or no numba-cuda): both sides ran on the CPU. These are not GPU results.")
    if args.quick:
        print("\n--quick: tiny sizes, one run each; a smoke test, not a result.")
    if engine == "cuda":
        try:
            print("\n" + ptx_check())
        except Exception as e:  # noqa: BLE001 - numba-cuda internals differ by version; the timings still count
            print(
                f"\nPTX check not run ({type(e).__name__}: {e}); tests/test_cuda.py checks it where numba-cuda matches"
            )
    print("\n| case | dask_pdist s | torch s | torch / ours | note |\n|---|---|---|---|---|")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        warm_up(engine, work)
        if "e2e" in sections:
            import dask_pdist as dp

            s, v, d = sizes["e2e"]
            history = dp.write_synthetic_history(work / "h.safetensors", steps=s, vocab=v, dim=d)
            ours, _ = _timed(e2e_ours, history, work / "d.zarr", engine)
            theirs = None if args.no_torch else _timed(e2e_torch, history, work / "t.safetensors")[0]
            print(_row(f"end to end {s} x {v} x {d}", ours, theirs, "zarr vs safetensors, both metrics"), flush=True)
        if "knn" in sections:
            for i, (v, d) in enumerate(sizes["knn"]):
                x = _history(v, d, seed=i)
                for metric in ("euclidean", "chebyshev") if i == 0 else ("euclidean",):
                    ours, nbr = _timed(knn_ours, x, metric, engine)
                    theirs = None
                    if not args.no_torch:
                        theirs, tn = _timed(knn_torch, x, metric)
                    note = "exact" if theirs is None else _agreement(nbr, tn)
                    print(_row(f"k={K} {metric}, one step, V={v:,} D={d}", ours, theirs, note), flush=True)
        if "clusters" in sections:
            v, d = sizes["clusters"]
            x = _history(v, d, seed=7)
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            two_ulp = 2 * float(np.spacing(np.float32(rms)))
            for threshold, name in ((0.0, "0"), (two_ulp, "2 ulp")):
                ours, labels = _timed(clusters_ours, x, threshold, engine)
                theirs, same = None, ""
                if not args.no_torch:
                    theirs, tl = _timed(clusters_torch, x, threshold)
                    same = "same partition" if _same_partition(labels, tl) else "PARTITIONS DIFFER"
                where = "CPU bytes path" if threshold == 0 else engine
                print(
                    _row(f"clusters <= {name}, one step, V={v:,} D={d}", ours, theirs, f"{where}; {same}"), flush=True
                )
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s.")
    return 0


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> str:
    # torch's lists include the token itself (or not, where the Gram trick puts another first)
    v = ours.shape[0]
    hits = sum(len(set(ours[i].tolist()) & set(theirs[i].tolist())) for i in range(0, v, max(1, v // 1000)))
    return f"torch shares {hits / (K * len(range(0, v, max(1, v // 1000)))):.4f} of our lists (sampled)"


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    # equal up to the names of the groups: each label of a maps to one of b and back
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


if __name__ == "__main__":
    sys.exit(main())
