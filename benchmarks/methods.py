"""The baselines that ``benchmarks/run.py`` times, one whole process each.

    python benchmarks/methods.py notebook HISTORY.safetensors OUT.safetensors
    python benchmarks/methods.py torch-cdist HISTORY.safetensors OUT.safetensors
    python benchmarks/methods.py scipy-cdist HISTORY.safetensors OUT.safetensors
    python benchmarks/methods.py torch-knn HISTORY.safetensors OUT.safetensors -k 10 [--rows 2048]
    python benchmarks/methods.py kernel --steps 5001 --vocab 128 --dim 64 --repeats 5 [--bandwidth]

Each baseline reads the bf16 history written by ``dask-pdist synth`` and writes both (S, V, V)
float32 results to one safetensors file, so every method pays for its input and output. Imports
happen inside each function: the process pays only for what it uses. ``kernel`` times the numba
kernel alone in this process and prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

KEY = "embedding_history"


def notebook(history_path: str, output_path: str) -> None:
    """The seed notebook's cells 2, 3, 4, 5, 6 and 7, with its constants; prints to stdout."""
    # --- cell 2: imports, in the notebook's order ---
    import numpy as np  # noqa: I001
    import torch
    from safetensors.torch import load_file, save_file
    from pathlib import Path
    from tqdm.auto import tqdm

    RANDOM_SEED = 42
    torch.manual_seed(RANDOM_SEED)
    np.random.seed(RANDOM_SEED)

    # --- cell 3: load (validation against EXPECTED_STEPS dropped: sizes vary here) ---
    data = load_file(history_path)
    embedding_history = data[KEY]
    n_snapshots, vocab_size, hidden_dim = embedding_history.shape
    print(f"Shape: {embedding_history.shape}")

    # --- cell 4: allocate ---
    euclidean_distances = torch.zeros((n_snapshots, vocab_size, vocab_size), dtype=torch.float32)
    chebyshev_distances = torch.zeros((n_snapshots, vocab_size, vocab_size), dtype=torch.float32)

    # --- cell 5: the loop, verbatim ---
    for i in tqdm(range(n_snapshots), desc="Processing snapshots"):
        gamma = embedding_history[i].float()
        diff = gamma.unsqueeze(0) - gamma.unsqueeze(1)
        euclidean = torch.norm(diff, p=2, dim=2)
        euclidean_distances[i] = euclidean
        chebyshev = torch.abs(diff).max(dim=2)[0]
        chebyshev_distances[i] = chebyshev

    # --- cell 6: summary statistics ---
    mask = ~torch.eye(vocab_size, dtype=torch.bool)
    for s in (0, n_snapshots - 1):
        e = euclidean_distances[s][mask].float()
        c = chebyshev_distances[s][mask].float()
        print(f"step {s}: Euclidean min={e.min().item():.6f}, max={e.max().item():.6f}, mean={e.mean().item():.6f}")
        print(f"step {s}: Chebyshev min={c.min().item():.6f}, max={c.max().item():.6f}, mean={c.mean().item():.6f}")

    # --- cell 7: save ---
    save_dict = {
        "euclidean_distances": euclidean_distances,
        "chebyshev_distances": chebyshev_distances,
    }
    output_path = Path(output_path)
    save_file(save_dict, output_path)
    print(f"File size: {output_path.stat().st_size / 1e6:.2f} MB")


