"""Outputs written whole: neighbours, clusters, movement and divergence stores.

Each is small next to a distance store, so it has nothing to resume: it is built under a
hidden name and published when every chunk is on disk (:mod:`dask_pdist.io.publish`), by one
writer at a time (:mod:`dask_pdist.io.locks`, held from planning to publishing), every chunk
carrying a crc32c whose value is recorded by position before publishing and checked by every
read (:mod:`dask_pdist.store.digests`). This module is that sequence, once, for all of them:
an analysis gives its Dataset, its target check and its name.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from dask_pdist.conventions import INPUT_CHECKSUM
from dask_pdist.errors import StoreError
from dask_pdist.io.locks import acquire_lock, release_lock
from dask_pdist.io.paths import local_path
from dask_pdist.io.publish import check_parent, clean_stale, discard, hidden_name, named, publish
from dask_pdist.store.chunk_writes import chunk_writes
from dask_pdist.store.codecs import checked_codecs
from dask_pdist.store.job import local_compute

__all__ = ["root_attrs", "check_target", "write_whole", "appended", "open_whole"]

#: ``check(path, overwrite)``: raise if ``path`` may not be written (exists and is another
#: kind of thing, or exists without ``overwrite``).
TargetCheck = Callable[[Path, bool], None]


def root_attrs(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The root attributes of a local zarr store, or None if it has no readable zarr.json."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def check_target(path: Path, overwrite: bool, *, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse ``path`` unless it is absent, or ``ours(path)`` and ``overwrite``: anything else
    there is never written into or deleted. ``what`` names the kind (``"a neighbours store"``)."""
    if os.path.lexists(path):
        if not ours(path):
            raise StoreError(f"{path}: exists and is not {what}; refusing to write into or delete it")
        if not overwrite:
            raise StoreError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")


def _finish(_written: Any, tmp: str, path: str, check: TargetCheck, overwrite: bool, lock: str) -> str:
    from dask_pdist.store.digests import record_whole

    try:
        check(Path(path), overwrite)  # again: something may have appeared meanwhile
        record_whole(Path(tmp))  # each chunk's checksum, by position
        publish(tmp, path, replace=overwrite)  # the old store stays readable until the new one is whole
    except BaseException:
        discard(tmp)
        raise
    finally:
        release_lock(Path(path), lock)
    return path


def write_whole(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    role: str,
    check: TargetCheck,
    overwrite: bool = False,
    compute: bool = True,
    chunks: dict[str, tuple[int, ...]] | None = None,
    append: Callable[[xr.Dataset, Path], xr.Dataset | None] | None = None,
    by_store_chunk: bool = False,
) -> Any:
    """Write ``ds`` as a zarr (format 3) store at ``path``, complete or not at all.

    ``role`` names the output in messages (``"neighbours store"``); ``chunks``: store chunks
    per variable (default: the variable's dask chunks, so each task writes whole chunks of its
    own). Returns the path, or with ``compute=False`` a ``dask.delayed`` that writes and
    publishes when computed (run it with :class:`~dask_pdist.store.job.Job` and
    :func:`~dask_pdist.io.publish.abandon` as its ``on_stop``; never run, its lock stays until
    this process writes again or ends).

    ``append`` (see :func:`appended`): an existing store at ``path`` is grown: under the lock,
    ``append(ds, path)`` gives the Dataset to write in its place (the stored steps read back,
    then ``ds``'s new ones), or None when there is nothing new (nothing is written). The grown
    store replaces the old one only when whole, as ``overwrite`` does.
    """
    path = local_path(path, role)
    growing = append is not None and os.path.lexists(path)
    overwrite = overwrite or growing
    check(path, overwrite)  # refuse before taking anything
    check_parent(path)
    lock = acquire_lock(path, role)
    tmp = hidden_name(path)
    try:
        clean_stale(path)  # killed writers' leftovers, now that no live writer can own them
        check(path, overwrite)
        if growing:
            assert append is not None
            grown = append(ds, path)  # read under the lock: no other writer grows it meanwhile
            if grown is None:
                release_lock(path, lock)
                return str(path) if compute else dask.delayed(str)(str(path))
            ds = grown
        ds = ds.copy()
        for name in ds.coords:  # zarr 3 stores strings as variable-length UTF-8 (object)
            if ds[name].dtype.kind in "US":
                ds[name] = ds[name].astype(object)
        encoding: dict[str, dict[str, Any]] = {name: {"compressors": checked_codecs()} for name in ds.variables}
        for name, var in ds.data_vars.items():
            if chunks and name in chunks:
                encoding[name]["chunks"] = chunks[name]
            elif var.chunks:
                encoding[name]["chunks"] = tuple(c[0] for c in var.chunks)
        with warnings.catch_warnings():
            # consolidated metadata is a zarr-python extension to format 3: written so that
            # plain xarray.open_zarr(path) opens the store without a fallback warning
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            written = ds.to_zarr(
                tmp,
                mode="w-",
                zarr_format=3,
                consolidated=True,
                encoding=encoding,
                compute=False,
                safe_chunks=not by_store_chunk,
                # every chunk written, also one equal to the fill value (no groups, nothing
                # moved): an absent chunk file then always means a lost one, which verify reports
                write_empty_chunks=True,
            )
        if by_store_chunk:  # metadata and coordinates as xarray wrote them; the data this way
            written = chunk_writes(ds, Path(tmp))
        job = dask.delayed(_finish, pure=False)(written, str(tmp), str(path), check, overwrite, lock)
        if not compute:
            return job
        with local_compute() as kw:  # every task ended before a failure discards tmp
            return job.compute(**kw)
    except BaseException as exc:
        discard(tmp)
        release_lock(path, lock)
        raise named(exc, path) from exc


