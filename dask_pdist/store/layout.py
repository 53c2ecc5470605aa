"""What a distance store keeps about itself, apart from the distances.

- the ``_dask_pdist`` sub-group: ``chunk_done`` (one flag per block) and ``input_checksum``
  (crc32c of each step's input values, checked by ``--resume``). Plain ``xarray.open_zarr``
  lists only the arrays of the root group, so users see the distances and their coordinates.
  Stores written before the sub-group keep ``chunk_done`` at the root; both layouts are read.
- the completion record: the ``complete`` attribute of the root ``zarr.json``, written in one
  atomic replace of that file together with the consolidated metadata it vouches for.
- the writer lock ``.NAME.lock`` next to the store: one writer at a time.
- the list of entries a store of ours may hold: ``--overwrite`` deletes nothing else.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dask_pdist.conventions import (
    ALL_METRICS,
    BOOKKEEPING,
    CLUSTERS_MARKER_ATTR,
    COMPLETE_ATTR,
    DONE,
    INPUT_CHECKSUM,
    INPUT_VERSION,
    KIND_ATTR,
    MARKER_ATTR,
)
from dask_pdist.errors import StoreChangedError, StoreError
from dask_pdist.io.folder_hints import stores_hint
from dask_pdist.io.locks import acquire_lock, holding_lock, lock_path, release_lock
from dask_pdist.io.paths import (
    BUCKET_SCHEMES,
    Location,
    files_under,
    is_remote,
    locate,
    replace_bytes,
    zarr_array,
    zarr_store,
)
from dask_pdist.store import zarr_json

__all__ = ["acquire_lock", "holding_lock", "lock_path", "release_lock"]  # re-exported: the lock is io/locks.py's

#: A store's location: a local folder, or a key prefix on an object store (``s3://b/d.zarr``).
StorePath = Path | Location

if TYPE_CHECKING:
    import numpy as np

#: Root arrays a store of ours may hold (``chunk_done`` only in the old layout).
ROOT_ARRAYS = (*ALL_METRICS, "step", "token_i", "token_j", "embedding_rms", DONE)
BOOKKEEPING_ARRAYS = (DONE, INPUT_CHECKSUM, INPUT_VERSION, "chunk_digest", "chunk_digest_packed")
# files inside one zarr array: its metadata, chunk files c/0/1/2, and temp files of killed writes
_ARRAY_ENTRY = re.compile(r"zarr\.json|c(/\d+)+(\.[^/]+\.partial)?|c(/\d+)*/\d+\.[^/]+\.partial")


def store_path(path: str | os.PathLike[str] | Location, storage_options: dict | None = None) -> StorePath:
    """A store's location: a :class:`~pathlib.Path`, or a :class:`Location` for a URL.

    A URL must name a prefix below the bucket (``s3://bucket/d.zarr``): the writer lock lives
    next to the store, never inside it."""
    found = locate(path, storage_options)
    if not is_remote(found):
        return found
    rest = found.url.split("://", 1)[1].strip("/")
    if found.protocol in BUCKET_SCHEMES and "/" not in rest:
        where = f"{found.protocol}://{rest or 'bucket'}"
        raise StoreError(f"{found.url}: give a store name inside the bucket, e.g. {where}/distances.zarr")
    if not rest:
        raise StoreError(f"{found.url}: give a store name, e.g. {found.protocol}://distances.zarr")
    return found


def done_path(path: StorePath) -> StorePath:
    """The ``chunk_done`` array of a store, in the sub-group or (old stores) at the root."""
    old = path / DONE
    if not (path / BOOKKEEPING / DONE).exists() and (old / "zarr.json").exists():
        return old
    return path / BOOKKEEPING / DONE


def root_bytes(path: StorePath) -> bytes | None:
    """The root ``zarr.json`` of ``path`` as stored (one atomic file), or None if absent."""
    try:
        return (path / "zarr.json").read_bytes()
    except PermissionError:
        if is_remote(path):
            raise  # wrong credentials: say so, not "not a store"
        return None
    except OSError:
        return None


def parse_root(raw: bytes | None) -> dict[str, Any] | None:
    """The root document ``raw`` (:func:`root_bytes`) parsed, or None if absent or unreadable."""
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def read_root(path: StorePath) -> dict[str, Any] | None:
    """The root ``zarr.json`` of ``path``, or None if absent or unreadable."""
    return parse_root(root_bytes(path))


def root_version(raw: bytes | None) -> str:
    """A short digest of a root document (:func:`root_bytes`): every job that writes a store
    rewrites its root first (marked incomplete) and last (complete), so a root that differs
    from the one a reader opened means the store changed since."""
    import hashlib

    return hashlib.blake2b(raw or b"", digest_size=12).hexdigest()


def pinned_metadata(raw: bytes) -> dict[str, bytes]:
    """The metadata documents of a store as its root document ``raw`` records them: the root
    itself and every array's, from its consolidated metadata (for :class:`~.digests.Digests`'
    ``pinned``). An append rewrites the arrays' ``zarr.json`` one file at a time and the root
    last; a reader that takes every shape from the one root it read sees one consistent store."""
    nodes = ((parse_root(raw) or {}).get("consolidated_metadata") or {}).get("metadata") or {}
    pinned = {"zarr.json": raw}
    for name, doc in nodes.items():
        if isinstance(doc, dict) and doc.get("node_type") == "array":
            pinned[f"{name}/zarr.json"] = json.dumps(doc).encode()
    return pinned


def changed_since_opened(path: StorePath, where: str = "") -> StoreError:
    """The error for a read that fails because a writer changed the store since it was
    opened: not damage, and nothing to recompute."""
    return StoreChangedError(
        f"{path}: {where + ': ' if where else ''}the store was changed by a writer since it was opened (an append,"
        " --resume or --overwrite rewrote it); open it again (open_distances) to read it as it is now"
    )


def check_metadata(path: StorePath, *, every_file: bool = False) -> None:
    """Refuse a store one of whose ``zarr.json`` files (root, arrays, sub-group) is not valid
    JSON, naming the file: zarr would report only "Unterminated string starting at ...".

    The files checked are those the root's consolidated metadata names (an open costs the
    same at any step count); ``every_file`` (``verify``), or a store without consolidated
    metadata, lists the whole store and checks every ``zarr.json`` found."""
    root = read_root(path) or {}
    named = sorted(((root.get("consolidated_metadata") or {}).get("metadata") or {}).keys())
    if named and not every_file:
        for name in named:
            _parse_metadata(path, f"{name}/zarr.json", name)
        return
    listed = files_under(path)
    present = set(listed)
    for name in named:  # every array and group the store's own metadata names
        if f"{name}/zarr.json" not in present:
            raise _missing(path, name)
    for rel in listed:
        if rel == "zarr.json" or rel.endswith("/zarr.json"):
            _parse_metadata(path, rel)


def _missing(path: StorePath, name: str) -> StoreError:
    return StoreError(
        f"{path}: {name}/zarr.json is missing (the store's metadata names {name}); the store cannot be"
        " read: recompute it (`dask-pdist compute ... --overwrite`)"
    )


def _parse_metadata(path: StorePath, rel: str, name: str | None = None) -> None:
    try:
        meta = json.loads((path / rel).read_text())
        if not isinstance(meta, dict) or "node_type" not in meta:
            raise ValueError("not a zarr metadata document")
    except PermissionError:
        raise
    except FileNotFoundError:
        if name is None:
            raise
        raise _missing(path, name) from None
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path}: {rel} is damaged ({type(exc).__name__}: {exc}); the store cannot be read: recompute it"
            " (`dask-pdist compute ... --overwrite`)"
        ) from None


def read_attrs(path: StorePath) -> dict[str, Any] | None:
    """The root attributes of a store, or None if its zarr.json is missing or unreadable."""
    meta = read_root(path)
    return None if meta is None else meta.get("attributes", {})


def is_store(path: str | os.PathLike[str] | Location) -> bool:
    """True if ``path`` holds a distance store written by dask_pdist (not one of its other
    outputs, whose provenance carries the same version attribute)."""
    meta = read_root(locate(path))
    attrs = meta.get("attributes", {}) if meta is not None else {}
    return MARKER_ATTR in attrs and KIND_ATTR not in attrs and CLUSTERS_MARKER_ATTR not in attrs


def is_complete(meta: dict[str, Any] | None) -> bool:
    """The completion record counts only together with the consolidated metadata."""
    if not meta:
        return False
    return bool(meta.get("attributes", {}).get(COMPLETE_ATTR)) and bool(meta.get("consolidated_metadata"))


def write_root_attrs(path: StorePath, **attrs: Any) -> None:
    """Set (or, for None, remove) root attributes in one atomic replace of ``zarr.json``.

    zarr rewrites the root ``zarr.json`` without its consolidated metadata when attributes
    change; this keeps that metadata, so no reader ever sees one without the other."""
    meta = read_root(path)
    if meta is None:
        raise StoreError(f"{path}: zarr.json is missing or unreadable")
    target = meta.setdefault("attributes", {})
    for key, value in attrs.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    replace_bytes(path / "zarr.json", zarr_json.encode(meta))


# -- what a store of ours holds -------------------------------------------------------------


def foreign_entries(path: StorePath, limit: int = 5, shallow: bool = False) -> list[str]:
    """Entries under ``path`` that dask_pdist never writes (relative paths, at most ``limit``).

    ``shallow``: not inside the arrays' chunk folders (``NAME/c/``), whose files grow with the
    steps: for an append, which writes only new chunks at their own keys and deletes nothing."""
    found: list[str] = []
    if is_remote(path):  # objects only: a "folder" is a key prefix, symlinks do not exist
        return [rel for rel in files_under(path) if not _known(rel, False)][:limit]
    # os.scandir, not os.walk with Path objects: every append checks its store this way
    pending = [(os.fspath(path), "")]  # depth first, as os.walk
    while pending and len(found) < limit:
        folder, rel_root = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(((not e.is_dir(), e.name, e) for e in listing), key=lambda t: t[:2])
        except OSError:
            continue  # (as os.walk: an unreadable folder is skipped)
        inside = []
        for is_file, name, entry in entries:  # its folders, then its files, by name
            rel = f"{rel_root}{name}"
            if entry.is_symlink() or not _known(rel, not is_file):
                found.append(rel)
            elif not is_file and not (shallow and name == "c"):
                inside.append((entry.path, rel + "/"))
        pending.extend(reversed(inside))
    return found[:limit]


def _known(rel: str, is_dir: bool) -> bool:
    parts = rel.split("/")
    if parts[0] == BOOKKEEPING:
        if len(parts) == 1:
            return is_dir
        if len(parts) == 2 and parts[1] == "zarr.json":
            return not is_dir
        parts = parts[1:]
        arrays: tuple[str, ...] = BOOKKEEPING_ARRAYS
    else:
        arrays = ROOT_ARRAYS
    if len(parts) == 1 and parts[0] == "zarr.json":
        return not is_dir
    if parts[0] not in arrays:
        return False
    if len(parts) == 1:
        return is_dir
    inner = "/".join(parts[1:])
    if is_dir:
        return re.fullmatch(r"c(/\d+)*", inner) is not None
    return _ARRAY_ENTRY.fullmatch(inner) is not None


def not_a_store(path: StorePath) -> StoreError:
    """The error for a location that is not a readable dask_pdist store, saying whether it is
    one of ours whose root ``zarr.json`` is gone (damaged) or not ours at all."""
    if has_bookkeeping(path):
        return StoreError(
            f"{path}: a damaged dask_pdist store: its root zarr.json is missing or unreadable (a write was"
            " interrupted, or the file was deleted); recompute it with `dask-pdist compute ... --overwrite`"
        )
    hint = "" if is_remote(path) else stores_hint(path)  # a folder of run stores (compute 'runs/*' -o out/)
    return StoreError(f"{path}: not a dask_pdist store (no zarr.json with {MARKER_ATTR!r}){hint}")


def has_bookkeeping(path: StorePath) -> bool:
    return (path / BOOKKEEPING / DONE / "zarr.json").is_file() or (path / DONE / "zarr.json").is_file()


def store_progress(path: str | os.PathLike[str] | Location) -> tuple[np.ndarray, bool]:
    """The ``chunk_done`` flags (one per block) and whether the store is complete.

    Complete means the completion record is written, together with the consolidated
    metadata it vouches for (the last write of a job)."""
    import numpy as np

    path = store_path(path)
    where = done_path(path)
    try:
        done = np.asarray(zarr_array(where)[...])
    except PermissionError:
        raise
    except Exception as exc:
        raise StoreError(
            f"{path}: the done flags {str(where)[len(str(path)) + 1 :]} are unreadable ({type(exc).__name__}: {exc});"
            f" run `dask-pdist verify {path}`"
        ) from exc
    return done, is_complete(read_root(path))


#: catch_warnings swaps the process-wide filters: two stores finishing at once in one graph
#: (several runs) would restore each other's filters mid-way and let the warning through
_WARNINGS_LOCK = threading.Lock()


def consolidate(path: StorePath) -> None:
    import zarr

    with _WARNINGS_LOCK, warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension to format 3; we write it so that
        # plain xarray.open_zarr(path) opens the store without a fallback warning
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(zarr_store(path, read_only=False))


def resize_in_metadata(path: StorePath, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Give the arrays ``sizes`` names a new first dimension (growing only), in the metadata
    of a complete store; returns their new metadata documents, for
    :func:`consolidate_changed`.

    What ``zarr.Array.resize`` does to a growing array (a new ``shape`` in its ``zarr.json``;
    no chunk is touched), done from the documents the store's consolidated metadata already
    holds (equal to the files while the store is complete): one write per array instead of a
    read and a write through zarr's event loop. Arrays already that size are not written."""
    root = read_root(path) or {}
    known = ((root.get("consolidated_metadata") or {}).get("metadata")) or {}
    docs, files = {}, []
    for name, size in sizes.items():
        doc = known.get(name)
        if doc is None or doc.get("node_type") != "array":
            raise StoreError(f"{path}: the consolidated metadata lacks array {name}; run `dask-pdist verify {path}`")
        if int(doc["shape"][0]) > size:
            raise StoreError(f"internal error: {path}/{name} would shrink from {doc['shape'][0]} to {size}")
        if int(doc["shape"][0]) != size:
            doc = {**doc, "shape": [size, *doc["shape"][1:]]}
            files.append((path / name / "zarr.json", zarr_json.encode(doc)))
        docs[name] = doc
    _replace_all(files)
    return docs


