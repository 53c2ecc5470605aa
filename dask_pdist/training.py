"""Follow a Hugging Face Trainer run from inside it: :class:`DistancesCallback` appends the
distances of each checkpoint Trainer saves to a store (``pip install "dask_pdist[hf]"``).

The append runs in a background thread, so a save blocks training only for the time to start
it; saves that come while an append runs are taken by one more append after it (each append
takes every complete checkpoint there is). At the end of training the callback waits for the
last append, so the store is complete when ``trainer.train()`` returns. Only the main process
(world process zero) writes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # the optional extra
    raise ImportError(
        'dask_pdist.training needs transformers: pip install "dask_pdist[hf]" (or pip install transformers)'
    ) from exc

from dask_pdist.conventions import METRICS
from dask_pdist.errors import SkippedCheckpointWarning, StoreError
from dask_pdist.graphs.dataset import pairwise_distances
from dask_pdist.io.history import open_history
from dask_pdist.store.guards import stop_job
from dask_pdist.store.job import Job
from dask_pdist.store.writer import to_zarr

__all__ = ["DistancesCallback"]


class _CheckpointDeleted(StoreError):
    """A checkpoint deleted (by Trainer's rotation) while its distances were appended."""


class DistancesCallback(TrainerCallback):
    """A ``TrainerCallback`` that appends each saved checkpoint's distances to ``store``.

    Parameters
    ----------
    store : path-like or URL
        The distance store; created at the first save (one step per chunk, so that appends
        never rewrite a chunk), then grown as ``dask-pdist compute RUN_DIR -o STORE --append``
        grows it: the result equals a one-shot compute of the run folder, bit for bit.
    key : str, optional
        The embedding matrix; default from the checkpoint's config.json (see ``open_history``).
    metrics, dtype, compressor
        As for :func:`pairwise_distances` and :func:`to_zarr`.

    Attributes
    ----------
    error : Exception or None
        Why the last append failed (it is raised again by :meth:`wait` and at the end of
        training); training itself is never interrupted by it.

    Notes
    -----
    Checkpoints deleted by ``save_total_limit`` are no trouble: a stored step whose
    checkpoint is gone keeps its distances, and an append that meets a checkpoint deleted
    while it was read continues at the next save from the checkpoints kept.

    Examples
    --------
    >>> trainer = Trainer(model, args, train_dataset=data,
    ...                   callbacks=[DistancesCallback("distances.zarr")])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        key: str | None = None,
        metrics: Sequence[str] = METRICS,
        dtype: str = "float32",
        compressor: str | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.metrics = tuple(metrics)
        self.dtype = dtype
        self.compressor = compressor
        self.error: Exception | None = None
        self.appends = 0
        self._run_dir: str | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._pending = False
        self._thread: threading.Thread | None = None

    def append(self, run_dir: str | os.PathLike[str]) -> None:
        """Append the complete checkpoints of ``run_dir`` not yet in the store, now."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SkippedCheckpointWarning)  # being saved: the next save takes it
                history = open_history(run_dir, key=self.key, chunks=1)
            ds = pairwise_distances(history, metrics=self.metrics, dtype=self.dtype)  # type: ignore[arg-type]
            # run as compute --append runs it: the grown store is not opened (to_zarr would return it)
            job = to_zarr(ds, self.store, append=True, compressor=self.compressor, compute=False)  # type: ignore[arg-type]
            Job(job, desc="appending", on_stop=lambda exc: stop_job(self.store, exc)).execute(progress=False)
        except FileNotFoundError as exc:  # Trainer deleted a checkpoint while it was read
            raise _CheckpointDeleted(
                f"{self.store}: a checkpoint of {run_dir} was deleted while its distances were appended ({exc});"
                " with save_total_limit Trainer deletes old checkpoints: the next save's append continues"
                " from the checkpoints kept (a stored step whose checkpoint is gone keeps its distances)"
            ) from exc
        self.appends += 1

    def wait(self) -> None:
        """Wait for the running append (and the one queued after it); raise its error, if any."""
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                break
            thread.join()
            with self._lock:
                if self._thread is thread:
                    self._thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _work(self) -> None:
        while True:
            try:
                assert self._run_dir is not None
                self.append(self._run_dir)
                if isinstance(self.error, _CheckpointDeleted):
                    self.error = None  # this append caught up: the deletion cost nothing
            except Exception as exc:  # reported by wait(), never stops training
                if not isinstance(exc, _CheckpointDeleted) and str(exc) != str(self.error):
                    # said now, once per error, not only when training ends hours later
                    with contextlib.suppress(Exception):  # (-W error: the worker must go on)
                        warnings.warn(
                            f"dask_pdist: appending to {self.store} failed: {exc} (training goes on; the error is"
                            " raised when training ends)",
                            RuntimeWarning,
                            stacklevel=1,
                        )
                self.error = exc
            with self._lock:
                if not self._pending:
                    self._busy = False
                    return
                self._pending = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start an append in the background (or queue one after the running append)."""
        if not state.is_world_process_zero:
            return
        self._run_dir = str(args.output_dir)
        with self._lock:
            if self._busy:
                self._pending = True
                return
            self._busy = True
            self._thread = threading.Thread(target=self._work, name="dask-pdist-append")
            self._thread.start()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Wait for the last append: the store is complete when training returns."""
        if state.is_world_process_zero:
            self.wait()
