"""Which engine runs the kernels: ``"cpu"`` (numba on the host) or ``"cuda"`` (numba-cuda).

The choice is made once per graph, when it is built, so that ``engine="cuda"`` on a machine
without a GPU fails before any store is created. ``"cpu"`` imports nothing of CUDA;
``"auto"`` looks for the ``numba_cuda`` package without importing it, and only where it is
installed asks numba-cuda whether a GPU is visible. The CUDA kernels themselves
(:mod:`dask_pdist.kernels.cuda`) are imported only by a graph that runs on the GPU.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

from dask_pdist.conventions import check_engine
from dask_pdist.errors import EngineError

__all__ = ["resolve_engine", "cuda_missing"]

INSTALL_HINT = 'pip install "dask_pdist[cuda]"'


@functools.lru_cache(maxsize=1)
def cuda_missing() -> str | None:
    """What keeps the CUDA engine from running here (one phrase), or ``None`` when it can run.

    Cached: the answer does not change within a process.
    """
    if importlib.util.find_spec("numba_cuda") is None:
        return f"the CUDA extra (numba-cuda) is not installed: {INSTALL_HINT}"
    from numba import cuda  # numba-cuda provides numba.cuda once installed

    if not cuda.is_available():
        return "no CUDA GPU is visible to numba-cuda (no NVIDIA driver or no device)"
    return None


def resolve_engine(engine: str) -> Literal["cpu", "cuda"]:
    """The engine that will run: ``"cpu"`` or ``"cuda"``, for a requested ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Raises
    ------
    ValueError
        An unknown engine name (the valid ones are listed).
    dask_pdist.errors.EngineError
        ``"cuda"`` where it cannot run; the message says what is missing.

    Examples
    --------
    >>> resolve_engine("cpu")
    'cpu'
    """
    engine = check_engine(engine)
    if engine == "cpu":
        return "cpu"
    missing = cuda_missing()
    if missing is None:
        return "cuda"
    if engine == "auto":
        return "cpu"
    raise EngineError(f"engine='cuda' cannot run here: {missing}; use engine='cpu' or 'auto' (--engine cpu)")
