"""The graph of clusters: per-step labels of groups of (nearly) identical tokens.

Array layer (axes and chunks) over the block functions of :mod:`dask_pdist.kernels.cluster_rows`
(a history at threshold 0: equal rows by their bytes, no numba),
:mod:`dask_pdist.kernels.cluster_tiles` (a history at a positive threshold: union-find over
distance tiles, numba, imported only on that path) and :mod:`dask_pdist.kernels.cluster_edges`
(a store: its pairs within the threshold as edges, numpy; numba only for a tile with many).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning

from dask_pdist.conventions import METRICS, one_block
from dask_pdist.kernels.cluster_rows import _keep, _stat_task, equal_row_labels
from dask_pdist.kernels.engine import resolve_engine
from dask_pdist.planning import plan_token_chunk

__all__ = ["cluster_arrays"]

#: Tasks per step chunk of a history clustered at a positive threshold: each joins a share of
#: the chunk's distance tiles (parallel within a chunk when a history has few chunks).
_TILE_GROUPS = 4


def _one_history_block(x: list, thr: np.ndarray, *, task: Any, **kwargs: Any) -> np.ndarray:
    # the kernel task on the step chunk's block, whole along token and dim, uncopied
    return task(one_block(x), thr, **kwargs)


def _reduce_tiles(per_tile: da.Array) -> da.Array:
    # a store's tiles' partitions joined per step, in plain numpy (the compiler not loaded)
    from dask_pdist.kernels.cluster_edges import _merge_tiles

    return da.reduction(
        per_tile,
        chunk=_keep,
        combine=_merge_tiles,
        aggregate=_merge_tiles,
        axis=(1, 2),
        keepdims=False,
        dtype=np.int32,
        concatenate=True,
        meta=np.empty((0, 0), dtype=np.int32),
        name="cluster-labels",
    )


def _cuda_labels_task(x: np.ndarray, thr: np.ndarray, steps: np.ndarray, *, metric: str) -> np.ndarray:
    from dask_pdist.kernels.cuda.clusters import cluster_labels_cuda  # only a graph on the GPU imports it

    return cluster_labels_cuda(x, thr, metric, step0=int(steps[0]) if steps.size else 0)


def cluster_arrays(
    data: da.Array,
    thr: da.Array | None,
    *,
    kind: Literal["history", "distances"],
    metric_index: int = 1,
    token_chunk: int | Literal["auto"] = "auto",
    engine: str = "cpu",
) -> dict[str, da.Array]:
    """Lazy cluster arrays from a history or from one metric's distances (array layer).

    Parameters
    ----------
    data : dask.array.Array
        ``kind="history"``: (step, token, dim) float32/float64. ``kind="distances"``:
        (step, token_i, token_j) distances of one metric, any chunking.
    thr : dask.array.Array or None
        (step,) float64 thresholds; ``None`` means threshold 0 (for a history: equal rows
        by their bytes, no distance computed).
    metric_index : int
        History only: which metric of the kernels' output (0 Euclidean, 1 Chebyshev).
    token_chunk : int or "auto"
        History at a positive threshold: edge of the distance tiles; ``"auto"`` tiles only
        when one snapshot's matrices exceed the tile budget (as :func:`pairwise_arrays`).
    engine : {"cpu", "cuda", "auto"}
        History at a positive threshold: where the distances are computed (on the GPU one
        task takes a step chunk's whole snapshots). Threshold 0 compares rows by their bytes
        on the CPU with either engine (no distance is computed), and a distance store is read
        on the CPU. The labels are the same either way.

    Returns
    -------
    dict of str to dask.array.Array
        ``cluster``, ``cluster_size`` (step, token) and ``n_clusters``, ``n_clustered``,
        ``largest`` (step,), all int32, chunked along step like the input.

    Examples
    --------
    >>> x = da.zeros((10, 5, 3), chunks=(4, 5, 3), dtype=np.float32)
    >>> cluster_arrays(x, None, kind="history")["cluster"].chunks
    ((4, 4, 2), (5,))
    """
    n_tokens = data.shape[1]
    meta2 = np.empty((0, 0), dtype=np.int32)
    engine = resolve_engine(engine)
    if kind == "history" and thr is None:
        x = data.rechunk({1: -1, 2: -1})
        labels = x.map_blocks(equal_row_labels, drop_axis=2, dtype=np.int32, meta=meta2, name="cluster-equal-rows")
    elif kind == "history" and engine == "cuda":
        x = data.rechunk({1: -1, 2: -1})
        labels = da.blockwise(
            _cuda_labels_task,
            "st",
            x,
            "std",
            thr.rechunk((x.chunks[0],), method="tasks"),
            "s",
            da.arange(x.shape[0], chunks=(x.chunks[0],)),
            "s",
            concatenate=True,
            dtype=np.int32,
            meta=meta2,
            metric=METRICS[metric_index],
        )
    elif kind == "history":
        from dask_pdist.kernels.cluster_tiles import _history_tiles_task, _merge_groups  # numba: only here

        if token_chunk == "auto":
            edge = plan_token_chunk(n_tokens, len(METRICS), data.dtype.itemsize)
        elif isinstance(token_chunk, (int, np.integer)) and not isinstance(token_chunk, bool) and token_chunk >= 1:
            edge = int(min(token_chunk, max(1, n_tokens)))
        else:
            raise ValueError(f"token_chunk={token_chunk!r}: give a positive int or 'auto'")
        # A few tasks per step chunk, each joining a share of its distance tiles, not one task
        # per tile and step: the graph of a task per tile grew by ~70 tasks per step at V =
        # 10,000 and with it the scheduler's memory (measured 310 -> 563 MB peak from 20 to 320
        # steps); now the peak is flat in the steps. Every unordered pair of tiles once.
        ranges = [(a, min(a + edge, n_tokens)) for a in range(0, n_tokens, max(1, edge))]
        tiles = [(ra, rb) for i, ra in enumerate(ranges) for rb in ranges[i:]]
        # (no token: one task without tiles, every step an empty partition)
        groups = [tuple(tiles[g::_TILE_GROUPS]) for g in range(min(_TILE_GROUPS, len(tiles)))] or [()]
        x = data.rechunk({1: -1, 2: -1})
        thr = thr.rechunk((x.chunks[0],), method="tasks")
        parts = [
            da.blockwise(
                _one_history_block,
                "st",
                x,
                "std",
                thr,
                "s",
                concatenate=False,  # the block as it is (one along token and dim)
                dtype=np.int32,
                meta=meta2,
                task=_history_tiles_task,
                tiles=group,
                metric=metric_index,
                n_tokens=n_tokens,
            )
            for group in groups
        ]
        labels = parts[0] if len(parts) == 1 else da.map_blocks(_merge_groups, *parts, dtype=np.int32, meta=meta2)
    elif kind == "distances":
        # numpy: the pairs within the threshold as edges (numba only for a tile with many)
        from dask_pdist.kernels.cluster_edges import _store_tile_task

        ids_i = da.arange(n_tokens, chunks=data.chunks[1])
        ids_j = da.arange(n_tokens, chunks=data.chunks[2])
        thr = (da.zeros(data.shape[0], chunks=(data.chunks[0],)) if thr is None else thr).rechunk(
            (data.chunks[0],), method="tasks"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            per_tile = da.blockwise(
                _store_tile_task,
                "sijv",
                data,
                "sij",
                ids_i,
                "i",
                ids_j,
                "j",
                thr,
                "s",
                new_axes={"v": n_tokens},
                adjust_chunks={"i": 1, "j": 1},
                dtype=np.int32,
                meta=np.empty((0, 0, 0, 0), dtype=np.int32),
                n_tokens=n_tokens,
            )
        labels = _reduce_tiles(per_tile)
    else:
        raise ValueError(f"kind={kind!r}: choose 'history' or 'distances'")
    out = {"cluster": labels}
    out["cluster_size"] = labels.map_blocks(_stat_task, stat="cluster_size", dtype=np.int32, meta=meta2)
    for name in ("n_clusters", "n_clustered", "largest"):
        out[name] = labels.map_blocks(
            _stat_task, stat=name, drop_axis=1, dtype=np.int32, meta=np.empty((0,), dtype=np.int32)
        )
    return out
