"""The one blockwise graph: history blocks in, distance blocks of every metric out.

Array layer: speaks axes and chunks, knows nothing of xarray labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning

from dask_pdist.conventions import METRICS, Metric, check_dtype, check_metrics, one_block
from dask_pdist.kernels.distances import cross_block, pairwise_block
from dask_pdist.kernels.engine import resolve_engine
from dask_pdist.planning import plan_token_chunk

__all__ = ["pairwise_arrays"]

_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: The kernels' output axis (:func:`~dask_pdist.kernels.distances.pairwise_block`).
_KERNEL_OUTPUT = ("euclidean", "chebyshev", "manhattan")
ULP = "chebyshev_ulp"


def _ulp_block(
    xa: np.ndarray, xb: np.ndarray, steps: np.ndarray, ia: np.ndarray, jb: np.ndarray, *, number_format: str
) -> np.ndarray:
    # Chebyshev distance between the values' positions on the number format's ordered integer
    # line: the largest number of representable values between the two, over dims. Positions
    # are integers below 2^32, exact in float64, and max |a - b| of exact integers is exact.
    from dask_pdist.kernels.movement import ULP_DTYPES, ordered_bits

    step0 = int(steps[0]) if steps.size else 0
    try:
        pa = ordered_bits(xa, number_format).astype(np.float64)
        pb = pa if ia[0] == jb[0] else ordered_bits(xb, number_format).astype(np.float64)
    except ValueError as exc:
        raise ValueError(f"chebyshev_ulp at step index >= {step0}: {exc}") from None
    if ia[0] == jb[0]:
        out = pairwise_block(pa)[1]
    else:
        out = cross_block(pa, pb)[1]
    return out.astype(ULP_DTYPES[number_format])[None]


def _distance_block(
    xa: list[np.ndarray],
    xb: list[np.ndarray],
    steps: np.ndarray,
    ia: np.ndarray,
    jb: np.ndarray,
    labels: np.ndarray,
    *,
    which: tuple[int, ...],
    out_dtype: str,
    engine: str = "cpu",
) -> np.ndarray:
    xa, xb = one_block(xa), one_block(xb)  # the history's block, whole along token and dim
    step0 = int(steps[0]) if steps.size else 0
    extra: dict = {"manhattan": True} if 2 in which else {}  # Manhattan: summed in the same pass
    pairwise, cross = pairwise_block, cross_block
    if engine == "cuda":  # imported in the task: the CPU path never loads the CUDA modules
        from dask_pdist.kernels.cuda.distances import cross_block_cuda as cross
        from dask_pdist.kernels.cuda.distances import pairwise_block_cuda as pairwise
    if ia[0] == jb[0]:  # a diagonal tile: xa and xb hold the same tokens
        out = pairwise(xa, step0=step0, token0=int(ia[0]), **extra)
    else:
        out = cross(xa, xb, step0=step0, token0_a=int(ia[0]), token0_b=int(jb[0]), **extra)
    if extra and out.dtype != np.float64:
        out = _manhattan_past_range(out, xa, xb, labels, ia, jb, out_dtype)
    if which != tuple(range(len(out))):
        out = out[list(which)]
    if out_dtype == "float16":
        top = _largest_finite(out)
        if top > _FLOAT16_MAX:
            m, s, i, j = np.argwhere(out == top)[0]
            wider = "float32" if top <= float(np.finfo(np.float32).max) else "float64"  # (float64 arithmetic)
            raise OverflowError(
                f"{_KERNEL_OUTPUT[which[m]]} distance {float(top):.6g} at step {labels[s]} between tokens"
                f" {ia[i]} and {jb[j]} exceeds float16's largest finite value {_FLOAT16_MAX:g};"
                f" use dtype='{wider}' (--dtype {wider})"
            )
    elif np.dtype(out_dtype).itemsize < out.dtype.itemsize:  # float64 arithmetic, float32 output
        _check_fits(out, out_dtype, step0, int(ia[0]), int(jb[0]))
    return out.astype(out_dtype, copy=False)


def _largest_finite(out: np.ndarray) -> float:
    # what a narrowing cast is checked on: a finite distance past the dtype's range would become
    # a silent inf; an infinite one (an infinite input, nonfinite="propagate") stays inf, as
    # scipy gives it; NaN is skipped (no warning on an all-NaN block); -inf where none is finite
    return float(np.max(out, initial=-np.inf, where=np.isfinite(out)))


def _manhattan_past_range(
    out: np.ndarray, xa: np.ndarray, xb: np.ndarray, labels: np.ndarray, ia: np.ndarray, jb: np.ndarray, out_dtype: str
) -> np.ndarray:
    # The kernels sum Manhattan's |a - b| in the history's dtype: a sum past that dtype's range
    # is inf although every term is finite. Such a pair's Euclidean distance is finite (an
    # infinite or NaN input leaves no distance of its pair finite), which tells it apart. It is
    # summed again in float64 (exact enough: as scipy sums it) and kept where the output dtype
    # holds it; else an OverflowError, never a silent inf.
    over = np.isinf(out[2]) & np.isfinite(out[0])
    if not over.any():
        return out
    s, i, j = np.nonzero(over)
    exact = np.abs(xa[s, i].astype(np.float64) - xb[s, j].astype(np.float64)).sum(axis=-1)
    top = float(np.finfo(out_dtype).max)
    if (exact > top).any():
        k = int(np.argmax(exact > top))
        lo, hi = sorted((int(ia[i[k]]), int(jb[j[k]])))
        raise OverflowError(
            f"manhattan distance {float(exact[k]):.6g} at step {labels[s[k]]} between tokens {lo} and {hi}"
            f" exceeds {out_dtype}'s largest finite value {top:g}; use dtype='float64' (--dtype float64)"
        )
    if np.dtype(out_dtype).itemsize > out.dtype.itemsize:
        out = out.astype(out_dtype)
    out[2][over] = exact
    return out


def _check_fits(out: np.ndarray, out_dtype: str, step0: int, i0: int, j0: int) -> None:
    # a finite distance above the output dtype's range would become a silent inf
    top = float(np.finfo(out_dtype).max)
    if not _largest_finite(out) > top:
        return
    over = np.isfinite(out) & (out > top)  # an infinite input gives an infinite distance, as scipy
    if over.any():
        _, s, i, j = np.argwhere(over)[0]
        lo, hi = sorted((i0 + int(i), j0 + int(j)))
        raise OverflowError(
            f"distance {float(out[:, s, i, j].max()):.6g} between tokens {lo} and {hi} at step index"
            f" {step0 + s} exceeds {out_dtype}'s largest finite value {float(top):.6g}; use dtype='float64'"
            " (--dtype float64)"
        )


def pairwise_arrays(
    x: da.Array,
    metrics: Sequence[Metric] = METRICS,
    dtype: str = "float32",
    token_chunk: int | Literal["auto"] = "auto",
    steps: np.ndarray | None = None,
    number_format: str | None = None,
    engine: str = "cpu",
) -> dict[str, da.Array]:
    """Lazy distance arrays of every metric from one ``dask.array.blockwise`` graph.

    Parameters
    ----------
    x : dask.array.Array, shape (step, token, dim), float32 or float64
        Chunked along step; the dim axis is made whole.
    metrics : sequence of {"euclidean", "chebyshev"}
    dtype : {"float32", "float16", "float64"}
        Output dtype; arithmetic is in ``x.dtype``.
    token_chunk : int or "auto"
        Edge of the token_i x token_j tiles. ``"auto"`` tiles only when one snapshot's
        matrices exceed 16 MiB (then steps go one per task).
    steps : numpy.ndarray, optional
        Step labels (length step), named by errors; default 0..step-1.
    number_format : {"bf16", "f16", "f32"}, optional
        The history's own number format, for ``chebyshev_ulp`` (stored as uint16 for
        bf16/f16, uint32 for f32).
    engine : {"cpu", "cuda", "auto"}
        Where the kernel runs (:func:`dask_pdist.kernels.engine.resolve_engine`); the
        results are the same bit for bit. Manhattan and ``chebyshev_ulp`` run on the CPU.

    Returns
    -------
    dict of str to dask.array.Array
        Each (step, token, token); all share one blockwise layer, so computing or storing
        them together runs the kernel once per block.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.ones((10, 5, 3), chunks=(4, 5, 3), dtype=np.float32)
    >>> pairwise_arrays(x)["chebyshev"].chunks[0]
    (4, 4, 2)
    """
    metrics = check_metrics(metrics)
    dtype = check_dtype(dtype)
    engine = resolve_engine(engine)
    if engine == "cuda" and "manhattan" in metrics:
        raise ValueError("metrics with 'manhattan' run on the CPU engine only (engine='cpu')")
    if x.ndim != 3:
        raise ValueError(f"history must be 3-D (step, token, dim), got shape {x.shape}")
    if 0 in x.shape:  # no block to compute: refuse before a store is created for it
        raise ValueError(f"history has shape {x.shape}; every axis (step, token, dim) must be non-empty")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"history must be float32 or float64 (widen bf16/f16 first), got {x.dtype}")
    n_tokens = x.shape[1]
    auto = token_chunk == "auto"
    if auto:
        token_chunk = plan_token_chunk(n_tokens, len(metrics), x.dtype.itemsize)
    elif not isinstance(token_chunk, (int, np.integer)) or isinstance(token_chunk, bool) or token_chunk < 1:
        raise ValueError(f"token_chunk={token_chunk!r}: give a positive int or 'auto'")
    token_chunk = int(min(token_chunk, max(n_tokens, 1)))
    if auto and token_chunk < n_tokens:
        x = x.rechunk({0: 1})  # one snapshot's tile already fills the task budget
    x = x.rechunk({1: token_chunk, 2: -1})
    ids = da.arange(n_tokens, chunks=token_chunk)
    # to name a step in errors (from_array: half the time da.arange takes to build its tasks)
    step_ids = da.from_array(np.arange(x.shape[0]), chunks=(x.chunks[0],))
    labels = np.arange(x.shape[0]) if steps is None else np.asarray(steps)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"steps has shape {labels.shape}; expected one label per step, ({x.shape[0]},)")
    step_labels = da.from_array(labels, chunks=(x.chunks[0],))
    floats = [m for m in metrics if m != ULP]
    which = tuple(_KERNEL_OUTPUT.index(m) for m in floats)
    if ULP in metrics and number_format not in ("bf16", "f16", "f32"):
        raise ValueError(
            f"chebyshev_ulp counts representable values of bf16, f16 or f32; this history's number format is"
            f" {number_format or x.dtype.name}: choose other metrics"
        )
    found = {}
    with warnings.catch_warnings():
        # tiling token_i x token_j multiplies the chunk count on purpose
        warnings.simplefilter("ignore", PerformanceWarning)
        if floats:
            out = _blockwise(x, step_ids, ids, step_labels, len(floats), which, dtype, engine)
            # each metric's blocks by one blockwise layer (slicing out[k] builds its tasks one
            # by one: what an append of one step would pay per step stored)
            found = {m: _metric(out, k) for k, m in enumerate(floats)}
        if ULP in metrics:
            from dask_pdist.kernels.movement import ULP_DTYPES

            ulp_dtype = ULP_DTYPES[number_format]
            found[ULP] = da.blockwise(
                _ulp_block,
                "msij",
                *(x, "sid", x, "sjd", step_ids, "s", ids, "i", ids, "j"),
                new_axes={"m": 1},
                concatenate=True,
                dtype=ulp_dtype,
                meta=np.empty((0, 0, 0, 0), dtype=ulp_dtype),
                number_format=number_format,
            )[0]
    return {m: found[m] for m in metrics}


def _pick(blocks: list[np.ndarray], k: int) -> np.ndarray:
    # out[k] of the one block along the metric axis: a view, not a copy
    return one_block(blocks)[k]


def _metric(out: da.Array, k: int) -> da.Array:
    # out[k] of the (metric, step, token_i, token_j) output, whose metrics are one chunk
    return da.blockwise(
        _pick, "sij", out, "msij", k=k, concatenate=False, dtype=out.dtype, meta=np.empty((0, 0, 0), out.dtype)
    )


def _blockwise(
    x: da.Array,
    step_ids: da.Array,
    ids: da.Array,
    step_labels: da.Array,
    n_metrics: int,
    which: tuple[int, ...],
    dtype: str,
    engine: str,
) -> da.Array:
    return da.blockwise(
        _distance_block,
        "msij",
        x,
        "sid",
        x,
        "sjd",
        step_ids,
        "s",
        ids,
        "i",
        ids,
        "j",
        step_labels,
        "s",
        new_axes={"m": n_metrics},
        concatenate=False,
        dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
        which=which,
        out_dtype=dtype,
        engine=engine,
    )
