"""The reader of distance stores: :func:`open_distances`, lazily, through the integrity checks.

Never imports numba: a notebook that only opens a store and reads steps does not pay for the
compiler.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from dask_pdist.conventions import ALL_METRICS, DONE, STOPPED_ATTR
from dask_pdist.errors import StoreError
from dask_pdist.io.folder_hints import stores_hint
from dask_pdist.io.paths import Location, is_remote
from dask_pdist.store.digests import STORE_ID_ATTR, Digests, checked_store, expected_digests, read_manifest
from dask_pdist.store.integrity import CheckedChunks, _live_lock, check_small_arrays, lazy_checked
from dask_pdist.store.layout import (
    StorePath,
    changed_since_opened,
    check_metadata,
    is_complete,
    is_store,
    not_a_store,
    parse_root,
    pinned_metadata,
    read_attrs,
    root_bytes,
    root_version,
    store_path,
    store_progress,
)

__all__ = ["open_distances"]

_COORDS = ("step", "token_i", "token_j")
#: Opens tried while writers keep changing the store under them (each append changes it
#: three times in a few milliseconds; a reader meets a change in about 1 open in 10)
_ATTEMPTS = 5
#: Seconds between looks at a store whose live writer may be between two of its writes
_PAUSES = (0.0, 0.02, 0.1, 0.4)


def open_distances(
    path: str | os.PathLike[str] | Location,
    *,
    allow_incomplete: bool = False,
    chunks: Literal["store"] | None = "store",
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open a distance store lazily; slicing by step reads only the chunks it needs.

    Reads never return silently wrong data: a chunk that is absent (where the store says it
    was written) or fails its checksum raises a :class:`StoreError` naming the store,
    variable, chunk and step range.

    Parameters
    ----------
    path : path-like or URL
        A store written by :func:`to_zarr` or ``dask-pdist compute``, on disk or at a URL
        (``s3://bucket/d.zarr``).
    allow_incomplete : bool
        Open a store whose job was interrupted: blocks not marked done read as NaN (even if
        a chunk file of them exists). Without it, an incomplete store is an error.
    chunks : {"store", None}
        ``"store"``: dask-backed, one dask chunk per store chunk (parallel, for whole-store
        analyses). ``None``: no dask; indexing reads exactly the chunks it needs, straight
        through zarr, in the calling thread: the fastest way to read one step (about half the
        time of the dask path, see docs/performance.md). Not with
        ``allow_incomplete``.
    storage_options : dict, optional
        For a URL: options of its fsspec backend.

    Raises
    ------
    StoreError
        Not a dask_pdist store, incomplete (the message says how to resume), a coordinate
        absent or corrupt; on compute, a distance chunk absent or corrupt.

    Examples
    --------
    >>> ds = open_distances("pairwise_distances.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234).values  # reads one chunk  # doctest: +SKIP
    >>> open_distances("pairwise_distances.zarr", chunks=None).euclidean.sel(step=1234).values  # doctest: +SKIP
    """
    if chunks not in ("store", None):
        raise ValueError(f"chunks={chunks!r}: choose 'store' (dask, one chunk per store chunk) or None (no dask)")
    if chunks is None and allow_incomplete:
        raise ValueError(
            "allow_incomplete=True masks missing blocks with dask: use chunks='store' (the default) with it"
        )
    path = store_path(path, storage_options)
    failed: Exception | None = None
    for _ in range(_ATTEMPTS):
        raw = root_bytes(path)  # the one document every shape of this view is taken from
        seen: dict[str, Any] = {}
        try:
            return _open(path, raw, allow_incomplete, chunks, seen)
        except Exception as exc:
            state = _moved(path, raw, seen.get("expected"), seen.get("checking", False))
            if state is None:
                raise  # nothing changed: real damage (or a refusal), reported as it is
            if state == "live":
                raise StoreError(
                    f"{path}: a read did not match the store's records while a job holding its writer lock is"
                    " rewriting them (an append updates the step labels, then their digests, then the root):"
                    " open it again in a moment; once the job has ended, `dask-pdist verify` tells real damage"
                ) from exc
            failed = exc  # a writer moved the store on meanwhile: not damage; open it again
    raise changed_since_opened(path, f"changed by a writer {_ATTEMPTS} times while being opened") from failed


