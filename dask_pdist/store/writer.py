"""The writer of distance stores: :func:`to_zarr` (zarr format 3, NaN fill, chunks aligned with dask).

The store tells the truth about what it holds. Each dask task writes one block of every
variable, then sets its own element of the ``chunk_done`` array (one zarr chunk per block,
so concurrent writers never share a file; zarr attributes are not safe for concurrent
updates), next to the crc32c of the input values it read (``input_checksum``). Both live in
the ``_dask_pdist`` sub-group (see :mod:`.layout`). The ``complete`` record is the last
write, by one task that depends on all others. Chunk writes are atomic on local disk
(zarr >= 3.1.3: temp file + rename) and every chunk of every array carries a crc32c
checksum, so a killed job leaves only whole chunks, which ``--resume`` completes. One
writer at a time: a lock file next to the store.

The store is plain xarray-on-zarr: ``xarray.open_zarr(path)`` opens it without dask_pdist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from dask_pdist._version import __version__
from dask_pdist.conventions import (
    BOOKKEEPING,
    COMPLETE_ATTR,
    DISTANCE_DIMS,
    FINGERPRINT_ATTR,
    INPUT_CHECKSUM,
    STOPPED_ATTR,
)
from dask_pdist.errors import RepairWarning, StoreError
from dask_pdist.io.paths import is_remote, zarr_array
from dask_pdist.io.publish import clean_stale
from dask_pdist.store.append import Stored, check_append, grow, keep_gone_steps, stored_fingerprint
from dask_pdist.store.chunk_files import ChunkWriter
from dask_pdist.store.codecs import COMPRESSORS, DEFAULT_COMPRESSOR, Compressor, codec_choice, codec_name
from dask_pdist.store.creation import create, task_variables
from dask_pdist.store.digests import (
    DIGEST,
    PACKED_ATTR,
    STORE_ID_ATTR,
    recording_array,
    update_packed,
)
from dask_pdist.store.fast_append import fast_job
from dask_pdist.store.guards import check_input_outside, check_output, check_resumed_input, stop_job
from dask_pdist.store.integrity import damaged_blocks, present_chunks
from dask_pdist.store.job import Job
from dask_pdist.store.layout import (
    StorePath,
    acquire_lock,
    consolidate,
    done_path,
    is_complete,
    is_store,
    read_attrs,
    read_root,
    release_lock,
    store_path,
    store_progress,
    write_root_attrs,
)
from dask_pdist.store.reader import open_distances

__all__ = ["to_zarr"]


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    # zarr chunks are regular: make every dask chunk but the last one equal, so each dask
    # task writes whole store chunks and no two tasks share one
    chunks = {}
    for dim in DISTANCE_DIMS:
        sizes = ds.chunksizes.get(dim)
        if sizes and (len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0])):
            chunks[dim] = max(sizes)
    return ds.chunk(chunks) if chunks else ds


def _step_chunks(ds: xr.Dataset, path: StorePath) -> xr.Dataset:
    # an append writes in the store's chunks along step (the token chunks are the job's own:
    # a difference is refused with the other parameters)
    chunk = (stored_fingerprint(path).get("chunks") or [None])[0]
    if chunk and tuple(ds.chunksizes["step"]) != tuple(da.core.normalize_chunks(chunk, (ds.sizes["step"],))[0]):
        ds = ds.chunk({"step": int(chunk)})
    return ds


def _fingerprint(ds: xr.Dataset, compressor: str) -> dict[str, Any]:
    # what must match for a resumed job to continue the same computation
    return {
        "source_key": ds.attrs.get("source_key", ""),
        "source_fingerprint": ds.attrs.get("source_fingerprint", ""),
        "input_dtype": ds.attrs.get("input_dtype", ""),
        "compute_dtype": ds.attrs.get("compute_dtype", ""),
        "variables": {name: str(var.dtype) for name, var in sorted(ds.data_vars.items())},
        "shape": [int(ds.sizes[d]) for d in DISTANCE_DIMS],
        "chunks": [int(ds.chunksizes[d][0]) for d in DISTANCE_DIMS],
        "compressor": compressor,
        # what the choice meant when the store was made: a resumed job writes the same codecs
        "codecs": {name: codec_name(codec_choice(compressor, name)) for name in sorted(ds.data_vars)},
        "tokens": _token_labels(ds),
        "version": __version__,
    }


def _token_labels(ds: xr.Dataset) -> str:
    # --resume with labels must not silently keep a store's integer labels (or the reverse)
    import hashlib

    tokens = np.asarray(ds["token_i"].values)
    if tokens.dtype.kind in "iu" and np.array_equal(tokens, np.arange(len(tokens))):
        return "none (token index)"
    return "labels sha256:" + hashlib.sha256("\n".join(map(str, tokens.tolist())).encode()).hexdigest()[:16]


def _clean_partials(path: StorePath) -> int:
    # temp files of chunk writes killed mid-way (zarr's LocalStore names them *.partial);
    # an object store has none: a PUT is whole or absent
    n = 0
    if is_remote(path):
        return n
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _write_chunk(
    block: np.ndarray,
    *,
    store: StorePath,
    variable: str,
    store_id: int,
    at: tuple[int, int],
    writer: ChunkWriter | None = None,
    block_info: Any = None,
) -> np.ndarray:
    # one task writes one whole chunk (chunks aligned with dask) and returns its digest: the
    # crc32c trailer of the bytes written, keyed with its position and store (store/digests.py);
    # `at`: the (step, step-block) where the graph's first block lies in the store
    (a, b), *rest = block_info[0]["array-location"]
    region = (slice(a + at[0], b + at[0]), *(slice(*r) for r in rest))
    if writer is not None:  # a local store's chunk written here, not on zarr's event loop
        digest = writer.write(region, block, store_id)
        if digest is not None:
            return np.full((1, 1, 1), digest, dtype=np.uint32)
    array, written = recording_array(store, variable, store_id)
    array[region] = block
    first, *others = block_info[0]["chunk-location"]
    key = "/".join([variable, "c", str(first + at[1]), *map(str, others)])
    return np.full((1, 1, 1), written[key], dtype=np.uint32)  # a per-step coordinate's too (new_axis)


def _mark_done(
    *written: np.ndarray, done: Any, digest: Any, block0: int, writers: tuple = (None, None), block_info: Any = None
) -> np.ndarray:
    # runs only after every variable's block (and the per-step coordinates) is on disk: their
    # digests first, then the done flag, so a block marked done always has its digests.
    # writers: store/chunk_files.py's for the digest and done arrays (None: zarr writes them)
    first, *others = (loc[0] for loc in block_info[None]["array-location"])
    index = (first + block0, *others)
    row = np.array([int(w.ravel()[0]) for w in written], dtype=np.uint32)
    at = tuple(slice(i, i + 1) for i in index)
    digest_writer, done_writer = writers
    if digest is not None:
        whole = (*at, slice(0, row.size))
        if digest_writer is None or digest_writer.write(whole, row.reshape((1,) * len(at) + (-1,)), 0) is None:
            digest[index] = row
    if done_writer is None or done_writer.write(at, np.ones((1,) * len(at), np.uint8), 0) is None:
        done[index] = 1
    return row  # to the job's last task, which copies it into the packed table


def _finish(rows: list, store: StorePath, lock: str, indices: np.ndarray) -> int:
    if not (read_root(store) or {}).get("consolidated_metadata"):
        consolidate(store)  # a store finished by an older version lacks it
    packed = update_packed(store, indices, rows) if int((read_attrs(store) or {}).get(STORE_ID_ATTR, 0)) else None
    # the completion record is the last write, one atomic replace of the root zarr.json that
    # also holds the consolidated metadata: a reader sees both or neither
    extra = {PACKED_ATTR: packed} if packed is not None else {}
    write_root_attrs(store, **{COMPLETE_ATTR: True, STOPPED_ATTR: None}, **extra)
    release_lock(store, lock)
    return len(rows)


def _write_graph(ds: xr.Dataset, path: StorePath, todo: np.ndarray, lock: str) -> Delayed:
    token = dask.base.tokenize(str(path), *(v.data.name for v in ds.data_vars.values()))
    written = []
    # write every chunk, even one equal to the fill value (an all-NaN block under
    # nonfinite="propagate"): skipping it would make it look missing to verify, and the
    # comparison costs ~25% of the write time (measured)
    # (open_array(config=...) is silently ignored in zarr 3.1; with_config is honoured)
    config = {"write_empty_chunks": True}
    names = task_variables(ds, (path / BOOKKEEPING / INPUT_CHECKSUM / "zarr.json").exists())
    digest = None  # a store made before chunk digests (resumed): written without them
    store_id = int((read_attrs(path) or {}).get(STORE_ID_ATTR, 0))
    if store_id and (path / BOOKKEEPING / DIGEST / "zarr.json").exists():
        digest = zarr_array(path / BOOKKEEPING / DIGEST, "r+").with_config(config)
        if digest.attrs.get("variables") != names:
            raise StoreError(
                f"{path}: the store records digests of {digest.attrs.get('variables')}, this job writes {names}"
            )
    # the graph starts at the first step-block to write (an append: the new ones), so that
    # building it costs what the job writes, not the steps the store holds
    block0 = int(np.argwhere(todo)[:, 0].min()) if todo.any() else 0
    step0 = int(sum(ds.chunksizes["step"][:block0]))
    todo = todo[block0:]
    for name in names:
        # whole blocks: selecting them costs what is selected (slicing normalises every chunk)
        data = ds[name.split("/")[-1]].data
        if block0:  # a task per selected block: only where the job starts past the first
            data = data.blocks[block0:]
        digests = data.map_blocks(
            _write_chunk,
            store=path,
            variable=name,
            store_id=store_id,
            writer=ChunkWriter.of(path, name, zarr_array(path / name, "r")),
            at=(step0, block0),
            dtype=np.uint32,
            meta=np.empty((0, 0, 0), np.uint32),  # else dask calls the task on an empty block to find it
            chunks=(1, 1, 1),
            # a per-step coordinate's digest block is (1, 1, 1) too: no indexing task per block
            new_axis=list(range(data.ndim, 3)),
            name=f"write-{name}-{token}-{block0}",
        )
        written.append(digests)
    done_array = zarr_array(done_path(path), "r+").with_config(config)
    writers = (
        None if digest is None else ChunkWriter.of(path, f"{BOOKKEEPING}/{DIGEST}", digest),
        ChunkWriter.of(path, done_path(path).relative_to(path).as_posix(), done_array)
        if isinstance(path, Path)
        else None,
    )
    done = da.map_blocks(
        _mark_done,
        *written,
        done=done_array,
        digest=digest,
        block0=block0,
        writers=writers,
        dtype=np.uint32,  # each block's digests (only its delayed value is used)
        meta=np.empty((0, 0, 0), np.uint32),
        chunks=(1, 1, 1),
        name=f"mark-done-{token}-{block0}",
    )
    local = np.argwhere(todo)  # resume: only blocks not done
    indices = local + np.array([block0, 0, 0])
    # the last task, on the blocks' keys: dask.delayed(_finish)(blocks) would first turn the
    # whole graph (every stored step's input tasks too) into one dict
    name = f"finish-{token}-{block0}"
    task = (_finish, [(done.name, *map(int, idx)) for idx in local], path, lock, indices)
    return Delayed(name, HighLevelGraph.from_collections(name, {name: task}, dependencies=[done]))


def _resume_todo(ds: xr.Dataset, path: StorePath) -> np.ndarray:
    # the blocks not marked done, and those marked done whose chunk file of some variable is
    # gone (deleted since, even from a complete store): their flags are cleared first, then
    # the completion record, so a kill in between still finds them next time
    flags, complete = store_progress(path)
    lost = np.zeros(flags.shape, bool)
    for name in ds.data_vars:
        present = present_chunks(path, str(name))
        for idx in zip(*np.nonzero(flags), strict=True):
            if tuple(int(i) for i in idx) not in present:
                lost[idx] = True
    damaged, notes = damaged_blocks(path, task_variables(ds), flags.astype(bool) & ~lost)
    if notes:
        import warnings

        shown = "; ".join(notes[:3]) + (f"; and {len(notes) - 3} more" if len(notes) > 3 else "")
        warnings.warn(
            f"{path}: {int(damaged.sum())} written block(s) fail their check and are recomputed: {shown}",
            RepairWarning,
            stacklevel=3,
        )
    lost |= damaged
    if lost.any():
        done = zarr_array(done_path(path), "r+")
        for idx in np.argwhere(lost):
            done[tuple(idx)] = 0
    todo = (flags == 0) | lost
    if todo.any():  # also a done flag lost from a complete store; the packed digests from there on are stale
        first = int(np.argwhere(todo)[0][0])
        held = int((read_attrs(path) or {}).get(PACKED_ATTR, 0))
        write_root_attrs(path, **{COMPLETE_ATTR: False, PACKED_ATTR: min(held, first)})
    return todo


def _redo_after(path: StorePath, whole: int, chunk: int) -> None:
    # finishing an interrupted append: the blocks after the store's whole steps (those in
    # step-blocks done in full) are computed again. Some may be done, but the input at their
    # positions need not be the one they were computed from (their checkpoints deleted and
    # newer ones saved, or rewritten): their labels are the input's now, so their distances
    # must be too. (The whole steps' input is checked by check_append.)
    done = zarr_array(done_path(path), "r+")
    if whole // chunk < done.shape[0]:
        done[whole // chunk :] = 0


def _grew(diff: list[str]) -> bool:
    # only the step count and the input's file identity differ: more checkpoints, a longer file
    return all(d.startswith(("shape:", "source_fingerprint:")) for d in diff)


def to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    compressor: Compressor | None = None,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    compute: bool = True,
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Write a distance Dataset to a zarr (format 3) store, every metric from one graph.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances`.
    path : path-like or URL
        Store directory to create, or a URL that fsspec understands (``s3://bucket/d.zarr``,
        ``gs://...``, ``memory://...``): the store is written through zarr's fsspec store,
        one object per chunk (a PUT is whole or absent, so a killed job leaves only whole
        chunks there too).
    compressor : {"auto", "none", "lz4", "zstd"}, optional
        Default ``"auto"`` (with ``append``: the store's choice). ``"auto"``: per variable,
        as measured (:data:`AUTO_CODECS`: Euclidean uncompressed,
        Chebyshev Blosc lz4 with bit shuffle); ``"lz4"``/``"zstd"``: Blosc with byte shuffle for
        every variable; ``"none"``: no compression (see docs/compute.md for the measurements).
        The choice and the codecs it meant are recorded in the store (``--resume`` checks
        them). Every chunk also carries a crc32c checksum.
    overwrite : bool
        Replace an existing dask_pdist store at ``path``. Anything else at ``path`` is
        never written into or deleted.
    resume : bool
        Finish an interrupted store: compute only the blocks not marked done, and those whose
        chunk file of some variable is gone (deleted since, also from a complete store; a
        chunk that is present but corrupt is found by :func:`verify_store`). Refused if the
        input or parameters differ from those recorded in the store.
    append : bool
        Grow the store at ``path`` to the steps of ``ds``, which must hold the store's steps
        (first, input unchanged: checked against the recorded checksums) and more after them:
        only the new steps are computed, in the store's chunks along ``step`` (a last chunk
        the store holds only partly is recomputed whole). Refused, the store unchanged, for
        other parameters (dtype, metrics, tokens, token chunks, codecs), a stored step lacking
        or changed, or a new step before the last stored one. An input read from one file
        per checkpoint may lack stored steps whose checkpoints were deleted since (Trainer's
        ``save_total_limit``): their distances are kept, the stored steps still there are
        checked. A stored step whose file is the version recorded when it was read (path,
        size, mtime, ctime, inode; or ETag) is not read again. Finishes an interrupted store
        as ``resume`` does; with nothing new, writes nothing. Without a store at ``path``,
        creates it. While appending the store reads as incomplete.
    compute : bool
        If False, create the store (metadata and coordinates) now and return a
        ``dask.delayed`` object that writes the distances when computed (run it under a
        progress bar or a distributed client as you like). The job holds the store's
        writer lock (``.NAME.lock`` next to it) until it finishes; a lock left by a process
        that has exited is taken over by the next writer.
    progress : bool, optional
        Show a progress bar (tqdm, on stderr) while computing. Default: on in a terminal or
        a Jupyter notebook, off otherwise. Under a dask.distributed ``Client`` use
        ``compute=False`` and ``distributed.progress`` instead.
    storage_options : dict, optional
        For a URL: options of its fsspec backend (credentials and the endpoint otherwise come
        from the backend's usual configuration, for S3 the ``AWS_*`` variables).

    Returns
    -------
    xarray.Dataset
        The written store, opened lazily (as :func:`open_distances` opens it); or a
        ``dask.delayed.Delayed`` if ``compute=False``.

    Raises
    ------
    StoreError
        ``path`` exists and neither ``overwrite`` nor ``resume`` is given, is not (only) a
        dask_pdist store, is a symbolic link or holds the input, is being written by another
        live process, or (resume) was made from other input or parameters, or the input
        values of its finished blocks changed (naming the first changed step).

    Examples
    --------
    >>> ds = to_zarr(pairwise_distances(open_history("h.safetensors")), "d.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234)  # doctest: +SKIP
    """
    path = store_path(path, storage_options)
    if append and overwrite:
        raise ValueError("overwrite and append exclude each other: append grows a store, overwrite replaces it")
    appending = append and path.exists()
    if appending and compressor is None and is_store(path):
        compressor = stored_fingerprint(path).get("compressor")
    compressor = compressor or DEFAULT_COMPRESSOR
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor={compressor!r}: choose one of {list(COMPRESSORS)}")
    check_input_outside(ds, path)
    try:
        lock = acquire_lock(path)  # first: a running writer is the most useful thing to report
    except StoreError:
        raise
    except OSError:
        check_output(path, overwrite, resume)  # no parent folder, not writable: say so
        raise
    try:
        resuming = check_output(path, overwrite, resume or appending, shallow=appending)
        gone = None
        seen = Stored(path)  # what the append's checks read, not read again by its growth
        if appending:
            ds, gone = keep_gone_steps(ds, path, seen)  # checkpoints deleted since (save_total_limit): kept
            ds = _step_chunks(ds, path)
        ds = _regular_chunks(ds)
        fingerprint = _fingerprint(ds, compressor)
        if appending:
            # a complete store (the usual append) has every block done and no killed writes'
            # partial files: neither is looked for, so an append's cost does not grow with
            # the steps stored (one file per block to read)
            was_complete = is_complete(read_root(path))
            stored = check_append(ds, path, fingerprint, gone, seen)
            if stored == ds.sizes["step"] and was_complete:
                release_lock(path, lock)  # nothing new: nothing written
                return open_distances(path) if compute else dask.delayed(0)
            if not was_complete:
                _clean_partials(path)
                _redo_after(path, stored, int(ds.chunksizes["step"][0]))
            grow(ds, path, fingerprint, seen)
        elif resuming:
            old = json.loads(read_attrs(path).get(FINGERPRINT_ATTR, "{}"))
            diff = [f"{k}: store has {old.get(k)!r}, now {v!r}" for k, v in fingerprint.items() if old.get(k) != v]
            if diff:
                raise StoreError(
                    f"{path}: cannot resume, the job differs from the one that made the store: "
                    + "; ".join(diff)
                    + ("; the input grew (new steps): finish it with append=True (--append)" if _grew(diff) else "")
                )
            _clean_partials(path)
            clean_stale(path)  # a killed --overwrite's hidden store next to it (its writer is gone)
            check_resumed_input(ds, path)
            if not store_progress(path)[1]:
                grow(ds, path, fingerprint)  # an append killed while growing the store: finish that first
        else:
            create(ds, path, compressor, fingerprint)
        if appending and was_complete:  # the new blocks, and a last one the store held partly
            todo = np.zeros(tuple(len(ds.chunksizes[d]) for d in DISTANCE_DIMS), bool)
            todo[stored // ds.chunksizes["step"][0] :] = True
        elif appending:  # the blocks not marked done: the new ones, and any an interrupted job left
            todo = store_progress(path)[0] == 0
        elif resuming:
            todo = _resume_todo(ds, path)
        else:
            todo = np.ones(tuple(len(ds.chunksizes[d]) for d in DISTANCE_DIMS), bool)
        job = None
        if appending and was_complete:  # a few new blocks: written without the graph
            job = fast_job(
                ds, path, todo, lock, task_variables(ds, (path / BOOKKEEPING / INPUT_CHECKSUM / "zarr.json").exists())
            )
        if job is None:
            job = _write_graph(ds, path, todo, lock)
    except BaseException:
        release_lock(path, lock)
        raise
    if not compute:
        return job
    Job(job, desc="writing", on_stop=lambda exc: stop_job(path, exc)).execute(progress=progress)
    return open_distances(path)
