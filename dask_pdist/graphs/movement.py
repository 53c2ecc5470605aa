"""The graph of movement and divergence: one ``blockwise`` over two step-aligned histories.

Array layer (axes and chunks). Movement compares a history with itself ``lag`` steps earlier:
the two operands are the slices ``x[lag:]`` and ``x[:-lag]`` cut into the same regular step
chunks, so a chunk whose first steps need the previous chunk's last rows simply reads both
input chunks (each input chunk is still read once: its task is shared). Divergence compares
two runs on their common steps. Token and dim stay whole; the kernel is
:func:`dask_pdist.kernels.movement.movement_block`.
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np

from dask_pdist.conventions import TASK_OUTPUT_BYTES
from dask_pdist.errors import InputError
from dask_pdist.kernels.movement import (
    MOVEMENT_RECORD,
    SUMMARY_COLUMNS,
    first_foreign,
    movement_block,
    movement_summary,
)
from dask_pdist.kernels.movement_rows import FORMAT_CODES, movement_rows

__all__ = ["movement_step_chunk", "compare_arrays", "movement_arrays"]

_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def movement_step_chunk(n_tokens: int, n_dims: int) -> int:
    """Steps per task: the task target of float32 input per operand. The one-pass kernel
    (kernels/movement_rows.py) holds nothing but its input and a few values per row; smaller
    tasks were measured slower (4-step tasks at V=4096: dask's per-task cost exceeded the kernel's).

    >>> movement_step_chunk(128, 64)
    512
    """
    return max(1, TASK_OUTPUT_BYTES // max(1, n_tokens * n_dims * 4))


def _block(
    cur: np.ndarray, prev: np.ndarray, cur_steps: np.ndarray, prev_steps: np.ndarray, *, number_format: str | None
) -> np.ndarray:
    if cur.dtype == prev.dtype == np.float32 and number_format in FORMAT_CODES:  # one pass, numba
        out, bad = movement_rows(cur, prev, number_format, MOVEMENT_RECORD)
        if bad is None:
            return out
    if number_format is not None:
        for x, steps in ((cur, cur_steps), (prev, prev_steps)):
            at = first_foreign(x, number_format)
            if at is not None:
                raise InputError(
                    f"step {steps[at[0]]}, token position {at[1]}, dim {at[2]}: value {x[at]!r} is not a"
                    f" {_NAMES[number_format]} value; pass the history's own number_format (or None for no"
                    " chebyshev_ulp)"
                )
    return movement_block(cur, prev, number_format)


def compare_arrays(
    cur: da.Array,
    prev: da.Array,
    cur_steps: np.ndarray,
    prev_steps: np.ndarray,
    number_format: str | None,
) -> tuple[da.Array, da.Array]:
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

    Returns
    -------
    (record, summary)
        ``record``: (step, token), :data:`~dask_pdist.kernels.movement.MOVEMENT_RECORD`;
        ``summary``: (step, 8) float64, the columns of
        :data:`~dask_pdist.kernels.movement.SUMMARY_COLUMNS`.

    Examples
    --------
    >>> x = da.from_array(np.arange(12.0).reshape(3, 2, 2), chunks=1)
    >>> rec, summ = compare_arrays(x[1:], x[:-1], np.arange(1, 3), np.arange(2), None)
    >>> rec["chebyshev"].compute()
    array([[4., 4.],
           [4., 4.]])
    """
    if cur.shape != prev.shape or cur.ndim != 3:
        raise ValueError(f"expected two (step, token, dim) arrays of one shape, got {cur.shape} and {prev.shape}")
    cur = cur.rechunk({1: -1, 2: -1})
    prev = prev.rechunk(cur.chunks)
    cs = da.from_array(np.asarray(cur_steps), chunks=(cur.chunks[0],))
    ps = da.from_array(np.asarray(prev_steps), chunks=(cur.chunks[0],))
    rec = da.blockwise(
        _block,
        "st",
        cur,
        "std",
        prev,
        "std",
        cs,
        "s",
        ps,
        "s",
        number_format=number_format,
        concatenate=True,
        dtype=MOVEMENT_RECORD,
        meta=np.empty((0, 0), dtype=MOVEMENT_RECORD),
    )
    summary = rec.map_blocks(
        movement_summary,
        chunks=(rec.chunks[0], (len(SUMMARY_COLUMNS),)),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
    )
    return rec, summary


def movement_arrays(
    x: da.Array,
    steps: np.ndarray,
    lag: int,
    number_format: str | None,
    step_chunk: int | Literal["auto"] = "auto",
) -> tuple[da.Array, da.Array]:
    """:func:`compare_arrays` of ``x[lag:]`` against ``x[:-lag]``, in regular step chunks.

    Parameters
    ----------
    x : dask.array.Array, shape (step, token, dim)
    steps : ndarray
        Step labels of ``x``.
    lag : int
        Positions along step; ``1 <= lag < steps``.
    step_chunk : int or "auto"
        Output steps per task (``"auto"``: :func:`movement_step_chunk`).

    Returns
    -------
    (record, summary) for the steps ``lag .. S-1``.

    Examples
    --------
    >>> x = da.from_array(np.arange(12.0).reshape(3, 2, 2), chunks=1)
    >>> movement_arrays(x, np.arange(3), 2, None)[0]["manhattan"].compute()
    array([[16., 16.]])
    """
    n_steps = x.shape[0]
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 1:
        raise ValueError(f"lag={lag!r}: give a positive number of steps")
    if lag >= n_steps:
        raise InputError(f"lag={lag}, but the history has {n_steps} steps; give a lag below the number of steps")
    if step_chunk == "auto":
        step_chunk = movement_step_chunk(x.shape[1], x.shape[2])
    elif isinstance(step_chunk, bool) or not isinstance(step_chunk, (int, np.integer)) or step_chunk < 1:
        raise ValueError(f"step_chunk={step_chunk!r}: give a positive int or 'auto'")
    chunks = (int(step_chunk), -1, -1)
    steps = np.asarray(steps)
    return compare_arrays(
        x[lag:].rechunk(chunks), x[: n_steps - lag].rechunk(chunks), steps[lag:], steps[: n_steps - lag], number_format
    )
