"""Divergence between runs: per step and token, how far apart the runs' embeddings of the same
token are (Euclidean, Chebyshev, L1, Chebyshev in representable steps, dims that differ), each
run against a reference run or every pair, with per-step summaries over tokens.

The same kernel and graph as :mod:`.movement` (two step-aligned histories), on the steps every
run has: runs whose step labels differ are aligned on their common steps, with a warning naming
what was dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.analyses.movement import (
    NumberFormat,
    _check_history,
    _data,
    _labels,
    comparison_variables,
    number_format_of,
)
from dask_pdist.conventions import KIND_ATTR, OutputDtype, check_choice, check_dtype
from dask_pdist.errors import InputError
from dask_pdist.graphs.movement import compare_arrays, movement_step_chunk
from dask_pdist.io.history import provenance

__all__ = ["divergence", "DIVERGENCE_KIND", "common_steps"]

#: ``dask_pdist_kind`` of a divergence Dataset and store.
DIVERGENCE_KIND = "divergence"
PAIRS_CHOICES = ("reference", "all")


def _named(histories: Mapping[str, xr.DataArray] | Sequence[xr.DataArray]) -> dict[str, xr.DataArray]:
    if isinstance(histories, xr.DataArray):
        raise TypeError("histories must be several runs (a dict name -> DataArray, or a list), got one DataArray")
    if isinstance(histories, Mapping):
        runs = {str(k): v for k, v in histories.items()}
    else:
        runs = {f"run{i}": h for i, h in enumerate(histories)}
    if len(runs) < 2:
        raise ValueError(f"divergence needs at least two runs, got {len(runs)}")
    for name, h in runs.items():
        _check_history(h, f"run {name!r}")
    return runs


def common_steps(runs: Mapping[str, xr.DataArray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The step labels every run has (in the first run's order) and, per run, those it loses.

    >>> a = xr.DataArray(np.zeros((3, 1, 1)), dims=("step", "token", "dim"), coords={"step": [0, 10, 20]})
    >>> common_steps({"a": a, "b": a.isel(step=[0, 2])})
    (array([ 0, 20]), {'a': array([10]), 'b': array([], dtype=int64)})
    """
    labels = {name: _labels(h, "step") for name, h in runs.items()}
    for name, steps in labels.items():
        if len(np.unique(steps)) != len(steps):
            raise InputError(f"run {name!r}: its step labels repeat; give each snapshot its own step (--steps)")
    first = next(iter(labels.values()))
    keep = np.ones(len(first), dtype=bool)
    for steps in labels.values():
        keep &= np.isin(first, steps)
    common = first[keep]
    return common, {name: steps[~np.isin(steps, common)] for name, steps in labels.items()}


def _dropped_message(dropped: dict[str, np.ndarray], n_common: int) -> str:
    parts = []
    for name, steps in dropped.items():
        if len(steps):
            shown = ", ".join(str(s) for s in steps[:8]) + (", ..." if len(steps) > 8 else "")
            parts.append(f"run {name!r} loses {len(steps)} ({shown})")
    return f"runs aligned on the {n_common} steps they all have; steps not common to every run dropped: " + "; ".join(
        parts
    )


