"""Small read-only reports on a distance Dataset (the notebook's summary block)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from dask_pdist.kernels.spacing import bf16_spacing
from dask_pdist.store.job import local_scheduler

__all__ = ["step_summary", "format_summary", "format_step", "summarize", "STATS"]


def step_summary(ds: xr.Dataset, index: int) -> dict[str, tuple[float, float, float]]:
    """Min, max and mean of the off-diagonal distances at one step position.

    Parameters
    ----------
    ds : xarray.Dataset
        Distance Dataset (lazy is fine: only that step is read).
    index : int
        Position along ``step`` (``-1`` for the last).

    Returns
    -------
    dict of metric name to (min, max, mean), computed in float64; NaN for a single token
    (no pairs).

    Examples
    --------
    >>> step_summary(open_distances("d.zarr"), -1)["euclidean"]  # doctest: +SKIP
    (0.0, 1.39, 0.654)
    """
    out = {}
    order = ("euclidean", "chebyshev")  # the notebook's order; any other variable after
    for name in sorted(ds.data_vars, key=lambda n: (order.index(n) if n in order else len(order), n)):
        var = ds[name]
        # the threaded scheduler where no client can exist: dask's own choice would first import
        # dask.distributed (~0.2 s) to look for one
        m = np.asarray(var.isel(step=index).compute(**local_scheduler()).values, dtype=np.float64)
        off = m[~np.eye(m.shape[0], dtype=bool)] if m.shape[0] > 1 else np.zeros(0)
        out[name] = (float(off.min()), float(off.max()), float(off.mean())) if off.size else (np.nan,) * 3
    return out


def format_summary(ds: xr.Dataset) -> str:
    """The notebook's summary block: shape, pairs per snapshot, first and last step."""
    n_steps, n_tok = ds.sizes["step"], ds.sizes["token_i"]
    steps = ds["step"].values
    lines = [
        f"Snapshots: {n_steps:,}",
        f"Tokens: {n_tok:,}",
        f"Distance pairs per snapshot: {n_tok * (n_tok - 1) // 2:,} (excluding diagonal)",
    ]
    for label, index in (("Initial", 0), ("Final", n_steps - 1)):
        lines.append(f"{label} distances (step {steps[index]}):")
        for name, (lo, hi, mean) in step_summary(ds, index).items():
            lines.append(_stat_line(name, lo, hi, mean, n_tok > 1))
    return "\n".join(lines)


def _stat_line(name: str, lo: float, hi: float, mean: float, pairs: bool = True) -> str:
    if not pairs:  # one token: nothing to describe (not a distance of 0)
        return f"  {name.capitalize()}: no pairs (one token)"
    if name == "chebyshev_ulp":  # counts of representable values
        return f"  Chebyshev (ulp): min={lo:.0f}, max={hi:.0f}, mean={mean:.2f}"
    return f"  {name.capitalize()}: min={lo:.6f}, max={hi:.6f}, mean={mean:.6f}"


def format_step(ds: xr.Dataset, step: int, summary: xr.Dataset | None = None) -> str:
    """The summary block of one step (by label): min/max/mean per metric, and its
    quantization neighbours when a :func:`summarize` result is given.

    Examples
    --------
    >>> print(format_step(open_distances("d.zarr"), 1000))  # doctest: +SKIP
    Step 1000:
      Euclidean: min=0.000000, max=0.812217, mean=0.401003
      Chebyshev: min=0.000000, max=0.318359, mean=0.131405
    """
    steps = ds["step"].values
    where = np.flatnonzero(steps == step)
    if not where.size:
        raise ValueError(f"no step {step}; steps run {steps[0]}..{steps[-1]} ({len(steps)} steps)")
    lines = [f"Step {step}:"]
    for name, (lo, hi, mean) in step_summary(ds, int(where[0])).items():
        lines.append(_stat_line(name, lo, hi, mean, ds.sizes["token_i"] > 1))
    if summary is not None and "quantization_neighbours" in summary:
        count = int(summary["quantization_neighbours"].values[where[0]])
        lines.append(f"  Quantization neighbours: {count:,} pairs")
    return "\n".join(lines)


