"""Spacing of the bfloat16 number format: the distance between adjacent representable values.

Pure numpy (no numba): the clusters' ``threshold="bf16"`` and ``summarize``'s quantization
neighbours both use it, on a history or on a store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bf16_spacing"]


def bf16_spacing(magnitude: Any) -> Any:
    """Distance between adjacent bfloat16 values at ``magnitude`` (8 significant bits).

    Elementwise numpy: a float, an ndarray, or an xarray/dask array (same type back).

    Examples
    --------
    >>> float(bf16_spacing(1.0)), float(bf16_spacing(0.05))
    (0.0078125, 0.000244140625)
    """
    exponent = np.floor(np.log2(np.maximum(np.abs(magnitude), np.finfo(np.float32).tiny)))
    return 2.0 ** (exponent - 7)
