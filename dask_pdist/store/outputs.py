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
import xarray as xr

from dask_pdist.errors import StoreError
from dask_pdist.io.locks import acquire_lock, release_lock
from dask_pdist.io.paths import local_path
from dask_pdist.io.publish import check_parent, clean_stale, discard, hidden_name, named, publish
from dask_pdist.store.codecs import checked_codecs

__all__ = ["root_attrs", "check_target", "write_whole", "open_whole"]

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
) -> Any:
    """Write ``ds`` as a zarr (format 3) store at ``path``, complete or not at all.

    ``role`` names the output in messages (``"neighbours store"``); ``chunks``: store chunks
    per variable (default: the variable's dask chunks, so each task writes whole chunks of its
    own). Returns the path, or with ``compute=False`` a ``dask.delayed`` that writes and
    publishes when computed (run it with :class:`~dask_pdist.store.job.Job` and
    :func:`~dask_pdist.io.publish.abandon` as its ``on_stop``; never run, its lock stays until
    this process writes again or ends).
    """
    path = local_path(path, role)
    check(path, overwrite)  # refuse before taking anything
    check_parent(path)
    lock = acquire_lock(path, role)
    tmp = hidden_name(path)
    try:
        clean_stale(path)  # killed writers' leftovers, now that no live writer can own them
        check(path, overwrite)
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
            written = ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding, compute=False)
        job = dask.delayed(_finish, pure=False)(written, str(tmp), str(path), check, overwrite, lock)
        if not compute:
            return job
        return job.compute()
    except BaseException as exc:
        discard(tmp)
        release_lock(path, lock)
        raise named(exc, path) from exc


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