_POOL: list[Any] = []  # made at the first use, kept: an append process may write many times
_POOL_LOCK = threading.Lock()


def _replace_all(files: list[tuple[StorePath, bytes]]) -> None:
    # independent files (no order among them) written at once: each write is its own atomic
    # replace, and on a busy disk or an object store their latencies overlap. Returns only when
    # every write has ended, raising the first failure.
    if len(files) < 2:
        for where, data in files:
            replace_bytes(where, data)
        return
    from concurrent.futures import ThreadPoolExecutor, wait

    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(8, thread_name_prefix="dask_pdist-metadata"))
    futures = [_POOL[0].submit(lambda w=where, d=data: replace_bytes(w, d)) for where, data in files]
    wait(futures)
    for future in futures:
        future.result()


def consolidate_changed(path: StorePath, docs: dict[str, dict[str, Any]], groups: tuple[str, ...] = ()) -> None:
    """Update the consolidated metadata of a store whose other nodes did not change: the
    arrays' documents ``docs``, and the attributes of ``groups`` read from their
    ``zarr.json``; one atomic replace of the root ``zarr.json`` (what :func:`consolidate`
    writes, without listing the store and reading every node)."""
    meta = read_root(path)
    known = ((meta or {}).get("consolidated_metadata") or {}).get("metadata")
    if meta is None or known is None:
        consolidate(path)
        return
    known.update(docs)
    for name in groups:
        known[name] = {**known[name], "attributes": json.loads((path / name / "zarr.json").read_text())["attributes"]}
    replace_bytes(path / "zarr.json", zarr_json.encode(meta))
