"""dask_pdist: pairwise token distances over an embedding history, lazily, with dask.

Open a history (:func:`open_history`), build both metrics in one pass
(:func:`pairwise_distances`), write a zarr store (:func:`to_zarr`), reopen it lazily
(:func:`open_distances`), summarize it (:func:`summarize`), export it for the notebook's
readers (:func:`to_safetensors`), track groups of identical tokens over training
(:func:`clusters`, :func:`cluster_events`). For large vocabularies: exact k nearest
neighbours per token and step without V x V matrices (:func:`neighbours`,
:func:`neighbour_churn`), and token subsets (``open_history(..., token_ids=...)``).
Many runs in one graph (:func:`compute_runs`; :func:`open_distances` of several stores has a
``run`` dimension), and histories on object storage (``open_history("s3://...",
storage_options=...)``).

The public names are imported on first use (PEP 562): ``import dask_pdist`` and the
``dask-pdist`` command's start-up stay fast, since dask, xarray and numba take ~1 s to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .clustering import clusters, write_clusters
    from .dataset import pairwise_distances
    from .errors import InputError, StoreError
    from .events import cluster_events
    from .export import to_safetensors
    from .graph import METRICS, OUTPUT_DTYPES
    from .history import open_history, parse_token_ids
    from .knn import neighbour_churn, neighbours
    from .knn_store import neighbours_to_zarr, open_neighbours
    from .reading import iter_steps
    from .report import summarize
    from .runs import compute_runs, find_runs, open_distances
    from .store import to_zarr, verify_store
    from .synthetic import synthetic_events, write_synthetic_history

_WHERE = {
    "METRICS": "graph",
    "OUTPUT_DTYPES": "graph",
    "InputError": "errors",
    "StoreError": "errors",
    "open_history": "history",
    "pairwise_distances": "dataset",
    "to_zarr": "store",
    "open_distances": "runs",  # one store, or several as runs (wraps store.open_distances)
    "compute_runs": "runs",
    "find_runs": "runs",
    "verify_store": "store",
    "summarize": "report",
    "iter_steps": "reading",
    "write_synthetic_history": "synthetic",
    "to_safetensors": "export",
    "clusters": "clustering",
    "write_clusters": "clustering",
    "cluster_events": "events",
    "synthetic_events": "synthetic",
    "parse_token_ids": "history",
    "neighbours": "knn",
    "neighbour_churn": "knn",
    "neighbours_to_zarr": "knn_store",
    "open_neighbours": "knn_store",
}

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
    "verify_store",
    "summarize",
    "iter_steps",
    "write_synthetic_history",
    "to_safetensors",
    "clusters",
    "write_clusters",
    "cluster_events",
    "synthetic_events",
    "parse_token_ids",
    "neighbours",
    "neighbour_churn",
    "neighbours_to_zarr",
    "open_neighbours",
    "compute_runs",
    "find_runs",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dask_pdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
