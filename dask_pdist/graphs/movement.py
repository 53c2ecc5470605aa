"""The graph of movement and divergence: one task per step chunk computing every output at once.

Array layer (axes and chunks). Movement compares a history with itself ``lag`` steps earlier.
Output chunk ``j`` holds the steps ``lag + j*c .. lag + (j+1)*c - 1`` (``c`` steps per chunk,
regular, as zarr wants them): its earlier snapshots are exactly input chunk ``j`` and its later
ones the tail of an input chunk and the head of the next, so one task takes those input chunks
as they are (no shifted copy of the history, no concatenation) and hands their row views to the
kernel. Divergence compares two runs chunk by chunk. Each task returns every output variable,
already in its stored dtype (the distances rounded once from float64); the variables are
getitems of it. A bf16 history as :func:`~dask_pdist.io.history.open_history` made it (every
step and token) is read as its stored bit patterns instead (:func:`~dask_pdist.io.sources.bf16_source`):
the kernel widens them in registers and finds NaN and infinity itself, and the task raises the
reader's own error for them (no float32 copy, no separate finiteness pass). Token and dim stay
whole; the kernel is
:func:`dask_pdist.kernels.movement_rows.movement_rows` (the numpy
:func:`~dask_pdist.kernels.movement.movement_block` for f16 and non-float32 input).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from dask_pdist.conventions import TASK_OUTPUT_BYTES
from dask_pdist.errors import InputError
from dask_pdist.io.sources import _RawSource, bf16_source
from dask_pdist.kernels.movement import (
    SUMMARY_COLUMNS,
    ULP_DTYPES,
    first_foreign,
    movement_block,
    movement_summary,
)
from dask_pdist.kernels.movement_rows import FORMAT_CODES, movement_rows

__all__ = ["ROW_VARIABLES", "VARIABLES", "movement_step_chunk", "compare_arrays", "movement_arrays"]

_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
#: Per (step, token) outputs, then the per-step ones (:data:`SUMMARY_COLUMNS`), in task order.
ROW_VARIABLES = ("euclidean", "chebyshev", "manhattan", "chebyshev_ulp", "changed")
VARIABLES = ROW_VARIABLES + SUMMARY_COLUMNS


@dataclass(frozen=True)
class _Plan:  # not a tuple: dask would read a tuple in a task as a task or a list of arguments
    number_format: str | None
    dtype: np.dtype  # the distances' stored dtype
    ulp: np.dtype
    changed: np.dtype

    def dtypes(self) -> dict[str, np.dtype]:
        f8 = np.dtype(np.float64)
        out = {"euclidean": self.dtype, "chebyshev": self.dtype, "manhattan": self.dtype}
        out |= {"chebyshev_ulp": self.ulp, "changed": self.changed}
        for name in SUMMARY_COLUMNS:
            out[name] = self.dtype if name.endswith("_max") else f8
        return out | {"chebyshev_ulp_max": self.ulp, "changed_tokens": np.dtype(np.int64)}


def _plan(number_format: str | None, dtype: str, n_dims: int) -> _Plan:
    ulp = ULP_DTYPES.get(number_format, np.dtype(np.uint16))
    return _Plan(number_format, np.dtype(dtype), ulp, np.min_scalar_type(n_dims))


def movement_step_chunk(n_tokens: int, n_dims: int, itemsize: int = 4) -> int:
    """Steps per task: the task target of input per operand, as the kernel reads it (float32,
    or ``itemsize=2`` for bf16 bit patterns). The one-pass kernel (kernels/movement_rows.py)
    holds nothing but its input and a few values per row; smaller tasks were measured slower
    (4-step tasks at V=4096: dask's per-task cost exceeded the kernel's; bf16 at V=10,000:
    12-step tasks 0.61x the read, 6-step tasks 0.90x).

    >>> movement_step_chunk(128, 64), movement_step_chunk(10_000, 64, itemsize=2)
    (512, 13)
    """
    return max(1, TASK_OUTPUT_BYTES // max(1, n_tokens * n_dims * itemsize))


def _compare_into(
    cur: np.ndarray,
    prev: np.ndarray,
    cur_steps: np.ndarray,
    prev_steps: np.ndarray,
    plan: _Plan,
    outs: dict,
    summ: np.ndarray,
    bits: tuple[_RawSource, int, int] | None = None,
) -> None:
    # every output of rows cur[s] vs prev[s] into the (step-sliced) arrays outs and summ;
    # bits: cur and prev are a bf16 source's stored patterns, from step indices (of cur, of prev)
    fmt = plan.number_format
    if (cur.dtype == prev.dtype == np.float32 or bits is not None) and fmt in FORMAT_CODES:  # one pass, numba
        into = outs
        if plan.dtype not in (np.float32, np.float64):  # float16: round once, from float64
            into = outs | {n: np.empty(cur.shape[:2]) for n in ("euclidean", "chebyshev", "manhattan")}
        check = bits is not None and bits[0].nonfinite == "raise"
        found = movement_rows(cur, prev, fmt, into, summ, check_finite=check)
        if found is not None and bits is not None:  # a NaN or infinity: the reader's error
            src, at_cur, at_prev = bits
            s = found[0]
            src.raise_nonfinite(prev[s : s + 1], at_prev + s)
            src.raise_nonfinite(cur[s : s + 1], at_cur + s)
        if found is None:
            for name in ("euclidean", "chebyshev", "manhattan"):
                outs[name][...] = into[name]
            return
    if fmt is not None:
        for x, steps in ((cur, cur_steps), (prev, prev_steps)):
            at = first_foreign(x, fmt)
            if at is not None:
                raise InputError(
                    f"step {steps[at[0]]}, token position {at[1]}, dim {at[2]}: value {x[at]!r} is not a"
                    f" {_NAMES[fmt]} value; pass the history's own number_format (or None for no"
                    " chebyshev_ulp)"
                )
    rec = movement_block(cur, prev, fmt)
    for name in ROW_VARIABLES:
        outs[name][...] = rec[name]
    summ[...] = movement_summary(rec)


def _empty(n_steps: int, n_tokens: int, plan: _Plan) -> tuple[dict, np.ndarray]:
    shape = (n_steps, n_tokens)
    dtypes = plan.dtypes()
    return {name: np.empty(shape, dtype=dtypes[name]) for name in ROW_VARIABLES}, np.empty((n_steps, 8))


def _finish(outs: dict, summ: np.ndarray, plan: _Plan) -> tuple[np.ndarray, ...]:
    dtypes = plan.dtypes()
    cols = tuple(summ[:, i].astype(dtypes[name]) for i, name in enumerate(SUMMARY_COLUMNS))
    return tuple(outs[name] for name in ROW_VARIABLES) + cols


def _pair_task(cur, prev, cur_steps, prev_steps, plan):  # noqa: ANN001, ANN202
    outs, summ = _empty(cur.shape[0], cur.shape[1], plan)
    _compare_into(cur, prev, cur_steps, prev_steps, plan, outs, summ)
    return _finish(outs, summ, plan)


def _movement_task(prev, cur1, cur2, r, n, cur_steps, prev_steps, plan, src=None, at=(0, 0)):  # noqa: ANN001, ANN202
    # output rows 0..n-1: cur = cur1[r:] then cur2[:rest], against prev[:n]; src: the bf16
    # source whose stored patterns these are (else None), at: step indices of cur and prev
    outs, summ = _empty(n, prev.shape[1], plan)
    k = min(cur1.shape[0] - r, n)
    parts = [(cur1[r : r + k], 0, k)] + ([(cur2[: n - k], k, n)] if k < n else [])
    for cur, a, b in parts:
        sub = {name: v[a:b] for name, v in outs.items()}
        bits = None if src is None else (src, at[0] + a, at[1] + a)
        _compare_into(cur, prev[a:b], cur_steps[a:b], prev_steps[a:b], plan, sub, summ[a:b], bits)
    return _finish(outs, summ, plan)


def _arrays(name: str, graph: HighLevelGraph, out_chunks: tuple, n_tokens: int, plan: _Plan) -> dict[str, da.Array]:
    # one getitem per variable and block of the tasks (name, j) of graph
    dtypes = plan.dtypes()
    out = {}
    for i, var in enumerate(VARIABLES):
        vname = f"{var}-{name}"
        rows = var in ROW_VARIABLES
        layer = {
            ((vname, j, 0) if rows else (vname, j)): (operator.getitem, (name, j), i) for j in range(len(out_chunks))
        }
        g = HighLevelGraph({**graph.layers, vname: layer}, {**graph.dependencies, vname: {name}})
        chunks = (out_chunks, (n_tokens,)) if rows else (out_chunks,)
        meta = np.empty((0,) * len(chunks), dtype=dtypes[var])
        out[var] = da.Array(g, vname, chunks=chunks, dtype=dtypes[var], meta=meta)
    return out


def _check_chunk(step_chunk: int | Literal["auto"], n_tokens: int, n_dims: int, itemsize: int = 4) -> int:
    if step_chunk == "auto":
        return movement_step_chunk(n_tokens, n_dims, itemsize)
    if isinstance(step_chunk, bool) or not isinstance(step_chunk, (int, np.integer)) or step_chunk < 1:
        raise ValueError(f"step_chunk={step_chunk!r}: give a positive int or 'auto'")
    return int(step_chunk)


def compare_arrays(
    cur: da.Array,
    prev: da.Array,
    cur_steps: np.ndarray,
    prev_steps: np.ndarray,
    number_format: str | None,
    dtype: str = "float32",
) -> dict[str, da.Array]:
    """Row distances between two (step, token, dim) arrays of one shape, and their per-step summary.

    Parameters
    ----------
    cur, prev : dask.array.Array
        Same shape; ``prev`` is rechunked to ``cur``'s chunks along step (token and dim whole).
    cur_steps, prev_steps : ndarray
        Step labels of each (for error messages).
    number_format : {"bf16", "f16", "f32"} or None
        Format for ``chebyshev_ulp`` (values not of it are an :class:`InputError` naming the
        step); None: no ulp distance (0).
    dtype : str
        Stored dtype of the distances and their maxima (rounded once from float64).

    Returns
    -------
    dict
        :data:`VARIABLES` -> dask array in its stored dtype: (step, token) for
        :data:`ROW_VARIABLES`, (step,) for the summary columns (means float64).

    Examples
    --------
    >>> x = da.from_array(np.arange(12.0).reshape(3, 2, 2), chunks=1)
    >>> out = compare_arrays(x[1:], x[:-1], np.arange(1, 3), np.arange(2), None, "float64")
    >>> out["chebyshev"].compute()
    array([[4., 4.],
           [4., 4.]])
    """
    if cur.shape != prev.shape or cur.ndim != 3:
        raise ValueError(f"expected two (step, token, dim) arrays of one shape, got {cur.shape} and {prev.shape}")
    cur = cur.rechunk({1: -1, 2: -1})
    prev = prev.rechunk(cur.chunks)
    plan = _plan(number_format, dtype, cur.shape[2])
    name = "compare-" + tokenize(cur, prev, cur_steps, prev_steps, plan)
    dsk, at = {}, 0
    cur_steps, prev_steps = np.asarray(cur_steps), np.asarray(prev_steps)
    for j, n in enumerate(cur.chunks[0]):
        args = (cur_steps[at : at + n], prev_steps[at : at + n], plan)
        dsk[(name, j)] = (_pair_task, (cur.name, j, 0, 0), (prev.name, j, 0, 0), *args)
        at += n
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cur, prev])
    return _arrays(name, graph, cur.chunks[0], cur.shape[1], plan)


def movement_arrays(
    x: da.Array,
    steps: np.ndarray,
    lag: int,
    number_format: str | None,
    step_chunk: int | Literal["auto"] = "auto",
    dtype: str = "float32",
) -> dict[str, da.Array]:
    """:func:`compare_arrays` of ``x[lag:]`` against ``x[:-lag]``, in regular step chunks,
    without building either shifted array.

    Parameters
    ----------
    x : dask.array.Array, shape (step, token, dim)
        Rechunked to ``step_chunk`` steps (a no-op when it is read so, as ``dask-pdist
        movement`` does).
    steps : ndarray
        Step labels of ``x``.
    lag : int
        Positions along step; ``1 <= lag < steps``.
    step_chunk : int or "auto"
        Steps per task and output chunk (``"auto"``: :func:`movement_step_chunk`, of the
        bf16 bit patterns when the kernel reads those).
    dtype : str
        Stored dtype of the distances.

    Returns
    -------
    dict, as :func:`compare_arrays`, for the steps ``lag .. S-1``.

    Examples
    --------
    >>> x = da.from_array(np.arange(12.0).reshape(3, 2, 2), chunks=1)
    >>> movement_arrays(x, np.arange(3), 2, None, dtype="float64")["manhattan"].compute()
    array([[16., 16.]])
    """
    n_steps = x.shape[0]
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 1:
        raise ValueError(f"lag={lag!r}: give a positive number of steps")
    if lag >= n_steps:
        raise InputError(f"lag={lag}, but the history has {n_steps} steps; give a lag below the number of steps")
    src = bf16_source(x) if number_format in FORMAT_CODES else None
    c = _check_chunk(step_chunk, x.shape[1], x.shape[2], 4 if src is None else 2)
    plan = _plan(number_format, dtype, x.shape[2])
    if src is not None:  # read the stored bf16 patterns: the kernel widens and checks them
        stored = src.stored()
        x = da.from_array(
            stored,
            chunks=(c, -1, -1),
            name=f"history-bits-{tokenize(x.name, c)}",
            meta=np.empty((0, 0, 0), dtype=stored.dtype),
            asarray=False,
            fancy=False,
        )
    else:
        x = x.rechunk((c, -1, -1))
    steps = np.asarray(steps)
    name = "movement-" + tokenize(x, steps, lag, plan)
    n_out = n_steps - lag
    out_chunks = tuple(min(c, n_out - p0) for p0 in range(0, n_out, c))
    n_blocks = len(x.chunks[0])
    dsk = {}
    for j, n in enumerate(out_chunks):
        p0 = j * c
        q, r = divmod(p0 + lag, c)  # the first later snapshot: row r of input chunk q
        nxt = (x.name, q + 1, 0, 0) if r + n > c and q + 1 < n_blocks else None
        cur_steps, prev_steps = steps[p0 + lag : p0 + lag + n], steps[p0 : p0 + n]
        task = (_movement_task, (x.name, j, 0, 0), (x.name, q, 0, 0), nxt, r, n, cur_steps, prev_steps, plan)
        if src is not None:  # the source once in the graph (its key), not once per task
            task += (f"original-{x.name}", (p0 + lag, p0))
        dsk[(name, j)] = task
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return _arrays(name, graph, out_chunks, x.shape[1], plan)
