"""The graph of exact k nearest neighbours: block-pair tasks that pass running lists along.

Array layer (axes and chunks). A V x V matrix never exists: the tokens are cut into blocks;
one task takes every pair of one block pair (b, c), c >= b, once, and offers each pair to
both tokens' running top-k lists. The block pairs run in rounds
(:func:`dask_pdist.planning.plan_block_rounds`: each block with itself, then a round robin
where no block appears twice in a round), and each block's lists pass from one round's
task to the next: a task starts from lists that already hold the nearest tokens of the
blocks seen so far, so their k-th entries rule most of its pairs out from the start (about
k (1 + 1/2 + ... ) candidates per token instead of k per block pair). The last task of a
block holds its final lists. Euclidean block pairs go through the BLAS method
(:func:`dask_pdist.kernels.knn.knn_pairs_rows`: a matrix product bounds every pair, only
the candidates are computed exactly) on the row-major snapshots; the other metrics through
the tile kernel on transposed ones. The lists are the same, whatever the order of rounds.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np

from dask_pdist.conventions import Metric, check_engine, check_metric
from dask_pdist.kernels.engine import resolve_engine
from dask_pdist.kernels.knn import QUERY_ROWS, check_k, knn_pairs, knn_pairs_rows, knn_tile
from dask_pdist.planning import plan_block_rounds, plan_neighbour_chunks, plan_product_blocks, plan_product_steps

__all__ = ["NEIGHBOUR_RECORD", "neighbour_array"]

#: One neighbour: its token (the original index of a subset) and the distance to it.
NEIGHBOUR_RECORD = np.dtype([("neighbour", "<i4"), ("distance", "<f4")])
_RECORD = NEIGHBOUR_RECORD


def _transpose_block(x: np.ndarray) -> np.ndarray:
    # once per step chunk, shared by every block-pair task of that chunk
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def _pair_task(
    xt: np.ndarray,
    b: tuple[int, int],
    c: tuple[int, int],
    lb: tuple | None,
    lc: tuple | None,
    *,
    k: int,
    metric: int,
    step0: int,
) -> tuple[tuple, tuple]:
    # one block pair, offered to b's and c's running lists (None: start empty); returns both
    lists = None if lb is None else (*lb, *(lb if lc is None else lc))
    if metric == 0:  # xt is row-major here: (step, token, dim)
        rn, rd, cn, cd = knn_pairs_rows(xt, b, c, k, step0=step0, lists=lists)
    else:
        tile = knn_tile(xt.shape[1], xt.shape[2], xt.dtype.itemsize)
        rn, rd, cn, cd = knn_pairs(xt, b, c, k, metric, QUERY_ROWS, tile, step0=step0, lists=lists)
    return (rn, rd), (cn, cd)


def _record_task(lists: tuple, ids: np.ndarray) -> np.ndarray:
    # one block's final lists as records of original token indices
    nbr, dist = lists
    out = np.empty(nbr.shape, dtype=_RECORD)
    out["neighbour"] = ids[nbr]
    out["distance"] = dist
    return out


def _cuda_task(x: np.ndarray, ids: np.ndarray, steps: np.ndarray, *, k: int, metric: str) -> np.ndarray:
    from dask_pdist.kernels.cuda.knn import knn_block_cuda  # only a graph on the GPU imports it

    nbr, dist = knn_block_cuda(x, k, metric, step0=int(steps[0]) if steps.size else 0)
    out = np.empty(nbr.shape, dtype=_RECORD)
    out["neighbour"] = ids[nbr]
    out["distance"] = dist
    return out


def _cuda_graph(x: da.Array, k: int, metric: str, ids: np.ndarray, steps: int, block: int) -> da.Array:
    # a GPU task takes whole snapshots (rows in batches, see kernels/cuda/knn.py); the output
    # is cut into the CPU engine's token blocks so that both engines store the same chunks
    x = x.rechunk({0: steps, 1: -1, 2: -1})
    rec = da.blockwise(
        _cuda_task,
        "stk",
        x,
        "std",
        da.from_array(ids, chunks=-1),
        "t",
        da.arange(x.shape[0], chunks=(x.chunks[0],)),
        "s",
        new_axes={"k": k},
        concatenate=True,
        dtype=_RECORD,
        meta=np.empty((0, 0, 0), dtype=_RECORD),
        k=k,
        metric=metric,
    )
    return rec.rechunk({1: block})


def neighbour_array(
    x: da.Array,
    k: int,
    metric: Metric = "euclidean",
    *,
    token_ids: np.ndarray | None = None,
    token_chunk: int | Literal["auto"] = "auto",
    engine: str = "cpu",
) -> da.Array:
    """Lazy (step, token, k) record array of neighbours: rounds of block-pair tasks.

    Parameters
    ----------
    x : dask.array.Array, shape (step, token, dim), float32 or float64
    k : int
    metric : {"euclidean", "chebyshev", "manhattan"}
    token_ids : ndarray of int, optional
        Value stored for each token position (the original token index of a subset);
        default the positions.
    token_chunk : int or "auto"
        Tokens per block (the output's token chunks); ``"auto"``: see
        :func:`plan_neighbour_chunks` (the step chunking is replanned too), and for the
        Euclidean metric on the CPU :func:`plan_product_blocks`.
    engine : {"cpu", "cuda", "auto"}
        Where the kernels run (:func:`dask_pdist.kernels.engine.resolve_engine`); the lists
        are the same either way. ``"auto"`` runs on the CPU (the CUDA kernel was measured
        slower than the CPU engine). On the GPU one task takes a step chunk's whole snapshots.

    Returns
    -------
    dask.array.Array
        Record dtype with fields ``neighbour`` (int32) and ``distance`` (float32), chunked
        (steps, token block, k). A block-pair task holds one step chunk's snapshots
        (shared by all its tasks) and two blocks' (tokens, k) running lists. A step chunk's
        tasks run at most ceil(blocks / 2) at a time (a round), several step chunks at once.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.arange(12.0).reshape(2, 3, 2), chunks=1)
    >>> neighbour_array(x, 1)["neighbour"].compute()[:, :, 0]
    array([[1, 0, 1],
           [1, 0, 1]], dtype=int32)
    """
    m = check_metric(metric, ("euclidean", "chebyshev", "manhattan"))
    # "auto" keeps neighbours on the CPU: on the one GPU measured (an H200, benchmarks/results.md
    # "GPU engine on an H200") the CUDA tile kernel ran slower than the CPU engine; "cuda" still
    # selects it.
    engine = "cpu" if check_engine(engine) == "auto" else resolve_engine(engine)
    if engine == "cuda" and m == 2:
        raise ValueError("metric='manhattan' runs on the CPU engine only (engine='cpu')")
    if x.ndim != 3:
        raise ValueError(f"history must be 3-D (step, token, dim), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"history must be float32 or float64 (widen bf16/f16 first), got {x.dtype}")
    n_steps, n_tokens, n_dims = x.shape
    k = check_k(k, n_tokens)
    ids = np.arange(n_tokens, dtype=np.int64) if token_ids is None else np.asarray(token_ids, dtype=np.int64)
    if ids.shape != (n_tokens,):
        raise ValueError(f"token_ids has shape {ids.shape}; expected ({n_tokens},), one per token")
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError("token_ids must be non-negative and fit int32")
    steps, block = plan_neighbour_chunks(n_steps, n_tokens, n_dims, x.dtype.itemsize)
    if m == 0:
        block = plan_product_blocks(n_tokens, x.dtype.itemsize)
    if token_chunk != "auto":
        if isinstance(token_chunk, bool) or not isinstance(token_chunk, (int, np.integer)) or token_chunk < 1:
            raise ValueError(f"token_chunk={token_chunk!r}: give a positive int or 'auto'")
        block = int(min(token_chunk, n_tokens))
    if m == 0 and engine == "cpu":
        steps = plan_product_steps(n_steps, n_tokens, n_dims, block, x.dtype.itemsize)
    if engine == "cuda":
        return _cuda_graph(x, k, metric, ids, steps, block)
    x = x.rechunk({0: steps, 1: -1, 2: -1})
    if m == 0:  # the BLAS method reads rows
        xt = x.map_blocks(np.ascontiguousarray, dtype=x.dtype)
    else:
        xt = x.map_blocks(_transpose_block, chunks=(x.chunks[0], x.chunks[2], x.chunks[1]), dtype=x.dtype)
    ranges = [(a, min(a + block, n_tokens)) for a in range(0, n_tokens, block)]
    ids_d = dask.delayed(ids, pure=True)
    meta = np.empty((0, 0, 0), dtype=_RECORD)
    rows = []
    step0s = np.cumsum((0,) + x.chunks[0][:-1])
    rounds = plan_block_rounds(len(ranges))
    pair = dask.delayed(_pair_task, pure=True, nout=2)
    record = dask.delayed(_record_task, pure=True)
    for xt_s, n, step0 in zip(xt.to_delayed(optimize_graph=False).ravel(), x.chunks[0], step0s, strict=True):
        state: dict[int, object] = {}  # each block's running lists, after the rounds so far
        for pairs in rounds:
            for b, c in pairs:
                lb, lc = state.get(b), state.get(c) if c != b else None
                state[b], state[c] = pair(xt_s, ranges[b], ranges[c], lb, lc, k=k, metric=m, step0=int(step0))
        blocks = [
            da.from_delayed(record(state[b], ids_d), shape=(n, hi - lo, k), dtype=_RECORD, meta=meta)
            for b, (lo, hi) in enumerate(ranges)
        ]
        rows.append(da.concatenate(blocks, axis=1))
    return da.concatenate(rows, axis=0)