def _batch_steps(vocab: int) -> int:
    # snapshots per batch so one batch's output stays near 32 MiB (memory bounded like dask_pdist's)
    return max(1, (32 << 20) // (2 * 4 * vocab * vocab))


def torch_cdist(history_path: str, output_path: str) -> None:
    """torch.cdist on batches of snapshots, default compute mode (Gram trick for V > 25)."""
    import torch
    from safetensors.torch import load_file, save_file

    history = load_file(history_path)[KEY]
    n, v, _ = history.shape
    euclidean = torch.empty((n, v, v), dtype=torch.float32)
    chebyshev = torch.empty((n, v, v), dtype=torch.float32)
    b = _batch_steps(v)
    for s in range(0, n, b):
        x = history[s : s + b].float()
        euclidean[s : s + b] = torch.cdist(x, x)
        chebyshev[s : s + b] = torch.cdist(x, x, p=float("inf"))
    save_file({"euclidean_distances": euclidean, "chebyshev_distances": chebyshev}, output_path)


def torch_knn(history_path: str, output_path: str, k: int, rows: int = 0) -> None:
    """k nearest tokens per step the usual torch way: ``torch.topk(torch.cdist(x, x), k + 1)``.

    Default compute mode (Gram trick for V > 25), so self-distances are not exactly 0 and
    the token itself may not come first; the caller drops it. Also saves the largest
    self-distance per step (the diagonal of the same matrix). ``rows`` > 0: ``cdist`` of that
    many rows against all tokens at a time (memory rows x V instead of V x V).
    """
    import torch
    from safetensors.torch import load_file, save_file

    history = load_file(history_path)[KEY]
    n, v, _ = history.shape
    idx = torch.empty((n, v, k + 1), dtype=torch.int64)
    val = torch.empty((n, v, k + 1), dtype=torch.float32)
    diag = torch.empty(n, dtype=torch.float32)
    step = rows if rows > 0 else v
    for s in range(n):
        x = history[s].float()
        diag[s] = 0
        for r0 in range(0, v, step):
            d = torch.cdist(x[r0 : r0 + step], x)
            diag[s] = max(diag[s], d.diagonal(offset=r0).abs().max())
            val[s, r0 : r0 + step], idx[s, r0 : r0 + step] = torch.topk(d, k + 1, largest=False)
            del d
    save_file({"indices": idx, "distances": val, "self_distance_max": diag}, output_path)


def scipy_cdist(history_path: str, output_path: str) -> None:
    """scipy.spatial.distance.cdist per snapshot (float64 inside), stored as float32."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 so safetensors.numpy can read BF16)
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from scipy.spatial.distance import cdist

    history = load_file(history_path)[KEY]
    n, v, _ = history.shape
    euclidean = np.empty((n, v, v), dtype=np.float32)
    chebyshev = np.empty((n, v, v), dtype=np.float32)
    for s in range(n):
        g = history[s].astype(np.float64)
        euclidean[s] = cdist(g, g, "euclidean")
        chebyshev[s] = cdist(g, g, "chebyshev")
    save_file({"euclidean_distances": euclidean, "chebyshev_distances": chebyshev}, output_path)


def memory_bandwidth(repeats: int, mib: int = 128) -> dict:
    """This machine's memory bandwidth, the other limit of the kernel: GB/s writing (``fill``)
    and copying (``copy``: bytes read + bytes written, as STREAM counts them) ``mib`` MiB of
    float32 per thread (several times the last-level cache), on 1 and 2 threads, with buffers
    touched once before timing. Plain compiled loops, vectorised, with ordinary stores (no
    memset/memcpy, no non-temporal stores), as the kernel stores its results."""
    from concurrent.futures import ThreadPoolExecutor

    import numba
    import numpy as np

    @numba.njit(nogil=True)
    def fill(a, v):
        for i in range(a.size):
            a[i] = v

    @numba.njit(nogil=True)
    def copy(dst, src):
        for i in range(src.size):
            dst[i] = src[i]

    n = mib << 18  # float32 values
    bufs = [(np.ones(n, np.float32), np.ones(n, np.float32)) for _ in range(2)]
    ops = {"fill": (lambda k: fill(bufs[k][0], np.float32(2.0)), 4 * n), "copy": (lambda k: copy(*bufs[k]), 8 * n)}
    for op, _ in ops.values():
        op(0)  # compiles (and touches nothing new)
    out: dict[str, dict[str, list[float]]] = {name: {"1": [], "2": []} for name in ops}
    with ThreadPoolExecutor(2) as pool:
        for _ in range(repeats):
            for name, (op, nbytes) in ops.items():
                for threads in (1, 2):
                    t = time.perf_counter()
                    list(pool.map(op, range(threads)))
                    out[name][str(threads)].append(nbytes * threads / (time.perf_counter() - t) / 1e9)
    return out


#: the compute bound's block shapes (dims, tokens), 32 KiB of float32 each (L1 holds 48 KiB)
PEAK_SHAPES = ((128, 64), (64, 128), (32, 256))


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def kernel(
    steps: int, vocab: int, dim: int, repeats: int, chunk: int | None, bandwidth: bool = False, bandwidth_mib: int = 128
) -> dict:
    """Time ``pairwise_block`` alone on 1 and 2 threads, an L1-resident peak loop (the compute
    bound), and (with ``bandwidth``) this machine's memory bandwidth (:func:`memory_bandwidth`).

    Work is counted in pair-dims of unordered pairs (i < j), V (V - 1) / 2 * D per snapshot:
    the useful work. The kernel computes each row from the diagonal on (rounded down to 16
    tokens: at most 15 pairs per row twice) and copies the triangle below, so its arithmetic is
    close to that count. Each pair-dim is 4 floating-point operations: subtract, multiply-add
    (square and sum), abs, max. Its memory traffic is dominated by the results it stores,
    2 x V x V float32 per snapshot (``out_bytes``), against ``in_bytes`` of input read.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numba
    import numpy as np

    t0 = time.perf_counter()
    from dask_pdist.kernels.distances import pairwise_block

    import_s = time.perf_counter() - t0
    if chunk is None:  # as the pipeline chunks it (open_history's chunks="auto")
        from dask_pdist.planning import auto_step_chunk

        chunk = auto_step_chunk(vocab, steps)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, vocab, dim), dtype=np.float32)
    chunks = [x[s : s + chunk] for s in range(0, steps, chunk)]
    pair_dims = steps * vocab * (vocab - 1) // 2 * dim

    t0 = time.perf_counter()
    pairwise_block(x[:1])  # loads the cached machine code, or compiles it (cache=True)
    first_call_s = time.perf_counter() - t0

    def run(threads: int) -> float:
        t = time.perf_counter()
        if threads == 1:
            for c in chunks:
                pairwise_block(c)
        else:
            with ThreadPoolExecutor(threads) as pool:
                # each output dropped as it comes, as compute drops a block once written: keeping
                # them all (a list) made the kernel pay first-touch page faults compute does not
                # pay (at 20,004 steps 1.0-2.4 s instead of 0.76-0.92 s)
                for _ in pool.map(pairwise_block, chunks):
                    pass
        return time.perf_counter() - t

    run(2)  # touch the input and warm the allocator
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for threads in (1, 2):
            times[threads].append(run(threads))

    # Bound: the kernel's own row routine, not a copy of it, on L1-resident 32 KiB float32
    # blocks with full-length rows (no transposes, no output stores, no cache misses), in the
    # block shape where it runs fastest: the most this CPU does with this instruction mix. The
    # shape is the same for every history: at D = 256 a block of D x 64 would leave L1, and
    # rows of 64 tokens run slower than longer ones (measured: 19.2 G pair-dims/s at 64 x 64,
    # 24.9 at 32 x 256, one thread).
    from dask_pdist.kernels.distances import _row, _scaling_bound

    @numba.njit(nogil=True)
    def _peak(at, reps, sq, mx, e_low):
        n = at.shape[1]
        for _r in range(reps):
            for i in range(n):
                _row(at, i, at, 0, n, sq, mx, sq, e_low, False)  # no L1 sums (as by default)
        return sq[0] + mx[0]

    def operands(d: int, n: int) -> tuple:  # one thread's block, its two row buffers, the scaling bound
        return (
            rng.standard_normal((d, n), dtype=np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
            _scaling_bound(np.dtype(np.float32), d),
        )

    def peak_rate(op: tuple, reps: int) -> float:  # pair-dims per second, one thread, best of 3
        at, sq, mx, e_low = op
        n = at.shape[1]
        return max(reps * n * n * at.shape[0] / _timed(lambda: _peak(at, reps, sq, mx, e_low)) for _ in range(3))

    t0 = time.perf_counter()
    peak_rate(operands(4, 8), 1)
    peak_compile_s = time.perf_counter() - t0
    # each shape on one thread, ~0.2 G pair-dims a run; the fastest is the bound's
    best = max((peak_rate(operands(d, n), max(1, 200_000_000 // (n * n * d))), d, n) for d, n in PEAK_SHAPES)
    _, peak_dim, peak_n = best
    ops = [operands(peak_dim, peak_n) for _ in range(2)]  # one per thread
    per_rep = peak_n * peak_n * peak_dim
    reps = max(1, min(pair_dims // 2, 2_000_000_000) // per_rep)  # ~0.1 s a run

    def run_peak(threads: int) -> float:
        t = time.perf_counter()
        if threads == 1:
            _peak(ops[0][0], reps, *ops[0][1:])
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda k: _peak(ops[k][0], reps, *ops[k][1:]), range(threads)))
        return time.perf_counter() - t

    peak: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for threads in (1, 2):
            peak[threads].append(run_peak(threads))

    return {
        "steps": steps,
        "vocab": vocab,
        "dim": dim,
        "chunk": chunk,
        "pair_dims": pair_dims,
        "import_s": import_s,
        "first_call_s": first_call_s,
        "times": {str(k): v for k, v in times.items()},
        "peak_block": [peak_dim, peak_n],
        "peak_pair_dims_per_thread": reps * per_rep,
        "peak_compile_s": peak_compile_s,
        "peak_times": {str(k): v for k, v in peak.items()},
        "in_bytes": x.nbytes,
        "out_bytes": 2 * steps * vocab * vocab * 4,
        "bandwidth": memory_bandwidth(repeats, bandwidth_mib) if bandwidth else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="method", required=True)
    for name in ("notebook", "torch-cdist", "scipy-cdist"):
        s = sub.add_parser(name)
        s.add_argument("history")
        s.add_argument("output")
    t = sub.add_parser("torch-knn")
    t.add_argument("history")
    t.add_argument("output")
    t.add_argument("-k", type=int, default=10)
    t.add_argument("--rows", type=int, default=0, help="rows per cdist call (default: all)")
    k = sub.add_parser("kernel")
    k.add_argument("--steps", type=int, default=5001)
    k.add_argument("--vocab", type=int, default=128)
    k.add_argument("--dim", type=int, default=64)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--chunk", type=int, default=None, help="snapshots per call (default: the pipeline's auto chunk)")
    k.add_argument("--bandwidth", action="store_true", help="also measure this machine's memory bandwidth")
    k.add_argument("--bandwidth-mib", type=int, default=128, help="MiB per thread for --bandwidth (default: 128)")
    args = p.parse_args()
    if args.method == "torch-knn":
        torch_knn(args.history, args.output, args.k, args.rows)
        return
    if args.method == "kernel":
        json.dump(
            kernel(args.steps, args.vocab, args.dim, args.repeats, args.chunk, args.bandwidth, args.bandwidth_mib),
            sys.stdout,
        )
        return
    {"notebook": notebook, "torch-cdist": torch_cdist, "scipy-cdist": scipy_cdist}[args.method](
        args.history, args.output
    )


if __name__ == "__main__":
    main()
