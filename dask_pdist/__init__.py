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
storage_options=...)``). One HTML page of a store that opens offline, its heatmaps on a
step slider (:func:`report`).

The public names are imported on first use (PEP 562): ``import dask_pdist`` and the
``dask-pdist`` command's start-up stay fast, since dask, xarray and numba take ~1 s to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dask_pdist._version import __version__

if TYPE_CHECKING:
    from dask_pdist.analyses.clusters import clusters, open_clusters, write_clusters
    from dask_pdist.analyses.distinct import distinct_count
    from dask_pdist.analyses.divergence import divergence
    from dask_pdist.analyses.events import cluster_events
    from dask_pdist.analyses.movement import movement
    from dask_pdist.analyses.movement_store import open_comparison, write_comparison
    from dask_pdist.analyses.neighbours import neighbour_churn, neighbours
    from dask_pdist.analyses.neighbours_store import neighbours_to_zarr, open_neighbours
    from dask_pdist.analyses.report import report
    from dask_pdist.analyses.summary import summarize
    from dask_pdist.conventions import METRICS, OUTPUT_DTYPES
    from dask_pdist.errors import (
        EngineError,
        InputError,
        RepairWarning,
        SkippedCheckpointWarning,
        StoreChangedError,
        StoreError,
    )
    from dask_pdist.graphs.dataset import pairwise_distances
    from dask_pdist.io.history import open_history, parse_token_ids
    from dask_pdist.io.synthetic import synthetic_events, write_synthetic_history
    from dask_pdist.store.export import to_safetensors
    from dask_pdist.store.reading import iter_steps
    from dask_pdist.store.runs import compute_runs, find_runs, open_distances
    from dask_pdist.store.verification import verify_store
    from dask_pdist.store.writer import to_zarr

_WHERE = {
    "METRICS": "conventions",
    "OUTPUT_DTYPES": "conventions",
    "InputError": "errors",
    "StoreError": "errors",
    "StoreChangedError": "errors",
    "RepairWarning": "errors",
    "EngineError": "errors",
    "SkippedCheckpointWarning": "errors",
    "open_history": "io.history",
    "pairwise_distances": "graphs.dataset",
    "to_zarr": "store.writer",
    "open_distances": "store.runs",  # one store, or several as runs (wraps store.open_distances)
    "compute_runs": "store.runs",
    "find_runs": "store.runs",
    "verify_store": "store.verification",
    "summarize": "analyses.summary",
    "iter_steps": "store.reading",
    "write_synthetic_history": "io.synthetic",
    "to_safetensors": "store.export",
    "clusters": "analyses.clusters",
    "write_clusters": "analyses.clusters",
    "cluster_events": "analyses.events",
    "synthetic_events": "io.synthetic",
    "parse_token_ids": "io.token_ids",
    "neighbours": "analyses.neighbours",
    "neighbour_churn": "analyses.neighbours",
    "neighbours_to_zarr": "analyses.neighbours_store",
    "open_neighbours": "analyses.neighbours_store",
    "open_clusters": "analyses.clusters",
    "movement": "analyses.movement",
    "divergence": "analyses.divergence",
    "distinct_count": "analyses.distinct",
    "write_comparison": "analyses.movement_store",
    "open_comparison": "analyses.movement_store",
    "report": "analyses.report",
}

__all__ = [
    "__version__",
    "METRICS",
    "OUTPUT_DTYPES",
    "InputError",
    "StoreError",
    "StoreChangedError",
    "RepairWarning",
    "EngineError",
    "SkippedCheckpointWarning",
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
    "open_clusters",
    "compute_runs",
    "find_runs",
    "movement",
    "divergence",
    "distinct_count",
    "write_comparison",
    "open_comparison",
    "report",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dask_pdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
