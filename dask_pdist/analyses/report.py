"""The report of a distance store: one self-contained HTML page (:func:`report`).

What it reads, and how much: the per-step min/mean/max of every metric over **all** steps
(:func:`~dask_pdist.analyses.summary.summarize`, one streaming pass over the store), and the
full V x V matrices of a few **frames**, steps chosen evenly among the written ones. Both come
through the store's checked reads (:func:`dask_pdist.open_distances`) in one dask compute, so
each store chunk holding a frame is read once. Memory is bounded by the frames (at most
``max_bytes``), never by the number of steps. A clusters or neighbours store given with it is
checked to come from the same history before anything is drawn. The page itself is built by
:mod:`dask_pdist.analyses.report_page` (plotly) and published whole, under the writer lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dask_pdist.conventions import INPUT_CHECKSUM
from dask_pdist.errors import InputError

__all__ = ["report", "frame_count", "even_positions", "written_steps", "MAX_FRAMES", "MAX_FRAME_BYTES"]

#: At most this many frames (steps with full matrices) in a page.
MAX_FRAMES = 300
#: The frames' float32 values together stay below this (base64 in the page: 4/3 of it), so a
#: page with plotly.js (~4.8 MB) inline stays under ~18 MB.
MAX_FRAME_BYTES = 9 * 2**20
_METRICS = ("euclidean", "chebyshev")


def frame_count(
    n_steps: int, n_tokens: int, n_metrics: int, *, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_FRAME_BYTES
) -> int:
    """How many frames a page holds: every step, or as many as ``max_frames`` and ``max_bytes``
    (float32 V x V per metric and frame) allow. Pure arithmetic.

    >>> frame_count(5001, 128, 2)
    72
    >>> frame_count(7, 13, 2)
    7
    """
    per_frame = n_metrics * n_tokens * n_tokens * 4
    if per_frame > max_bytes:
        raise InputError(
            f"{n_tokens:,} tokens: one step's {n_metrics} V x V matrices take {per_frame / 2**20:.1f} MiB, more than"
            f" the page's {max_bytes / 2**20:.1f} MiB for heatmaps; report a token subset"
            " (dask-pdist compute --token-ids) instead"
        )
    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames}: give at least 1")
    return max(1, min(n_steps, max_frames, max_bytes // per_frame))


def even_positions(candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``candidates`` (sorted positions) chosen evenly, the first and last included.

    >>> even_positions(np.arange(10), 4).tolist()
    [0, 3, 6, 9]
    >>> even_positions(np.array([0, 1, 5]), 5).tolist()
    [0, 1, 5]
    """
    candidates = np.asarray(candidates)
    if n >= len(candidates):
        return candidates
    if n == 1:
        return candidates[-1:]
    # floor(x + 0.5), not np.round: round-half-to-even could pick one position twice
    index = np.floor(np.linspace(0, len(candidates) - 1, n) + 0.5).astype(int)
    return candidates[index]


def written_steps(ds: xr.Dataset, path: Any) -> np.ndarray:
    """Per step, whether every block of it is written (all True for a complete store)."""
    n_steps = ds.sizes["step"]
    if ds.attrs.get("complete") is not False:
        return np.ones(n_steps, dtype=bool)
    from dask_pdist.store.layout import store_progress

    done, _ = store_progress(path)
    per_block = np.asarray(done).reshape(np.shape(done)[0], -1).astype(bool).all(axis=1)
    name = next(m for m in ds.data_vars)
    sizes = ds[name].chunks[0] if ds[name].chunks else (n_steps,)
    return np.repeat(per_block[: len(sizes)], sizes)