def appended(
    ds: xr.Dataset,
    path: Path,
    *,
    opener: Callable[[Path], xr.Dataset],
    same: tuple[str, ...],
) -> xr.Dataset | None:
    """What an append writes at ``path``: the store's steps, read back (checked), followed by
    the steps of ``ds`` after them; None when ``ds`` has none. ``ds`` must start with the
    store's steps and agree with it on the attributes ``same`` and every coordinate without
    ``step`` (the tokens); otherwise ``StoreError``, before anything is written.

    The stored steps are not recomputed: an output of these analyses at a step depends on that
    step only (clusters, neighbours), and the events and churn over steps are derived from the
    whole grown store when read, so an appended store equals a one-shot one.
    """
    old = opener(path)

    def refuse(why: str) -> StoreError:
        return StoreError(f"{path}: cannot append: {why}; the store is unchanged")

    diff = [
        f"{k}: store has {old.attrs.get(k)!r}, now {ds.attrs.get(k)!r}"
        for k in same
        if str(old.attrs.get(k)) != str(ds.attrs.get(k))
    ]
    for name, coord in ds.coords.items():
        if "step" in coord.dims or name == INPUT_CHECKSUM:
            continue
        if name not in old.coords or old[name].shape != coord.shape or not (old[name].values == coord.values).all():
            diff.append(f"coordinate {name!r} differs")
    if diff:
        raise refuse("the input or parameters differ from the store's: " + "; ".join(diff))
    stored, steps = old["step"].values, ds["step"].values
    n = len(stored)
    if len(steps) < n:
        raise refuse(f"the input has {len(steps)} steps, fewer than the store's {n}")
    if not (steps[:n] == stored).all():
        raise refuse(
            f"the input's first {n} steps are not the store's ({stored[0]}..{stored[-1]});"
            " append needs the input the store was made from, grown at its end"
        )
    _check_stored_input(old, ds, n, refuse)
    if len(steps) == n:
        return None
    if steps[n] <= stored[-1]:
        raise refuse(f"new step {steps[n]} does not come after the store's last step {stored[-1]}")
    new = ds.isel(step=slice(n, None))  # only the new steps are computed
    out = xr.concat([old, new], dim="step", data_vars="all", coords="minimal", compat="override", join="exact")
    out.attrs = dict(ds.attrs)
    chunk: dict[str, int] = {}  # the store's chunks (regular), per dimension
    for var in old.data_vars.values():
        for dim, sizes in zip(var.dims, var.chunks or (), strict=False):
            chunk.setdefault(str(dim), sizes[0])
    out = out.chunk(chunk)
    for var in out.variables.values():
        var.encoding = {}  # the read-back encoding (chunks, codecs) is the new store's to choose
    return out


def _check_stored_input(old: xr.Dataset, ds: xr.Dataset, n: int, refuse: Callable[[str], StoreError]) -> None:
    # the stored steps were computed from some input: its checksums, recorded with them, must
    # be those of the input's first n steps now (one small read per step, no analysis rerun)
    if INPUT_CHECKSUM not in ds.coords:
        return  # from a distance store: that store's own append checks its input
    if INPUT_CHECKSUM not in old.coords:
        raise refuse("the store records no input checksums (made before they were), so its steps cannot be checked")
    (now,) = dask.compute(ds[INPUT_CHECKSUM].data[:n], scheduler="sync")
    changed = np.flatnonzero(np.asarray(now) != old[INPUT_CHECKSUM].values)
    if len(changed):
        first = int(changed[0])
        raise refuse(
            f"the input changed since the store was written: step {ds['step'].values[first]} (index {first})"
            f" differs from the data it was computed from ({len(changed)}"
            f" {'steps differ' if len(changed) != 1 else 'step differs'}); recompute it with overwrite=True"
            " (--overwrite)"
        )


def open_whole(path: str | os.PathLike[str], *, role: str, is_kind: Callable[[Path], bool], marker: str) -> xr.Dataset:
    """Open a store written by :func:`write_whole` lazily; every chunk read is checked against
    the checksum recorded for its position. ``is_kind(path)`` says whether it is a store of the
    expected kind (``marker`` names what it looks for, in the error)."""
    from dask_pdist.store.digests import checked_store, expected_digests

    path = local_path(path, role)
    if not path.exists():
        raise FileNotFoundError(f"{path}: store not found")
    if not is_kind(path):
        raise StoreError(f"{path}: not a {role} (no zarr.json with {marker})")
    ds = xr.open_zarr(checked_store(path, expected_digests(path)), zarr_format=3, consolidated=True, chunks={})
    ds.encoding["source"] = str(path)  # what xarray records when given a path (errors name the store)
    return ds
