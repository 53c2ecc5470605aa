"""The command's own import of ``dask.array``, without work it does at import and the command never uses.

When scipy is installed, ``dask.array`` imports ``scipy.sparse`` (in ``chunk_types``, to accept
sparse matrices as chunks) and ``scipy.fftpack`` (in ``fft``, to wrap scipy's FFTs) at its own
import: ~0.1 s of every command's start-up on the 2-core development machine
(docs/performance.md, start-up). The command's chunks are dense numpy arrays and it takes no
FFT. dask offers no switch for either, so the program (never a Python caller, whose process
is left as it is: :func:`dask_pdist.cli.main`) imports ``dask.array`` first, with those two
modules hidden for the duration of that one import (dask treats them as not installed), then
un-hides them: a later ``import scipy.sparse`` works as usual. What stays different in that
process: dask does not count scipy's sparse matrices as chunk types, and ``dask.array.fft``
wraps numpy's FFTs only.

Also for that one import, ``dask.utils.derived_from`` (the decorator that copies and edits
numpy's docstring onto each of ~300 ``dask.array`` functions as they are defined, ~0.06 s here)
keeps each function's own docstring instead: the program never shows them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from dask_pdist._program import hidden

__all__ = ["HIDDEN", "import_dask_array"]

#: modules dask.array imports at its own import time that the command never uses
HIDDEN = ("scipy.sparse", "scipy.fftpack")

F = TypeVar("F")


def _own_doc(*args: object, **kwargs: object) -> Callable[[F], F]:
    # dask.utils.derived_from's signature; the decorated function is returned as it is
    return lambda method: method


def import_dask_array() -> bool:
    """Import ``dask.array`` without ``scipy.sparse``, ``scipy.fftpack`` and its derived docstrings.

    A no-op where ``dask.array`` is already imported. Returns whether this call imported it.

    Examples
    --------
    >>> import sys
    >>> _ = import_dask_array()
    >>> "dask.array" in sys.modules
    True
    """
    if "dask.array" in sys.modules:
        return False
    import dask.utils

    derived_from = getattr(dask.utils, "derived_from", None)
    if derived_from is not None:
        dask.utils.derived_from = _own_doc
    try:
        with hidden(HIDDEN):
            import dask.array  # noqa: F401
    finally:
        if derived_from is not None:
            dask.utils.derived_from = derived_from

    return True