def _check_output(output: Path, overwrite: bool) -> None:
    from dask_pdist.io.publish import check_parent

    if output.is_dir():
        raise InputError(f"{output}: is a directory; give a file name such as report.html")
    check_parent(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass overwrite=True (--overwrite) to replace it")


def _preview(values: np.ndarray, limit: int = 4) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"{len(values):,} ({shown}{', ...' if len(values) > limit else ''})"


def check_same_history(ds: xr.Dataset, other: xr.Dataset, role: str, path: object) -> None:
    """Refuse a clusters or neighbours store that was not computed from the distance store's
    history: other tokens, other steps (one may be a prefix of the other: a followed run
    grows), another file name (one-file sources; checkpoints may be named several ways), or
    (same step count) another input fingerprint. Values are compared by
    :func:`check_same_values`."""
    store = ds.encoding.get("source", "the distance store")
    fix = f"give the {role} computed from the history of {store}"
    tokens, mine = np.asarray(other["token"].values), np.asarray(ds["token_i"].values)
    if tokens.shape != mine.shape or not np.array_equal(tokens, mine):
        raise InputError(
            f"{path}: a {role} of another history: tokens {_preview(tokens)}, but {store} has {_preview(mine)}; {fix}"
        )
    steps, own = np.asarray(other["step"].values), np.asarray(ds["step"].values)
    n = min(len(steps), len(own))
    if n == 0 or not np.array_equal(steps[:n], own[:n]):
        raise InputError(
            f"{path}: a {role} of another history: steps {_preview(steps)}, but {store} has {_preview(own)}; {fix}"
        )
    source, mine_source = str(other.attrs.get("source", "")), str(ds.attrs.get("source", ""))
    if None not in (_file_name(source), _file_name(mine_source)) and _file_name(source) != _file_name(mine_source):
        raise InputError(f"{path}: a {role} of {source}, but {store} was computed from {mine_source}; {fix}")
    recorded = _input_checksums(ds, n)
    if recorded is not None and INPUT_CHECKSUM in other.coords:
        # both record each step's input checksum: equal for the same history, whatever its shape
        differ = np.flatnonzero(np.asarray(other[INPUT_CHECKSUM].values[:n]) != recorded)
        if len(differ):
            raise InputError(
                f"{path}: a {role} of another history: its input at step {steps[differ[0]]} is not the one"
                f" {store} was computed from ({len(differ)} of {n} steps differ); {fix}"
            )
    theirs, ours = str(other.attrs.get("source_fingerprint", "")), str(ds.attrs.get("source_fingerprint", ""))
    if theirs and ours and theirs != ours and len(steps) == len(own):
        raise InputError(
            f"{path}: a {role} of another input: its source fingerprint is {theirs}, {store}'s is {ours}"
            f" (file size and header hash); {fix}"
        )


def _input_checksums(ds: xr.Dataset, n: int) -> np.ndarray | None:
    """The first ``n`` input checksums the distance store records (None if it records none)."""
    from dask_pdist.conventions import BOOKKEEPING
    from dask_pdist.io.paths import locate, zarr_array

    source = ds.encoding.get("source")
    if not source:
        return None
    try:
        return np.asarray(zarr_array(locate(source) / BOOKKEEPING / INPUT_CHECKSUM)[:n])
    except Exception:  # a store made before the checksums, or unreadable: verify says which
        return None


def _file_name(source: str) -> str | None:
    """The file name of a one-file source (``runs/a/h.safetensors``: ``h.safetensors``); None for
    checkpoints (a folder, a glob, a list), which may be named in several ways."""
    name = os.path.basename(source.rstrip("/"))
    if not name or any(c in source for c in "*?[],") or not os.path.splitext(name)[1]:
        return None
    return name


def check_same_values(
    ds: xr.Dataset, frame: dict[str, np.ndarray], step: Any, other: xr.Dataset, role: str, path: object
) -> None:
    """Check a clusters or neighbours store against the distance matrices of one ``step``
    (``frame``): neighbour distances must be the stored ones, cluster labels the connected
    components of "distance <= threshold". Skipped where the store lacks the metric, holds
    float16, or the threshold counts representable values."""
    store = ds.encoding.get("source", "the distance store")
    metric = str(other.attrs.get("metric", ""))
    if metric not in frame or step not in other["step"].values:
        return
    at = other.sel(step=step)
    d = frame[metric]
    if role == "neighbours store":
        ids = np.asarray(other["token_id"].values if "token_id" in other.coords else other["token"].values)
        nb = np.asarray(at["neighbour"].values)
        if ids.dtype.kind in "iu":
            where = {int(t): i for i, t in enumerate(ids)}
            pos = np.vectorize(lambda t: where.get(int(t), -1), otypes=[np.int64])(nb)
        else:
            pos = nb.astype(np.int64)
        got = np.asarray(at["distance"].values, dtype=np.float64)
        rows = np.arange(d.shape[0])[:, None]
        ok = (pos >= 0) & (pos < d.shape[0])
        expected = np.where(ok, d[rows, np.clip(pos, 0, d.shape[0] - 1)], np.nan).astype(np.float64)
        rtol = 2.0**-10 if ds[metric].dtype == np.float16 else 1e-6
        if not (ok.all() and np.allclose(got, expected, rtol=rtol, atol=0, equal_nan=True)):
            raise InputError(
                f"{path}: a {role} of another history: at step {step} its {metric} distances are not those of"
                f" {store}; give the {role} computed from the same history"
            )
        return
    threshold = float(np.asarray(at["threshold"].values)) if "threshold" in at else float("nan")
    if ds[metric].dtype == np.float16 or "ulp" in str(other.attrs.get("threshold", "")) or not np.isfinite(threshold):
        return
    labels = _components(d <= threshold)
    if not np.array_equal(labels, np.asarray(at["cluster"].values)):
        raise InputError(
            f"{path}: a {role} of another history: at step {step} its groups are not those of {store}'s {metric}"
            f" distances <= {threshold:g}; give the {role} computed from the same history"
        )


def _components(adjacent: np.ndarray) -> np.ndarray:
    # connected components labelled by their smallest position, as clusters() labels them:
    # propagate the smallest label along edges, then jump pointers, until nothing changes
    n = adjacent.shape[0]
    labels = np.arange(n)
    while True:
        new = np.minimum(labels, np.where(adjacent, labels[None, :], n).min(axis=1, initial=n))
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def report(
    store: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    clusters: str | os.PathLike[str] | None = None,
    neighbours: str | os.PathLike[str] | None = None,
    allow_incomplete: bool = False,
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_FRAME_BYTES,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Write one self-contained HTML page describing a distance store (plotly, all inline).

    The page opens offline (plotly.js and every value are inside it; nothing is fetched) and
    shows: the V x V heatmaps of every metric at a step chosen with a slider (token labels on
    hover), the histogram of the distances (pairs i < j) at that step, min/mean/max of each
    metric at **every** step, and, when given, the clusters (``n_clusters``, ``largest``) with
    their events, and the mean neighbour churn, over steps.

    **Frames and encoding.** The slider moves over *frames*: every step when they fit, else
    ``n`` steps chosen evenly among the written ones, first and last included, with
    ``n = min(steps, max_frames, max_bytes // (metrics x V x V x 4))``. Frame values are the
    store's **float32 values, exactly** (base64 in the page, no quantization; hover shows 7
    significant digits; a float16 store's values are exact in float32 too, a float64 store's
    are rounded to float32 and the page says so): a 5001-step x 128-token store gives 72
    frames (every ~70th step) and a page of 18.2 MB, 4.8 of them plotly.js. Fewer frames, not
    coarser values, is the trade made to stay small.
    The heatmaps' colour scale follows each frame; the histograms share fixed bins per metric
    (50 bins from 0 to the largest distance of any step). A step with no off-diagonal pair
    (one token) has NaN statistics.

    Parameters
    ----------
    store : path-like or URL
        A distance store (``dask-pdist compute``), read through its checksums.
    output : path-like
        The HTML file to write (local). Written under a hidden name and renamed into place,
        holding the output's writer lock.
    clusters, neighbours : path-like, optional
        A clusters store (``dask-pdist clusters -o``) and a neighbours store (``dask-pdist
        neighbours``) of the same history: refused (``InputError``) when their tokens, steps,
        source or input fingerprint differ, or when their values at a frame's step disagree
        with the distances there.
    allow_incomplete : bool
        Without it, a store a live job is writing (``--follow``) is reported as far as its
        steps are whole (the page says how many), and an interrupted one is refused. With it,
        any incomplete store is reported whole: frames are chosen among
        the written steps, the page says which steps are written, and statistics of unwritten
        steps are NaN (gaps in the lines).
    max_frames, max_bytes : int
        Caps on the number of frames and on their float32 bytes (see above).
    overwrite : bool
        Replace an existing file at ``output``.
    storage_options : dict, optional
        For a store at a URL: options of its fsspec backend.

    Returns
    -------
    pathlib.Path
        ``output``.

    Examples
    --------
    >>> report("pairwise_distances.zarr", "report.html", clusters="clusters.zarr")  # doctest: +SKIP
    PosixPath('report.html')
    """
    import dask

    from dask_pdist.analyses.clusters import open_clusters
    from dask_pdist.analyses.neighbours_store import open_neighbours
    from dask_pdist.analyses.report_page import page_html, require_plotly
    from dask_pdist.analyses.summary import summarize
    from dask_pdist.io.paths import local_path
    from dask_pdist.io.publish import building
    from dask_pdist.store.reader import open_distances

    require_plotly()
    target = local_path(output, "report")
    _check_output(target, overwrite)
    ds = open_distances(store, allow_incomplete=allow_incomplete, storage_options=storage_options)
    metrics = [m for m in _METRICS if m in ds.data_vars]
    if not metrics:
        raise InputError(
            f"{store}: holds {', '.join(map(str, ds.data_vars))}; the report shows {' and '.join(_METRICS)}:"
            " compute them with --metrics euclidean,chebyshev"
        )
    written = written_steps(ds, ds.encoding.get("source", store))
    if not written.any():
        raise InputError(f"{store}: no step is written yet; report it once its first block is done")
    try:
        n = frame_count(ds.sizes["step"], ds.sizes["token_i"], len(metrics), max_frames=max_frames, max_bytes=max_bytes)
    except InputError as exc:  # too many tokens for a page: name the store it is about
        raise InputError(f"{store}: {exc}") from None
    frames = even_positions(np.flatnonzero(written), n)
    others: dict[str, xr.Dataset] = {}
    for role, where, opener in (
        ("clusters store", clusters, open_clusters),
        ("neighbours store", neighbours, open_neighbours),
    ):
        if where is not None:
            other = opener(where)  # their own messages: not found, not that kind of store, damaged
            check_same_history(ds, other, role, where)
            others[role] = other
    summary, values = dask.compute(summarize(ds[metrics]), ds[metrics].isel(step=frames))
    steps = ds["step"].values
    for role, other in others.items():  # the last frame whose step the other store has
        theirs = set(other["step"].values.tolist())
        common = [k for k in range(len(frames))[::-1] if steps[frames[k]] in theirs]
        if common:
            frame = {m: np.asarray(values[m].values[common[0]]) for m in metrics}
            where = clusters if role == "clusters store" else neighbours
            check_same_values(ds, frame, steps[frames[common[0]]], other, role, where)
    extras = _extras(others)
    html = page_html(
        store=str(ds.encoding.get("source", store)),
        ds=ds,
        metrics=metrics,
        summary=summary,
        frames=frames,
        values={m: np.asarray(values[m].values) for m in metrics},
        written=written,
        **extras,
    )
    with building(target, replace=overwrite) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def _extras(others: dict[str, xr.Dataset]) -> dict[str, Any]:
    from dask_pdist.analyses.events import cluster_events
    from dask_pdist.analyses.neighbours import neighbour_churn

    out: dict[str, Any] = {}
    c = others.get("clusters store")
    if c is not None:
        per_step = c[["n_clusters", "largest", "n_clustered"]].compute()
        out["clusters"] = (per_step, cluster_events(c), dict(c.attrs))
    nb = others.get("neighbours store")
    if nb is not None:
        churn = neighbour_churn(nb)["mean_churn"].compute()
        out["churn"] = (churn, dict(nb.attrs))
    return out
