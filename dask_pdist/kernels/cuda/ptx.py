"""Compile every CUDA kernel to PTX and count its fused multiply-adds: the exactness check a
machine without a GPU can run too (it needs the CUDA compiler, ``dask_pdist[cuda]``, not a
driver).

The CUDA results equal the CPU's bit for bit only if no product and sum of a pair's reduction
are fused into one FMA (:mod:`.device`). The kernels use the ``.rn`` intrinsics, which neither
NVVM nor ptxas contracts; this compiles them for a compute capability and returns, per kernel,
the floating-point instructions it holds, so a test or the GPU benchmark can assert that no
``fma`` is among them.
"""

from __future__ import annotations

import re

from dask_pdist.kernels.cuda import clusters, device, distances, knn
from dask_pdist.kernels.cuda.device import cuda

__all__ = ["float_ops"]


def _signatures() -> dict[str, tuple]:
    from numba import types as t

    out = {}
    for name, nt in (("float32", t.float32), ("float64", t.float64)):
        a3, o3 = nt[:, :, ::1], nt[:, :, :]
        out[f"pairs {name}"] = (distances.pair_kernel(name), (a3, a3, o3, o3, nt, t.int64[::1]))
        out[f"top-k {name}"] = (knn.select_kernel(name, 10, 32), (nt[:, :], t.int64, t.int64[:, :], nt[:, :]))
    out["pair list"] = (clusters._edges, (t.float32[:, :], t.int64, t.float64, t.int64[::1], t.int32[:, ::1]))
    out["widen bf16"] = (device._widen_bf16, (t.uint16[::1], t.float32[::1]))
    out["widen f16"] = (device._widen_f16, (t.float16[::1], t.float32[::1]))
    return out


def float_ops(cc: tuple[int, int] = (9, 0)) -> dict[str, dict[str, int]]:
    """Per kernel, the count of each floating-point PTX instruction (``fma.rn.f32``, ``add.rn.f32``, ...).

    Compiles for compute capability ``cc`` without a GPU: numba-cuda asks the current device
    its compute capability when it compiles a device function, so the question is answered
    here with ``cc`` for the duration of the call.

    Examples
    --------
    >>> ops = float_ops((9, 0))  # doctest: +SKIP
    >>> [name for name, o in ops.items() if any(op.startswith("fma") for op in o)]  # doctest: +SKIP
    []
    """
    import numba.cuda.dispatcher as dispatcher

    class _Device:
        compute_capability = cc

    asked = dispatcher.get_current_device
    dispatcher.get_current_device = _Device
    try:
        out = {}
        for name, (kernel, sig) in _signatures().items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            ops: dict[str, int] = {}
            for op in re.findall(r"\b((?:fma|mad|mul|add|sub|div|sqrt)\.[a-z.]*f(?:16|32|64))\b", ptx):
                ops[op] = ops.get(op, 0) + 1
            out[name] = ops
        return out
    finally:
        dispatcher.get_current_device = asked