#: Statistics :func:`summarize` gives per step and metric.
STATS: tuple[str, ...] = ("min", "mean", "max")


def summarize(ds: xr.Dataset, threshold: float | None = None) -> xr.Dataset:
    """Per-step statistics of the off-diagonal distances, lazily, in one pass over the store.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances` or :func:`open_distances`.
    threshold : float, optional
        Chebyshev distance below which two tokens count as **quantization neighbours**
        (indistinguishable at bf16 precision in every dim). Default: one bf16 spacing at the
        embedding's typical magnitude at each step (``bf16_spacing(embedding_rms)``).

    Returns
    -------
    xarray.Dataset
        Dims ``("step",)``: ``{metric}_{min,mean,max}`` (float64) for each metric, and
        ``quantization_neighbours`` (pairs i < j with Chebyshev below the threshold) plus
        the ``threshold`` used, when Chebyshev is present. Lazy: compute or ``.load()`` it.
        Runs (a leading ``run`` dim, from ``open_distances`` of several stores) give dims
        ``("run", "step")``; a run's missing steps give NaN statistics and 0 neighbours.

    Examples
    --------
    >>> s = summarize(open_distances("d.zarr")).compute()  # doctest: +SKIP
    >>> s.euclidean_mean.isel(step=-1).item()  # doctest: +SKIP
    """
    import dask.array as da

    from dask_pdist.graphs.stats import summary_stats

    if "run" in ds.dims:
        runs = [summarize(ds.sel(run=r).drop_vars("run"), threshold) for r in ds["run"].values]
        return xr.concat(runs, dim=ds["run"])
    names = [m for m in ("euclidean", "chebyshev") if m in ds.data_vars]
    if any(not isinstance(ds[name].data, da.Array) for name in names):
        ds = ds.chunk({"step": ds[names[0]].encoding.get("chunks", (-1,))[0]} if names else {})
    out = {}
    thr = None
    if "chebyshev" in ds.data_vars:
        if threshold is None:
            if "embedding_rms" not in ds.coords:
                raise ValueError(
                    "this store has no embedding_rms coordinate for the default threshold; pass threshold="
                )
            thr = bf16_spacing(ds["embedding_rms"])
        else:
            if not threshold > 0:
                raise ValueError(f"threshold={threshold!r}: must be a positive distance")
            thr = xr.full_like(ds["step"], threshold, dtype=np.float64)
        thr = thr.reset_coords(drop=True).astype(np.float64)
    below = names.index("chebyshev") if "chebyshev" in names else None
    threshold_data = None
    if thr is not None:
        threshold_data = thr.data if isinstance(thr.data, da.Array) else da.from_array(thr.values, chunks=-1)
    # one pass over each chunk, every metric in one task: min, max, sum, count (off-diagonal,
    # NaN skipped), pairs below the threshold; then the threshold, from the same task
    arrays = [ds[name].transpose("step", "token_i", "token_j").data for name in names]
    stats = summary_stats(arrays, threshold_data, below) if names else None
    for k, name in enumerate(names):
        for c, stat in enumerate(STATS):  # columns: min, mean, max, pairs below
            out[f"{name}_{stat}"] = xr.DataArray(
                stats[:, 4 * k + c], dims=("step",), attrs={"long_name": f"{stat} off-diagonal {name} distance"}
            )
        if k == below:
            out["threshold"] = xr.DataArray(
                stats[:, -1], dims=("step",), attrs={**thr.attrs, "long_name": "quantization-neighbour threshold"}
            )
            out["quantization_neighbours"] = xr.DataArray(
                stats[:, 4 * k + 3].astype(np.int64),
                dims=("step",),
                attrs={"long_name": "token pairs i<j with Chebyshev distance below threshold"},
            )
    result = xr.Dataset(out, coords={"step": ds["step"]})
    return result.drop_vars([c for c in result.coords if c != "step"])
