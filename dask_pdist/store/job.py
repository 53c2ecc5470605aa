"""The job runner: every computation that writes or reports runs through one :class:`Job`.

As rechunker does: a job is *planned* first (a dask collection, nothing computed; the library
functions return it with ``compute=False``), then :meth:`Job.execute` runs it. Execution is
written once here, for ``to_zarr``, ``to_safetensors``, clusters, neighbours, runs and the
CLI:

- **scheduler**: a dask.distributed scheduler at an address (the CLI's ``--scheduler``), else
  the one dask is configured with, else the local threaded scheduler, passed as a function
  (:func:`local_scheduler`: dask's look-up of a scheduler by name imports dask.distributed,
  0.2-0.5 s, whenever it is installed, just to find no client);
- **progress**: one bar (:func:`progress_bar`: tqdm on stderr, counting tasks; a failed run
  clears it so that the error is the last line); under a distributed client,
  ``distributed.progress``, since dask's local callbacks see nothing there;
- **stop**: on any exception, KeyboardInterrupt (Ctrl-C, and SIGTERM in the CLI) included, the
  job's ``on_stop`` records why it stopped (for a distance store :func:`stop_job`: the lock
  released, a stop caused by the input noted in the store) before the exception propagates.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Job", "progress_bar", "local_scheduler", "local_compute", "interactive"]


def interactive() -> bool:
    """A person is watching: stderr is a terminal, or this runs in a Jupyter kernel (whose
    stderr is not a tty)."""
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def local_scheduler() -> dict[str, Any]:
    """``dask.compute`` keywords for this process: the threaded scheduler itself when no
    scheduler is configured and dask.distributed was never imported (so no client can exist),
    else nothing (dask's own choice, a client included)."""
    import dask

    if dask.config.get("scheduler", None) is None and "distributed" not in sys.modules:
        from dask.threaded import get

        return {"scheduler": get}
    return {}


@contextlib.contextmanager
def local_compute() -> Iterator[dict[str, Any]]:
    """``dask.compute`` keywords for this process (:func:`local_scheduler`); with the threaded
    scheduler, a thread pool of the computation's own, and the block ends only when every task
    it started has ended. dask raises a failed task's error at once while the tasks running
    beside it go on: a writer that discards its partial output then would see them write into
    it again (a failed write left its hidden partial output behind)."""
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    kw = local_scheduler()
    # dask's choice (a client, a configured scheduler or pool) is kept unless it is threads too
    if dask.config.get("pool", None) is not None or (kw == {} and get_scheduler() not in (None, dask.threaded.get)):
        yield kw
        return
    from concurrent.futures import ThreadPoolExecutor

    from dask.system import CPU_COUNT

    executor = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = executor(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        yield {"scheduler": dask.threaded.get, "pool": pool}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _one_task(work: Any) -> bool:
    # a dask.delayed whose graph is one task (its own)
    graph = getattr(work, "dask", None)
    return graph is not None and hasattr(work, "key") and len(graph) == 1


def progress_bar(desc: str, **tqdm_kwargs: Any) -> Any:
    """The one dask progress bar: tqdm on stderr, one tick per task. A failed run clears its
    bar, so the error is the one line left on stderr. ``tqdm_kwargs``: e.g. ``delay=1.0``
    (show only after a second), ``disable=None`` (only on a terminal)."""
    from tqdm.dask import TqdmCallback

    class _Bar(TqdmCallback):
        def _finish(self, dsk: Any, state: Any, failed: Any) -> None:
            if failed:
                self.pbar.leave = False
            self.pbar.close()

    return _Bar(desc=desc, unit="task", file=sys.stderr, **tqdm_kwargs)


class Job:
    """A planned computation and what to do when it stops.

    Parameters
    ----------
    work : dask collection
        What to compute: anything with dask's ``compute()`` (a ``dask.delayed``, a dask
        array, an xarray object).
    desc : str
        The progress bar's label.
    on_stop : callable, optional
        ``on_stop(exc)`` is called with the exception that stopped the job (before it
        propagates) and returns what to add to the error message, or "".
    bar : dict, optional
        Keywords of :func:`progress_bar` (``delay``, ``disable``).

    Examples
    --------
    >>> import dask
    >>> Job(dask.delayed(sum)([1, 2, 3]), desc="adding").execute(progress=False)
    6
    """

    def __init__(
        self,
        work: Any,
        *,
        desc: str = "computing",
        on_stop: Callable[[BaseException], str] | None = None,
        bar: dict[str, Any] | None = None,
    ) -> None:
        self.work, self.desc, self.on_stop, self.bar = work, desc, on_stop, dict(bar or {})

    def execute(self, *, scheduler: str | None = None, progress: bool | None = None) -> Any:
        """Run the job; returns the computed result.

        Parameters
        ----------
        scheduler : str, optional
            Address of a dask.distributed scheduler (``tcp://host:8786``); default: this
            process (see :func:`local_scheduler`).
        progress : bool, optional
            Show the progress bar; default: when :func:`interactive`.

        Raises
        ------
        Whatever stopped the job, after ``on_stop`` recorded it. A stop caused by the input
        (``InputError``, ``OverflowError``) is raised again with ``on_stop``'s note appended.
        """
        from dask_pdist.errors import InputError

        show = interactive() if progress is None else progress
        try:
            if scheduler:
                return self._distributed(scheduler, show)
            if not show and _one_task(self.work) and local_scheduler():
                # one task (an append's fast path): run it here, no thread pool to start
                from dask.local import get_sync

                return self.work.compute(scheduler=get_sync)
            with progress_bar(self.desc, **self.bar) if show else contextlib.nullcontext(), local_compute() as kw:
                # the collection's own compute: xarray objects finalize their graphs themselves
                return self.work.compute(**kw)
        except BaseException as exc:
            note = self.on_stop(exc) if self.on_stop is not None else ""
            if note and isinstance(exc, (InputError, OverflowError)):
                raise type(exc)(f"{exc}; {note}") from exc
            raise

    def _distributed(self, address: str, show: bool) -> Any:
        from distributed import Client
        from distributed import progress as dist_progress

        with Client(address) as client:
            future = client.compute(self.work)
            if show:
                dist_progress(future)
                print(file=sys.stderr)
            return future.result()
