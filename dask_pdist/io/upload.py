"""Streaming one file to a URL (object storage) front to back, with bounded memory.

Why this is not the local export's writer: that one places each chunk at its byte offset in
whatever order dask computes them (positioned writes), and an object store cannot write at
an offset: an object is sent front to back, once. So here the bytes go out in file order
through the backend's file object (``fs.open(url, "wb")``; on S3 a multipart upload, whose
object appears under its name only when the upload is completed, at close). A window of a
few blocks is computed at a time (in parallel, by dask) and written in order while the next
window computes: memory holds about two windows, whatever the size of the file.

On any failure (an exception, Ctrl-C) the upload is aborted (``discard()``: on S3 the
multipart upload is aborted) and the file object is never closed, because closing is what
publishes it: the name keeps its old object, or none. Without ``overwrite``, S3 publishes
only if no object has the name by then (``If-None-Match``: s3fs's mode ``"xb"``), so an
object that appears during the export is never replaced. A backend whose file is visible from
the moment it is opened (``memory://`` and most non-object stores) gets a hidden temporary
name beside the target instead, moved into place when complete.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np

from dask_pdist.errors import StoreError
from dask_pdist.io.paths import Location
from dask_pdist.io.publish import hidden_key

__all__ = ["WINDOW_BYTES", "COMMIT_AT_CLOSE", "file_order_pieces", "stream_to_location"]

#: Most bytes of blocks computed at once (one window): at least one block, at most one block
#: per dask thread. The writer holds the previous window meanwhile.
WINDOW_BYTES = 2**28
#: Schemes whose written files publish the object only at close (S3 multipart upload, GCS
#: resumable upload, Azure block list): written under the final name, aborted by ``discard()``.
COMMIT_AT_CLOSE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
#: Backends whose upload can be published only if no object has the name yet (s3fs mode "xb").
CONDITIONAL_CREATE = frozenset({"s3", "s3a"})


def file_order_pieces(data: da.Array) -> list[tuple[int, da.Array]]:
    """Split a C-ordered (step, row, column) dask array into pieces whose bytes are one
    contiguous run of the array, in order: ``(first step index, piece)`` pairs.

    Each piece is one step-block (the dask blocks along the other axes assembled in C order),
    or, where a block holds one step of a token-tiled array, one row band of tiles, so that a
    piece stays near one task's size for large vocabularies. Pure graph slicing, no compute.

    Examples
    --------
    >>> x = da.zeros((5, 6, 6), chunks=((2, 2, 1), (4, 2), (4, 2)))
    >>> [(s, p.shape) for s, p in file_order_pieces(x)]
    [(0, (2, 6, 6)), (2, (2, 6, 6)), (4, (1, 4, 6)), (4, (1, 2, 6))]
    """
    pieces: list[tuple[int, da.Array]] = []
    start = 0
    for b, n in enumerate(data.chunks[0]):
        if n == 1 and len(data.chunks[1]) > 1:  # one step: each row band is contiguous
            pieces.extend((start, data.blocks[b, r]) for r in range(len(data.chunks[1])))
        else:  # several steps: a step's rows span every band, so the block goes whole
            pieces.append((start, data.blocks[b]))
        start += n
    return pieces


def _windows(pieces: Sequence[tuple[Any, da.Array]]) -> Iterator[list[tuple[Any, da.Array]]]:
    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    window: list[tuple[Any, da.Array]] = []
    size = 0
    for piece in pieces:
        if window and (len(window) >= threads or size + piece[1].nbytes > WINDOW_BYTES):
            yield window
            window, size = [], 0
        window.append(piece)
        size += piece[1].nbytes
    if window:
        yield window


def _write_blocks(f: Any, blocks: Sequence[np.ndarray], bar: Any) -> None:
    # slices of one part: the file object's buffer then holds one part, not a copy of the block
    step = max(2**20, int(getattr(f, "blocksize", 0) or 2**24))
    for block in blocks:
        view = memoryview(block).cast("B")
        for i in range(0, len(view), step):
            f.write(view[i : i + step])
            bar.update(min(step, len(view) - i))


def _abort(f: Any, fs: Any, written: str, direct: bool) -> None:
    # best effort, the original error is what the caller sees; an upload whose abort fails
    # (network gone) lingers as an incomplete upload, never as an object under the name
    if direct:
        with contextlib.suppress(Exception):
            f.discard()
        with contextlib.suppress(AttributeError):
            f.closed = True  # the file object's __del__ would otherwise close it: publish it
        return
    with contextlib.suppress(Exception):
        f.close()
    with contextlib.suppress(Exception):
        fs.rm(written)


def stream_to_location(
    location: Location,
    head: bytes,
    pieces: Sequence[tuple[Any, da.Array]],
    convert: Callable[[np.ndarray, Any], np.ndarray],
    *,
    overwrite: bool,
    progress: bool,
    total: int | None = None,
    desc: str = "exporting",
) -> None:
    """Write ``head`` then every piece's bytes, in order, as one object at ``location``.

    Parameters
    ----------
    location : Location
        The object to create (its storage options reach the backend).
    head : bytes
        The file's first bytes (a safetensors header).
    pieces : sequence of (label, dask array)
        In file order; each piece's C-order bytes follow the previous piece's.
    convert : callable
        ``convert(block, label)`` gives the C-contiguous array whose bytes are written (casts,
        range checks); it may raise to stop the export.
    overwrite : bool
        If False, refuse to publish when an object appeared under the name meanwhile.
    progress : bool
        A progress bar over the bytes written (tqdm, on stderr).
    total : int, optional
        The file's size, for the progress bar; default ``head`` plus the pieces' bytes (wrong
        where ``convert`` casts).
    desc : str
        The progress bar's label.

    Raises
    ------
    StoreError
        An object appeared at ``location`` during the export and ``overwrite`` is False.

    Examples
    --------
    >>> loc = Location("memory://upload-doc/x.bin")
    >>> pieces = [(0, da.arange(6, dtype="<i4", chunks=3))]
    >>> stream_to_location(loc, b"head", pieces, lambda b, label: b, overwrite=True, progress=False)
    >>> loc.size()
    28
    """
    from tqdm import tqdm

    fs = location.fs
    direct = location.protocol in COMMIT_AT_CLOSE
    written = location.path if direct else hidden_key(location.path)
    # S3 publishes the object only if none has the name by then (If-None-Match on the final
    # PUT / CompleteMultipartUpload): no window between a check and the publication
    exclusive = not overwrite and location.protocol in CONDITIONAL_CREATE
    if total is None:
        total = len(head) + sum(int(p.nbytes) for _, p in pieces)
    f = location._call("bucket or folder", fs.open, written, "xb" if exclusive else "wb")
    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not progress)
    published = False
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="dask_pdist-upload") as writer:
            pending: Future[None] | None = None
            try:
                pending = writer.submit(_write_blocks, f, [np.frombuffer(head, np.uint8)], bar)
                for window in _windows(pieces):
                    blocks = dask.compute(*(piece for _, piece in window))
                    ready = [convert(np.asarray(b), label) for b, (label, _) in zip(blocks, window, strict=True)]
                    pending.result()  # the previous window is written: send this one
                    pending = writer.submit(_write_blocks, f, ready, bar)
                pending.result()
            finally:
                if pending is not None:
                    pending.exception()  # an abort must not race a write still in flight
        appeared = StoreError(f"{location}: appeared while exporting; pass overwrite=True (--overwrite) to replace it")
        if not overwrite and not exclusive:  # a backend without conditional writes: check, then publish
            fs.invalidate_cache(location.path)
            if location.exists():
                raise appeared
        try:
            location._call("bucket or folder", f.close)  # S3: CompleteMultipartUpload, the object appears
        except FileExistsError:  # the conditional publication found an object under the name
            raise appeared from None
        if not direct:
            location._call("folder", fs.mv, written, location.path)
        published = True
    finally:
        if not published:
            bar.leave = False  # the error, not a stopped bar, is what stays on screen
            _abort(f, fs, written, direct)
        bar.close()
