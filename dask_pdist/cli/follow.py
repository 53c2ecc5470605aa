"""``dask-pdist compute RUN_DIR -o STORE --follow``: compute what is there, then append each
new complete checkpoint as it is saved.

Waiting: file-system events through ``watchfiles`` (a dependency; woken at once), else (it cannot
be imported) a look every second; a run folder on object storage (``s3://bucket/run``, no events
there) is listed every ``POLL`` seconds. A checkpoint being saved (a ``tmp-checkpoint-N`` folder, no
``trainer_state.json`` yet, a file shorter than its header says) is waited for, never read.
Ctrl-C and SIGTERM end the command with exit 0: while waiting at once, during an append once
the append is written (a second one stops the append, which ``--follow`` or ``--resume`` then
finishes). The store is whole and the writer lock released at every exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from dask_pdist.cli.common import CheckpointGone, deleted_while_read
from dask_pdist.cli.signals import interrupt_once
from dask_pdist.errors import InputError

__all__ = ["follow"]

#: Seconds between two listings of a run folder on object storage (no file-system events there).
POLL = 2.0


def _complete_checkpoints(source: str | list[str], storage_options: dict | None = None) -> tuple | None:
    # the complete checkpoints the input has now (None: none yet), as a value that changes
    # when one is added, also when Trainer deletes an old one at the same time (save_total_limit
    # keeps their number constant); the incomplete ones are waited for in silence
    from dask_pdist.io.checkpoints import checkpoint_paths
    from dask_pdist.io.paths import any_url
    from dask_pdist.io.sources import _url_checkpoints

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = _url_checkpoints(source, storage_options) if any_url(source) else checkpoint_paths(source)
            return tuple(str(p) for p in found) or None
        except (InputError, FileNotFoundError):
            return None


def _run_to_be(source: str | list[str]) -> bool:
    # a run folder whose first checkpoint is not saved yet: absent, empty, or holding only what
    # Trainer writes before it (logs, runs/); not a file, nor a folder holding checkpoint files
    if not isinstance(source, str) or source.endswith((".safetensors", ".npy", ".json", ".zarr")):
        return False
    from dask_pdist.io.paths import any_url

    if any_url(source):
        return True  # an empty prefix: listed until checkpoint-N/ objects appear
    folder = Path(source)
    if not folder.exists():
        return True
    if not folder.is_dir() or (folder / "zarr.json").exists():
        return False
    return not any(p.suffix in (".safetensors", ".npy") for p in folder.iterdir())


def _watch_root(source: str | list[str]) -> Path:
    # the folder whose changes announce a new checkpoint: the run folder, or a glob's fixed part
    head = source if isinstance(source, str) else os.path.commonpath([os.path.abspath(p) for p in source])
    for wild in "*?[":
        head = head.split(wild)[0]
    path = Path(head)
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _ticks(root: Path | None, stopping: Callable[[], bool]) -> Iterator[None]:
    # one tick per change in root (at most a second apart): watchfiles when installed, else
    # (and on object storage, root None: no events there) a look every POLL seconds
    try:
        import watchfiles
    except ImportError:
        watchfiles = None
    if root is None:
        watchfiles = None
    if watchfiles is not None:
        # (stop_event: looked at by watchfiles' loop every 50 ms, so a stop needs no exception)
        until = _Until(stopping)
        for _ in watchfiles.watch(root, rust_timeout=1000, yield_on_timeout=True, stop_event=until):
            if stopping():
                return
            yield
        return
    while not stopping():
        wake = time.monotonic() + (POLL if root is None else 1.0)
        while not stopping() and time.monotonic() < wake:
            time.sleep(0.05)
        yield


class _Until:
    # the event watchfiles waits on: set once a stop was asked for
    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.is_set = stopping


class _Stop:
    """SIGINT/SIGTERM while following: at once when waiting; during an append, after it (the
    second signal stops the append itself, or a wait that hangs: a listing of an object store;
    later ones are ignored).

    The first signal only records the stop (the waits look at it every 50 ms): an exception
    raised by a handler can land in a finalizer, which swallows it and prints a traceback
    (``cli/signals.py``)."""

    def __init__(self) -> None:
        self.requested = False
        self.appending = False
        self.forced = False
        self.raised = False  # the second signal's KeyboardInterrupt was raised
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            if self.requested and handler is interrupt_once:
                # stopped: later signals are ignored, also when the second one stopped an
                # append (KeyboardInterrupt): interrupt_once raised again in the clean stop, or
                # Python's shutdown put the default back and a third SIGTERM killed it (-15)
                handler = signal.SIG_IGN
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        if not self.requested:
            self.requested = True
            if self.appending:
                print("dask-pdist: stopping after this append (again to stop it now)", file=sys.stderr, flush=True)
            return
        if self.raised:  # the stop is under way (the append's clean stop): later ones are ignored
            return
        self.raised = True
        self.forced = self.appending
        raise KeyboardInterrupt


def follow(args: argparse.Namespace, source: str | list[str], output: str, compute: Callable[..., bool]) -> int:
    """Compute ``source`` into ``output``, then append each new complete checkpoint until
    ``args.idle_exit`` seconds pass without one (forever without it) or a stop signal.

    ``compute(args, source, output, overwrite, resume, append, brief)`` is the CLI's compute
    (returns False when there was nothing new). Returns the exit code (0). The newest files a
    glob matches may be being written: they are waited for (``io/checkpoints.py: following``)."""
    from dask_pdist.io.checkpoints import following

    with following():
        return _follow(args, source, output, compute)


def _follow(args: argparse.Namespace, source: str | list[str], output: str, compute: Callable[..., bool]) -> int:
    from dask_pdist.io.history import is_checkpoint_spec
    from dask_pdist.io.paths import any_url

    options = getattr(args, "storage_options", None)
    if not is_checkpoint_spec(source, options) and not _run_to_be(source):
        raise InputError(
            f"{source}: --follow watches a run folder (checkpoint-N/ folders) or a quoted glob of checkpoints,"
            " not one history file; to grow a store from a longer history use --append"
        )
    if args.overwrite:
        raise InputError("--follow grows --output; it does not take --overwrite (delete the store to start anew)")
    # a new store: one step per chunk, so an append never rewrites a chunk (an existing store
    # keeps its own chunks; only a --chunk-steps the user gave is checked against them)
    args.new_store_chunk_steps = 1
    idle = getattr(args, "idle_exit", None)
    seen, last_new = None, time.monotonic()
    root = None if any_url(source) else _watch_root(source)
    if _complete_checkpoints(source, options) is None:
        print(f"waiting for the first complete checkpoint in {source}", flush=True)  # the follower's log
    with _Stop() as stop:
        try:
            for _ in _ticks_after_first(root, lambda: stop.requested):
                n = _complete_checkpoints(source, options)
                if stop.requested:
                    break
                if n is not None and (seen is None or set(n) - set(seen)):  # a checkpoint not seen before
                    stop.appending = True
                    try:
                        _append_kept(args, source, output, compute)
                    finally:
                        stop.appending = False
                    seen, last_new = n, time.monotonic()
                if stop.requested:
                    break
                if idle is not None and time.monotonic() - last_new >= idle:
                    print(f"dask-pdist: no new checkpoint for {idle:g} s: done", file=sys.stderr)
                    break
        except KeyboardInterrupt:
            if stop.forced:
                raise  # the second signal, mid-append: the CLI's interrupted-job path
    if stop.requested and getattr(args, "as_program", False):
        # stopped by a signal, as the program: later ones are ignored until it has exited
        # (Python's shutdown sets its own handlers back to the default: a second SIGTERM
        # then killed it, exit 143, instead of the clean exit 0)
        with contextlib.suppress(ValueError):  # (not the main thread: nothing to do)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    if seen is None:
        print(f"dask-pdist: stopped; {source} had no complete checkpoint yet", file=sys.stderr)
    else:
        print(f"dask-pdist: stopped following; {output} is complete", file=sys.stderr)
    return 0


#: Appends tried in a row while checkpoints are deleted as they are read.
_GONE_RETRIES = 20


def _append_kept(args: argparse.Namespace, source: str | list[str], output: str, compute: Callable[..., bool]) -> None:
    # one append of what the run holds; a checkpoint deleted while it was read (Trainer's
    # save_total_limit, saving fast) is appended again at once with the checkpoints kept,
    # as many times as it takes (a bounded number: then said in one line, no traceback)
    for attempt in range(_GONE_RETRIES + 1):
        try:
            compute(args, source, output, False, False, True, True)
            return
        except Exception as exc:
            gone = str(exc) if isinstance(exc, CheckpointGone) else deleted_while_read(exc)
            if not gone:
                raise
            if attempt == _GONE_RETRIES:
                raise InputError(
                    f"{source}: checkpoints were deleted while they were read {attempt + 1} times in a row"
                    f" (the last: {gone}); {output} is unchanged or resumable: run --follow again"
                ) from None
            print(f"dask-pdist: note: {gone} was deleted while it was read; appending again", flush=True)


def _ticks_after_first(root: Path | None, stopping: Callable[[], bool]) -> Iterator[None]:
    yield  # at once: compute what is there
    yield from _ticks(root, stopping)
