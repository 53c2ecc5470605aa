"""What ``dask-pdist`` changes in its own process, and only as the program: :func:`dask_pdist.cli.main`
reading ``sys.argv``. A Python caller's process (``main(argv)``, the library) is left as it is.

- ``PROGRAM["settle"]``: freeze the heap once before a job (:func:`dask_pdist.cli.common.settle_heap`).
- :func:`one_malloc_arena`: on glibc, one malloc arena for every thread (the commands that
  compute distances).
- ``PROGRAM["lean"]``: import dask.array (:mod:`dask_pdist.cli.imports`) and numba
  (:mod:`dask_pdist.kernels._jit`) without the optional modules they load at import and the
  program never uses, each hidden with :func:`hidden` for that one import.

This module imports nothing heavy: the kernels read it before numba loads its first kernel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PROGRAM", "hidden", "one_malloc_arena"]

#: Set by the CLI when it runs as the program (not called from Python).
PROGRAM = {"settle": False, "lean": False}


@contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Modules ``names`` count as not installed inside the block: importing one raises
    ``ImportError`` (a name mapped to None in ``sys.modules``; its parent package is not
    imported either), which libraries catch for their optional modules. Only names not already
    imported are hidden, and only their None entries are removed afterwards: a later import
    works as usual. The caller makes sure no other thread imports them meanwhile (it would
    fail): the program calls it in its main thread, before any worker thread starts."""
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def one_malloc_arena() -> bool:
    """On glibc, one malloc arena for every thread (``mallopt(M_ARENA_MAX, 1)``, what
    ``MALLOC_ARENA_MAX=1`` sets). The program calls it for the commands that compute distances
    (``compute``, ``demo``: where it was measured), before any other thread exists. Their
    threads allocate few, large arrays (16 MiB kernel outputs, whole encoded chunks); glibc
    gives each new thread an arena of its own (up to 8 per core), and each arena keeps the
    blocks freed into it, so the peak RSS depended on where blocks landed. Measured with and
    without it (3 alternating runs, 2026-12-05, 2 cores): 269-275 MB against 276-293 MB at
    5001 x 128 x 64, 284-301 MB against 307-315 MB at 20,004 steps, wall time the same within
    noise. No other malloc tunable is set: a low fixed trim threshold
    (``MALLOC_TRIM_THRESHOLD_=65536``: ~255 MB at both sizes) gave ~10x the page faults, slower;
    high fixed thresholds (mmap 32 MiB, trim 256 MiB) gave ~1/4 of the faults at 20,004 steps
    but the same wall time within noise (10 alternating rounds, both orders, 2026-12-05). An
    arena limit the user set (``MALLOC_ARENA_MAX``, or ``arena_max`` in ``GLIBC_TUNABLES``)
    wins. Returns whether mallopt accepted the setting."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False  # musl and others: no mallopt, or another meaning of -8
        import ctypes

        return bool(ctypes.CDLL(None).mallopt(-8, 1))  # M_ARENA_MAX (malloc.h); 1 on success
    except (ValueError, OSError, AttributeError):
        return False
