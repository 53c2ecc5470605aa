"""Exact k nearest neighbours of every token at every step, and neighbour churn.

The xarray layer over the block kernels (:mod:`dask_pdist.kernels.knn`: ``knn_block``,
``churn_block``) and the graph (:mod:`dask_pdist.graphs.knn`): labels, provenance and the
churn between steps. A V x V matrix never exists. Every distance comes from the pairwise
kernels' own row routine, so it is bit-identical to the value :func:`pairwise_distances`
gives for that pair.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import (
    ALL_METRICS,
    HISTORY_DIMS,
    INPUT_CHECKSUM,
    KIND_ATTR,
    NEIGHBOUR_DIMS,
    NEIGHBOURS_KIND,
    Engine,
    Metric,
    check_metric,
)
from dask_pdist.graphs.knn import neighbour_array
from dask_pdist.io.history import provenance, step_checksums
from dask_pdist.kernels.knn import churn_block

_CHECKSUM_NAME = "crc32c of each step's input values (checked by an append)"

__all__ = ["neighbours", "neighbour_churn"]


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
    engine: Engine = "cpu",
) -> xr.Dataset:
    """The k nearest tokens of every token at every step, exactly, lazily.

    Parameters
    ----------
    history : xarray.DataArray
        Dims ``("step", "token", "dim")`` as from :func:`open_history` (a token subset
        included), float32 or float64.
    k : int
        Neighbours per token, ``1 <= k <= tokens - 1``; a larger k is an error.
    metric : {"euclidean", "chebyshev", "manhattan", "chebyshev_ulp"}
    token_chunk : int or "auto"
        Tokens per block (``"auto"``: ~2e9 pair-dims of work per block-pair task).
    engine : {"cpu", "cuda", "auto"}
        Where the kernels run: ``"cuda"`` on a GPU (the ``dask_pdist[cuda]`` extra, k <=
        2048); ``"auto"`` runs on the CPU, since the CUDA kernel was measured slower than
        the CPU engine (``benchmarks/results.md``). The lists are the same.

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
    check_metric(metric, ALL_METRICS)
    data = history.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(1, -1, -1))
    kernel_metric = metric
    if metric == "chebyshev_ulp":  # Chebyshev between the values' places on the format's line
        data, kernel_metric = _positions(history, data), "chebyshev"
    rec = neighbour_array(data, k, kernel_metric, token_ids=_token_ids(history), token_chunk=token_chunk, engine=engine)
    coords = {
        "step": history["step"].values if "step" in history.coords else np.arange(history.sizes["step"]),
        "token": history["token"].values if "token" in history.coords else np.arange(history.sizes["token"]),
        "rank": ("rank", np.arange(1, k + 1, dtype=np.int64), {"long_name": "1 = nearest"}),
    }
    if "token_id" in history.coords:
        coords["token_id"] = ("token", history["token_id"].values)
    # what an append checks: the stored steps' input unchanged
    checksums = step_checksums(history.data if isinstance(history.data, da.Array) else da.asarray(history.data))
    coords[INPUT_CHECKSUM] = ("step", checksums.rechunk((rec["neighbour"].chunks[0],)), {"long_name": _CHECKSUM_NAME})
    variables = {
        "neighbour": xr.Variable(
            NEIGHBOUR_DIMS, rec["neighbour"], {"long_name": "original token index of the rank-th nearest token"}
        ),
        "distance": xr.Variable(NEIGHBOUR_DIMS, rec["distance"], {"long_name": f"{metric} distance to it"}),
    }
    attrs = {
        "title": f"{k} nearest tokens per token and step ({metric})",
        KIND_ATTR: NEIGHBOURS_KIND,
        "metric": metric,
        "k": k,
        **provenance(history, data.dtype),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _positions(history: xr.DataArray, data: da.Array) -> da.Array:
    from dask_pdist.graphs.dataset import number_format
    from dask_pdist.kernels.movement import ordered_bits

    fmt = number_format(history)
    if fmt not in ("bf16", "f16"):
        raise ValueError(
            f"metric='chebyshev_ulp' for neighbours counts representable values of bf16 or f16 (exact in the"
            f" float32 distances neighbours stores); this history's number format is {fmt or history.dtype}"
        )
    return data.map_blocks(lambda b: ordered_bits(b, fmt).astype(np.float32), dtype=np.float32)


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
        # the shifted view has other step chunks than the unshifted one (a store of several step
        # chunks): map_blocks would pair blocks of different lengths, so give both the same
        prev, cur = nb[:-lag], nb[lag:]
        parts.append(da.map_blocks(churn_block, prev, cur.rechunk(prev.chunks), drop_axis=2, dtype=np.float32))
    churn = da.concatenate(parts, axis=0)
    out = xr.Dataset(
        {"churn": (("step", "token"), churn, {"long_name": f"fraction of the k neighbours at step - {lag} lost"})},
        coords={"step": nbrs["step"].values, "token": nbrs["token"].values},
    )
    mean = out["churn"].astype(np.float64).mean("token", skipna=False)
    out["mean_churn"] = mean.assign_attrs(long_name="mean churn over tokens")
    out.attrs = {"lag": lag, "k": int(nbrs.sizes["rank"])}
    return out
