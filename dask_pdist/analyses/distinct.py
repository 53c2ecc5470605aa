"""The number of distinct embedding vectors per step (the series' "unique count"), lazily.

One task per step chunk counts each snapshot's distinct rows in one pass
(:func:`dask_pdist.kernels.distinct_rows.distinct_rows`, numba: each row hashed as it is
read and looked up in a hash table, every hash match confirmed value by value, so the count is
exact): O(V x D) per step, no sort, no distance and no V x V matrix. Inputs other than
float32/float64 take the clusters' threshold-0 grouping
(:func:`dask_pdist.kernels.cluster_rows.equal_row_labels`). It is the number of groups
(singletons included) that ``clusters(history, 0)`` finds, with the same rules: ``-0.0`` and
``+0.0`` are equal, and a row holding NaN or Inf is distinct from every other row.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from dask_pdist.analyses.movement import _check_history, _data, _labels
from dask_pdist.kernels.cluster_rows import equal_row_labels
from dask_pdist.kernels.distinct_rows import distinct_rows

__all__ = ["distinct_count"]


def _count_block(x: np.ndarray) -> np.ndarray:
    counts = distinct_rows(x)  # one hashed pass (numba), float32/float64
    if counts is not None:
        return counts
    labels = equal_row_labels(x)
    # a group's label is its smallest member's position: count the tokens that are their own label
    return (labels == np.arange(x.shape[1], dtype=labels.dtype)).sum(axis=1).astype(np.int64)


def distinct_count(history: xr.DataArray) -> xr.DataArray:
    """Number of distinct embedding vectors (rows) at every step, exactly, lazily.

    Parameters
    ----------
    history : xarray.DataArray
        Dims ``("step", "token", "dim")`` as from :func:`open_history`.

    Returns
    -------
    xarray.DataArray
        ``distinct`` (step), int64, dask-backed, chunked as the history along ``step``.
        Rows equal as numbers in every dim are one vector (``-0.0 == +0.0``, so widened bf16
        rows compare as their bf16 values do); a row with NaN or Inf counts on its own.

    Examples
    --------
    >>> h = xr.DataArray(np.array([[[1.0, 0.0], [1.0, -0.0], [2.0, 0.0]]]), dims=("step", "token", "dim"))
    >>> distinct_count(h).values
    array([2])
    """
    history = _check_history(history)
    data = _data(history).rechunk({1: -1, 2: -1})
    counts = data.map_blocks(_count_block, drop_axis=(1, 2), dtype=np.int64, meta=np.empty((0,), dtype=np.int64))
    return xr.DataArray(
        counts,
        dims=("step",),
        coords={"step": _labels(history, "step")},
        name="distinct",
        attrs={
            "long_name": "distinct embedding vectors per step (-0.0 == +0.0; rows with NaN/Inf count singly)",
            "source": str(history.attrs.get("source", "")),
        },
    )
