"""Small read-only reports on a distance Dataset (the notebook's summary block)."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["step_summary", "format_summary"]


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
    dict of metric name to (min, max, mean), computed in float64.

    Examples
    --------
    >>> step_summary(open_distances("d.zarr"), -1)["euclidean"]  # doctest: +SKIP
    (0.0, 1.39, 0.654)
    """
    out = {}
    order = ("euclidean", "chebyshev")  # the notebook's order; any other variable after
    for name in sorted(ds.data_vars, key=lambda n: (order.index(n) if n in order else len(order), n)):
        var = ds[name]
        m = np.asarray(var.isel(step=index).values, dtype=np.float64)
        off = m[~np.eye(m.shape[0], dtype=bool)] if m.shape[0] > 1 else np.zeros(0)
        out[name] = (float(off.min()), float(off.max()), float(off.mean())) if off.size else (0.0, 0.0, 0.0)
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
            lines.append(f"  {name.capitalize()}: min={lo:.6f}, max={hi:.6f}, mean={mean:.6f}")
    return "\n".join(lines)
