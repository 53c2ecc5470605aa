"""Reads that never return silently wrong data (``verify`` is in :mod:`.verification`).

zarr reads an absent chunk as the fill value (NaN) and reports a checksum mismatch without
saying where. :class:`CheckedChunks` is the dask source :func:`open_distances` reads through:
an absent chunk of a block that should be there, or a chunk that fails its crc32c, raises a
:class:`StoreError` naming the store, variable, chunk and step range. The presence check
costs one ``stat`` and only when the block read starts with NaN (an absent chunk is all NaN).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from dask_pdist.errors import StoreError
from dask_pdist.io.paths import files_under, is_remote
from dask_pdist.io.publish import pid_alive
from dask_pdist.store.digests import Absent, Digests, Misplaced, checked_store, expected_digests
from dask_pdist.store.layout import (
    StorePath,
    changed_since_opened,
    lock_path,
    root_bytes,
    root_version,
)

__all__ = ["CheckedChunks", "lazy_checked", "check_small_arrays", "present_chunks", "damaged_blocks"]


def _hint(store: str, name: str = "") -> str:
    if name in ("step", "token_i", "token_j"):  # written once, at creation: no block recomputes them
        return f"run `dask-pdist verify {store}` to list every damaged chunk; recompute the store (--overwrite)"
    return (
        f"run `dask-pdist verify {store}` to list every damaged chunk; the same `dask-pdist compute ... --resume`"
        " that made the store recomputes exactly those"
    )


def _chunk_key(name: str, idx: tuple[int, ...]) -> str:
    # zarr format 3 default chunk key encoding, separator "/" (what to_zarr writes)
    return "/".join([name, "c", *map(str, idx)])


def _chunk_present(store: StorePath, name: str, idx: tuple[int, ...]) -> bool:
    """Whether the chunk's file (object) exists: one ``stat`` (one HEAD request)."""
    where = store / _chunk_key(name, idx)
    return where.is_file()


def present_chunks(path: StorePath, name: str) -> set[tuple[int, ...]]:
    """Indices of the chunks of array ``name`` whose files (objects) exist: one listing."""
    base = path / name
    keys = files_under(base) if base.is_dir() else []
    found = set()
    for key in keys:
        parts = key.split("/")
        if parts[0] == "c" and len(parts) > 1 and all(p.isdigit() for p in parts[1:]):
            found.add(tuple(int(p) for p in parts[1:]))
    return found


def _absent(store: StorePath) -> str:
    return "chunk object absent" if is_remote(store) else "chunk file absent"


def _live_lock(path: StorePath) -> bool:
    """Whether a writer lock is held, not counting one whose process is dead on this host (or
    whose pid is now another process's)."""
    import socket

    try:
        holder = json.loads(lock_path(path).read_text())
    except (OSError, ValueError):
        return False
    try:
        started = holder.get("process_start")  # a reused pid is not the writer (io/locks.py)
        mine = holder["host"] == socket.gethostname()
        return not (mine and not pid_alive(int(holder["pid"]), started if isinstance(started, int) else None))
    except (KeyError, TypeError, ValueError):
        return True  # a lock we cannot read is still a lock


def _relative(path: StorePath, inner: StorePath) -> str:
    return str(inner)[len(str(path)) :].lstrip("/")


def _where(name: str, idx: tuple[int, ...], steps: np.ndarray | None, rows: tuple[int, int] | None) -> str:
    out = f"{name} chunk {idx}"
    if steps is not None and rows is not None and len(steps):
        out += f", steps {steps[rows[0]]}..{steps[rows[1] - 1]}"
    return out


