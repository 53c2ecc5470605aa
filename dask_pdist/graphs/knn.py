"""The graph of exact k nearest neighbours: block-pair tasks, then one merge task per block.

Array layer (axes and chunks). A V x V matrix never exists: the tokens are cut into blocks;
one task takes every pair of one block pair (b, c), c >= b, once and keeps a running top-k of
both blocks' tokens; one task per block merges its partial lists. Euclidean block pairs go
through the BLAS method (:func:`dask_pdist.kernels.knn.knn_pairs_rows`: a matrix product
bounds every pair, only the candidates are computed exactly) on the row-major snapshots;
the other metrics through the tile kernel on transposed ones. The lists are the same.
"""

from __future__ import annotations

from typing import Literal

import dask
import dask.array as da
import numpy as np

from dask_pdist.conventions import Metric, check_metric
from dask_pdist.kernels.engine import resolve_engine
from dask_pdist.kernels.knn import QUERY_ROWS, check_k, knn_merge, knn_pairs, knn_pairs_rows, knn_tile
from dask_pdist.planning import plan_neighbour_chunks, plan_product_blocks

__all__ = ["NEIGHBOUR_RECORD", "neighbour_array"]

#: One neighbour: its token (the original index of a subset) and the distance to it.
NEIGHBOUR_RECORD = np.dtype([("neighbour", "<i4"), ("distance", "<f4")])
_RECORD = NEIGHBOUR_RECORD


def _transpose_block(x: np.ndarray) -> np.ndarray:
    # once per step chunk, shared by every block-pair task of that chunk
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def _pair_task(xt: np.ndarray, b: tuple[int, int], c: tuple[int, int], *, k: int, metric: int, step0: int) -> tuple:
    if metric == 0:  # xt is row-major here: (step, token, dim)
        return knn_pairs_rows(xt, b, c, k, step0=step0)
    tile = knn_tile(xt.shape[1], xt.shape[2], xt.dtype.itemsize)
    return knn_pairs(xt, b, c, k, metric, QUERY_ROWS, tile, step0=step0)


def _merge_task(as_rows: list[tuple], as_cols: list[tuple], ids: np.ndarray, *, k: int) -> np.ndarray:
    # one block's partial lists: from its pairs with blocks c >= b (it was the rows) and c < b
    parts = [(r[0], r[1]) for r in as_rows] + [(r[2], r[3]) for r in as_cols]
    nbr, dist = knn_merge(parts, k)
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
    """Lazy (step, token, k) record array of neighbours: block-pair tasks, then one merge per block.

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
        are the same either way. On the GPU one task takes a step chunk's whole snapshots.

    Returns
    -------
    dask.array.Array
        Record dtype with fields ``neighbour`` (int32) and ``distance`` (float32), chunked
        (steps, token block, k). A block-pair task holds one step chunk's transposed
        snapshots (shared by all its tasks) and two blocks' (tokens, k) lists.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.arange(12.0).reshape(2, 3, 2), chunks=1)
    >>> neighbour_array(x, 1)["neighbour"].compute()[:, :, 0]
    array([[1, 0, 1],
           [1, 0, 1]], dtype=int32)
    """
    m = check_metric(metric, ("euclidean", "chebyshev", "manhattan"))
    engine = resolve_engine(engine)
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
    for xt_s, n, step0 in zip(xt.to_delayed(optimize_graph=False).ravel(), x.chunks[0], step0s, strict=True):
        pair = dask.delayed(_pair_task, pure=True)
        pairs = {
            (b, c): pair(xt_s, ranges[b], ranges[c], k=k, metric=m, step0=int(step0))
            for b in range(len(ranges))
            for c in range(b, len(ranges))
        }
        merge = dask.delayed(_merge_task, pure=True)
        blocks = [
            da.from_delayed(
                merge([pairs[b, c] for c in range(b, len(ranges))], [pairs[c, b] for c in range(b)], ids_d, k=k),
                shape=(n, hi - lo, k),
                dtype=_RECORD,
                meta=meta,
            )
            for b, (lo, hi) in enumerate(ranges)
        ]
        rows.append(da.concatenate(blocks, axis=1))
    return da.concatenate(rows, axis=0)