def _open(
    path: StorePath, raw: bytes | None, allow_incomplete: bool, chunks: str | None, seen: dict[str, Any]
) -> xr.Dataset:
    """One attempt of :func:`open_distances`, every shape from the root document ``raw``;
    ``seen["expected"]``: the digests it read."""
    if not path.exists():
        hint = "" if is_remote(path) else stores_hint(path)  # a glob of run stores: say to give one
        raise FileNotFoundError(f"{path}: store not found{hint}")
    if not is_store(path):
        raise not_a_store(path)
    check_metadata(path)
    root = parse_root(raw)
    complete = is_complete(root)
    # a complete store has every block done: its flags (one file per block) are not read
    done = np.ones(0, bool) if complete else store_progress(path)[0]
    # the arrays as the root read recorded them (an append resizes them one file at a time)
    view = Digests(pinned=pinned_metadata(raw or b""))
    group = zarr.open_group(store=checked_store(path, view), mode="r", use_consolidated=True, zarr_format=3)
    written = None  # steps to show of a store being written: its leading whole steps
    if not complete and not allow_incomplete:
        missing = int((done == 0).sum())
        stopped = (read_attrs(path) or {}).get(STOPPED_ATTR)
        live = not stopped and _live_lock(path)
        written = _whole_prefix(group, done) if live else 0
        if not written:
            if stopped:
                why = f"the job was {stopped}; recompute with --overwrite"
            elif live:  # a job that has not finished its first step-block yet
                why = "a job is writing it now and no step is whole yet: open it again in a moment"
            else:
                why = (
                    "the job was interrupted; finish it with the same `dask-pdist compute ... --resume` command"
                    " (an interrupted append: the same --append or --follow command)"
                )
            raise StoreError(
                f"{path}: incomplete, {missing} of {done.size} blocks missing ({why}),"
                " or open with allow_incomplete=True (--allow-incomplete) to read missing blocks as NaN"
            )
    seen["checking"] = True  # from here on, a failure may be a writer's rewrite met half-way
    expected = seen["expected"] = expected_digests(path, None if complete else done)
    expected.pinned = view.pinned
    check_small_arrays(path, [n for n in _COORDS if n in group], expected)
    store = checked_store(path, expected)  # coordinates too are read through the digest check
    ds = xr.open_zarr(store, zarr_format=3, consolidated=True, chunks=None, drop_variables=[DONE])
    ds.encoding["source"] = str(path)  # what xarray records when given a path (errors name the store)
    steps = ds["step"].values
    # the store's random id too: a store written again in place gets new task names
    store_id = ((root or {}).get("attributes") or {}).get(STORE_ID_ATTR)
    token = dask.base.tokenize(str(path.resolve()), complete, done, store_id, root_version(raw))
    for name in [*ds.data_vars, *(["embedding_rms"] if "embedding_rms" in ds.coords else [])]:
        if name not in group:
            raise StoreError(
                f"{path}: {name}: missing (array absent although the metadata lists it); run `dask-pdist verify {path}`"
            )
        arr = group[name]
        source = CheckedChunks(
            path, name, arr.shape, arr.chunks, arr.dtype, steps, None if complete else done, expected, root_version(raw)
        )
        if chunks is None:  # no dask: numpy reads through the same checks, chunk by chunk
            data = lazy_checked(source)
        else:
            read = _read_chunks(arr.shape, arr.chunks)
            data = da.from_array(
                source,
                chunks=read,
                name=f"read-{name}-{token}",
                meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
                asarray=False,
                # the source takes array indices too: dask then fuses a selection into the
                # read (one step reads one step, not its whole 128-step block and a copy)
                fancy=True,
            )
            if read != tuple(arr.chunks):  # a per-step array read many chunks at a time, then cut to the store's
                # (method given: dask's choice of one imports dask.distributed, ~0.1 s, to look
                # for a cluster; a cut of a per-step array is tasks either way)
                data = data.rechunk(arr.chunks, method="tasks")
        ds[name] = ds[name].copy(data=data)
    if written:
        # a store a live job is writing (--follow appending, a compute running): its leading
        # steps whose blocks are all done, which no job rewrites; the rest is not shown
        total = ds.sizes["step"]
        ds = ds.isel(step=slice(0, written))
        ds.attrs["being_written"] = f"{written} of {total} steps whole so far; a job is writing the rest"
    return ds


def _moved(path: StorePath, raw: bytes | None, expected: Digests | None, checking: bool) -> str | None:
    """``"moved"`` if a writer changed the store since its root document ``raw`` was read: the
    root differs, or the manifest of digests does (an append rewrites the step labels, then
    the manifest, then the root). A failed check (``checking``) of a store whose writer is
    live is looked at again for a moment (its next write is due within milliseconds), then
    ``"live"``. None: nothing changed, no writer: the failure is the store's own."""
    for pause in _PAUSES:
        time.sleep(pause)
        if root_bytes(path) != raw:
            return "moved"
        if expected and any(expected.get(key) != value for key, value in read_manifest(path).items()):
            return "moved"
        if not checking or not _live_lock(path):
            return None
    return "live"


def _whole_prefix(group: Any, done: np.ndarray) -> int:
    """Steps from the start whose every block is done (0: none)."""
    first = next((group[n] for n in ALL_METRICS if n in group), None)
    if first is None or not done.size:
        return 0
    rows = done.reshape(done.shape[0], -1).all(axis=1)
    blocks = int(np.argmin(rows)) if not rows.all() else len(rows)
    return min(blocks * int(first.chunks[0]), int(first.shape[0]))


#: Steps of a per-step array (``embedding_rms``) read in one task: zarr fetches their chunks
#: together, where one task per chunk paid a whole read's overhead for 1 kB (a tenth of
#: ``summarize``'s time on a 5001-step store).
_PER_STEP_READ = 1 << 20


def _read_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Dask chunks to read an array with: the store's, but many step-chunks of a per-step array at once.

    >>> _read_chunks((5001,), (128,)), _read_chunks((5001, 9, 9), (128, 9, 9))
    ((5001,), (128, 9, 9))
    """
    if len(shape) != 1 or shape[0] <= chunks[0]:
        return chunks
    return (min(shape[0], max(chunks[0], _PER_STEP_READ // chunks[0] * chunks[0])),)
