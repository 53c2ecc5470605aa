"""Movement: how far each token moves between step t - lag and step t, in every sense the
research series uses (Euclidean, Chebyshev, L1, Chebyshev in representable steps of the number
format, dims that changed), with per-step summaries.

The xarray layer over :mod:`dask_pdist.graphs.movement` (graph) and
:mod:`dask_pdist.kernels.movement` (kernel): labels, dtypes, provenance. Shared with
:mod:`.divergence` (the same quantities between runs instead of between steps).
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import HISTORY_DIMS, KIND_ATTR, OutputDtype, check_choice, check_dtype
from dask_pdist.graphs.movement import movement_arrays
from dask_pdist.io.history import provenance
from dask_pdist.kernels.movement import NUMBER_FORMATS, SUMMARY_COLUMNS

__all__ = ["movement", "MOVEMENT_KIND", "number_format_of"]

#: ``dask_pdist_kind`` of a movement Dataset and store.
MOVEMENT_KIND = "movement"
NumberFormat = Literal["auto", "bf16", "f16", "f32"] | None
_FROM_INPUT = {"BF16": "bf16", "F16": "f16", "F32": "f32", "F64": None}


def number_format_of(history: xr.DataArray, number_format: NumberFormat = "auto") -> str | None:
    """The number format whose representable steps ``chebyshev_ulp`` counts.

    ``"auto"``: the input's (``input_dtype`` attribute of :func:`open_history`: BF16, F16,
    F32; None for F64), else float32 for a float32 array and None otherwise.

    >>> number_format_of(xr.DataArray(np.zeros(1, np.float32), attrs={"input_dtype": "BF16"}))
    'bf16'
    """
    if number_format is None:
        return None
    check_choice("number_format", number_format, ("auto", *NUMBER_FORMATS))
    if number_format != "auto":
        return number_format
    kind = history.attrs.get("input_dtype")
    if kind in _FROM_INPUT:
        return _FROM_INPUT[kind]
    return "f32" if history.dtype == np.float32 else None


def _check_history(history: object, what: str = "history") -> xr.DataArray:
    if not isinstance(history, xr.DataArray):
        raise TypeError(f"{what} must be an xarray.DataArray (see open_history), got {type(history).__name__}")
    if history.dims != HISTORY_DIMS:
        raise ValueError(f"{what} has dims {history.dims}; expected {HISTORY_DIMS}")
    if history.dtype.kind != "f":
        raise TypeError(f"{what} has dtype {history.dtype}; expected floating point (see open_history)")
    return history


def _data(history: xr.DataArray) -> da.Array:
    data = history.data
    return data if isinstance(data, da.Array) else da.from_array(data, chunks=(1, -1, -1))


def _labels(history: xr.DataArray, dim: str) -> np.ndarray:
    return history[dim].values if dim in history.coords else np.arange(history.sizes[dim])


def comparison_variables(
    arrays: dict[str, da.Array],
    lead: tuple[str, ...],
    number_format: str | None,
    words: dict[str, str],
) -> dict[str, xr.Variable]:
    """The labelled variables of :func:`~dask_pdist.graphs.movement.compare_arrays`' output
    (already in their stored dtypes).

    ``lead``: the dims before ``token`` (``("step",)``, or ``("pair", "step")``); ``words``:
    ``changed`` (name of the per-token count of changed dims), ``tokens`` (of the per-step
    count of tokens with one), ``what`` (the long-name phrase: "between step - lag and step").
    """
    token_dims, step_dims = (*lead, "token"), lead
    what = words["what"]
    out = {}
    for name in ("euclidean", "chebyshev", "manhattan"):
        out[name] = xr.Variable(token_dims, arrays[name], {"long_name": f"{name} distance {what}"})
    if number_format is not None:
        out["chebyshev_ulp"] = xr.Variable(
            token_dims,
            arrays["chebyshev_ulp"],
            {
                "long_name": f"largest number of representable {number_format} steps over dims {what}",
                "units": f"{number_format} ulp",
            },
        )
    out[words["changed"]] = xr.Variable(
        token_dims, arrays["changed"], {"long_name": f"dims whose values differ {what} (-0.0 == +0.0)"}
    )
    for column in SUMMARY_COLUMNS:
        values = arrays[column]
        if column == "chebyshev_ulp_max" and number_format is None:
            continue
        if column == "changed_tokens":
            column = words["tokens"]
        stat = (
            "number of tokens with a changed dim"
            if column == words["tokens"]
            else column.replace("_", " over tokens: ")
        )
        out[column] = xr.Variable(step_dims, values, {"long_name": stat})
    return out


def movement(
    history: xr.DataArray,
    lag: int = 1,
    *,
    number_format: NumberFormat = "auto",
    dtype: OutputDtype = "float32",
    step_chunk: int | Literal["auto"] = "auto",
) -> xr.Dataset:
    """How far every token moves between step position t - lag and t, exactly, lazily.

    Parameters
    ----------
    history : xarray.DataArray
        Dims ``("step", "token", "dim")`` as from :func:`open_history` (a token subset
        included).
    lag : int
        Positions along ``step`` (not step labels) between the compared snapshots,
        ``1 <= lag < steps``.
    number_format : {"auto", "bf16", "f16", "f32"} or None
        Number format whose representable steps ``chebyshev_ulp`` counts; ``"auto"``: the
        input's (see :func:`number_format_of`); None (or a float64 input): no ``chebyshev_ulp``.
        A value that is not of the format is an error naming its step.
    dtype : {"float32", "float16", "float64"}
        Stored dtype of the distances; the arithmetic is float64 whatever is chosen, so a
        float32 value is the float64 result rounded once.
    step_chunk : int or "auto"
        Output steps per task and chunk (``"auto"``: 16 MiB of input per task as the kernel
        reads it: the bf16 bit patterns of a bf16 history read whole, else float32; see
        :func:`~dask_pdist.graphs.movement.movement_step_chunk`).

    Returns
    -------
    xarray.Dataset
        Dims ``("step", "token")``, dask-backed, chunked along ``step``. The first ``lag``
        steps are **dropped** (they have no earlier snapshot): ``step`` holds the labels of
        positions ``lag..S-1`` and the coordinate ``previous_step`` the label each is
        compared with. Per step and token: ``euclidean``, ``chebyshev``, ``manhattan``
        (L1), ``chebyshev_ulp`` (the largest, over dims, number of representable values
        between the two values; +0 and -0 are 0 apart) and ``changed_dims``. Per step:
        ``{euclidean,chebyshev,manhattan}_{max,mean}`` (means float64),
        ``chebyshev_ulp_max`` and ``moved_tokens`` (tokens with a changed dim).

    Examples
    --------
    >>> mv = movement(open_history("history.safetensors"), lag=1)  # doctest: +SKIP
    >>> mv.chebyshev_ulp.sel(step=1000).values  # one chunk computed  # doctest: +SKIP
    >>> mv.moved_tokens.values  # doctest: +SKIP
    """
    history = _check_history(history)
    fmt = number_format_of(history, number_format)
    dtype = check_dtype(dtype)
    steps = _labels(history, "step")
    arrays = movement_arrays(_data(history), steps, lag, fmt, step_chunk, dtype)
    words = {"changed": "changed_dims", "tokens": "moved_tokens", "what": f"between step - {lag} and step"}
    variables = comparison_variables(arrays, ("step",), fmt, words)
    coords = {
        "step": steps[lag:],
        "previous_step": ("step", steps[: len(steps) - lag], {"long_name": "step compared with"}),
        "token": _labels(history, "token"),
    }
    if "token_id" in history.coords:
        coords["token_id"] = ("token", history["token_id"].values)
    attrs = {
        "title": f"movement of every token between steps {lag} apart",
        KIND_ATTR: MOVEMENT_KIND,
        "lag": int(lag),
        "number_format": fmt or "none",
        **provenance(history, np.float64),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)
