"""Exact k nearest neighbours of every token at every step, and neighbour churn.

Three layers, as for the distances: numpy block functions (:func:`knn_block`,
:func:`churn_block`), one graph builder (:func:`neighbour_array`: block-pair tasks, then
one merge task per block), and the xarray Dataset (:func:`neighbours`,
:func:`neighbour_churn`). A V x V matrix never exists:
the tokens are cut into blocks; one task computes every pair of one block pair (b, c), c >= b,
once (a (D, tile) candidate tile in cache at a time) and keeps a running top-k of both
blocks' tokens; one task per block merges its partial lists. Every distance comes from the
pairwise kernels' own row routine, so it is bit-identical to the value
:func:`pairwise_distances` gives for that pair.
"""

from __future__ import annotations

import math
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .history import HISTORY_DIMS, provenance
from .kernels import METRICS, knn_merge, knn_pairs

__all__ = [
    "NEIGHBOUR_DIMS",
    "NEIGHBOURS_KIND",
    "knn_block",
    "churn_block",
    "plan_neighbour_chunks",
    "neighbour_array",
    "neighbours",
    "neighbour_churn",
]

Metric = Literal["euclidean", "chebyshev"]
#: Dims of the ``neighbour`` and ``distance`` variables.
NEIGHBOUR_DIMS = ("step", "token", "rank")
#: Value of the ``dask_pdist_kind`` attribute of a neighbours Dataset and store.
NEIGHBOURS_KIND = "neighbours"
#: Pair-dims of arithmetic one block-pair task aims at (~0.2 s of one core here).
TASK_PAIR_DIMS = 2 * 10**9
#: History bytes one task may read before steps go one per task.
TASK_INPUT_BYTES = 64 * 2**20
#: Bytes of one candidate tile (D x tile values), sized to stay in L2/L3 across query rows.
TILE_BYTES = 2**20
_ROWS = 128  # query rows per cache block
_RECORD = np.dtype([("neighbour", "<i4"), ("distance", "<f4")])


