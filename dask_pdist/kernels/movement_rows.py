"""The one-pass movement kernel (numba): what :func:`~dask_pdist.kernels.movement.movement_block`
and :func:`~dask_pdist.kernels.movement.movement_summary` compute with numpy in ~10 passes over
float64 copies, here in one pass over the input, written straight into the stored dtypes, so
movement runs near the speed of reading the history.

The input is float32, or the bf16 bit patterns as stored (uint16): each pattern is widened to
its float32 value in registers (the pattern in the high half, exact), so a bf16 history needs no
float32 copy, and with ``check_finite`` the kernel finds the rows holding a NaN or an infinity
in the same pass (from the sum of squares: finite bf16 values never overflow it), which saves
the reader's separate finiteness pass.

The same arithmetic as the numpy version: every value widened to float64, each stored value
rounded once. The row reductions over dims (sum of squares, sum of absolute differences) may be
summed in any order (``fastmath={"reassoc"}``: SIMD lanes, ~4x faster; the sums are of
nonnegative terms, so the order moves a float64 result by a few units of its last place, far
below one float32 unit); the maximum is exact in any order and is taken on the float64 bit
patterns of the nonnegative differences (an integer maximum, which vectorises; a float maximum
with NaN does not). Positions on the format's ordered line come from the bit patterns
(bf16: the high 16 bits of a float32, or the stored pattern itself; f32: all 32), as
:func:`~dask_pdist.kernels.movement.ordered_bits` defines them. The per-step summaries (max and
mean over tokens) come from the same pass.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from dask_pdist.kernels._jit import numba

__all__ = ["FORMAT_CODES", "movement_rows"]

#: Format codes of the kernel: no ulp, bf16, f32.
FORMAT_CODES = {None: 0, "bf16": 1, "f32": 2}


@intrinsic
def _f64_bits(typingctx, x):  # noqa: ANN001, ANN202, ARG001
    # a float64's bit pattern as an int64 (ordered like the value for values >= 0)
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, x):  # noqa: ANN001, ANN202, ARG001
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bf16_f32(typingctx, x):  # noqa: ANN001, ANN202, ARG001
    # a bf16 bit pattern (uint16) as the float32 it widens to: the pattern in the high half
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


def _make_rows(fmt: int, raw: bool):  # noqa: ANN202
    # one kernel per format and input: fmt and raw are constants of the closure, so their
    # branches leave the inner loop at compile time (a runtime branch there kept the loop from
    # vectorising). raw: cur and prev are bf16 bit patterns (uint16), widened in registers
    @numba.njit(nogil=True, cache=True, fastmath={"reassoc"}, error_model="numpy")
    def _rows(cur, prev, cbits, pbits, nan_ulp, check, euc, cheb, man, ulp, changed, summ):
        # returns (step, token) of the first row holding a value that is not of the format
        # (bf16: low 16 bits set; the caller finds which), or with raw and check, of the first
        # row holding a NaN or an infinity, else (-1, -1)
        nstep, ntok, ndim = cur.shape
        for s in range(nstep):
            emax = 0.0
            esum = 0.0
            cmax = 0.0
            csum = 0.0
            mmax = 0.0
            msum = 0.0
            umax = 0
            moved = 0
            snan = False
            for t in range(ntok):
                sq = 0.0
                ab = 0.0
                mx = np.int64(0)
                ch = 0
                far = np.int64(0)
                low = np.int32(0)
                for d in range(ndim):
                    if raw:
                        fa = _bf16_f32(cur[s, t, d])
                        fb = _bf16_f32(prev[s, t, d])
                    else:
                        fa = cur[s, t, d]
                        fb = prev[s, t, d]
                    a = np.float64(fa)
                    b = np.float64(fb)
                    diff = abs(a - b)
                    sq += diff * diff
                    ab += diff
                    ch += fa != fb  # True for NaN too; -0.0 == +0.0
                    m = _f64_bits(diff)
                    mx = m if m > mx else mx
                    if raw and fmt == 1:  # bf16 places from the 16 bits: int32 (differences fit)
                        ua = np.int32(cur[s, t, d])
                        ub = np.int32(prev[s, t, d])
                        sa = -(ua >> np.int32(15))
                        sb = -(ub >> np.int32(15))
                        ma = ua & np.int32(0x7FFF)
                        mb = ub & np.int32(0x7FFF)
                        k = np.int64(abs(((ma ^ sa) - sa) - ((mb ^ sb) - sb)))
                        far = k if k > far else far
                    elif raw and fmt == 2:  # f32 places of the widened values: int64
                        ua64 = np.int64(cur[s, t, d])
                        ub64 = np.int64(prev[s, t, d])
                        sa64 = -(ua64 >> 15)
                        sb64 = -(ub64 >> 15)
                        ma64 = (ua64 & 0x7FFF) << 16
                        mb64 = (ub64 & 0x7FFF) << 16
                        k = abs(((ma64 ^ sa64) - sa64) - ((mb64 ^ sb64) - sb64))
                        far = k if k > far else far
                    elif fmt == 1:  # bf16: int32 places (differences fit), low bits must be 0
                        ca = cbits[s, t, d]
                        cb = pbits[s, t, d]
                        low |= (ca | cb) & np.int32(0xFFFF)
                        sa = ca >> np.int32(31)
                        sb = cb >> np.int32(31)
                        ma = (ca & np.int32(0x7FFFFFFF)) >> np.int32(16)
                        mb = (cb & np.int32(0x7FFFFFFF)) >> np.int32(16)
                        k = np.int64(abs(((ma ^ sa) - sa) - ((mb ^ sb) - sb)))
                        far = k if k > far else far
                    elif fmt == 2:  # f32: int64 places
                        ca64 = np.int64(cbits[s, t, d])
                        cb64 = np.int64(pbits[s, t, d])
                        sa64 = ca64 >> 63
                        sb64 = cb64 >> 63
                        ma64 = ca64 & 0x7FFFFFFF
                        mb64 = cb64 & 0x7FFFFFFF
                        k = abs(((ma64 ^ sa64) - sa64) - ((mb64 ^ sb64) - sb64))
                        far = k if k > far else far
                nan = sq != sq  # a NaN difference (NaN input, or inf - inf) makes the sum NaN
                if raw and check and not np.isfinite(sq):  # finite inputs: |diff|^2 <= 2^258
                    return s, t
                if not raw and low != 0 and _foreign_in_row(cur, prev, cbits, pbits, s, t):
                    return s, t
                e = np.sqrt(sq)
                c = np.nan if nan else _bits_f64(mx)
                u = nan_ulp if nan else far
                euc[s, t] = e
                cheb[s, t] = c
                man[s, t] = ab
                ulp[s, t] = u
                changed[s, t] = ch
                snan |= nan
                emax = max(emax, e)
                cmax = max(cmax, c)
                mmax = max(mmax, ab)
                esum += e
                csum += c
                msum += ab
                umax = max(umax, u)
                moved += ch > 0
            summ[s, 0] = np.nan if snan else emax
            summ[s, 1] = esum / ntok
            summ[s, 2] = np.nan if snan else cmax
            summ[s, 3] = csum / ntok
            summ[s, 4] = np.nan if snan else mmax
            summ[s, 5] = msum / ntok
            summ[s, 6] = umax
            summ[s, 7] = moved
        return -1, -1

    return _rows


_KERNELS = {(code, raw): _make_rows(code, raw) for code in (0, 1, 2) for raw in (False, True)}


@numba.njit(nogil=True, cache=True)
def _foreign_in_row(cur, prev, cbits, pbits, s, t):
    # a value with low bits set that is not NaN (a widened NaN may carry any payload)
    for d in range(cur.shape[2]):
        if (cbits[s, t, d] & 0xFFFF) != 0 and cur[s, t, d] == cur[s, t, d]:
            return True
        if (pbits[s, t, d] & 0xFFFF) != 0 and prev[s, t, d] == prev[s, t, d]:
            return True
    return False


def movement_rows(
    cur: np.ndarray,
    prev: np.ndarray,
    number_format: str | None,
    outs: dict[str, np.ndarray],
    summary: np.ndarray,
    *,
    check_finite: bool = False,
) -> tuple[int, int] | None:
    """Write the distances between ``cur[s, t]`` and ``prev[s, t]`` into ``outs`` and their
    per-step summary into ``summary``; return ``(step, token)`` of the first row holding a value
    that is not of ``number_format``, or (bf16 bit patterns with ``check_finite``) a NaN or an
    infinity (then the outputs are incomplete), else None.

    ``cur``, ``prev``: shape (step, token, dim), float32, or uint16 holding bf16 bit patterns
    (widened in registers, exactly: no float32 copy; every bf16 value is of every format).
    ``number_format``: None, "bf16" or "f32" (f16 takes the numpy path). ``outs``: (step,
    token) arrays ``euclidean``, ``chebyshev``, ``manhattan`` (float32 or float64),
    ``chebyshev_ulp``, ``changed`` (unsigned); ``summary``: (step, 8) float64, the columns of
    :data:`~dask_pdist.kernels.movement.SUMMARY_COLUMNS` (means over tokens).

    >>> a = np.array([[[1.0, 2.0, 0.0]]], dtype=np.float32)
    >>> b = np.array([[[1.0, 2.015625, -0.0]]], dtype=np.float32)
    >>> names = ("euclidean", "chebyshev", "manhattan", "chebyshev_ulp", "changed")
    >>> outs = dict(zip(names, [np.empty((1, 1), t) for t in "f4 f4 f4 u2 u1".split()]))
    >>> movement_rows(b, a, "bf16", outs, np.empty((1, 8)))
    >>> float(outs["chebyshev"][0, 0]), int(outs["chebyshev_ulp"][0, 0]), int(outs["changed"][0, 0])
    (0.015625, 1, 1)
    >>> bits = lambda x: (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 values' patterns
    >>> movement_rows(bits(b), bits(a), "bf16", outs, np.empty((1, 8)))
    >>> int(outs["chebyshev_ulp"][0, 0]), int(outs["changed"][0, 0])
    (1, 1)
    """
    raw = np.asarray(cur).dtype == np.uint16
    dtype = np.uint16 if raw else np.float32
    cur = np.ascontiguousarray(cur, dtype=dtype)
    prev = np.ascontiguousarray(prev, dtype=dtype)
    if cur.shape[0] == 0:
        return None
    nan_ulp = np.iinfo(outs["chebyshev_ulp"].dtype).max if number_format else 0
    cbits, pbits = (cur, prev) if raw else (cur.view(np.int32), prev.view(np.int32))
    s, t = _KERNELS[FORMAT_CODES[number_format], raw](
        cur, prev, cbits, pbits, nan_ulp, check_finite,
        outs["euclidean"], outs["chebyshev"], outs["manhattan"], outs["chebyshev_ulp"], outs["changed"], summary,
    )  # fmt: skip
    return None if s < 0 else (int(s), int(t))
