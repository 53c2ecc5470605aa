"""The readers behind :func:`~dask_pdist.io.history.open_history`: one lazy source per input kind
(a safetensors tensor, per-checkpoint files stacked, a ``.npy`` file, a zarr array), each read by
positioned (or, at a URL, ranged) reads of its own byte ranges per task. Holds only paths or
URLs and offsets, so every task pickles. Split from history.py, which validates the request and
labels the result.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np

from dask_pdist.conventions import HISTORY_DIMS
from dask_pdist.errors import InputError
from dask_pdist.io.checkpoints import INDEX_SUFFIX, _natural_key, checkpoint_paths, embedding_key, tensor_file
from dask_pdist.io.known_files import FileFacts, file_facts, known_run, remember_run
from dask_pdist.io.paths import (
    Location,
    any_url,
    glob_locations,
    is_remote,
    locate,
    open_reader,
    zarr_store,
)
from dask_pdist.io.safetensors_format import (
    SUPPORTED_DTYPES,
    TensorInfo,
    pread_exact,
    read_header,
    require_regular_file,
)
from dask_pdist.io.trainer import url_run_checkpoints
from dask_pdist.planning import auto_step_chunk

Chunks = Literal["auto"] | int | tuple | dict


def _picklable(path: Path | Location) -> str | Location:
    # what a task holds: a local path as a string, a URL with its storage options
    return path if is_remote(path) else str(path)


class _RawSource:
    """A lazy (step, token, dim) array read from raw little-endian bytes, indexed by dask's
    ``from_array(fancy=False)`` with tuples of unit-stride slices. Holds only paths and
    numbers, so it pickles into the graph; widens BF16/F16 to float32 exactly and checks
    finiteness per block."""

    def __init__(self, raw_dtype: str, kind: str, shape: tuple[int, ...], nonfinite: str) -> None:
        self.raw_dtype = raw_dtype
        self.kind = kind  # safetensors dtype name: BF16, F16, F32, F64
        self.shape = shape
        self.nonfinite = nonfinite
        self.dtype = np.dtype(np.float64 if kind == "F64" else np.float32)
        self.ndim = 3
        self.as_stored = False  # True: blocks as stored (bit patterns), neither widened nor checked
        self.labels: np.ndarray | None = None  # the step labels (open_history sets them): errors name them

    def stored(self) -> _RawSource:
        """This source giving its blocks as stored (bf16: the uint16 bit patterns), neither
        widened nor checked: for a kernel that widens in registers and checks finiteness itself
        (:meth:`raise_nonfinite` then words the error as this reader does)."""
        out = copy.copy(self)
        out.as_stored, out.dtype = True, np.dtype(self.raw_dtype)
        return out

    def raise_nonfinite(self, stored: np.ndarray, step0: int) -> None:
        """Raise this reader's :class:`InputError` for the first NaN or infinity of ``stored``
        (blocks as :meth:`stored` gives them, from step index ``step0``), if there is one."""
        for s in range(stored.shape[0]):
            _check_finite(_widen(stored[s : s + 1], self.kind), self._path_of(step0 + s), step0 + s, 0, self.labels)

    def _path_of(self, step: int) -> str:
        raise NotImplementedError

    @property
    def step_nbytes(self) -> int:
        return math.prod(self.shape[1:]) * np.dtype(self.raw_dtype).itemsize

    def _steps(self, key: tuple) -> tuple[int, int, tuple]:
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * 3
        if not all(isinstance(k, slice) for k in key[:3]):
            raise TypeError(f"{type(self).__name__} takes slices only, got {key[:3]!r}")
        lo, hi, stride = key[0].indices(self.shape[0])
        if stride != 1:
            raise TypeError(f"{type(self).__name__} takes unit-stride slices only, got {key[0]!r}")
        return lo, max(hi, lo), key

    def _decode(self, raw: bytes | bytearray, n_steps: int, key: tuple, path: str, step0: int) -> np.ndarray:
        block = np.frombuffer(raw, dtype=self.raw_dtype).reshape((n_steps,) + self.shape[1:])
        if self.as_stored:
            return block[(slice(None),) + key[1:3]]
        block = _widen(block[(slice(None),) + key[1:3]], self.kind)
        if self.nonfinite == "raise":
            _check_finite(block, path, step0, 0, self.labels)
        return block

    @property
    def row_nbytes(self) -> int:
        return self.shape[2] * np.dtype(self.raw_dtype).itemsize

    def _row_range(self, key: tuple) -> tuple[int, int] | None:
        # a unit-stride token slice short of all tokens (a token subset): read only those rows
        r0, r1, stride = key[1].indices(self.shape[1])
        if stride != 1 or (r0, r1) == (0, self.shape[1]):
            return None
        return r0, max(r0, r1)

    def _decode_rows(self, raw: bytes, n_steps: int, rows: tuple[int, int], key: tuple, path: str, step0: int):
        block = np.frombuffer(raw, dtype=self.raw_dtype).reshape((n_steps, rows[1] - rows[0], self.shape[2]))
        if self.as_stored:
            return block[:, :, key[2]]
        block = _widen(block[:, :, key[2]], self.kind)
        if self.nonfinite == "raise":
            _check_finite(block, path, step0, rows[0], self.labels)
        return block


class _FileSource(_RawSource):
    """A history stored C-contiguous at ``start`` in one file: one positioned read per task."""

    def __init__(
        self, path: str | Location, start: int, raw_dtype: str, kind: str, shape: tuple[int, ...], nonfinite: str
    ):
        super().__init__(raw_dtype, kind, shape, nonfinite)
        self.path = path
        self.start = start

    def _path_of(self, step: int) -> str:
        return str(self.path)

    def __getitem__(self, key: tuple) -> np.ndarray:
        lo, hi, key = self._steps(key)
        rows = self._row_range(key)
        if rows is not None:
            n, at = (rows[1] - rows[0]) * self.row_nbytes, self.start + rows[0] * self.row_nbytes
            raw = b"".join(pread_exact(self.path, at + s * self.step_nbytes, n) for s in range(lo, hi))
            return self._decode_rows(raw, hi - lo, rows, key, str(self.path), lo)
        raw = pread_exact(self.path, self.start + lo * self.step_nbytes, (hi - lo) * self.step_nbytes)
        return self._decode(raw, hi - lo, key, str(self.path), lo)


def bf16_source(x: da.Array) -> _RawSource | None:
    """The reader behind ``x`` if ``x`` is a bf16 history exactly as
    :func:`~dask_pdist.io.history.open_history` made it (every step and token, whatever its
    chunks), else None: a kernel may then read the stored bit patterns instead (see
    :meth:`_RawSource.stored`), saving the float32 copy and the finiteness pass.

    >>> bf16_source(da.zeros((2, 3, 4))) is None
    True
    """
    layers = getattr(x.dask, "layers", {})
    original = f"original-{x.name}"
    if not str(x.name).startswith("history-") or set(layers) != {original, x.name}:
        return None
    src = layers[original].get(original)
    src = getattr(src, "value", src)  # a task-spec data node holds the object
    if isinstance(src, _RawSource) and src.kind == "BF16" and not src.as_stored and tuple(x.shape) == src.shape:
        return src
    return None


def _widen(block: np.ndarray, kind: str) -> np.ndarray:
    if kind == "BF16":  # a float32's top half, widened exactly, in one pass into one new array
        out = np.empty(block.shape, dtype=np.uint32)  # (first touches of new memory cost: docs/measurements.md)
        return np.left_shift(block, np.uint32(16), out=out, dtype=np.uint32).view(np.float32)
    if kind == "F16":
        return block.astype(np.float32)
    return np.ascontiguousarray(block)


def _check_finite(block: np.ndarray, path: str, step0: int, token0: int = 0, labels: np.ndarray | None = None) -> None:
    # block: steps step0.. of the history; labels: the history's step labels (None: positions)
    # a finite sum proves every value finite, without isfinite's block-sized mask
    with np.errstate(over="ignore", invalid="ignore"):
        if block.ndim != 3 or np.isfinite(block.sum()) or np.isfinite(block).all():
            return
    s, t, _ = np.argwhere(~np.isfinite(block))[0]
    value = block[s, t][~np.isfinite(block[s, t])][0]
    at = step0 + int(s)
    step = f"step {labels[at]} (index {at})" if labels is not None else f"step index {at}"
    raise InputError(
        f"{path}: history holds {value} at {step}, token {token0 + t}; fix the input, or pass"
        " nonfinite='propagate' (--nonfinite propagate) to compute anyway (NaN or infinite distances there)"
    )


def _tensor_list(tensors: dict[str, TensorInfo]) -> str:
    return ", ".join(f"{n} {list(t.shape)} {t.dtype}" for n, t in sorted(tensors.items())) or "none"


def _choose_key(
    path: Path, ndims: dict[str, int], key: str | None, ndim: int, noun: str, role: str, listing: str, hint: str = ""
) -> str:
    """The requested name, or the only ``ndim``-D one; errors list what the file holds."""
    if key is None:
        found = [n for n, k in ndims.items() if k == ndim]
        if len(found) != 1:
            raise InputError(
                f"{path}: cannot choose the {role}: {len(found)} {noun}s are {ndim}-D"
                f" ({noun}s: {listing}); name one with key= / --key{hint}"
            )
        return found[0]
    if key not in ndims:
        raise InputError(f"{path}: no {noun} {key!r}; available: {listing}")
    return key


def _int64_steps(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    # uint64 above 2^63 - 1 would wrap to a negative step
    big = np.flatnonzero(values > np.iinfo(np.int64).max) if values.dtype.kind == "u" else []
    if len(big):
        raise InputError(
            f"{path}: {what} holds {int(values[big[0]])} at index {big[0]}, above the largest step"
            f" {np.iinfo(np.int64).max} (2^63 - 1); fix the step numbers"
        )
    steps = values.astype(np.int64)
    unique, counts = np.unique(steps, return_counts=True)
    if (counts > 1).any():  # a step labels one snapshot: analyses select and align by it
        twice = unique[counts > 1][0]
        first, second = np.flatnonzero(steps == twice)[:2]
        raise InputError(
            f"{path}: {what} holds step {twice} twice (indices {first} and {second}); each snapshot needs its"
            " own step number: fix the step numbers"
        )
    return steps


def _open_safetensors(
    path: Path | Location, key: str | None, nonfinite: str
) -> tuple[_FileSource, str, str, np.ndarray | None]:
    tensors, _ = read_header(path)
    ndims = {n: len(t.shape) for n, t in tensors.items()}
    key = _choose_key(path, ndims, key, 3, "tensor", "history tensor", _tensor_list(tensors))
    info = tensors[key]
    if len(info.shape) != 3:
        raise InputError(f"{path}: tensor {key!r} has shape {list(info.shape)}; expected 3-D (step, token, dim)")
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: tensor {key!r} has dtype {info.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    steps = None
    if "steps" in tensors and key != "steps":
        sinfo = tensors["steps"]
        if len(sinfo.shape) != 1 or sinfo.shape[0] != info.shape[0] or sinfo.dtype[0] not in "IU":
            raise InputError(
                f"{path}: tensor 'steps' has shape {list(sinfo.shape)} and dtype {sinfo.dtype};"
                f" expected a 1-D integer tensor of length {info.shape[0]} (one step per snapshot)"
            )
        raw = pread_exact(path, sinfo.start, sinfo.nbytes)
        steps = _int64_steps(np.frombuffer(raw, dtype=sinfo.raw_dtype), path, "tensor 'steps'")
    src = _FileSource(_picklable(path), info.start, info.raw_dtype.str, info.dtype, info.shape, nonfinite)
    return src, key, info.dtype, steps


class _StackSource(_RawSource):
    """Per-checkpoint inputs: snapshot s is the (token, dim) matrix of file s; each task
    reads only its own files, one positioned read per file."""

    def __init__(
        self,
        paths: list[str | Location],
        starts: list[int],
        raw_dtype: str,
        kind: str,
        shape: tuple[int, ...],
        nonfinite: str,
    ) -> None:
        super().__init__(raw_dtype, kind, shape, nonfinite)
        self.paths = paths
        self.starts = starts

    def _path_of(self, step: int) -> str:
        return str(self.paths[step])

    def __getitem__(self, key: tuple) -> np.ndarray:
        lo, hi, key = self._steps(key)
        if hi == lo:
            return self._decode(b"", 0, key, "", lo)
        rows = self._row_range(key)
        if rows is not None:
            n, at = (rows[1] - rows[0]) * self.row_nbytes, rows[0] * self.row_nbytes
            reads = [(s, pread_exact(self.paths[s], self.starts[s] + at, n)) for s in range(lo, hi)]
            return np.concatenate([self._decode_rows(raw, 1, rows, key, str(self.paths[s]), s) for s, raw in reads])
        blocks = [
            self._decode(pread_exact(self.paths[s], self.starts[s], self.step_nbytes), 1, key, str(self.paths[s]), s)
            for s in range(lo, hi)
        ]
        return np.concatenate(blocks)


def _step_path(p: Path | Location) -> Path:
    # checkpoint_steps reads numbers from path components: a URL's part after the scheme
    return p if isinstance(p, Path) else Path(str(p).split("://", 1)[-1])


def _url_checkpoints(
    spec: str | Sequence[str | os.PathLike[str]], storage_options: dict | None
) -> list[Path | Location]:
    # per-checkpoint files on object storage: a Trainer run folder, a URL glob (files only) or
    # a list of locations
    run = url_run_checkpoints(spec, storage_options) if isinstance(spec, str) else None
    if run is not None:
        found: list[Path | Location] = list(run)
    elif isinstance(spec, str):
        found = list(glob_locations(spec, storage_options))
    else:
        found = [locate(p, storage_options) for p in spec]
        for p in found:
            require_regular_file(p, "checkpoint file")
    for p in found:
        if p.name.endswith(INDEX_SUFFIX):
            raise InputError(f"{p}: sharded checkpoints on object storage are not supported yet; give the shard files")
    return sorted(found, key=lambda p: (_natural_key(p.name), _natural_key(str(p))))


def _open_checkpoints(
    spec: str | Sequence[str | os.PathLike[str]],
    key: str | None,
    nonfinite: str,
    storage_options: dict | None = None,
    follow_symlinks: bool = False,
) -> tuple[_StackSource, str, str, list[Path | Location], str, list[FileFacts]]:
    stats: dict[str, os.stat_result] = {}
    remote = any_url(spec)
    if remote:
        checkpoints = _url_checkpoints(spec, storage_options)
    else:
        checkpoints = checkpoint_paths(spec, follow_symlinks, stats)
    memo = (key, follow_symlinks)
    reused, last = (0, None) if remote else known_run(memo, checkpoints, stats)
    # the run opened last, up to its first checkpoint that is not the same file (copies)
    key, first, paths, files, starts = last if reused else (key, None, [], [], [])  # type: ignore[misc]
    paths, files, starts = paths[:reused], files[:reused], starts[:reused]
    for checkpoint in checkpoints[reused:]:
        # the shard holding key, for a sharded checkpoint
        path = checkpoint if remote and is_remote(checkpoint) else tensor_file(checkpoint, key, follow_symlinks)
        paths.append(path)
        facts = file_facts(path, stats.get(str(path)))
        files.append(facts)
        tensors = facts.tensors
        if key is None:  # from config.json: GPT-2, Llama, Qwen, GPT-NeoX, ...
            key = embedding_key(path, {n: tuple(t.shape) for n, t in tensors.items()})  # type: ignore[arg-type]
        if key not in tensors:  # raises, listing the tensors
            ndims = {n: len(t.shape) for n, t in tensors.items()}
            hint = ", e.g. model.embed_tokens.weight"
            _choose_key(path, ndims, key, 2, "tensor", "embedding matrix", _tensor_list(tensors), hint)
        info = tensors[key]
        if len(info.shape) != 2:
            raise InputError(
                f"{path}: tensor {key!r} has shape {list(info.shape)}; a per-checkpoint file holds"
                " one 2-D (token, dim) matrix per file"
            )
        if info.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{path}: tensor {key!r} has dtype {info.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
        if first is None:
            first = (path, info)
        elif (info.shape, info.dtype) != (first[1].shape, first[1].dtype):
            raise InputError(
                f"{path}: tensor {key!r} has shape {list(info.shape)} and dtype {info.dtype}, but"
                f" {first[0]} (the first checkpoint) has shape {list(first[1].shape)} and dtype"
                f" {first[1].dtype}; every checkpoint must match: remove or fix this file"
            )
        starts.append(info.start)
    assert first is not None and key is not None  # paths is never empty
    if not remote:
        remember_run(memo, checkpoints, (key, first, paths, files, starts))
    info = first[1]
    src = _StackSource(
        [_picklable(p) for p in paths], starts, info.raw_dtype.str, info.dtype, (len(paths),) + info.shape, nonfinite
    )
    source = str(spec) if isinstance(spec, str) else f"{checkpoints[0]} .. {checkpoints[-1]} ({len(paths)} files)"
    return src, key, info.dtype, checkpoints, source, files


_NPY_KINDS = {"<f2": "F16", "<f4": "F32", "<f8": "F64"}


def read_npy_header(path: str | os.PathLike[str] | Location) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Read and check a ``.npy`` header without reading the data (numpy's own header parser).

    Returns
    -------
    shape, fortran_order, dtype, data offset

    Raises
    ------
    InputError
        Not a readable ``.npy`` header, a negative dimension, or a file size that does not
        match the header (truncated or corrupt); the message names the file.
    """
    import tokenize

    path = locate(path)
    found = require_regular_file(path)
    size = found if isinstance(found, int) else found.st_size
    try:
        with open_reader(path, size) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read[version](f)
            start = f.tell()
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:  # numpy parses the header as Python
        reason = exc.args[0] if isinstance(exc, tokenize.TokenError) else str(exc)
        raise InputError(f"{path}: not a valid .npy file (header: {str(reason)[:200]})") from None
    if any(n < 0 for n in shape):
        raise InputError(f"{path}: not a valid .npy file (negative dimension in shape {list(shape)})")
    need = start + math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and size != need:
        raise InputError(f"{path}: file has {size} bytes, the header promises {need}; it is truncated or corrupt")
    return tuple(shape), fortran, dtype, start