def _check_metric(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: choose one of {list(METRICS)}")
    return METRICS.index(metric)


def _check_k(k: int, n_tokens: int) -> int:
    if n_tokens < 2:
        raise ValueError(
            f"the history has {n_tokens} token{'s' if n_tokens != 1 else ''}: neighbours need at least 2"
            " (a token is never its own neighbour)"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_tokens - 1:
        raise ValueError(
            f"k={k!r}: need an integer 1 <= k <= {n_tokens - 1} (tokens - 1: a token is never its own"
            f" neighbour, and the history has {n_tokens} tokens); choose a smaller k"
        )
    return int(k)


def _tile(n_dims: int, n_tokens: int, itemsize: int) -> int:
    return max(64, min(n_tokens, TILE_BYTES // max(1, n_dims * itemsize)))


def knn_block(
    x: np.ndarray, k: int, metric: Metric = "euclidean", *, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest tokens of every token in each snapshot of a numpy block.

    Parameters
    ----------
    x : ndarray, shape (step, token, dim), float32 or float64
        Arithmetic is done in this dtype, as in :func:`dask_pdist.kernels.pairwise_block`.
    k : int
        Neighbours per token, ``1 <= k <= token - 1``.
    metric : {"euclidean", "chebyshev"}
    tile : int, optional
        Candidate tokens per tile (speed only: the result is the same for any tile).

    Returns
    -------
    (neighbour, distance) : ndarrays, shape (step, token, k)
        Token positions (int64) and distances (``x.dtype``), nearest first, ties broken by
        the smaller position, NaN distances last; a token is never its own neighbour (an
        exact duplicate is, at distance 0).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[0.0], [3.0], [1.0], [1.0]]])  # tokens 2 and 3 coincide
    >>> nbr, dist = knn_block(x, 2)
    >>> nbr[0].tolist(), dist[0].tolist()
    ([[2, 3], [2, 3], [3, 0], [2, 0]], [[1.0, 1.0], [2.0, 2.0], [0.0, 1.0], [0.0, 1.0]])
    """
    m = _check_metric(metric)
    if x.ndim != 3 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected a (step, token, dim) float32/float64 block, got shape {x.shape} {x.dtype}")
    k = _check_k(k, x.shape[1])
    xt = np.ascontiguousarray(x.transpose(0, 2, 1))
    tile = tile or _tile(x.shape[2], x.shape[1], x.dtype.itemsize)
    whole = (0, x.shape[1])
    nbr, dist, _, _ = knn_pairs(xt, whole, whole, k, m, _ROWS, tile)
    return nbr, dist


def churn_block(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Fraction of each row's neighbours in ``prev`` that are not among its ``cur`` ones.

    Parameters
    ----------
    prev, cur : ndarray, shape (..., k), integers
        Neighbour lists (each row holds k distinct tokens) at an earlier and a later step.

    Returns
    -------
    ndarray, shape (...), float32

    Examples
    --------
    >>> import numpy as np
    >>> churn_block(np.array([[1, 2, 3, 4]]), np.array([[4, 2, 9, 8]]))
    array([0.5], dtype=float32)
    """
    k = prev.shape[-1]
    both = np.sort(np.concatenate([prev, cur], axis=-1), axis=-1)
    # rows hold distinct tokens, so each token present in both lists is one adjacent equal pair
    shared = (both[..., 1:] == both[..., :-1]).sum(axis=-1)
    return (1 - shared / k).astype(np.float32)


def plan_neighbour_chunks(
    n_steps: int, n_tokens: int, n_dims: int, itemsize: int = 4, pair_dims: int = TASK_PAIR_DIMS
) -> tuple[int, int]:
    """(steps, token block) per task: ~``pair_dims`` of arithmetic per block pair, bounded input.

    Pure arithmetic. Large vocabularies go one step per task and cut the tokens into equal
    blocks.

    Examples
    --------
    >>> plan_neighbour_chunks(154, 50304, 512)
    (1, 1935)
    >>> plan_neighbour_chunks(4, 16384, 64)
    (4, 2731)
    """
    per_step = max(1, n_tokens * n_dims * itemsize)
    steps = int(max(1, min(n_steps, TASK_INPUT_BYTES // per_step)))
    block = max(1, min(n_tokens, math.isqrt(pair_dims // max(1, steps * n_dims))))
    n_blocks = math.ceil(max(1, n_tokens) / block)
    return steps, max(1, math.ceil(n_tokens / n_blocks))


def _transpose_block(x: np.ndarray) -> np.ndarray:
    # once per step chunk, shared by every block-pair task of that chunk
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def _pair_task(xt: np.ndarray, b: tuple[int, int], c: tuple[int, int], *, k: int, metric: int, step0: int) -> tuple:
    tile = _tile(xt.shape[1], xt.shape[2], xt.dtype.itemsize)
    return knn_pairs(xt, b, c, k, metric, _ROWS, tile, step0=step0)


def _merge_task(as_rows: list[tuple], as_cols: list[tuple], ids: np.ndarray, *, k: int) -> np.ndarray:
    # one block's partial lists: from its pairs with blocks c >= b (it was the rows) and c < b
    parts = [(r[0], r[1]) for r in as_rows] + [(r[2], r[3]) for r in as_cols]
    nbr, dist = knn_merge(parts, k)
    out = np.empty(nbr.shape, dtype=_RECORD)
    out["neighbour"] = ids[nbr]
    out["distance"] = dist
    return out


def neighbour_array(
    x: da.Array,
    k: int,
    metric: Metric = "euclidean",
    *,
    token_ids: np.ndarray | None = None,
    token_chunk: int | Literal["auto"] = "auto",
) -> da.Array:
    """Lazy (step, token, k) record array of neighbours: block-pair tasks, then one merge per block.

    Parameters
    ----------
    x : dask.array.Array, shape (step, token, dim), float32 or float64
    k : int
    metric : {"euclidean", "chebyshev"}
    token_ids : ndarray of int, optional
        Value stored for each token position (the original token index of a subset);
        default the positions.
    token_chunk : int or "auto"
        Tokens per block (the output's token chunks); ``"auto"``: see
        :func:`plan_neighbour_chunks` (the step chunking is replanned too).

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
    m = _check_metric(metric)
    if x.ndim != 3:
        raise ValueError(f"history must be 3-D (step, token, dim), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"history must be float32 or float64 (widen bf16/f16 first), got {x.dtype}")
    n_steps, n_tokens, n_dims = x.shape
    k = _check_k(k, n_tokens)
    ids = np.arange(n_tokens, dtype=np.int64) if token_ids is None else np.asarray(token_ids, dtype=np.int64)
    if ids.shape != (n_tokens,):
        raise ValueError(f"token_ids has shape {ids.shape}; expected ({n_tokens},), one per token")
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError("token_ids must be non-negative and fit int32")
    steps, block = plan_neighbour_chunks(n_steps, n_tokens, n_dims, x.dtype.itemsize)
    if token_chunk != "auto":
        if isinstance(token_chunk, bool) or not isinstance(token_chunk, (int, np.integer)) or token_chunk < 1:
            raise ValueError(f"token_chunk={token_chunk!r}: give a positive int or 'auto'")
        block = int(min(token_chunk, n_tokens))
    x = x.rechunk({0: steps, 1: -1, 2: -1})
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


def _token_ids(history: xr.DataArray) -> np.ndarray:
    # original token indices: token_id (a subset with labels), else an integer token
    # coordinate (a subset without labels, or the default 0..V-1), else positions
    if "token_id" in history.coords:
        return np.asarray(history["token_id"].values, dtype=np.int64)
    if "token" in history.coords and np.asarray(history["token"].values).dtype.kind in "iu":
        return np.asarray(history["token"].values, dtype=np.int64)
    return np.arange(history.sizes["token"], dtype=np.int64)


def neighbours(
    history: xr.DataArray,
    k: int = 10,
    metric: Metric = "euclidean",
    *,
    token_chunk: int | Literal["auto"] = "auto",
) -> xr.Dataset:
    """The k nearest tokens of every token at every step, exactly, lazily.

    Parameters
    ----------
    history : xarray.DataArray
        Dims ``("step", "token", "dim")`` as from :func:`open_history` (a token subset
        included), float32 or float64.
    k : int
        Neighbours per token, ``1 <= k <= tokens - 1``; a larger k is an error.
    metric : {"euclidean", "chebyshev"}
    token_chunk : int or "auto"
        Tokens per block (``"auto"``: ~2e9 pair-dims of work per block-pair task).

    Returns
    -------
    xarray.Dataset
        Dims ``("step", "token", "rank")``, dask-backed. ``neighbour`` (int32): the
        original token index of each neighbour (the ``token_id`` coordinate of a labelled
        subset, else the ``token`` coordinate when it holds integers, else the position);
        ``distance`` (float32), nearest first (``rank`` 1), ties broken by the smaller
        token, NaN distances last. A token is never its own neighbour; an exact duplicate
        is, at distance 0. Every distance equals bit for bit the value
        :func:`pairwise_distances` (float32) gives for that pair. Coordinates ``step``,
        ``token`` (and ``token_id``) come from the history.

    Examples
    --------
    >>> nb = neighbours(open_history("history.safetensors"), k=5)  # doctest: +SKIP
    >>> nb.neighbour.sel(step=1000, token=42).values  # computes one task  # doctest: +SKIP
    """
    if not isinstance(history, xr.DataArray):
        raise TypeError(f"history must be an xarray.DataArray (see open_history), got {type(history).__name__}")
    if history.dims != HISTORY_DIMS:
        raise ValueError(f"history has dims {history.dims}; expected {HISTORY_DIMS}")
    _check_metric(metric)
    data = history.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(1, -1, -1))
    rec = neighbour_array(data, k, metric, token_ids=_token_ids(history), token_chunk=token_chunk)
    coords = {
        "step": history["step"].values if "step" in history.coords else np.arange(history.sizes["step"]),
        "token": history["token"].values if "token" in history.coords else np.arange(history.sizes["token"]),
        "rank": ("rank", np.arange(1, k + 1, dtype=np.int64), {"long_name": "1 = nearest"}),
    }
    if "token_id" in history.coords:
        coords["token_id"] = ("token", history["token_id"].values)
    variables = {
        "neighbour": xr.Variable(
            NEIGHBOUR_DIMS, rec["neighbour"], {"long_name": "original token index of the rank-th nearest token"}
        ),
        "distance": xr.Variable(NEIGHBOUR_DIMS, rec["distance"], {"long_name": f"{metric} distance to it"}),
    }
    attrs = {
        "title": f"{k} nearest tokens per token and step ({metric})",
        "dask_pdist_kind": NEIGHBOURS_KIND,
        "metric": metric,
        "k": k,
        **provenance(history, data.dtype),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def neighbour_churn(nbrs: xr.Dataset, lag: int = 1) -> xr.Dataset:
    """How much each token's neighbourhood changes between step s - lag and step s.

    Parameters
    ----------
    nbrs : xarray.Dataset
        From :func:`neighbours` or :func:`open_neighbours`.
    lag : int
        Positions along ``step`` (not step labels) between the compared lists.

    Returns
    -------
    xarray.Dataset
        ``churn`` (step, token), float32: the fraction of the token's k neighbours at step
        position s - lag that are not among its k neighbours at s; NaN for the first
        ``lag`` steps. ``mean_churn`` (step), float64: its mean over tokens. Lazy.

    Examples
    --------
    >>> c = neighbour_churn(open_neighbours("nbrs.zarr"))  # doctest: +SKIP
    >>> c.mean_churn.values  # doctest: +SKIP
    """
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 1:
        raise ValueError(f"lag={lag!r}: give a positive number of steps")
    if "neighbour" not in nbrs or nbrs["neighbour"].dims != NEIGHBOUR_DIMS:
        raise ValueError(f"nbrs must hold a 'neighbour' variable with dims {NEIGHBOUR_DIMS} (see neighbours())")
    nb = nbrs["neighbour"].data
    if not isinstance(nb, da.Array):
        nb = da.from_array(nb, chunks=(1, -1, -1))
    n_steps, n_tokens, _ = nb.shape
    nb = nb.rechunk({2: -1})
    head = min(lag, n_steps)
    parts = [da.full((head, n_tokens), np.nan, dtype=np.float32, chunks=(head, nb.chunks[1]))]
    if n_steps > lag:
        parts.append(da.map_blocks(churn_block, nb[:-lag], nb[lag:], drop_axis=2, dtype=np.float32))
    churn = da.concatenate(parts, axis=0)
    out = xr.Dataset(
        {"churn": (("step", "token"), churn, {"long_name": f"fraction of the k neighbours at step - {lag} lost"})},
        coords={"step": nbrs["step"].values, "token": nbrs["token"].values},
    )
    mean = out["churn"].astype(np.float64).mean("token", skipna=False)
    out["mean_churn"] = mean.assign_attrs(long_name="mean churn over tokens")
    out.attrs = {"lag": lag, "k": int(nbrs.sizes["rank"])}
    return out