def divergence(
    histories: Mapping[str, xr.DataArray] | Sequence[xr.DataArray],
    reference: str | None = None,
    *,
    pairs: Literal["reference", "all"] = "reference",
    number_format: NumberFormat = "auto",
    dtype: OutputDtype = "float32",
    step_chunk: int | Literal["auto"] = "auto",
) -> xr.Dataset:
    """How far apart runs' embeddings of the same token are, per step and token, lazily.

    Parameters
    ----------
    histories : dict of name -> DataArray, or a sequence of DataArray
        Two or more runs (as from :func:`open_history`) of one token and dim count (and the
        same token labels); a sequence is named ``run0, run1, ...``.
    reference : str, optional
        The run every other run is compared with (``pairs="reference"``); default the first.
    pairs : {"reference", "all"}
        ``"reference"``: each other run against the reference; ``"all"``: every pair of runs
        (a, b), a before b in the given order.
    number_format, dtype, step_chunk
        As for :func:`movement`; the number format must be the same for every run.

    Returns
    -------
    xarray.Dataset
        Dims ``("pair", "step", "token")``; ``pair`` labels ``"A vs B"`` with coordinates
        ``run`` (A) and ``reference`` (B). Per pair, step and token: ``euclidean``,
        ``chebyshev``, ``manhattan``, ``chebyshev_ulp`` (not for float64 input) and
        ``differing_dims``; per pair and step: ``{euclidean,chebyshev,manhattan}_{max,mean}``,
        ``chebyshev_ulp_max`` and ``differing_tokens``. ``step`` holds the steps every run has:
        others are dropped, with a ``UserWarning`` naming them (also in the attribute
        ``dropped_steps``).

    Examples
    --------
    >>> runs = {n: open_history(f"{n}/history.safetensors") for n in ("seed1", "seed2")}  # doctest: +SKIP
    >>> dv = divergence(runs)  # doctest: +SKIP
    >>> dv.chebyshev_max.sel(pair="seed2 vs seed1").values  # doctest: +SKIP
    """
    runs = _named(histories)
    check_choice("pairs", pairs, PAIRS_CHOICES)
    dtype = check_dtype(dtype)
    names = list(runs)
    if reference is None:
        reference = names[0]
    elif reference not in runs:
        raise ValueError(f"reference={reference!r}: not a run; the runs are {names}")
    first = runs[names[0]]
    for name, h in runs.items():
        if (h.sizes["token"], h.sizes["dim"]) != (first.sizes["token"], first.sizes["dim"]):
            raise InputError(
                f"run {name!r} has {h.sizes['token']} tokens x {h.sizes['dim']} dims, but run {names[0]!r} has"
                f" {first.sizes['token']} x {first.sizes['dim']}; runs must have one shape"
            )
        if not np.array_equal(_labels(h, "token"), _labels(first, "token")):
            raise InputError(f"run {name!r}: its token labels differ from run {names[0]!r}'s; give the same tokens")
    formats = {name: number_format_of(h, number_format) for name, h in runs.items()}
    if len(set(formats.values())) > 1:
        raise InputError(f"runs have different number formats ({formats}); give number_format= explicitly (or None)")
    fmt = formats[names[0]]
    common, dropped = common_steps(runs)
    if len(common) == 0:
        raise InputError(f"the runs {names} have no step in common; nothing to compare")
    note = _dropped_message(dropped, len(common)) if any(len(d) for d in dropped.values()) else ""
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    if step_chunk == "auto":
        step_chunk = movement_step_chunk(first.sizes["token"], first.sizes["dim"])
    elif isinstance(step_chunk, bool) or not isinstance(step_chunk, (int, np.integer)) or step_chunk < 1:
        raise ValueError(f"step_chunk={step_chunk!r}: give a positive int or 'auto'")
    aligned = {}
    for name, h in runs.items():
        data = _data(h)
        where = {s: i for i, s in enumerate(_labels(h, "step").tolist())}
        at = np.array([where[s] for s in common.tolist()], dtype=np.int64)  # in the first run's order
        if not np.array_equal(at, np.arange(data.shape[0])):
            data = data[at]
        aligned[name] = data.rechunk((int(step_chunk), -1, -1))
    chosen = [(a, reference) for a in names if a != reference] if pairs == "reference" else list(combinations(names, 2))
    parts = [compare_arrays(aligned[a], aligned[b], common, common, fmt, dtype) for a, b in chosen]
    arrays = {name: da.stack([p[name] for p in parts]) for name in parts[0]}
    words = {"changed": "differing_dims", "tokens": "differing_tokens", "what": "between the run and its reference"}
    variables = comparison_variables(arrays, ("pair", "step"), fmt, words)
    coords = {
        "pair": np.array([f"{a} vs {b}" for a, b in chosen], dtype=object),
        "run": ("pair", np.array([a for a, _ in chosen], dtype=object)),
        "reference": ("pair", np.array([b for _, b in chosen], dtype=object)),
        "step": common,
        "token": _labels(first, "token"),
    }
    attrs = {
        "title": "divergence between runs, per step and token",
        KIND_ATTR: DIVERGENCE_KIND,
        "runs": ", ".join(names),
        "reference": reference if pairs == "reference" else "every pair",
        "dropped_steps": note,
        "number_format": fmt or "none",
        **provenance(first, np.float64),
        "sources": "; ".join(f"{n}: {h.attrs.get('source', '')}" for n, h in runs.items()),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)
