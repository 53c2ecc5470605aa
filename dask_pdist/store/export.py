"""Streaming export of a distance Dataset to one safetensors file, as the notebook saves it.

Why this writer is ours: the official ``safetensors`` library serialises from a dict of whole
tensors and builds the entire file buffer in RAM (its maintainers declined a streaming
writer). The result here is (S, V, V) per metric, far larger than memory for long histories.
So we write the header first (every shape is known before computing), size the file once, and
let ``dask.array.store`` place each chunk at its byte offset with positioned writes, in
whatever order dask produces them: memory stays bounded by a few chunks per thread, whatever S.
A URL target (object storage) cannot take positioned writes: there the bytes are streamed in
file order instead (:mod:`dask_pdist.io.upload`).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist._version import __version__
from dask_pdist.conventions import ALL_METRICS, DISTANCE_DIMS
from dask_pdist.errors import StoreError
from dask_pdist.io.locks import acquire_lock, release_lock
from dask_pdist.io.paths import BUCKET_SCHEMES, Location, is_remote, locate
from dask_pdist.io.publish import check_parent, clean_stale, discard, hidden_name, publish
from dask_pdist.io.safetensors_format import header_bytes, pwrite_all, pwrite_segments, write_header
from dask_pdist.io.upload import file_order_pieces, stream_to_location
from dask_pdist.store.job import Job, interactive

__all__ = ["EXPORT_DTYPES", "to_safetensors", "tensor_key", "check_target"]

ExportDtype = Literal["float32", "float16", "float64"]
#: Dtypes a distance tensor may be exported as.
EXPORT_DTYPES: tuple[str, ...] = ("float32", "float16", "float64")
_SAFETENSORS_DTYPE = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
}
#: Metrics exported in their stored (unsigned integer) dtype, whatever ``dtype`` says: counts of
#: representable values, exact by construction.
_INTEGER_METRICS = ("chebyshev_ulp",)


def tensor_key(metric: str) -> str:
    """The safetensors key of a metric, as the notebook names it: ``euclidean_distances``."""
    return f"{metric}_distances"


def _segments(region: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """Contiguous runs of a C-ordered block ``region`` inside an array of ``shape``.

    Pure arithmetic. Returns (element offset in the array, index into the block) pairs: the
    block's sub-array at that index is one contiguous run of the file. A block spanning whole
    trailing axes is few runs (one if it spans all but the first axis); a token-tiled block
    is one run per (step, row) of the tile.
    """
    ndim = len(shape)
    k = ndim  # axes k.. are spanned whole
    while k > 0 and region[k - 1] == (0, shape[k - 1]):
        k -= 1
    if k == 0:
        return [(0, ())]
    strides = [math.prod(shape[a + 1 :]) for a in range(ndim)]
    out = []
    for idx in itertools.product(*(range(lo, hi) for lo, hi in region[: k - 1])):
        elem = sum(i * strides[a] for a, i in enumerate(idx)) + region[k - 1][0] * strides[k - 1]
        out.append((elem, tuple(i - region[a][0] for a, i in enumerate(idx))))
    return out


class _TensorTarget:
    """A ``dask.array.store`` target: ``target[region] = block`` writes the block's bytes at
    their offsets in the file. Holds only a path and numbers, so it pickles into the graph."""

    def __init__(self, path: str, key: str, start: int, shape: tuple[int, ...], dtype: str, final: str) -> None:
        self.path = path
        self.final = final  # the name errors report; ``path`` is the temporary file
        self.key = key
        self.start = start
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)

    def __setitem__(self, index: tuple[slice, ...], block: np.ndarray) -> None:
        region = tuple(s.indices(n)[:2] for s, n in zip(index, self.shape, strict=True))
        block = _file_bytes(block, (self.key, region[0][0]), self.dtype, self.final)
        runs = _segments(region, self.shape)
        size = self.dtype.itemsize
        if len(runs) == 1:
            pwrite_all(self.path, self.start + runs[0][0] * size, block[runs[0][1]])
        else:
            pwrite_segments(self.path, [(self.start + elem * size, block[idx]) for elem, idx in runs])


def _convert(block: np.ndarray, label: tuple[str, int], dtypes: dict[str, np.dtype], path: str) -> np.ndarray:
    # the remote writer's convert: each tensor key to its own dtype
    return _file_bytes(block, label, dtypes[label[0]], path)


def _file_bytes(block: np.ndarray, label: tuple[str, int], dtype: np.dtype, path: str) -> np.ndarray:
    """A block as the file stores it: ``dtype``, little-endian, C-contiguous; ``label`` is
    (tensor key, index of the block's first step), for the error of a value out of range."""
    block = np.asarray(block)
    if block.dtype != dtype:
        _check_range(block, dtype, path, label[0], label[1])
        block = block.astype(dtype)
    return np.ascontiguousarray(block, dtype=dtype.newbyteorder("<"))


def _check_range(block: np.ndarray, dtype: np.dtype, path: str, key: str, step0: int) -> None:
    # a narrowing cast (float32 -> float16) must never turn a finite distance into inf silently;
    # an infinite one (an infinite input, nonfinite="propagate") stays inf, as in float32
    if np.finfo(dtype).max >= np.finfo(block.dtype).max or block.size == 0:
        return
    top = np.max(block, initial=-np.inf, where=np.isfinite(block))
    limit = float(np.finfo(dtype).max)
    if top > limit:
        wider = "float32" if top <= float(np.finfo(np.float32).max) else "float64"
        s = int(np.argwhere(block == top)[0][0])
        raise OverflowError(
            f"{path}: {key}: distance {float(top):.6g} at step index {step0 + s} exceeds {dtype.name}'s"
            f" largest finite value {limit:g}; export with dtype='{wider}' (--dtype {wider})"
        )


def _metadata(ds: xr.Dataset, metrics: list[str], dtype: str, dtypes: dict[str, str]) -> dict[str, str]:
    steps = ds["step"].values if "step" in ds.coords else np.arange(ds.sizes["step"])
    tokens = ds["token_i"].values if "token_i" in ds.coords else np.arange(ds.sizes["token_i"])
    return {
        "format": "dask_pdist pairwise distances",
        "dims": ",".join(DISTANCE_DIMS),
        "metrics": ",".join(metrics),
        "keys": ",".join(tensor_key(m) for m in metrics),
        "dtype": dtype,
        "key_dtypes": json.dumps({tensor_key(m): dtypes[m] for m in metrics}),
        "steps": json.dumps(np.asarray(steps).tolist()),
        "n_steps": str(ds.sizes["step"]),
        # a store a live job writes (open_distances gives its whole steps so far): said in
        # the file, which holds those steps only
        **({"being_written": str(ds.attrs["being_written"])} if ds.attrs.get("being_written") else {}),
        "n_tokens": str(ds.sizes["token_i"]),
        "tokens": json.dumps([t if isinstance(t, (int, float)) else str(t) for t in np.asarray(tokens).tolist()]),
        "source": str(ds.attrs.get("source", "")),
        "source_key": str(ds.attrs.get("source_key", "")),
        "input_dtype": str(ds.attrs.get("input_dtype", "")),
        "dask_pdist_version": __version__,
    }


def check_target(
    path: str | os.PathLike[str], overwrite: bool, storage_options: dict[str, Any] | None = None
) -> Path | Location:
    """Refuse an export target that is a directory, exists (without ``overwrite``), or has
    no parent folder (on object storage: no bucket); cheap, so callers can check before a
    long compute. Returns the local path, or the :class:`~dask_pdist.io.paths.Location` of a URL.

    Examples
    --------
    >>> check_target("memory://check-doc/d.safetensors", overwrite=False)
    Location(url='memory://check-doc/d.safetensors', storage_options={})
    """
    found = locate(path, storage_options)
    if is_remote(found):
        return _check_location(found, overwrite)
    path = found
    if path.is_dir():
        raise StoreError(f"{path}: is a directory; give a file name such as pairwise_distances.safetensors")
    if os.path.lexists(path) and not overwrite:
        raise StoreError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    check_parent(path)
    return path


#: S3's smallest multipart part (every part but the last).
_MIN_PART = 5 * 2**20


def _check_location(loc: Location, overwrite: bool) -> Location:
    if not loc.name or loc.url.endswith("/"):
        raise StoreError(f"{loc}: give a file name, such as {loc.url.rstrip('/')}/pairwise_distances.safetensors")
    rest = loc.url.split("://", 1)[1]
    if loc.protocol in BUCKET_SCHEMES and ("/" not in rest.strip("/") or rest.startswith("/")):
        bucket = rest.strip("/").split("/")[0] if not rest.startswith("/") else "bucket"
        raise StoreError(
            f"{loc}: give a file name inside a bucket, such as {loc.protocol}://{bucket}/pairwise_distances.safetensors"
        )
    part = dict(loc.storage_options).get("default_block_size")
    if part is not None and loc.protocol in ("s3", "s3a"):  # s3fs checks it only at the first upload
        if isinstance(part, bool) or not isinstance(part, int) or part < _MIN_PART:
            raise StoreError(
                f"{loc}: storage option default_block_size={part!r}: the multipart part size must be an integer"
                f" of at least {_MIN_PART} bytes (5 MiB, S3's minimum)"
            )
    fs = loc.fs  # an unknown scheme or rejected options: one line naming the URL
    fs.invalidate_cache(loc.path)  # a listing cached earlier in this process may be stale
    try:
        info = loc.info("export target")
    except FileNotFoundError:
        info = None
    if info is not None and info.get("type") != "file":
        raise StoreError(
            f"{loc}: is a directory (objects exist under this prefix); give a file name such as"
            f" {loc.url.rstrip('/')}.safetensors"
        )
    if info is not None and not overwrite:
        raise StoreError(f"{loc}: already exists; pass overwrite=True (--overwrite) to replace it")
    if info is None:
        check_parent(loc)
    return loc


def _finish(_stored: Any, tmp: str, path: str, overwrite: bool, lock: str) -> None:
    try:
        publish(tmp, path, replace=overwrite)  # atomic: the final name only ever holds a complete file
    finally:
        release_lock(Path(path), lock)


def _locked(run: Any, target: Location, lock: str) -> None:
    try:
        run()
    finally:
        release_lock(target, lock)


def _source(data: Any, shape: tuple[int, ...]) -> da.Array:
    # a Dataset loaded into memory (numpy): chunks of ~32 MB float32 along step
    if isinstance(data, da.Array):
        return data
    return da.from_array(data, chunks=(max(1, 2**23 // max(1, shape[1] * shape[2])), -1, -1))


def to_safetensors(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    dtype: ExportDtype | None = None,
    overwrite: bool = False,
    compute: bool = True,
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> Any:
    """Export a distance Dataset to one safetensors file, streaming chunk by chunk.

    The file holds one tensor per metric in ``ds``, each (S, V, V): ``euclidean_distances``,
    ``chebyshev_distances``, ``manhattan_distances`` (in ``dtype``) and
    ``chebyshev_ulp_distances`` (in its stored unsigned dtype, U16 or U32: counts, never
    rounded), as the notebook's ``save_file`` writes them, so ``safetensors.torch.load_file``
    (U16/U32 need torch >= 2.3), ``safetensors.numpy.load_file`` and ``safe_open`` read it
    unchanged. ``__metadata__`` holds the steps (JSON list), token count and labels, metrics,
    each key's dtype (``key_dtypes``, JSON), source and package version.
    The result is never held in memory.

    A local file: the header is written first, then each dask chunk at its byte offset as it
    is computed; every metric comes from one dask compute. The file is written under a
    temporary name in the same folder and renamed when complete.

    A URL (``s3://``, ``gs://``, ``memory://``, any fsspec URL): the bytes are streamed in file
    order through the backend's upload (S3: a multipart upload), a window of a few blocks
    computed at a time while the previous one is sent, so memory stays bounded by a few
    blocks. The metrics are read one after the other: from a store that is one read of each
    variable, but a lazy :func:`pairwise_distances` Dataset runs its kernel once per metric,
    so write the store first (:func:`to_zarr`, as ``dask-pdist compute --safetensors`` does)
    and export from it. The object appears under its name only when complete: a failed or
    interrupted export aborts the upload and leaves the old object (with ``overwrite``) or
    none (on S3 an aborted multipart upload is deleted; one whose abort could not be sent
    lingers, invisible, until the bucket's lifecycle rule removes it). The blocks pass through
    the calling process, also under a dask.distributed client.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances` or :func:`open_distances`.
    path : path-like or URL
        File to create, e.g. ``pairwise_distances.safetensors`` or
        ``s3://bucket/pairwise_distances.safetensors``.
    dtype : {"float32", "float16", "float64"}, optional
        Stored dtype of the float metrics; default the Dataset's. float16 (relative precision 2^-11) raises
        :class:`OverflowError` naming the largest value if a distance exceeds 65504.
    overwrite : bool
        Replace an existing file at ``path``. A directory is never replaced.
    compute : bool
        If False, return a ``dask.delayed`` object that writes the file when computed. Local
        file: the header is written now; the delayed writes the data and renames the file
        into place (a failed deferred run leaves only the hidden ``.NAME.HOST-PID.*.partial``
        file; the next export to ``path`` removes it once that process is gone). URL: nothing
        is written now; the delayed is one task that streams the whole export and computes
        the blocks itself, with the scheduler of the process it runs in, so compute it
        locally (``.compute()``), not on a dask.distributed worker.
    storage_options : dict, optional
        For a URL: fsspec backend options, e.g. ``{"endpoint_url": ...}`` or, on S3, a part
        size ``{"default_block_size": 2**26}`` (default 50 MiB, at least 5 MiB). Credentials
        and endpoint otherwise come from the backend's usual settings (``AWS_*``).
    progress : bool, optional
        Show a progress bar (tqdm, on stderr) while computing (``compute=True``); for a URL
        it counts the bytes sent. Default: on in a terminal or a Jupyter notebook.

    Returns
    -------
    None, or dask.delayed.Delayed if ``compute=False``.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is False, ``path`` is a directory (on object
        storage: a prefix with objects under it), or its folder (on object storage: its
        bucket) does not exist.
    PermissionError
        The object store refuses the credentials.
    ValueError
        ``ds`` holds no distance variable, ``dtype`` is unknown, the URL's scheme is unknown,
        or ``storage_options`` are given for a local path.
    OverflowError
        A distance does not fit float16.

    Examples
    --------
    >>> ds = open_distances("pairwise_distances.zarr")  # doctest: +SKIP
    >>> to_safetensors(ds, "pairwise_distances.safetensors")  # doctest: +SKIP
    >>> to_safetensors(ds, "s3://bucket/pairwise_distances.safetensors")  # doctest: +SKIP
    >>> from safetensors.torch import load_file  # doctest: +SKIP
    >>> load_file("pairwise_distances.safetensors")["euclidean_distances"].shape  # doctest: +SKIP
    torch.Size([5001, 128, 128])
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset (see pairwise_distances), got {type(ds).__name__}")
    metrics = [m for m in ALL_METRICS if m in ds.data_vars]
    if not metrics:
        raise ValueError(
            f"the Dataset holds none of {list(ALL_METRICS)} (variables: {list(ds.data_vars)});"
            " pass the result of pairwise_distances or open_distances"
        )
    for m in metrics:
        if ds[m].dims != DISTANCE_DIMS:
            raise ValueError(f"variable {m!r} has dims {ds[m].dims}; expected {DISTANCE_DIMS}")
    floats = [m for m in metrics if m not in _INTEGER_METRICS]
    try:
        name = str(np.dtype(dtype).name) if dtype is not None else ds[floats[0]].dtype.name if floats else "float32"
    except TypeError:  # a name numpy does not know ("bfloat16")
        name = str(dtype)
    if name not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(EXPORT_DTYPES)}")
    dtypes = {m: ds[m].dtype.name if m in _INTEGER_METRICS else name for m in metrics}
    for m in metrics:
        if dtypes[m] not in _SAFETENSORS_DTYPE:
            raise ValueError(f"variable {m!r} has dtype {dtypes[m]}, which a safetensors export cannot hold")

    target = check_target(path, overwrite, storage_options)

    shape = tuple(ds[metrics[0]].shape)
    tensors = [(tensor_key(m), _SAFETENSORS_DTYPE[dtypes[m]], shape) for m in metrics]
    meta = _metadata(ds, metrics, name, dtypes)
    show = compute and (interactive() if progress is None else progress)
    if is_remote(target):
        head, _ = header_bytes(tensors, meta)
        pieces = [
            ((tensor_key(m), step0), piece)
            for m in metrics
            for step0, piece in file_order_pieces(_source(ds[m].data, shape))
        ]
        key_dtypes = {tensor_key(m): np.dtype(dtypes[m]) for m in metrics}
        convert = functools.partial(_convert, dtypes=key_dtypes, path=str(target))
        size = len(head) + sum(math.prod(shape) * np.dtype(dtypes[m]).itemsize for m in metrics)
        run = functools.partial(
            stream_to_location, target, head, pieces, convert, overwrite=overwrite, progress=show, total=size
        )
        lock = acquire_lock(target, "export")  # held until the upload is published (or aborted)
        if not compute:
            return dask.delayed(_locked, pure=False)(run, target, lock)
        _locked(run, target, lock)
        return None

    path = target
    lock = acquire_lock(path, "export")  # held until the file is published (or discarded)
    clean_stale(path)
    tmp = hidden_name(path)
    try:
        offsets = write_header(tmp, tensors, meta)
        sources = [_source(ds[m].data, shape) for m in metrics]
        targets = [
            _TensorTarget(str(tmp), tensor_key(m), offsets[tensor_key(m)], shape, dtypes[m], str(path)) for m in metrics
        ]
        # one store call: the metrics share one graph, so the kernel runs once per block
        stored = da.store(sources, targets, lock=False, compute=False)
        finish = dask.delayed(_finish, pure=False)(stored, str(tmp), str(path), overwrite, lock)
        if not compute:
            return finish
        Job(finish, desc="exporting").execute(progress=show)
    except BaseException as exc:
        discard(tmp)
        release_lock(path, lock)
        if isinstance(exc, OSError) and exc.errno is not None and str(path) not in str(exc):
            # disk full, file too large: say which file
            raise type(exc)(exc.errno, f"{path}: export failed: {exc.strerror}; nothing was kept") from exc
        raise
    return None
