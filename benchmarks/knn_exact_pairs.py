"""How many pairs the Euclidean BLAS method computes exactly: lists passed along, or not.

    python benchmarks/knn_exact_pairs.py --shape 2 16384 512

In one process, one BLAS thread, on the Gaussian bf16 history of neighbours_rows.py (seed 0,
scale 0.02, widened to float32): every block pair of each step's token blocks
(:func:`dask_pdist.planning.plan_product_blocks`) through ``gemm_pairs``, in the graph's
rounds (:func:`dask_pdist.planning.plan_block_rounds`), either as the graph runs them now
(``running``: each block pair starts from its blocks' lists so far) or as it did before
(``independent``: every block pair from empty lists, merged afterwards). Prints the pairs
computed exactly (``gemm_pairs(counts=)``), per token and step, and the CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one BLAS thread, as a dask task

import numpy as np  # noqa: E402

from dask_pdist.kernels.knn_gemm import gemm_pairs  # noqa: E402
from dask_pdist.planning import plan_block_rounds, plan_product_blocks  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs=3, type=int, default=[2, 16384, 512], metavar=("S", "V", "D"))
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--modes", default="independent,running,independent,running")
    args = p.parse_args()
    import ml_dtypes

    s, v, d = args.shape
    x = np.random.default_rng(0).standard_normal((s, v, d), dtype=np.float32) * 0.02
    x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    block = plan_product_blocks(v)
    ranges = [(a, min(a + block, v)) for a in range(0, v, block)]
    gemm_pairs(x[:, :300], (0, 150), (150, 300), args.k)  # compile outside the timings
    for mode in args.modes.split(","):
        counts = np.zeros(1, np.int64)
        t0 = time.process_time()
        state: dict[int, tuple] = {}
        for pairs in plan_block_rounds(len(ranges)):
            for b, c in pairs:
                lists = None if mode == "independent" or b == c else (*state[b], *state[c])
                rn, rd, cn, cd = gemm_pairs(x, ranges[b], ranges[c], args.k, lists=lists, counts=counts)
                state[b], state[c] = (rn, rd), (cn, cd)
        cpu = time.process_time() - t0
        print(
            f"{s} x {v} x {d}, {len(ranges)} blocks, {mode:11s}: {counts[0]:,} pairs computed exactly"
            f" ({counts[0] / (s * v):.1f} per token and step), CPU {cpu:.2f} s"
        )


if __name__ == "__main__":
    main()