class CheckedChunks:
    """A dask ``from_array`` source over one float array of a store (distances or a per-step
    coordinate), with chunk-aligned dask chunks. Holds only the store's location (a path, or
    a URL with its options) and small numpy arrays, so it pickles into the graph.

    ``done`` (incomplete stores, indexed by the array's chunk index along its dims; 1-D
    arrays use the step axis of the flags): chunks of blocks not marked done read as NaN.
    ``done=None``: the store is complete; every chunk must be present. ``opened``: the
    version of the root the reader opened (:func:`~.layout.root_version`); a chunk that fails
    after the root changed is reported as the store changed since, not as damage.
    """

    def __init__(
        self,
        store: StorePath,
        name: str,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: np.dtype,
        steps: np.ndarray,
        done: np.ndarray | None,
        expected: dict[str, int] | None = None,
        opened: str | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.shape = shape
        self.chunks = chunks
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.steps = steps
        self.done = done
        # the digests recorded for this array's chunks, by key (store/digests.py)
        self.expected = (expected if isinstance(expected, Digests) else Digests(expected or {})).only(f"{name}/c/")
        self._array: Any = None
        self._reader: Any = False  # store/chunk_files.py's, once known (None: zarr reads)
        self.opened = opened  # layout.root_version of the root the reader opened, if known

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_reader": False}

    def _zarr(self) -> Any:
        if self._array is None:
            self._array = _checked_array(self.store, self.name, self.expected)
        return self._array

    def _is_done(self, idx: tuple[int, ...]) -> bool:
        if self.done is None:
            return True
        if self.ndim == self.done.ndim:
            return bool(self.done[idx])
        return bool(self.done[idx[0]].any())

    def _rows(self, idx: tuple[int, ...]) -> tuple[int, int]:
        return idx[0] * self.chunks[0], min((idx[0] + 1) * self.chunks[0], self.shape[0])

    def _fail(self, idx: tuple[int, ...], problem: str) -> StoreError:
        where = _where(self.name, idx, self.steps, self._rows(idx))
        if self.opened is not None and root_version(root_bytes(self.store)) != self.opened:
            return changed_since_opened(self.store, where)  # a writer moved on: not damage
        return StoreError(f"{self.store}: {where}: {problem}; {_hint(str(self.store), self.name)}")

    def __getitem__(self, key: Any) -> np.ndarray:
        box, rel = _box(key, self.shape)
        ranges = [range(lo // c, max(lo, hi - 1) // c + 1) for (lo, hi), c in zip(box, self.chunks, strict=True)]
        covered = list(itertools.product(*ranges))
        done = {idx: self._is_done(idx) for idx in covered}
        region = tuple(slice(lo, hi) for lo, hi in box)
        if not any(done.values()):
            data = np.full(tuple(hi - lo for lo, hi in box), np.nan, dtype=self.dtype)
            return data[rel]
        try:
            data = self._read(region, covered)
        except Exception as exc:  # zarr: ValueError for a checksum, others for a bad chunk
            bad = covered[0]
            for idx in covered:  # find the chunk that fails (error path only)
                try:
                    self._zarr().get_block_selection(idx)
                except Exception:
                    bad = idx
                    break
            raise self._fail(bad, _problem(exc)) from exc
        for idx, is_done in done.items():
            sub = tuple(
                slice(max(lo, i * c) - lo, min(hi, (i + 1) * c) - lo)
                for (lo, hi), i, c in zip(box, idx, self.chunks, strict=True)
            )
            if not is_done:
                data[sub] = np.nan
            elif data.size and _fill(data[sub].flat[0]) and not _chunk_present(self.store, self.name, idx):
                raise self._fail(idx, f"missing ({_absent(self.store)})")
        return data[rel]

    def _read(self, region: tuple[slice, ...], covered: list[tuple[int, ...]]) -> np.ndarray:
        # one chunk of a local store: decoded here (store/chunk_files.py); anything else by zarr
        if self._reader is False:
            from dask_pdist.store.chunk_files import ChunkReader

            self._reader = ChunkReader.of(self.store, self.name, self._zarr())
        chunk = None
        if self._reader is not None and len(covered) == 1:
            chunk = self._reader.read(covered[0], self.expected)
        if chunk is None:
            return np.asarray(self._zarr()[region])
        inner = tuple(
            slice(r.start - i * c, r.stop - i * c) for r, i, c in zip(region, covered[0], self.chunks, strict=True)
        )
        part = chunk[inner]
        # a small part is copied: a view would keep the whole decoded chunk alive
        return part if 2 * part.size >= chunk.size else part.copy()


def _fill(value: Any) -> bool:
    # what an absent chunk reads as: NaN, or for integer counts their largest value
    if isinstance(value, np.integer):
        return bool(value == np.iinfo(value.dtype).max)
    return bool(np.isnan(value))


def _checked_array(store: StorePath, name: str, expected: dict[str, int]) -> Any:
    import zarr

    return zarr.open_array(store=checked_store(store, expected), path=name, mode="r", zarr_format=3)


def _problem(exc: Exception) -> str:
    if isinstance(exc, (Misplaced, Absent)):
        return exc.detail
    return f"corrupt ({type(exc).__name__}: {exc})"


def damaged_blocks(path: StorePath, names: list[str], flags: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Blocks marked done in ``flags`` with a chunk of ``names`` (distances, or per-step arrays
    indexed by step block) that fails its checks (checksum, decoding, recorded digest), and
    one line per failing chunk. Reads every chunk of those blocks once (``--resume``)."""
    lost: list[tuple[int, ...]] = []
    expected = expected_digests(path, flags, lost)  # blocks whose record is lost: recomputed too
    bad = np.zeros(flags.shape, bool)
    notes: list[str] = [f"block {idx}: its record of chunk digests is lost" for idx in lost]
    for idx in lost:
        bad[idx] = True
    for name in names:
        try:
            arr = _checked_array(path, name, expected)
        except Exception:
            continue  # the array itself is gone: the presence check reports it
        seen: dict[tuple[int, ...], bool] = {}
        for idx in (tuple(int(i) for i in found) for found in np.argwhere(flags)):
            key = idx if arr.ndim == 3 else idx[:1]
            if key not in seen:
                try:
                    arr.get_block_selection(key)
                    seen[key] = True
                except Exception as exc:
                    seen[key] = False
                    notes.append(f"{name} chunk {key}: {_problem(exc)}")
            if not seen[key]:
                bad[idx] = True
    return bad, notes


def lazy_checked(source: CheckedChunks) -> Any:
    """``source`` as a lazily indexed array for xarray without dask: indexing reads only the
    chunks it touches, through the same checks (``open_distances(chunks=None)``)."""
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class _Checked(BackendArray):
        def __init__(self) -> None:
            self.shape = source.shape
            self.dtype = source.dtype

        def __getitem__(self, key: Any) -> np.ndarray:
            # xarray turns any index into basic ones (ints, slices) plus a numpy step after it
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.BASIC, lambda k: source[k]
            )

    return indexing.LazilyIndexedArray(_Checked())


def _box(key: Any, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], tuple]:
    """The bounding box of an index (ints, slices, integer or boolean arrays, None) and the
    index relative to it: ``source[key] == read(box)[rel]``, numpy's semantics kept (arrays
    are shifted, not reordered)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(n for n, k in enumerate(key) if k is Ellipsis)
        used = sum(k is not None for k in key) - 1
        key = key[:i] + (slice(None),) * (len(shape) - used) + key[i + 1 :]
    key = key + (slice(None),) * (len(shape) - sum(k is not None for k in key))
    box, rel = [], []
    axis = 0
    for k in key:
        if k is None:  # a new axis of length 1: nothing to read
            rel.append(None)
            continue
        n = shape[axis]
        axis += 1
        if isinstance(k, slice):
            r = range(*k.indices(n))
            if len(r) == 0:
                box.append((0, 0))
                rel.append(slice(0, 0))
                continue
            lo, hi = min(r), max(r) + 1
            stop = r.stop - lo
            box.append((lo, hi))
            rel.append(slice(r.start - lo, stop if stop >= 0 else None, r.step))
        elif isinstance(k, (list, np.ndarray)):  # dask passes these with from_array(fancy=True)
            idx = np.asarray(k)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean index of shape {idx.shape} on an axis of length {n}")
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.intp, copy=False)
            idx = np.where(idx < 0, idx + n, idx)
            if idx.size and not (0 <= idx.min() and idx.max() < n):
                raise IndexError(f"index {k} out of bounds for an axis of length {n}")
            lo = int(idx.min()) if idx.size else 0
            box.append((lo, int(idx.max()) + 1 if idx.size else 0))
            rel.append(idx - lo)
        else:
            i = int(k) + (n if int(k) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} out of bounds for an axis of length {n}")
            box.append((i, i + 1))
            rel.append(0)
    return box, tuple(rel)


def check_small_arrays(path: StorePath, names: list[str], expected: dict[str, int] | None = None) -> None:
    """Read the small arrays (coordinates, flags) whole: raise naming the one that is
    absent, corrupt or misplaced. Their chunks are few; reads of distances check their own.
    ``expected``: the store's recorded digests (store/digests.py)."""
    for name in names:
        try:
            arr = _checked_array(path, name, expected or {})
            # one listing per array, not a stat (a HEAD request) per chunk
            listed = set(files_under(path / name))
            for idx in itertools.product(*(range(n) for n in arr.cdata_shape)):
                key = _chunk_key(name, idx)
                if key.split("/", 1)[1] not in listed:
                    raise StoreError(f"{path}: {name} chunk {idx}: missing ({_absent(path)}); {_hint(str(path), name)}")
            arr[...]
        except (StoreError, PermissionError):
            raise
        except Exception as exc:
            raise StoreError(f"{path}: {name}: {_problem(exc)}; {_hint(str(path), name)}") from exc
