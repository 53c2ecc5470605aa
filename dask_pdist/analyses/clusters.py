"""Clusters of identical (or nearly identical) tokens at every step.

A **group** at one step is a connected component of the graph "distance <= threshold"
between tokens (single linkage), with at least two tokens. At threshold 0 that is "equal
embeddings", found from the bytes of the rows in O(V * D) per step, without computing any
distance. At a positive threshold the components come from distance tiles (the kernels of
:mod:`dask_pdist.kernels.distances` on a history, or the stored blocks of a distance store), joined
with union-find; no task holds more than one tile.

Three layers, as in :mod:`dask_pdist.graphs.distances` / :mod:`dask_pdist.graphs.dataset`: numpy block
functions (:mod:`dask_pdist.kernels.cluster_rows`, :mod:`dask_pdist.kernels.cluster_tiles`), one graph
builder (:func:`cluster_arrays`), and the xarray layer (:func:`clusters`).

Labels are canonical: a token's label is the smallest token **position** (0..V-1) in its
group, so a partition has exactly one labelling, whatever the chunking or the path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist._version import __version__
from dask_pdist.conventions import CLUSTER_DIMS, CLUSTERS_MARKER_ATTR, INPUT_CHECKSUM, METRICS, check_metric
from dask_pdist.graphs.clusters import cluster_arrays
from dask_pdist.io.history import step_checksums
from dask_pdist.kernels.engine import resolve_engine

_CHECKSUM_NAME = "crc32c of each step's input values (checked by an append)"

__all__ = ["THRESHOLD_NAMES", "clusters", "write_clusters", "open_clusters"]

#: Named thresholds: "bf16" is one bf16 spacing at the step's RMS embedding coordinate.
THRESHOLD_NAMES: tuple[str, ...] = ("bf16",)
Threshold = float | Literal["bf16"]


# ---------------------------------------------------------------- the xarray layer


def _ulps(threshold: Any) -> int | None:
    # "2ulp" -> 2: a threshold in representable values of the history's number format
    import re

    found = re.fullmatch(r"\s*(\d+)\s*ulps?\s*", threshold) if isinstance(threshold, str) else None
    return int(found.group(1)) if found else None


def _check_threshold(threshold: Any) -> float | str:
    if isinstance(threshold, str):
        if threshold in THRESHOLD_NAMES:
            return threshold
        if _ulps(threshold) is not None:
            return f"{_ulps(threshold)}ulp"
        try:
            threshold = float(threshold)
        except ValueError:
            raise ValueError(
                f"threshold={threshold!r}: give a distance >= 0 or one of {list(THRESHOLD_NAMES)}"
            ) from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold={threshold!r}: give a distance >= 0 or one of {list(THRESHOLD_NAMES)}")
    value = float(threshold)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"threshold={threshold!r}: must be a finite distance >= 0 (or one of {list(THRESHOLD_NAMES)})")
    return value


def _source_name(obj: xr.DataArray | xr.Dataset) -> str:
    return str(obj.attrs.get("source", "")) or "the source"


def _from_history(
    history: xr.DataArray, threshold: float | str, metric: str, token_chunk: int | str, engine: str = "cpu"
) -> tuple[dict, da.Array, Any]:
    from dask_pdist.conventions import HISTORY_DIMS
    from dask_pdist.io.history import step_rms
    from dask_pdist.kernels.spacing import bf16_spacing
    from dask_pdist.planning import auto_step_chunk

    if history.dims != HISTORY_DIMS:
        raise ValueError(f"history has dims {history.dims}; expected {HISTORY_DIMS}")
    data = history.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(auto_step_chunk(data.shape[1], data.shape[0]), -1, -1))
    if data.dtype not in (np.float32, np.float64):
        raise TypeError(f"history must be float32 or float64 (open it with open_history), got {data.dtype}")
    if _ulps(threshold) is not None:  # Chebyshev between the values' places on the format's line
        from dask_pdist.graphs.dataset import number_format
        from dask_pdist.kernels.movement import ordered_bits

        fmt = number_format(history)
        data = data.map_blocks(lambda b: ordered_bits(b, fmt).astype(np.float64), dtype=np.float64)
        threshold, metric = float(_ulps(threshold)), "chebyshev"
    if threshold == "bf16":
        # exactly as pairwise_distances records embedding_rms, so history and store agree
        rms = step_rms(data)
        thr = bf16_spacing(rms)
    elif threshold == 0:
        thr = None
    else:
        thr = da.full(data.shape[0], threshold, dtype=np.float64, chunks=(data.chunks[0],))
    arrays = cluster_arrays(
        data,
        thr,
        kind="history",
        metric_index=METRICS.index(metric),
        token_chunk=token_chunk,  # type: ignore[arg-type]
        engine=engine,
    )
    token = history["token"].values if "token" in history.coords else np.arange(history.sizes["token"])
    return arrays, thr, token


def _from_distances(ds: xr.Dataset, threshold: float | str, metric: str) -> tuple[dict, da.Array, Any]:
    from dask_pdist.conventions import DISTANCE_DIMS
    from dask_pdist.kernels.spacing import bf16_spacing

    # a store (open_distances) by its own path, a lazy Dataset by the history it comes from
    where = str(ds.encoding.get("source") or "") or _source_name(ds)
    if _ulps(threshold) is not None:
        metric, threshold = "chebyshev_ulp", float(_ulps(threshold))
    if metric not in ds.data_vars:
        raise ValueError(
            f"{where}: the distance Dataset has no {metric!r} variable (it holds {sorted(ds.data_vars)});"
            f" choose metric= / --metric from those, or compute it with --metrics {metric}"
        )
    var = ds[metric]
    if var.dims != DISTANCE_DIMS:
        raise ValueError(f"{where}: {metric} has dims {var.dims}; expected {DISTANCE_DIMS}")
    computed = str(ds.attrs.get("compute_dtype", "float32" if var.dtype == np.float16 else var.dtype))
    if var.dtype.kind == "u":  # counts of representable values: exact, compared in float64
        var, computed = var.astype(np.float64), "float64"
    if str(var.dtype) != computed:
        raise ValueError(
            f"{where}: {metric} is stored as {var.dtype} but was computed in {computed}; rounding the"
            " distances changes which pairs are within the threshold, so clusters would differ from the"
            f" history's. Recompute the store with --dtype {computed}, or pass the history instead"
        )
    data = var.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(max(1, min(var.shape[0], 128)), -1, -1))
    if threshold == "bf16":
        if "embedding_rms" not in ds.coords:
            raise ValueError(
                f"{where}: no embedding_rms coordinate for threshold='bf16'; give a number instead"
                " (threshold= / --threshold)"
            )
        rms = ds["embedding_rms"].data
        rms = rms if isinstance(rms, da.Array) else da.from_array(np.asarray(rms), chunks=(data.chunks[0],))
        thr = bf16_spacing(rms.astype(np.float64))
    elif threshold == 0:
        thr = None
    else:
        thr = da.full(data.shape[0], threshold, dtype=np.float64, chunks=(data.chunks[0],))
    arrays = cluster_arrays(data, thr, kind="distances")
    return arrays, thr, ds["token_i"].values


#: Integer cluster variables of a run at a step the run does not have (runs aligned on steps).
MISSING_STEP = -1


def _clusters_per_run(source: xr.Dataset, threshold: Any, metric: str, token_chunk: Any) -> xr.Dataset:
    # runs (open_distances of several stores) are aligned on the union of their steps: each run
    # is clustered on its own steps (where its per-step embedding_rms is known), then realigned
    parts = []
    for name in source["run"].values:
        run = source.sel(run=name)
        if "embedding_rms" in run.coords:
            run = run.isel(step=np.flatnonzero(np.isfinite(run["embedding_rms"].values)))
        parts.append(clusters(run.drop_vars("run"), threshold, metric=metric, token_chunk=token_chunk))
    fill = {n: MISSING_STEP for n, v in parts[0].data_vars.items() if v.dtype.kind in "iu"}
    out = xr.concat(parts, dim=source["run"], join="outer", fill_value=fill | {"threshold": np.nan})
    return out.assign_attrs(parts[0].attrs)


def clusters(
    source: xr.DataArray | xr.Dataset,
    threshold: Threshold = 0.0,
    *,
    metric: Literal["euclidean", "chebyshev"] = "chebyshev",
    token_chunk: int | Literal["auto"] = "auto",
    engine: Literal["cpu", "cuda", "auto"] = "cpu",
) -> xr.Dataset:
    """Groups of tokens within ``threshold`` of each other, at every step, lazily.

    A group is a connected component, with two or more tokens, of the graph
    "distance <= threshold" at one step (single linkage: a chain of close pairs joins
    tokens that are further apart).

    Parameters
    ----------
    source : xarray.DataArray or xarray.Dataset
        A history (:func:`open_history`): computed blockwise along step, holding at most one
        distance tile per task and storing none. Or a distance Dataset
        (:func:`open_distances`, :func:`pairwise_distances`): read block by block. Both give
        identical results, for any chunking. A store must hold its distances in the dtype
        they were computed in (not ``--dtype float16``): rounding would move pairs across
        the threshold. Runs (``open_distances`` of several stores, a leading ``run`` dim)
        are clustered each on its own steps; the result keeps ``run``, with ``-1`` in the
        integer variables (NaN ``threshold``) at steps a run does not have.
    threshold : float >= 0, "bf16" or "Nulp"
        A pair joins when its distance is ``<=`` this. ``0`` (the default): equal
        embeddings (with Chebyshev, bit-identical rows, ``-0.0 == +0.0``); from a history
        no distance is computed at all. ``"bf16"``: one bf16 spacing at the step's RMS
        embedding coordinate, ``2**(floor(log2 rms) - 7)``, as :func:`summarize` defines
        it; note that ``summarize`` counts quantization neighbours with ``<`` (strictly
        closer), clusters use ``<=``. ``"2ulp"``: within two representable values of the
        history's number format (bf16, f16, f32) in every dim: the Chebyshev distance between
        the values' places on the format's ordered line (``chebyshev_ulp``), whatever
        ``metric`` says. Rows holding NaN or Inf are always singletons.
    metric : {"chebyshev", "euclidean"}
        At threshold 0 both mean "equal rows".
    token_chunk : int or "auto"
        History at a positive threshold: edge of the token x token distance tiles (one task
        computes one tile); ``"auto"`` tiles only large vocabularies, as
        :func:`pairwise_distances` does. Does not change the result.
    engine : {"cpu", "cuda", "auto"}
        History at a positive threshold: where the distances are computed (``"cuda"``: a
        GPU, the ``dask_pdist[cuda]`` extra; ``"auto"``: there when it can). Threshold 0
        compares rows on the CPU with any engine, and a distance store is read on the CPU.
        Does not change the result.

    Returns
    -------
    xarray.Dataset
        Dims ``("step", "token")``, dask-backed:

        - ``cluster`` (step, token) int32: the smallest token **position** (0..V-1) of the
          token's group, a singleton its own; positions even where the ``token``
          coordinate holds labels;
        - ``cluster_size`` (step, token) int32: the population of the token's group;
        - ``n_clusters`` (step,): groups of two or more tokens; ``n_clustered`` (step,):
          tokens in them; ``largest`` (step,): the largest population (1 if no group);
        - ``threshold`` (step,) float64: the threshold used.

    Examples
    --------
    >>> c = clusters(open_history("history.safetensors")).compute()  # doctest: +SKIP
    >>> c.n_clusters.sel(step=5000).item()  # doctest: +SKIP
    4
    """
    check_metric(metric, METRICS)
    engine = resolve_engine(engine)  # "cuda" where it cannot run is an error whatever the path
    threshold = _check_threshold(threshold)
    if isinstance(source, xr.Dataset) and "run" in source.dims:
        return _clusters_per_run(source, threshold, metric, token_chunk)
    if isinstance(source, xr.DataArray):
        arrays, thr, token = _from_history(source, threshold, metric, token_chunk, engine)
    elif isinstance(source, xr.Dataset):
        if source.attrs.get("complete") is False and not source.attrs.get("being_written"):
            # open_distances(..., allow_incomplete=True); a store being written shows only whole steps
            import warnings

            warnings.warn(
                "the distance store is incomplete: its missing blocks read as NaN, so their tokens count as"
                " singletons there; finish it with `dask-pdist compute ... --resume` first",
                UserWarning,
                stacklevel=2,
            )
        arrays, thr, token = _from_distances(source, threshold, metric)
    else:
        raise TypeError(
            f"source must be a history DataArray (open_history) or a distance Dataset (open_distances),"
            f" got {type(source).__name__}"
        )
    labels = arrays["cluster"]
    steps = source["step"].values if "step" in source.coords else np.arange(labels.shape[0])
    if thr is None:
        thr = da.zeros(labels.shape[0], dtype=np.float64, chunks=(labels.chunks[0],))
    thr = thr.rechunk((labels.chunks[0],))
    descriptions = {
        "cluster": "smallest token position (0..V-1) of the token's group",
        "cluster_size": "population of the token's group (1: a singleton)",
        "n_clusters": "groups of two or more tokens",
        "n_clustered": "tokens in groups of two or more",
        "largest": "largest group population (1: no group)",
    }
    variables = {
        name: xr.Variable(CLUSTER_DIMS if arr.ndim == 2 else ("step",), arr, attrs={"long_name": descriptions[name]})
        for name, arr in arrays.items()
    }
    variables["threshold"] = xr.Variable(
        ("step",), thr, attrs={"long_name": f"{metric} distance at or below which two tokens join"}
    )
    attrs = {
        "title": "clusters of tokens per step",
        "metric": metric,
        "threshold": str(threshold),
        "source": str(source.attrs.get("source", "")),
        # which input (file identities and header): a report refuses clusters of another history
        "source_fingerprint": str(source.attrs.get("source_fingerprint", "")),
        CLUSTERS_MARKER_ATTR: __version__,
    }
    coords: dict[str, Any] = {"step": steps, "token": token}
    if isinstance(source, xr.DataArray):  # what an append checks: the stored steps' input unchanged
        checksums = step_checksums(source.data if isinstance(source.data, da.Array) else da.asarray(source.data))
        coords[INPUT_CHECKSUM] = ("step", checksums.rechunk((labels.chunks[0],)), {"long_name": _CHECKSUM_NAME})
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _is_clusters_store(path: Path) -> bool:
    from dask_pdist.store.outputs import root_attrs

    return CLUSTERS_MARKER_ATTR in (root_attrs(path) or {})


def write_clusters(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: bool = True,
    append: bool = False,
) -> Any:
    """Write a :func:`clusters` Dataset as a zarr (format 3) store that ``xarray.open_zarr`` opens.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`clusters`.
    path : path-like
        Store directory to create.
    overwrite : bool
        Replace an existing clusters store at ``path``; anything else there is never
        deleted.
    compute : bool
        If False, return a ``dask.delayed`` that writes the data when computed.
    append : bool
        Grow the clusters store at ``path`` (create it if absent) with the steps of ``ds``
        after its last one: only those are computed. ``ds`` must hold the store's steps first
        (the same history, grown) and the same metric, threshold and tokens; otherwise
        ``StoreError`` and the store unchanged. Events across the old/new boundary are those
        of a one-shot run (they are derived from the whole store when read).

    The store is written under a hidden name in the same folder and published when complete
    (:mod:`dask_pdist.io.publish`): an existing store stays readable until the new one is
    whole, and an interrupted write leaves the old store (or nothing) at ``path``.

    Examples
    --------
    >>> write_clusters(clusters(open_history("h.safetensors")), "clusters.zarr")  # doctest: +SKIP
    """
    from functools import partial

    from dask_pdist.store.outputs import appended, write_whole

    # written whole, then published: an interrupted write must not leave a store whose
    # unwritten chunks read as cluster 0 (every token in one group)
    job = write_whole(
        ds,
        path,
        role="clusters store",
        check=_check_clusters_target,
        overwrite=overwrite,
        compute=compute,
        append=partial(appended, opener=open_clusters, same=("metric", "threshold")) if append else None,
    )
    return None if compute else job


def _check_clusters_target(path: Path, overwrite: bool) -> None:
    from dask_pdist.store.outputs import check_target

    check_target(path, overwrite, ours=_is_clusters_store, what="a dask_pdist clusters store")


def open_clusters(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a clusters store (from :func:`write_clusters`) lazily; every chunk read is checked
    against the checksum recorded for its position.

    Examples
    --------
    >>> cl = open_clusters("clusters.zarr")  # doctest: +SKIP
    >>> cluster_events(cl)  # doctest: +SKIP
    """
    from dask_pdist.store.outputs import open_whole

    return open_whole(path, role="clusters store", is_kind=_is_clusters_store, marker=repr(CLUSTERS_MARKER_ATTR))
