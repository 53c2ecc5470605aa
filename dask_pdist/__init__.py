"""dask_pdist: pairwise token distances over an embedding history, lazily, with dask.

Open a history (:func:`open_history`), build both metrics in one pass
(:func:`pairwise_distances`), write a zarr store (:func:`to_zarr`), reopen it lazily
(:func:`open_distances`), export it as the notebook's safetensors file (:func:`to_safetensors`).
"""

from __future__ import annotations

from ._version import __version__
from .dataset import pairwise_distances
from .errors import InputError, StoreError
from .export import to_safetensors
from .graph import METRICS, OUTPUT_DTYPES
from .history import open_history
from .report import summarize
from .store import open_distances, to_zarr
from .synthetic import write_synthetic_history

__all__ = [
    "__version__",
    "METRICS",
    "OUTPUT_DTYPES",
    "InputError",
    "StoreError",
    "open_history",
    "pairwise_distances",
    "to_zarr",
    "open_distances",
    "summarize",
    "write_synthetic_history",
    "to_safetensors",
]
