"""The xarray layer: label the distance arrays as a Dataset (dims step, token_i, token_j)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import DISTANCE_DIMS, HISTORY_DIMS, INPUT_VERSION, METRICS, Engine, Metric
from dask_pdist.graphs.distances import pairwise_arrays
from dask_pdist.io.history import provenance, step_checksums, step_rms
from dask_pdist.planning import auto_step_chunk

__all__ = ["pairwise_distances"]

_DESCRIPTIONS = {
    "euclidean": ("Euclidean (L2) distance", "sqrt(sum_d (x[step, i, d] - x[step, j, d])**2)"),
    "chebyshev": ("Chebyshev (L-infinity) distance", "max_d |x[step, i, d] - x[step, j, d]|"),
    "manhattan": ("Manhattan (L1) distance", "sum_d |x[step, i, d] - x[step, j, d]|"),
    "chebyshev_ulp": (
        "Chebyshev distance in representable values of the history's number format",
        "max_d |pos(x[step, i, d]) - pos(x[step, j, d])|, pos: the value's place on the format's ordered line",
    ),
}
_FORMATS = {"BF16": "bf16", "F16": "f16", "F32": "f32", "bfloat16": "bf16", "float16": "f16", "float32": "f32"}


def number_format(history: xr.DataArray) -> str | None:
    """The number format a history's values come from (bf16, f16, f32), from its
    ``input_dtype`` (:func:`open_history` records it); a plain float32 array is f32.

    >>> number_format(xr.DataArray(np.zeros((1, 1, 1), np.float32), attrs={"input_dtype": "BF16"}))
    'bf16'
    """
    fmt = _FORMATS.get(str(history.attrs.get("input_dtype", "")))
    if fmt is None and history.dtype == np.float32 and "input_dtype" not in history.attrs:
        fmt = "f32"  # a plain float32 array: its own format
    return fmt


def pairwise_distances(
    history: xr.DataArray,
    metrics: Sequence[Metric] = METRICS,
    dtype: Literal["float32", "float16", "float64"] = "float32",
    *,
    token_chunk: int | Literal["auto"] = "auto",
    engine: Engine = "cpu",
) -> xr.Dataset:
    """Pairwise distances between all tokens at every step, lazily, all metrics in one pass.

    Parameters
    ----------
    history : xarray.DataArray
        Dims ``("step", "token", "dim")``, as returned by :func:`open_history`; float32 or
        float64 (numpy-backed input is chunked along step as ``open_history(chunks="auto")``).
    metrics : sequence of {"euclidean", "chebyshev", "manhattan", "chebyshev_ulp"}
        Variables to produce (default: the first two, the notebook's); the first three come
        from the same differences of the same pass. ``chebyshev_ulp``: the largest number of
        representable values between two tokens' coordinates (1 = adjacent values), for bf16,
        f16 and f32 histories, stored as uint16 (bf16, f16) or uint32 (f32): exact by
        construction, an error naming the dtype for other inputs.
    dtype : {"float32", "float16", "float64"}
        Stored dtype. Arithmetic is float32 (float64 for float64 input) either way. A
        distance beyond the stored dtype's range raises :class:`OverflowError` naming the
        step index and the token pair when it is computed, never a silent inf.
    token_chunk : int or "auto"
        Tile edge along token_i and token_j; ``"auto"`` tiles only large vocabularies.
    engine : {"cpu", "cuda", "auto"}
        Where the kernels run: ``"cuda"`` on a GPU (the ``dask_pdist[cuda]`` extra; an
        :class:`~dask_pdist.errors.EngineError` saying what is missing where it cannot run),
        ``"auto"`` there when it can, else on the CPU. The distances are the same bit for bit.

    Returns
    -------
    xarray.Dataset
        One variable per metric, dims ``("step", "token_i", "token_j")``, dask-backed:
        nothing is computed until you compute, slice-and-load, or write it.

    Examples
    --------
    >>> ds = pairwise_distances(open_history("history.safetensors"))  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234).values  # computes one chunk  # doctest: +SKIP
    """
    if not isinstance(history, xr.DataArray):
        raise TypeError(f"history must be an xarray.DataArray (see open_history), got {type(history).__name__}")
    if history.dims != HISTORY_DIMS:
        raise ValueError(f"history has dims {history.dims}; expected {HISTORY_DIMS}")
    data = history.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(auto_step_chunk(data.shape[1], data.shape[0]), -1, -1))
    step_labels = history["step"].values if "step" in history.coords else None
    arrays = pairwise_arrays(
        data,
        metrics,
        dtype,
        token_chunk=token_chunk,
        steps=step_labels,
        number_format=number_format(history),
        engine=engine,
    )
    token = history["token"].values if "token" in history.coords else range(history.sizes["token"])
    coords = {
        "step": history["step"].values if "step" in history.coords else range(history.sizes["step"]),
        "token_i": ("token_i", token),
        "token_j": ("token_j", token),
        # typical magnitude per step, for the quantization-neighbour threshold of summarize();
        # computed from the same history chunks as the distances (no second read)
        "embedding_rms": (
            "step",
            # chunked like the distances along step, so each write task has its own piece
            step_rms(data).rechunk((next(iter(arrays.values())).chunks[0],), method="tasks"),
            {"long_name": "root-mean-square embedding coordinate per step (finite coordinates)"},
        ),
        # what to_zarr records next to each done flag, so that --resume can tell whether the
        # input of the finished blocks changed (computed from the same history chunks)
        "input_checksum": (
            "step",
            step_checksums(data).rechunk((next(iter(arrays.values())).chunks[0],), method="tasks"),
            {"long_name": "crc32c of each step's input values (checked by --resume)"},
        ),
    }
    if INPUT_VERSION in history.coords:  # what each step was read from: an append re-reads only changed files
        coords[INPUT_VERSION] = ("step", history[INPUT_VERSION].values, history[INPUT_VERSION].attrs)
    common = provenance(history, data.dtype)
    variables = {}
    for metric, arr in arrays.items():
        long_name, formula = _DESCRIPTIONS[metric]
        variables[metric] = xr.Variable(DISTANCE_DIMS, arr, attrs={"long_name": long_name, "formula": formula})
    return xr.Dataset(variables, coords=coords, attrs={"title": "pairwise token distances per step", **common})
