"""Plots of a summary (matplotlib is optional: ``pip install matplotlib``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_summary", "plot_clusters", "require_matplotlib"]


def require_matplotlib() -> Any:
    """matplotlib's ``Figure`` class, or an ImportError saying how to install matplotlib.

    Figures are drawn without pyplot, so the caller's backend is never switched (a
    notebook keeps showing its plots inline) and no display is needed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        # dask_pdist[plot] works only where the package came from an index, not from a checkout
        raise ImportError(
            "plotting needs matplotlib: pip install matplotlib"
            " (in a checkout of dask_pdist, pip install -e '.[plot]' does the same)"
        ) from exc
    return Figure


def plot_summary(
    summary: xr.Dataset, ds: xr.Dataset, step: int, path: str | os.PathLike[str], *, dpi: int = 100
) -> None:
    """Min/mean/max over steps for each metric, and a heatmap of one step, as a PNG.

    Parameters
    ----------
    summary : xarray.Dataset
        From :func:`dask_pdist.summarize` (computed).
    ds : xarray.Dataset
        The distances, for the heatmap (only that step is read).
    step : int
        Step label for the heatmap.
    path : path-like
        PNG to write; the figure is 12 x 4 inches at ``dpi``.

    Examples
    --------
    >>> plot_summary(summarize(ds).compute(), ds, 5000, "summary.png")  # doctest: +SKIP
    """
    figure = require_matplotlib()
    metrics = [m for m in ("euclidean", "chebyshev") if f"{m}_mean" in summary]
    fig = figure(figsize=(12, 4))
    axes = fig.subplots(1, len(metrics) + 1)
    steps = summary["step"].values
    for ax, metric in zip(axes[:-1], metrics, strict=True):
        ax.fill_between(steps, summary[f"{metric}_min"], summary[f"{metric}_max"], alpha=0.3, label="min-max")
        ax.plot(steps, summary[f"{metric}_mean"], label="mean")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} distance")
        ax.set_title(f"{metric.capitalize()} (off-diagonal)")
        ax.legend(loc="lower right")
    heat = ds[metrics[0]].sel(step=step).values
    im = axes[-1].imshow(heat, cmap="viridis", interpolation="nearest")
    axes[-1].set_title(f"{metrics[0].capitalize()} at step {step}")
    axes[-1].set_xlabel("token_j")
    axes[-1].set_ylabel("token_i")
    fig.colorbar(im, ax=axes[-1])
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_clusters(clusters: xr.Dataset, events: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> None:
    """Groups over steps (``n_clusters``, ``largest``) with the events marked below, as a PNG.

    Parameters
    ----------
    clusters : xarray.Dataset
        From :func:`dask_pdist.clusters` (only the per-step variables are read).
    events : pandas.DataFrame
        From :func:`dask_pdist.cluster_events`.
    path : path-like
        PNG to write; 9 x 5 inches at ``dpi``.

    Examples
    --------
    >>> plot_clusters(c, cluster_events(c), "clusters.png")  # doctest: +SKIP
    """
    from dask_pdist.analyses.events import EVENT_KINDS

    figure = require_matplotlib()
    steps = clusters["step"].values
    fig = figure(figsize=(9, 5), constrained_layout=True)
    ax, bx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1.2]})
    ax.step(steps, clusters["n_clusters"].values, where="post", label="groups (2+ tokens)")
    ax.step(steps, clusters["largest"].values, where="post", label="largest population")
    # counts run from 0 to V (every token in one group at step 0): log-like above 1
    ax.set_yscale("symlog", linthresh=1, linscale=0.5)
    top = max(1, int(clusters["largest"].max()), int(clusters["n_clusters"].max()))
    ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10**4, 10**5) if t <= top * 1.5]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_ylim(-0.3, top * 1.6)
    ax.set_ylabel("count")
    ax.set_title(
        f"Clusters: {clusters.attrs.get('metric', '')} distance <= {clusters.attrs.get('threshold', '')}", fontsize=10
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, alpha=0.3)
    for k, kind in enumerate(EVENT_KINDS):
        at = events["step"].values[events["kind"].values == kind]
        if len(at):
            steps_at, counts = np.unique(at, return_counts=True)
            bx.scatter(
                steps_at, np.full(len(steps_at), k), s=80, color=f"C{k}", marker="|", linewidths=1 + np.log10(counts)
            )
    bx.set_yticks(range(len(EVENT_KINDS)), EVENT_KINDS, fontsize=8)
    bx.set_ylim(-0.7, len(EVENT_KINDS) - 0.3)
    bx.invert_yaxis()
    bx.set_xlabel("step")
    bx.set_title("events", fontsize=10)
    bx.grid(True, axis="x", alpha=0.3)
    _save(fig, path, dpi)


def _save(fig: Any, path: str | os.PathLike[str], dpi: int) -> None:
    # whole or absent, as every output; the format from the target's name, not the hidden one's
    from pathlib import Path

    from dask_pdist.io.publish import building

    path = Path(path)
    with building(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
