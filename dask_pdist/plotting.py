"""Plots of a summary (matplotlib is an optional extra: ``pip install 'dask_pdist[plot]'``)."""

from __future__ import annotations

import os
from typing import Any

import xarray as xr

__all__ = ["plot_summary", "require_matplotlib"]


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend, or say how to install it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, an optional extra: pip install 'dask_pdist[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = require_matplotlib()
    metrics = [m for m in ("euclidean", "chebyshev") if f"{m}_mean" in summary]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(12, 4))
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
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
