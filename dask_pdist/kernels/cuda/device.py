"""What every CUDA kernel shares: the device lock, the memory budget, exact arithmetic, widening.

**Exact arithmetic.** The CPU kernels reduce each pair over the dims in one fixed order with
separately rounded products and sums; the CUDA compiler would fuse ``acc + t * t`` into one
FMA (one rounding instead of two) and change the last bit. The device functions here use the
correctly rounded intrinsics (``__fmul_rn``, ``__fadd_rn`` and their float64 twins), which
are never fused, so a CUDA distance equals the CPU one bit for bit. Under numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, the test suite) the intrinsics are stubs; there the
plain operators are used, which numpy rounds exactly as the intrinsics do.

**One task per GPU.** :func:`gpu_lock` serialises the CUDA work of the threads of one process
(dask's threaded scheduler). Between processes (dask.distributed workers sharing a GPU) use
worker resources, see docs/gpu.md.

**Bounded memory.** Work buffers are planned against :data:`DEVICE_BYTES`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numba import cuda
from numba.cuda import config as _cuda_config

__all__ = [
    "cuda",
    "SIMULATED",
    "DEVICE_BYTES",
    "gpu_lock",
    "arith",
    "to_device_float",
    "rows_per_batch",
]

#: True under numba's CUDA simulator (the test suite), where the rounding intrinsics are stubs.
SIMULATED = bool(_cuda_config.ENABLE_CUDASIM)

#: Device bytes one task's work buffers may hold (the snapshot itself is counted apart).
DEVICE_BYTES = 2 * 2**30

_LOCK = threading.Lock()


@contextmanager
def gpu_lock() -> Iterator[None]:
    """Hold the process's GPU: one task at a time runs CUDA work (and holds device memory).

    numba-cuda's performance warnings (a small grid "will likely result in GPU
    under-utilization") are silenced inside: small blocks are the caller's data, not a fault.
    """
    with _LOCK, warnings.catch_warnings():
        # by message: numba-cuda and numba's built-in CUDA target have different warning classes
        warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
        yield


if SIMULATED:

    @cuda.jit(device=True)
    def _mul(a, b):
        return a * b

    @cuda.jit(device=True)
    def _add(a, b):
        return a + b

    _fmul = _dmul = _mul
    _fadd = _dadd = _add

    @cuda.jit(device=True)
    def _bf16_bits_to_float(bits):
        return np.array(np.uint32(bits) << np.uint32(16), dtype=np.uint32).view(np.float32)[()]

else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _fmul(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def _fadd(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def _dmul(a, b):
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def _dadd(a, b):
        return libdevice.dadd_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def _bf16_bits_to_float(bits):
        # numba widens the shift to int64; the cast back keeps its low 32 bits (the float's)
        return libdevice.int_as_float(np.int32(np.int64(bits) << 16))


def arith(dtype: np.dtype) -> tuple:
    """The (multiply, add) device functions that round like the CPU kernels, for float32 or float64."""
    return (_fmul, _fadd) if np.dtype(dtype) == np.float32 else (_dmul, _dadd)


@cuda.jit
def _widen_bf16(raw, out):
    i = cuda.grid(1)
    if i < raw.size:
        out[i] = _bf16_bits_to_float(raw[i])


@cuda.jit
def _widen_f16(raw, out):
    i = cuda.grid(1)
    if i < raw.size:
        out[i] = np.float32(raw[i])


def to_device_float(x: np.ndarray):  # noqa: ANN201 - a numba DeviceNDArray
    """Copy a block to the device as float32 or float64; bf16 and f16 travel as 2 bytes and
    are widened to float32 on the device (exactly: every bf16/f16 value is a float32).

    Examples
    --------
    >>> import ml_dtypes
    >>> to_device_float(np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)).copy_to_host()  # doctest: +SKIP
    array([ 1.5, -2. ], dtype=float32)
    """
    name = x.dtype.name
    if x.dtype in (np.float32, np.float64):
        return cuda.to_device(np.ascontiguousarray(x))
    if name not in ("bfloat16", "float16"):
        raise TypeError(f"the CUDA kernels take float32, float64, bfloat16 or float16 blocks, got {x.dtype}")
    flat = np.ascontiguousarray(x).ravel()
    raw = cuda.to_device(flat.view(np.uint16) if name == "bfloat16" else flat)
    out = cuda.device_array(x.size, dtype=np.float32)
    threads = 256
    kernel = _widen_bf16 if name == "bfloat16" else _widen_f16
    kernel[(max(1, x.size) + threads - 1) // threads, threads](raw, out)
    return out.reshape(x.shape)


def rows_per_batch(n_columns: int, itemsize: int, budget: int = DEVICE_BYTES) -> int:
    """Rows of a (rows, n_columns) distance buffer that fit the device budget (at least 1).

    >>> rows_per_batch(151_936, 4)
    3533
    """
    return max(1, budget // max(1, n_columns * itemsize))