def _open_npy(path: Path | Location, key: str | None, nonfinite: str) -> tuple[_FileSource, str, str, None]:
    if key is not None:
        raise InputError(f"{path}: a .npy file holds one array; drop key= / --key")
    shape, fortran, dtype, start = read_npy_header(path)
    kind = _NPY_KINDS.get(dtype.str)
    if kind is None:
        raise InputError(f"{path}: array has dtype {dtype}; supported: float16, float32, float64 (little-endian)")
    if len(shape) != 3:
        raise InputError(f"{path}: array has shape {list(shape)}; expected 3-D (step, token, dim)")
    if fortran:
        raise InputError(f"{path}: array is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    return _FileSource(_picklable(path), start, np.dtype(dtype).str, kind, tuple(shape), nonfinite), "array", kind, None


def _open_zarr(path: Path | Location, key: str | None, chunks: Chunks) -> tuple[da.Array, str, str, np.ndarray | None]:
    # unchecked: open_history checks finiteness (finite_blocks) once it knows the step labels
    import zarr

    try:
        node = zarr.open(zarr_store(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not a store"
        raise InputError(f"{path}: cannot open as zarr ({exc})") from None
    steps = None
    if isinstance(node, zarr.Group) and ("dask_pdist_fingerprint" in node.attrs or "dask_pdist_kind" in node.attrs):
        # a distance, neighbours or clusters store of ours: its rows are not embeddings
        raise InputError(
            f"{path}: a dask_pdist store (distances or neighbours), not an embedding history; give the history it was"
            " computed from (`dask-pdist info` names it), or read the store with open_distances"
        )
    if isinstance(node, zarr.Group):
        arrays = dict(node.arrays())
        listing = ", ".join(f"{n} {list(a.shape)} {a.dtype}" for n, a in sorted(arrays.items())) or "none"
        key = _choose_key(path, {n: a.ndim for n, a in arrays.items()}, key, 3, "array", "history array", listing)
        arr = arrays[key]
        for name in ("step", "steps"):
            cand = arrays.get(name)
            if cand is not None and cand.ndim == 1 and cand.shape[0] == arr.shape[0] and cand.dtype.kind in "iu":
                steps = _int64_steps(np.asarray(cand[:]), path, f"array {name!r}")
                break
    else:
        arr = node
        key = key or path.name
    if arr.ndim != 3:
        raise InputError(f"{path}: array {key!r} has shape {list(arr.shape)}; expected 3-D (step, token, dim)")
    kind = {"float16": "F16", "float32": "F32", "float64": "F64"}.get(str(arr.dtype))
    if kind is None:
        raise InputError(f"{path}: array {key!r} has dtype {arr.dtype}; supported: float16, float32, float64")
    x = da.from_zarr(arr, chunks=_chunk_spec(chunks, arr.shape))
    if kind == "F16":
        x = x.astype(np.float32)
    return x, key, kind, steps


def finite_blocks(x: da.Array, path: str, labels: np.ndarray | None) -> da.Array:
    """``x`` whose every task raises the reader's :class:`InputError` on a NaN or infinity,
    naming its step label (``labels``; None: its index) and token."""
    return x.map_blocks(_finite_block, path, labels, dtype=x.dtype, meta=np.empty((0, 0, 0), x.dtype))


def _finite_block(block: np.ndarray, path: str, labels: np.ndarray | None, block_info=None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    _check_finite(block, path, start, 0, labels)
    return block


def _chunk_spec(chunks: Chunks, shape: tuple[int, ...]) -> tuple | dict | int:
    if isinstance(chunks, str):
        if chunks != "auto":
            raise ValueError(f"chunks must be 'auto', an int, a tuple or a dict, got {chunks!r}")
        return (auto_step_chunk(shape[1], shape[0]), -1, -1)
    if isinstance(chunks, int):
        return (chunks, -1, -1)
    if isinstance(chunks, dict):
        by_axis = {HISTORY_DIMS.index(k) if isinstance(k, str) else k: v for k, v in chunks.items()}
        return tuple(by_axis.get(a, -1) for a in range(3))
    return chunks
