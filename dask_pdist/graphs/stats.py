"""The graph of per-step statistics of distance arrays: one task per tile reads the tile of
every array (both metrics of a store, and the threshold's own input) and reduces it, then one
per block of steps combines the tiles (a store of one tile per step-block: the same task),
then one task gathers the small per-step rows (block functions in
:mod:`dask_pdist.kernels.stats`).

:func:`dask_pdist.summarize` is built on it; each chunk of the store is read once, and the
graph has about one task per step-block, not one per statistic and block.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from dask_pdist.kernels.stats import FIELDS, combine_stats, tile_stats

__all__ = ["step_stats", "summary_stats"]

#: Steps per chunk of the gathered per-step rows (a few MB of float64 rows per chunk).
_ROWS_PER_CHUNK = 1 << 16


def _tiles(*blocks: np.ndarray, count: int, below: int | None) -> np.ndarray:
    # (step, 1, 1, 5 * count + 1): each array's tile statistics, then the threshold itself;
    # the last two blocks hold the tile's first token_i and token_j
    i0, j0 = int(blocks[-2][0]), int(blocks[-1][0])
    thr = None if below is None else blocks[count]
    steps = blocks[0].shape[0]
    out = np.empty((steps, 1, 1, len(FIELDS) * count + 1))
    for k, tile in enumerate(blocks[:count]):
        out[:, 0, 0, len(FIELDS) * k : len(FIELDS) * (k + 1)] = tile_stats(tile, i0, j0, thr if k == below else None)
    out[:, 0, 0, -1] = np.nan if thr is None else thr
    return out


def _starts(chunks: tuple[int, ...]) -> da.Array:
    # the first index of each chunk, one per chunk (what a tile task needs to know where it is)
    return da.from_array(np.cumsum((0, *chunks[:-1])), chunks=1)


def _combine(stats: np.ndarray, count: int) -> np.ndarray:
    # (step, tiles_i, tiles_j, 5 * count + 1) -> (step, 4 * count + 1)
    parts = [combine_stats(stats[..., len(FIELDS) * k : len(FIELDS) * (k + 1)]) for k in range(count)]
    return np.concatenate([*parts, stats[:, 0, 0, -1:]], axis=1)


def summary_stats(arrays: Sequence[da.Array], threshold: da.Array | None = None, below: int | None = None) -> da.Array:
    """Lazy (step, 4 * len(arrays) + 1): for each (step, token_i, token_j) array, min, mean
    and max of its off-diagonal values and its pairs i < j below ``threshold`` (counted for
    ``arrays[below]`` only, 0 for the others); the last column is the threshold (NaN if None).

    One task per tile reads the tiles of all ``arrays`` (rechunked to the first one's
    chunks if they differ) and of the threshold; the per-step rows are gathered into chunks
    of up to 65,536 steps.

    Examples
    --------
    >>> x = da.from_array(np.arange(8, dtype=np.float32).reshape(2, 2, 2), chunks=(1, 2, 1))
    >>> summary_stats([x, 2 * x], da.from_array(np.array([2.0, 7.0]), chunks=1), below=0).compute()
    array([[ 1. ,  1.5,  2. ,  1. ,  2. ,  3. ,  4. ,  0. ,  2. ],
           [ 5. ,  5.5,  6. ,  1. , 10. , 11. , 12. ,  0. ,  7. ]])
    """
    if threshold is None:
        below = None
    elif below is None:
        raise ValueError("summary_stats: a threshold needs below=, the index of the array it counts pairs of")
    first = arrays[0]
    args: list = []
    for a in arrays:
        args += [a if a.chunks == first.chunks else a.rechunk(first.chunks), "sij"]
    if threshold is not None:
        args += [threshold.astype(np.float64).rechunk((first.chunks[0],), method="tasks"), "s"]
    count = len(arrays)
    tiles = da.blockwise(
        _tiles,
        "sijf",
        *args,
        _starts(first.chunks[1]),
        "i",
        _starts(first.chunks[2]),
        "j",
        count=count,
        below=below,
        new_axes={"f": len(FIELDS) * count + 1},
        adjust_chunks={"i": 1, "j": 1},
        align_arrays=False,  # the starts have one element per chunk of the tiles: same blocks, not same chunks
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0)),
    )
    per_step = tiles.rechunk({1: -1, 2: -1}, method="tasks")  # a store of one tile per step-block: unchanged
    rows = per_step.map_blocks(
        _combine, count=count, drop_axis=(1, 2), chunks=(first.chunks[0], (4 * count + 1,)), dtype=np.float64
    )
    # the rows are small: a few gathered chunks, not one task per statistic and step-block.
    # These small rechunks name their method: dask's choice of one imports dask.distributed
    # (~0.1 s) to look for a cluster, and a few small pieces are tasks either way
    rows_chunk = min(max(first.shape[0], 1), _ROWS_PER_CHUNK)
    return rows.rechunk({0: rows_chunk}, method="tasks") if first.shape[0] else rows


def step_stats(distances: da.Array, threshold: da.Array | None = None) -> da.Array:
    """Lazy (step, 4) min, mean, max of the off-diagonal values and pairs i < j below threshold.

    :func:`summary_stats` of one array: each chunk is read once.

    Examples
    --------
    >>> x = da.from_array(np.arange(8, dtype=np.float32).reshape(2, 2, 2), chunks=(1, 2, 1))
    >>> step_stats(x, da.from_array(np.array([2.0, 7.0]), chunks=1)).compute()
    array([[1. , 1.5, 2. , 1. ],
           [5. , 5.5, 6. , 1. ]])
    """
    return summary_stats([distances], threshold, None if threshold is None else 0)[:, :4]
