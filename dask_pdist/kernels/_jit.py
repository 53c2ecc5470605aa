"""numba, with its kernel cache in the user's cache folder; every compiled kernel imports it
from here, so only computing (never reading a store) loads the compiler.

numba's ``cache=True`` writes next to the source file by default, i.e. into site-packages,
which may be read-only, and a leftover ``dask_pdist/__pycache__`` there imports as an empty
namespace package once ``pip install -e`` replaces the package. So the cache goes to a user
cache folder. It is set in numba's own config, not in ``os.environ``: importing this package
does not change the caller's environment. Each kernel's cache location is fixed when it is
decorated, so this module runs before any ``@numba.njit(cache=True)``; a ``NUMBA_CACHE_DIR``
the user set wins.

As the program (:mod:`dask_pdist._program`), numba's ``numba.np.arraymath`` is imported here,
with ``scipy.linalg.cython_blas`` hidden: numba loads that module when it loads its first
kernel, and it imports scipy's BLAS only to check that one is there (``_HAVE_BLAS``, which picks
how ``np.correlate``/``np.convolve`` run in compiled code), i.e. all of ``scipy.linalg``: ~0.1 s
of every computing command's start-up on the 2-core development machine (docs/performance.md).
No kernel here calls BLAS from compiled code (``np.dot`` in a kernel would still compile:
numba's ``ensure_blas`` imports scipy's BLAS when it is first needed). Only where this module
is first imported in the main thread (planning a graph); where a dask task imports it first
(e.g. ``kernels/cluster_edges.py``), numba is imported as usual.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

import numba

from dask_pdist._program import PROGRAM, hidden

__all__ = ["numba", "user_cache_dir"]


def user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/dask_pdist/numba`` (``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%``
    on Windows), created; a per-user temp folder where there is no writable home."""
    try:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = str(Path.home() / "Library" / "Caches")
        else:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "dask_pdist" / "numba"
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # no (writable) home, as in some containers
        path = Path(tempfile.gettempdir()) / f"dask_pdist-numba-{os.getuid() if hasattr(os, 'getuid') else 0}"
    return str(path)


if not numba.config.CACHE_DIR:  # empty unless the user set NUMBA_CACHE_DIR
    numba.config.CACHE_DIR = user_cache_dir()

if PROGRAM["lean"] and threading.current_thread() is threading.main_thread():
    with hidden(("scipy.linalg.cython_blas",)):
        import numba.np.arraymath  # noqa: F401
