"""What ``dask-pdist`` changes in its own process, and only as the program: :func:`dask_pdist.cli.main`
reading ``sys.argv``. A Python caller's process (``main(argv)``, the library) is left as it is.

- ``PROGRAM["settle"]``: freeze the heap once before a job (:func:`dask_pdist.cli.common.settle_heap`).
- ``PROGRAM["lean"]``: import dask.array (:mod:`dask_pdist.cli.imports`) and numba
  (:mod:`dask_pdist.kernels._jit`) without the optional modules they load at import and the
  program never uses, each hidden with :func:`hidden` for that one import.

This module imports nothing heavy: the kernels read it before numba loads its first kernel.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PROGRAM", "hidden"]

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
