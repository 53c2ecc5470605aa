"""Block kernel of movement and divergence: row-by-row distances between two histories of the
same shape (a history and itself ``lag`` steps earlier, or two runs), numpy in, numpy out.

Plain numpy, no numba: the work is O(steps x tokens x dims), one pass, and float64 arithmetic
keeps it exact in the sense of the distances (every stored value rounded once from float64).

Distances in units of the number format ("ulp", "spacing units"): each value is mapped to a
point of an ordered integer line by the sign-magnitude trick on its bit pattern
(``+m -> m``, ``-m -> -m`` for the magnitude bits ``m``), so adjacent representable values are
1 apart and ``+0.0`` and ``-0.0`` are both 0. The Chebyshev distance there is the largest, over
dims, number of representable steps between the two values.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NUMBER_FORMATS",
    "ULP_DTYPES",
    "MOVEMENT_RECORD",
    "SUMMARY_COLUMNS",
    "ordered_bits",
    "first_foreign",
    "movement_block",
    "movement_summary",
]

#: Number formats whose bit patterns give a Chebyshev distance in representable steps.
NUMBER_FORMATS: tuple[str, ...] = ("bf16", "f16", "f32")
#: The smallest unsigned dtype holding any such distance (at most 2 x the largest magnitude).
ULP_DTYPES = {"bf16": np.dtype(np.uint16), "f16": np.dtype(np.uint16), "f32": np.dtype(np.uint32)}
_NAMES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}

#: One (step, token) result of :func:`movement_block`, float64 before it is stored.
MOVEMENT_RECORD = np.dtype(
    [("euclidean", "<f8"), ("chebyshev", "<f8"), ("manhattan", "<f8"), ("chebyshev_ulp", "<u4"), ("changed", "<u4")]
)


def ordered_bits(x: np.ndarray, number_format: str) -> np.ndarray:
    """Each value's position on the ordered integer line of ``number_format``.

    ``x`` holds values of that format (widened to float32/float64 is fine: the widening is
    exact); a value that is not one is a ValueError. NaN gets an arbitrary position. int32 for
    bf16/f16, int64 for f32 (so that differences of positions never overflow).

    Examples
    --------
    >>> ordered_bits(np.array([0.0, -0.0, 1.0, 1.0078125, -1.0], dtype=np.float32), "bf16")
    array([     0,      0,  16256,  16257, -16256], dtype=int32)
    """
    x = np.asarray(x)
    bits, bad = _bits(x, number_format)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"value {x[where]!r} at position {where} is not a {_NAMES[number_format]} value;"
            " give the history's own number format (or None)"
        )
    # sign-magnitude to two's complement without branches: s is 0 or -1, (m ^ s) - s is m or -m
    if number_format == "f32":
        sign = (bits >> 31).astype(np.int64)
        mag = (bits & 0x7FFFFFFF).astype(np.int64)
    elif number_format == "bf16":
        sign, mag = bits >> 31, (bits & 0x7FFFFFFF) >> 16
    else:  # f16 bits in the low half of an int32
        sign, mag = -((bits >> 15) & 1), bits & 0x7FFF
    return (mag ^ sign) - sign


def first_foreign(x: np.ndarray, number_format: str) -> tuple[int, ...] | None:
    """Position of the first value of ``x`` that is not a ``number_format`` value, or None.

    >>> first_foreign(np.array([[1.0, 1.1]], dtype=np.float32), "bf16")
    (0, 1)
    """
    _, bad = _bits(np.asarray(x), number_format)
    return tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None


def _bits(x: np.ndarray, number_format: str) -> tuple[np.ndarray, np.ndarray]:
    # (bit patterns as int32: bf16 and f32 as their float32 patterns, f16 in the low half;
    # values that are not of the format, NaN never)
    if number_format in ("bf16", "f32"):
        f32 = np.ascontiguousarray(x, dtype=np.float32)
        bits = f32.view(np.int32)
        bad = (bits & 0xFFFF) != 0 if number_format == "bf16" else f32 != x if x.dtype != np.float32 else None
    elif number_format == "f16":
        half = x.astype(np.float16)
        bad, bits = half != x, half.view(np.int16).astype(np.int32) & 0xFFFF
    else:
        raise ValueError(f"number_format={number_format!r}: choose one of {list(NUMBER_FORMATS)}")
    if bad is None:
        return bits, np.zeros(x.shape, dtype=bool)
    return bits, bad & ~np.isnan(x)


def movement_block(cur: np.ndarray, prev: np.ndarray, number_format: str | None = None) -> np.ndarray:
    """Distances between ``cur[s, t]`` and ``prev[s, t]`` for every step and token.

    Parameters
    ----------
    cur, prev : ndarray, shape (step, token, dim), float
        The same shape. Values are widened to float64 before any arithmetic.
    number_format : {"bf16", "f16", "f32"} or None
        Format of the values for ``chebyshev_ulp``; None leaves it 0.

    Returns
    -------
    ndarray, shape (step, token), :data:`MOVEMENT_RECORD`
        ``euclidean``, ``chebyshev``, ``manhattan`` (float64, NaN where a coordinate is
        NaN), ``chebyshev_ulp`` (representable steps, the largest over dims; the format's
        largest unsigned value where a coordinate is NaN) and ``changed`` (dims whose values
        differ as numbers: ``-0.0 == +0.0``; NaN counts as changed).

    Examples
    --------
    >>> a = np.array([[[1.0, 2.0, 0.0]]], dtype=np.float32)
    >>> b = np.array([[[1.0, 2.015625, -0.0]]], dtype=np.float32)
    >>> r = movement_block(b, a, "bf16")
    >>> float(r["chebyshev"][0, 0]), int(r["chebyshev_ulp"][0, 0]), int(r["changed"][0, 0])
    (0.015625, 1, 1)
    """
    cur, prev = np.asarray(cur), np.asarray(prev)
    if cur.shape != prev.shape or cur.ndim != 3:
        raise ValueError(f"expected two (step, token, dim) blocks of one shape, got {cur.shape} and {prev.shape}")
    a, b = cur.astype(np.float64), prev.astype(np.float64)
    diff = np.abs(a - b)
    out = np.empty(cur.shape[:2], dtype=MOVEMENT_RECORD)
    out["euclidean"] = np.sqrt(np.einsum("svd,svd->sv", diff, diff))
    out["chebyshev"] = diff.max(axis=2)  # NaN propagates
    out["manhattan"] = diff.sum(axis=2)
    out["changed"] = (a != b).sum(axis=2)
    if number_format is None:
        out["chebyshev_ulp"] = 0
    else:
        steps = np.abs(ordered_bits(cur, number_format) - ordered_bits(prev, number_format))
        ulp = steps.max(axis=2, initial=0)
        nan = np.isnan(diff).any(axis=2)
        out["chebyshev_ulp"] = np.where(nan, np.iinfo(ULP_DTYPES[number_format]).max, ulp)
    return out


def movement_summary(rec: np.ndarray) -> np.ndarray:
    """Per-step summary of a (step, token) :data:`MOVEMENT_RECORD` block over its tokens.

    Returns
    -------
    ndarray, shape (step, 8), float64
        Columns: max and mean of ``euclidean``, ``chebyshev``, ``manhattan`` (NaN if any
        token's is NaN), the largest ``chebyshev_ulp``, and the number of tokens with a
        changed dim.

    Examples
    --------
    >>> rec = movement_block(np.zeros((1, 2, 2)), np.array([[[0.0, 0.0], [3.0, 4.0]]]))
    >>> movement_summary(rec)[0].tolist()
    [5.0, 2.5, 4.0, 2.0, 7.0, 3.5, 0.0, 1.0]
    """
    cols = []
    for name in ("euclidean", "chebyshev", "manhattan"):
        values = rec[name]
        cols += [values.max(axis=1), values.mean(axis=1)]
    cols.append(rec["chebyshev_ulp"].max(axis=1).astype(np.float64))
    cols.append((rec["changed"] > 0).sum(axis=1).astype(np.float64))
    return np.stack(cols, axis=1)


#: The columns of :func:`movement_summary`, in order.
SUMMARY_COLUMNS = (
    "euclidean_max",
    "euclidean_mean",
    "chebyshev_max",
    "chebyshev_mean",
    "manhattan_max",
    "manhattan_mean",
    "chebyshev_ulp_max",
    "changed_tokens",
)
