"""Input readers: open an embedding history lazily, validated, as a labeled DataArray.

Each dask task reads its own snapshot range by a positioned read of one contiguous byte
range; the graph holds only paths and offsets (no open file handle, no mmap), so it pickles
for dask.distributed and a file truncated under a running job gives a clean error, not SIGBUS.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import HISTORY_DIMS, INPUT_VERSION, one_block
from dask_pdist.errors import InputError
from dask_pdist.io.checkpoints import (
    INDEX_SUFFIX,
    checkpoint_steps,
    is_run_folder,
    parse_steps,
)
from dask_pdist.io.folder_hints import directory_hint
from dask_pdist.io.paths import Location, any_url, identity, is_remote, locate, version_of
from dask_pdist.io.safetensors_format import pread_exact, require_regular_file
from dask_pdist.io.sources import (
    Chunks,
    _chunk_spec,
    _open_checkpoints,
    _open_npy,
    _open_safetensors,
    _open_zarr,
    _RawSource,
    _step_path,
    finite_blocks,
)
from dask_pdist.io.token_ids import parse_token_ids, token_runs
from dask_pdist.io.trainer import is_url_run_folder

__all__ = ["open_history", "is_checkpoint_spec", "step_rms", "provenance", "NONFINITE_CHOICES"]

NonFinite = Literal["raise", "propagate"]
#: What to do with NaN/Inf in the history.
NONFINITE_CHOICES: tuple[str, ...] = ("raise", "propagate")


def _step_checksums(block: np.ndarray) -> np.ndarray:
    """crc32c of each step's values (their bytes as computed on: float32 or float64).

    >>> _step_checksums(np.zeros((2, 3, 4), dtype=np.float32)).tolist()
    [680278713, 680278713]
    """
    import google_crc32c

    return np.array([google_crc32c.value(np.ascontiguousarray(s).tobytes()) for s in block], dtype=np.uint32)


def step_checksums(data: da.Array) -> da.Array:
    """crc32c of each step's input values (step,), lazily: what a store records so that an
    append or a resume can tell whether the input of its stored steps changed."""
    return data.rechunk({1: -1, 2: -1}).map_blocks(_step_checksums, drop_axis=(1, 2), dtype=np.uint32)


def step_rms(data: da.Array) -> da.Array:
    """Root-mean-square coordinate per step, over the finite coordinates only (float64).

    The magnitude behind the bf16-spacing thresholds (``embedding_rms``, ``clusters(...,
    "bf16")``): one shared expression, so stores and histories agree bit for bit. NaN/Inf
    coordinates (``nonfinite="propagate"``) are left out, so one bad token does not make the
    threshold of its whole step NaN or infinite; a step with no finite coordinate gives NaN.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> step_rms(da.from_array(np.array([[[3.0, np.inf], [4.0, 0.0]]]))).compute()
    array([2.88675135])
    """
    # one task per step-block (the ten array operations it replaces were ten tasks per block,
    # ~0.1 ms of scheduling each); the same expression on whole steps, so the same bits
    return da.blockwise(
        _step_rms,
        "s",
        data.rechunk({1: -1, 2: -1}),
        "std",
        concatenate=False,  # the block as it is: concatenate=True (map_blocks' drop_axis) copies it
        dtype=np.float64,
        meta=np.empty((0,), np.float64),
    )


def _step_rms(nested: list | np.ndarray) -> np.ndarray:
    block = one_block(nested)  # whole (token, dim)
    # x^2 of a float32 or float64 value in float64 (exact for float32), each step's sum in the
    # same order as before: the same bits, ~6x faster than where(isfinite, x.astype(f64)**2, 0)
    with np.errstate(over="ignore"):  # float64 values past ~1.3e154: their steps are rescaled below
        squares = np.square(block, dtype=np.float64)
        finite = np.isfinite(block)
        if finite.all():
            count = np.full(block.shape[0], block.shape[1] * block.shape[2])
        else:
            squares[~finite] = 0.0
            count = finite.sum(axis=(1, 2))
        total = squares.sum(axis=(1, 2))
    rms = np.where(count > 0, np.sqrt(total / np.maximum(count, 1)), np.nan)
    for s in np.flatnonzero(np.isinf(total)):  # finite values whose squares (or their sum) overflow
        x = np.where(finite[s], block[s], 0.0)
        top = np.abs(x).max()
        rms[s] = top * np.sqrt(np.square(x / top).sum() / count[s])
    return rms


def provenance(history: xr.DataArray, compute_dtype: np.dtype | str) -> dict[str, str]:
    """The attributes every result computed from ``history`` carries: where it came from
    (file, key, fingerprint, input dtype), the arithmetic dtype and the dask_pdist version."""
    from dask_pdist._version import __version__

    return {
        "source": str(history.attrs.get("source", "")),
        "source_key": str(history.attrs.get("key", history.name or "")),
        "source_fingerprint": str(history.attrs.get("source_fingerprint", "")),
        "input_dtype": str(history.attrs.get("input_dtype", history.dtype)),
        "compute_dtype": str(np.dtype(compute_dtype)),
        "dask_pdist_version": __version__,
    }


def _source_chunks(
    chunks: Chunks, src: _RawSource, token_ids: str | Sequence[int] | np.ndarray | None
) -> tuple[tuple | dict | int, np.ndarray | None]:
    # (chunks for from_array, subset ids): with a subset, steps are planned for the subset's
    # size and the token axis is cut at the subset's runs, so only those rows are read
    if token_ids is None:
        return _chunk_spec(chunks, src.shape), None
    ids = parse_token_ids(token_ids, src.shape[1])
    spec = _chunk_spec(chunks, (src.shape[0], len(ids), src.shape[2]))
    if isinstance(spec, int):
        spec = (spec, -1, -1)
    return (spec[0], token_runs(ids, src.shape[1], src.row_nbytes), spec[2]), ids


def _fingerprint(path: Path | Location, header_bytes: int | None) -> str:
    # size and header hash: what --resume compares to know the input is the same
    # (cheap: the header only, never the data)
    found = require_regular_file(path)
    size = found if isinstance(found, int) else found.st_size
    head = pread_exact(path, 0, size if header_bytes is None else header_bytes)
    return f"{size}:{hashlib.sha256(head).hexdigest()[:32]}"


def _read_tokens(tokens: str | os.PathLike[str] | Sequence[str], n_tokens: int, source: str) -> np.ndarray:
    if isinstance(tokens, (str, os.PathLike)):
        tpath = Path(tokens)
        require_regular_file(tpath, "token file")
        try:
            labels = tpath.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(f"{tpath}: token file is not UTF-8 text (one label per line)") from None
        where = str(tpath)
    else:
        labels = [str(t) for t in tokens]
        where = "tokens"
    if len(labels) != n_tokens:
        raise InputError(
            f"{where}: {len(labels)} token labels, but {source} has {n_tokens} tokens; give one label per line"
        )
    # object dtype: zarr 3 stores it as variable-length UTF-8 (fixed-width str has no v3 spec)
    return np.array(labels, dtype=object)


def is_checkpoint_spec(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], storage_options: dict | None = None
) -> bool:
    """True if ``path`` names per-checkpoint inputs (a glob, a list, a sharded index, a Trainer
    run folder, local or on object storage), not one file."""
    if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(INDEX_SUFFIX):
        return True  # one sharded checkpoint
    if isinstance(path, str) and any_url(path):
        if any(c in path.split("://", 1)[1] for c in "*?["):
            return True
        return is_url_run_folder(path, storage_options)
    if isinstance(path, (str, os.PathLike)) and is_run_folder(path):
        return True  # a Hugging Face Trainer output folder: its checkpoint-N/ folders
    if isinstance(path, str):
        return any(c in path for c in "*?[") and not os.path.exists(path)
    return not isinstance(path, os.PathLike)


def open_history(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    key: str | None = None,
    chunks: Chunks = "auto",
    *,
    tokens: str | os.PathLike[str] | Sequence[str] | None = None,
    nonfinite: NonFinite = "raise",
    token_ids: str | Sequence[int] | np.ndarray | None = None,
    steps: str | os.PathLike[str] | Sequence[int] | None = None,
    storage_options: dict | None = None,
    follow_symlinks: bool = False,
) -> xr.DataArray:
    """Open an embedding history lazily as a ``(step, token, dim)`` DataArray.

    Nothing is read but the header until the result is computed; each dask task reads its
    own snapshot range.

    Parameters
    ----------
    path : path-like, glob string or sequence of path-like
        A ``.safetensors`` file (the notebook's format), a ``.npy`` file, or a zarr store
        (an array, or a group holding the array). Per-checkpoint input: a glob string
        (``"ckpt/step_*.safetensors"``) or a list of safetensors files, each holding one
        (token, dim) matrix, stacked lazily along ``step`` in natural order (``step_10``
        after ``step_9``); ``step`` is the number in each file name (the last one, if a
        name has several) when every name has one, else 0..S-1. Hugging Face style folders
        (``"ckpt/checkpoint-*/model.safetensors"``, or ``"ckpt/checkpoint-*"``: a folder
        stands for its checkpoint) take ``step`` from the part of the path that varies
        (``checkpoint-500`` -> 500). A sharded checkpoint is given as its
        ``model.safetensors.index.json`` (or its folder): the tensor is read from the shard
        its ``weight_map`` names. Every header is checked; a file whose shape or dtype
        differs from the first is an error naming it.
        Any of these may be a URL fsspec understands (``s3://bucket/h.safetensors``,
        ``"s3://bucket/ckpt/step_*.safetensors"``, a list of URLs; ``gs://``, ``memory://``;
        ``file://`` is a local path): the header is read and validated first, then each task
        reads its snapshots with one ranged request per file (folders and sharded checkpoints
        are local only).
    key : str, optional
        Tensor name (safetensors) or array name (zarr group). Defaults to the only 3-D one
        (the only 2-D one for per-checkpoint files, e.g. ``model.embed_tokens.weight``).
    chunks : "auto", int, tuple or dict
        Chunking along ``step`` (token and dim stay whole unless given). ``"auto"`` keeps
        one task's output near 16 MiB (128 snapshots at 128 tokens).
    tokens : path-like or sequence of str, optional
        Token labels (a text file with one label per line); default integer ids.
    nonfinite : {"raise", "propagate"}
        ``"raise"``: a task that meets NaN/Inf raises :class:`InputError` naming the step and
        token (the step's label and index). ``"propagate"``: compute anyway, as scipy does: a
        NaN gives NaN distances, an infinity infinite ones (NaN where it meets the same infinity,
        as a token does itself).
    token_ids : str or sequence of int, optional
        A token subset: a sequence of indices, or a SPEC string (see :func:`parse_token_ids`:
        ``"0:1000,5000,7000:7100"``, half-open ranges, or ``"@FILE"`` with one index per
        line). Indices are sorted; duplicates and out-of-range ones are errors. The
        ``token`` coordinate keeps the original indices (or their labels with ``tokens``;
        then a ``token_id`` coordinate holds the indices). Safetensors and .npy inputs read
        only the rows of the subset (runs of nearby tokens are read in one piece); the
        token axis of the result is one chunk.
    steps : str, path-like or sequence of int, optional
        The ``step`` labels, one per snapshot, for any input: a range ``"START:STOP:STEP"``
        (Python's, STOP excluded: ``"500:5001:500"``), a text file with one integer per
        line, or a sequence of integers. Default: from the file (see ``path``).
    storage_options : dict, optional
        For URLs: options of the fsspec backend (``{"anon": True}``,
        ``{"endpoint_url": ...}``), on top of its usual configuration (for S3 the
        ``AWS_*`` environment variables, ``AWS_ENDPOINT_URL`` included).
    follow_symlinks : bool
        Read a file named from inside an input (a shard of a sharded checkpoint, the file in
        a checkpoint folder) even when it is a symbolic link leaving that folder. Default:
        refused, naming the link (the Hugging Face cache's links to its ``blobs/`` are read).

    Returns
    -------
    xarray.DataArray
        float32 (float64 for F64 input; BF16/F16 are widened exactly), dask-backed, with
        coordinates ``step`` (from a ``steps`` tensor/array of length S if the file has one,
        else 0..S-1) and ``token``.

    Raises
    ------
    FileNotFoundError, InputError
        Also ``PermissionError`` for a URL the credentials cannot read.

    Examples
    --------
    >>> h = open_history("embedding_evolution.safetensors")  # doctest: +SKIP
    >>> h.sizes  # doctest: +SKIP
    Frozen({'step': 5001, 'token': 128, 'dim': 64})
    """
    if nonfinite not in NONFINITE_CHOICES:
        raise ValueError(f"nonfinite={nonfinite!r}; choose one of {NONFINITE_CHOICES}")
    if is_checkpoint_spec(path, storage_options):
        stack, key, kind, checkpoints, source, files = _open_checkpoints(
            path,  # type: ignore[arg-type]
            key,
            nonfinite,
            storage_options,
            follow_symlinks,
        )
        # steps given: the paths need not hold distinct numbers
        labels = (
            parse_steps(steps, len(checkpoints), source)
            if steps is not None
            else checkpoint_steps([_step_path(p) for p in checkpoints])
        )
        stack.labels = labels  # a NaN/Inf found names its step label
        x = da.from_array(
            stack,
            chunks=(spec := _source_chunks(chunks, stack, token_ids))[0],
            name=f"history-{da.core.tokenize(_identities(files), key, nonfinite, spec[0])}",
            meta=np.empty((0, 0, 0), dtype=stack.dtype),
            asarray=False,
            fancy=False,
        )
        fingerprint = hashlib.sha256(
            "\n".join(
                f.fingerprint(p, start) for f, p, start in zip(files, stack.paths, stack.starts, strict=True)
            ).encode()
        ).hexdigest()[:32]
        versions = np.array([f.version for f in files], dtype=np.uint64)
        return _label(
            x, labels, tokens, source, key, kind, f"{len(stack.paths)} files:{fingerprint}", spec[1], versions
        )
    path = locate(path, storage_options)  # type: ignore[arg-type]
    if not path.exists():
        if is_remote(path):
            path.info("history file")  # raises with the backend's reason: no such bucket, no such key
        raise FileNotFoundError(f"{path}: history file not found")
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")):
            raise InputError(directory_hint(path))
        x, key, kind, labels = _open_zarr(path, key, chunks)
        if steps is not None:
            labels = parse_steps(steps, x.shape[0], str(path))
        if nonfinite == "raise":
            x = finite_blocks(x, str(path), labels)
        spec = (None, None if token_ids is None else parse_token_ids(token_ids, x.shape[1]))
        fingerprint = _fingerprint(path / key / "zarr.json" if (path / key).is_dir() else path / "zarr.json", None)
    else:
        found = require_regular_file(path, "history file")  # a FIFO would block the read below forever
        magic = pread_exact(path, 0, min(6, found if isinstance(found, int) else found.st_size))
        if magic == b"\x93NUMPY":
            src, key, kind, labels = _open_npy(path, key, nonfinite)
        elif path.suffix == ".npy":
            raise InputError(f"{path}: not a valid .npy file (bad magic bytes)")
        else:
            src, key, kind, labels = _open_safetensors(path, key, nonfinite)
        if steps is not None:
            labels = parse_steps(steps, src.shape[0], str(path))
        src.labels = labels  # a NaN/Inf found names its step label
        meta = np.empty((0, 0, 0), dtype=src.dtype)
        x = da.from_array(
            src,
            chunks=(spec := _source_chunks(chunks, src, token_ids))[0],
            name=f"history-{da.core.tokenize(identity(path), key, nonfinite, spec[0])}",
            meta=meta,
            asarray=False,
            fancy=False,
        )
        fingerprint = _fingerprint(path, src.start)
    # a zarr input's chunks change without its zarr.json: no version vouches for its steps
    version = 0 if path.is_dir() else version_of(path)
    versions = np.full(x.shape[0], version, dtype=np.uint64)
    return _label(x, labels, tokens, str(path), key, kind, fingerprint, spec[1], versions)


def _identities(files: list) -> str:
    # the files' identities as one string: dask tokenizes a list of tuples item by item
    return "\n".join(f"{path}\0{version}" for path, version in (f.identity for f in files))


def _label(
    x: da.Array,
    steps: np.ndarray | None,
    tokens: str | os.PathLike[str] | Sequence[str] | None,
    source: str,
    key: str,
    kind: str,
    fingerprint: str,
    ids: np.ndarray | None = None,
    versions: np.ndarray | None = None,
) -> xr.DataArray:
    n_steps, n_tokens, _ = x.shape
    if 0 in x.shape:
        raise InputError(
            f"{source}: {key!r} has shape {list(x.shape)} ({', '.join(HISTORY_DIMS)}); every axis must be"
            " non-empty: give a history with at least one step, token and dim"
        )
    coords = {
        "step": ("step", steps if steps is not None else np.arange(n_steps, dtype=np.int64)),
        "token": (
            "token",
            _read_tokens(tokens, n_tokens, source) if tokens is not None else np.arange(n_tokens, dtype=np.int64),
        ),
    }
    if versions is not None:  # what the step was read from (io/paths.py version_of)
        coords[INPUT_VERSION] = ("step", versions, {"long_name": "hash of the identity of the step's input file"})
    if ids is not None:
        x = x[:, ids].rechunk({1: -1})  # chunks not holding a subset token are never read
        coords["token"] = ("token", coords["token"][1][ids])
        if tokens is not None:
            coords["token_id"] = ("token", ids)
        # a resumed store must have been made from the same subset
        fingerprint += f":tokens {len(ids)}:{hashlib.sha256(ids.tobytes()).hexdigest()[:16]}"
    attrs = {"source": source, "key": key, "input_dtype": kind, "source_fingerprint": fingerprint}
    return xr.DataArray(x, dims=HISTORY_DIMS, coords=coords, name=key, attrs=attrs)
