"""The one-pass movement kernel (numba): what :func:`~dask_pdist.kernels.movement.movement_block`
computes with numpy in ~10 passes over float64 copies, here in one pass over the float32
input, so movement runs near the speed of reading the history.

The same arithmetic as the numpy version: every value widened to float64, each row reduced
over dims in order (sum of squares, sum of absolute differences, maximum), each stored value
rounded once. Positions on the format's ordered line come from the float32 bit patterns
(bf16: the high 16 bits; f32: all 32), as :func:`~dask_pdist.kernels.movement.ordered_bits`
defines them.
"""

from __future__ import annotations

import numpy as np

from dask_pdist.kernels._jit import numba

__all__ = ["movement_rows"]

#: Format codes of the kernel: no ulp, bf16, f32.
FORMAT_CODES = {None: 0, "bf16": 1, "f32": 2}


@numba.njit(nogil=True, cache=True, inline="always")
def _place(bits, fmt):
    # sign-magnitude bits -> a place on the ordered integer line (+0 and -0 both 0)
    if fmt == 1:
        mag = np.int64((bits & 0x7FFFFFFF) >> 16)
    else:
        mag = np.int64(bits & 0x7FFFFFFF)
    return -mag if bits < 0 else mag


@numba.njit(nogil=True, cache=True)
def _rows(cur, prev, cbits, pbits, fmt, nan_ulp, euc, cheb, man, ulp, changed):
    # returns (step, token, dim, 0 = cur / 1 = prev) of the first value that is not of the
    # format (bf16: low 16 bits set), else (-1, -1, -1, -1)
    nstep, ntok, ndim = cur.shape
    for s in range(nstep):
        for t in range(ntok):
            sq = 0.0
            ab = 0.0
            mx = 0.0
            nan = False
            ch = 0
            far = 0
            for d in range(ndim):
                a = np.float64(cur[s, t, d])
                b = np.float64(prev[s, t, d])
                diff = abs(a - b)
                if diff != diff:
                    nan = True
                sq += diff * diff
                ab += diff
                mx = max(mx, diff)
                if a != b or a != a:
                    ch += 1
                if fmt != 0:
                    ca = cbits[s, t, d]
                    cb = pbits[s, t, d]
                    if fmt == 1:
                        if (ca & 0xFFFF) != 0 and a == a:
                            return s, t, d, 0
                        if (cb & 0xFFFF) != 0 and b == b:
                            return s, t, d, 1
                    k = abs(_place(ca, fmt) - _place(cb, fmt))
                    far = max(far, k)
            euc[s, t] = np.sqrt(sq)
            cheb[s, t] = np.nan if nan else mx
            man[s, t] = ab
            ulp[s, t] = nan_ulp if nan else far
            changed[s, t] = ch
    return -1, -1, -1, -1


def movement_rows(cur: np.ndarray, prev: np.ndarray, number_format: str | None, record: np.dtype) -> tuple:
    """``record``-typed (step, token) results of two float32 blocks, and where the first value
    that is not of ``number_format`` is (None if every value is). ``number_format``: None,
    "bf16" or "f32" (others take the numpy path).

    >>> from dask_pdist.kernels.movement import MOVEMENT_RECORD
    >>> a = np.array([[[1.0, 2.0, 0.0]]], dtype=np.float32)
    >>> b = np.array([[[1.0, 2.015625, -0.0]]], dtype=np.float32)
    >>> out, bad = movement_rows(b, a, "bf16", MOVEMENT_RECORD)
    >>> float(out["chebyshev"][0, 0]), int(out["chebyshev_ulp"][0, 0]), int(out["changed"][0, 0]), bad
    (0.015625, 1, 1, None)
    """
    cur = np.ascontiguousarray(cur, dtype=np.float32)
    prev = np.ascontiguousarray(prev, dtype=np.float32)
    shape = cur.shape[:2]
    euc, cheb, man = (np.empty(shape) for _ in range(3))
    ulp = np.empty(shape, dtype=np.int64)
    changed = np.empty(shape, dtype=np.int64)
    from dask_pdist.kernels.movement import ULP_DTYPES

    nan_ulp = np.iinfo(ULP_DTYPES[number_format]).max if number_format else 0
    where = _rows(
        cur, prev, cur.view(np.int32), prev.view(np.int32), FORMAT_CODES[number_format], nan_ulp,
        euc, cheb, man, ulp, changed,
    )  # fmt: skip
    out = np.empty(shape, dtype=record)
    out["euclidean"], out["chebyshev"], out["manhattan"] = euc, cheb, man
    out["chebyshev_ulp"], out["changed"] = ulp, changed
    return out, (None if where[0] < 0 else where)
