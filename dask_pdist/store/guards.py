"""The life of a write job around the store: where it may write, what it must find before
resuming, and what is left when its input stops it.

Only a directory holding nothing but this tool's own store layout is ever written into or
deleted; a resumed job re-reads the input of its finished blocks and compares checksums;
a job stopped by its input says so, in the store and to the user.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from dask_pdist.conventions import BOOKKEEPING, INPUT_CHECKSUM, STOPPED_ATTR
from dask_pdist.errors import InputError, StoreError
from dask_pdist.io.paths import Location, is_remote, remove_tree, zarr_array
from dask_pdist.io.publish import check_parent
from dask_pdist.store.layout import (
    StorePath,
    check_metadata,
    foreign_entries,
    has_bookkeeping,
    is_store,
    not_a_store,
    read_root,
    release_lock,
    store_path,
    store_progress,
    write_root_attrs,
)

__all__ = ["stop_job"]


def _stopped(path: StorePath) -> str | None:
    return ((read_root(path) or {}).get("attributes") or {}).get(STOPPED_ATTR)


def check_output(path: StorePath, overwrite: bool, resume: bool, shallow: bool = False) -> bool:
    """Validate the output location before any work; returns True to resume into it.
    ``shallow`` (an append): foreign files are looked for outside the chunk folders only."""
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: resume continues a store, overwrite replaces it")
    if path.is_symlink():
        raise StoreError(f"{path}: is a symbolic link to {os.path.realpath(path)}; give the real path as the output")
    if path.exists():
        check_ours(path, overwrite, resume, shallow)
        if resume:
            check_metadata(path)
            return True
        if not overwrite:
            stopped = _stopped(path)
            if stopped:
                raise StoreError(
                    f"{path}: already exists, incomplete: the job was {stopped}; pass overwrite=True"
                    " (--overwrite) to recompute it, or resume=True (--resume) once the cause is dealt with"
                )
            raise StoreError(
                f"{path}: already exists; pass overwrite=True (--overwrite) to replace it,"
                " or resume=True (--resume) to finish an interrupted job"
            )
    check_parent(path)
    return False


def check_ours(path: StorePath, overwrite: bool, resume: bool, shallow: bool = False) -> None:
    # only a directory holding nothing but this tool's own store layout is ever written into
    # or deleted; a user's zarr saved from open_distances() carries our attributes, not our
    # bookkeeping
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a dask_pdist store; refusing to write into or delete it")
    foreign = foreign_entries(path, shallow=shallow)
    if has_bookkeeping(path) and not is_store(path) and resume and not foreign:
        raise not_a_store(path)  # ours, its root zarr.json lost: nothing to resume, --overwrite
    if not has_bookkeeping(path) or (not is_store(path) and resume):
        what = f": it holds {', '.join(foreign)}" if foreign else ""
        raise StoreError(
            f"{path}: exists and is not a dask_pdist store; refusing to write into or delete it"
            f" (not written by dask_pdist, or not by compute{what})"
        )
    if foreign:
        raise StoreError(
            f"{path}: holds files dask_pdist did not write ({', '.join(foreign)}); refusing to write into or"
            " delete it: move them out, or choose another output"
        )
    if not is_store(path) and not overwrite:
        raise StoreError(
            f"{path}: a dask_pdist store without its root zarr.json (a write was interrupted);"
            " pass overwrite=True (--overwrite) to replace it"
        )


def check_input_outside(ds: xr.Dataset, path: StorePath) -> None:
    source = str(ds.attrs.get("source", ""))
    if not source:
        return
    head = source.split(" .. ")[0]
    for wild in "*?[":
        head = head.split(wild)[0]
    if is_remote(path) or "://" in head:
        inside = is_remote(path) and (head + "/").startswith(str(path).rstrip("/") + "/")
    else:
        inside = False
        try:
            inside = Path(head).resolve().is_relative_to(path.resolve())
        except (OSError, ValueError):
            return
    if inside:
        raise StoreError(
            f"{path}: the input {source} lies inside the output; writing the store would delete it:"
            " choose another output"
        )


def check_resumed_input(ds: xr.Dataset, path: StorePath) -> None:
    # the done blocks were computed from some input: re-read it (cheap next to recomputing,
    # in parallel) and compare its per-step checksums with those recorded next to the flags
    where = path / BOOKKEEPING / INPUT_CHECKSUM
    if INPUT_CHECKSUM not in ds.coords or not (where / "zarr.json").exists():
        return  # a store (or Dataset) without input checksums: size and header checked only
    done = store_progress(path)[0].any(axis=(1, 2))
    blocks = np.flatnonzero(done)
    if not len(blocks):
        return
    data = ds[INPUT_CHECKSUM].data
    now = np.concatenate(dask.compute(*[data.blocks[int(b)] for b in blocks]))
    try:
        stored = zarr_array(where)
        recorded = np.concatenate([stored.get_block_selection((int(b),)) for b in blocks])
    except Exception as exc:
        raise StoreError(
            f"{path}: {BOOKKEEPING}/{INPUT_CHECKSUM}: unreadable ({exc}); run `dask-pdist verify {path}`"
        ) from exc
    changed = np.flatnonzero(now != recorded)
    if len(changed):
        rows = np.concatenate([np.arange(*_block_rows(ds, int(b))) for b in blocks])
        first = rows[changed[0]]
        step = ds["step"].values[first]
        raise StoreError(
            f"{path}: cannot resume: the input changed since the store was written: step {step}"
            f" (index {first}) of {ds.attrs.get('source', 'the input')} differs from the data its distances were"
            f" computed from ({len(changed)} {'steps differ' if len(changed) != 1 else 'step differs'});"
            " recompute with overwrite=True (--overwrite)"
        )


def _block_rows(ds: xr.Dataset, b: int) -> tuple[int, int]:
    sizes = ds.chunksizes["step"]
    start = int(sum(sizes[:b]))
    return start, start + int(sizes[b])


def stop_job(path: str | os.PathLike[str] | Location, exc: BaseException) -> str:
    """Clean up after a write job of :func:`to_zarr` failed; returns what to tell the user.

    Releases this process's writer lock. A job stopped by its input (``InputError``: NaN or
    Inf under ``nonfinite="raise"``; ``OverflowError``: float16) cannot be finished by a
    plain resume: with no block written the store is removed, otherwise the cause is recorded
    in the store (``info`` and a later ``compute`` show it) and the message says how to go on.
    Interruptions (Ctrl-C, disk full, a kill) keep the store for ``--resume``.

    Examples
    --------
    >>> job = to_zarr(ds, "d.zarr", compute=False)  # doctest: +SKIP
    >>> try:  # doctest: +SKIP
    ...     job.compute()
    ... except InputError as exc:
    ...     print(exc, stop_job("d.zarr", exc))
    """
    path = store_path(path)
    try:
        if not isinstance(exc, (InputError, OverflowError)) or not is_store(path):
            return ""
        done, _ = store_progress(path)
        if not done.any():
            remove_tree(path)
            return f"nothing was written, so {path} was removed"
        way = (
            "recompute with --dtype float32 --overwrite"
            if isinstance(exc, OverflowError)
            else "fix the input and recompute with --overwrite, or finish with --resume --nonfinite propagate"
            " (NaN distances there)"
        )
        write_root_attrs(path, **{STOPPED_ATTR: f"stopped by its input: {exc}"})
        return f"{path} keeps {int(done.sum())} of {done.size} blocks; the job was stopped by its input: {way}"
    finally:
        release_lock(path)
