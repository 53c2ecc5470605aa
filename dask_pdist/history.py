"""Input readers: open an embedding history lazily, validated, as a labeled DataArray.

Each dask task reads its own snapshot range by a positioned read of one contiguous byte
range; the graph holds only paths and offsets (no open file handle, no mmap), so it pickles
for dask.distributed and a file truncated under a running job gives a clean error, not SIGBUS.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from .checkpoints import (
    INDEX_SUFFIX,
    _natural_key,
    checkpoint_paths,
    checkpoint_steps,
    directory_hint,
    parse_steps,
    tensor_file,
)
from .errors import InputError
from .locations import Location, any_url, glob_locations, identity, locate
from .safetensors_io import SUPPORTED_DTYPES, TensorInfo, pread_exact, read_header, require_regular_file

__all__ = ["open_history", "auto_step_chunk", "step_rms", "NONFINITE_CHOICES", "parse_token_ids", "token_runs"]

NonFinite = Literal["raise", "propagate"]
#: What to do with NaN/Inf in the history.
NONFINITE_CHOICES: tuple[str, ...] = ("raise", "propagate")
#: Dims of a history DataArray.
HISTORY_DIMS = ("step", "token", "dim")
#: Output bytes one task may produce when chunks="auto" (2 float32 metrics). Below glibc's
#: 32 MiB mmap threshold, so freed blocks are reused instead of page-faulted in afresh:
#: measured ~30% faster kernel tasks and peak RSS 390 MB instead of 530 MB at 5001 x 128.
TASK_OUTPUT_BYTES = 16 * 2**20

Chunks = Literal["auto"] | int | tuple | dict


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
    finite = da.isfinite(data)
    squares = da.where(finite, data.astype("float64") ** 2, 0.0)
    count = finite.sum(axis=(1, 2))
    return da.where(count > 0, da.sqrt(squares.sum(axis=(1, 2)) / da.maximum(count, 1)), np.nan)


def provenance(history: xr.DataArray, compute_dtype: np.dtype | str) -> dict[str, str]:
    """The attributes every result computed from ``history`` carries: where it came from
    (file, key, fingerprint, input dtype), the arithmetic dtype and the dask_pdist version."""
    from ._version import __version__

    return {
        "source": str(history.attrs.get("source", "")),
        "source_key": str(history.attrs.get("key", history.name or "")),
        "source_fingerprint": str(history.attrs.get("source_fingerprint", "")),
        "input_dtype": str(history.attrs.get("input_dtype", history.dtype)),
        "compute_dtype": str(np.dtype(compute_dtype)),
        "dask_pdist_version": __version__,
    }


def auto_step_chunk(n_tokens: int, n_steps: int, n_metrics: int = 2, itemsize: int = 4) -> int:
    """Snapshots per task so that one task's output stays near 16 MiB.

    Pure arithmetic, no I/O. 128 tokens -> 128 steps; 1024 tokens -> 2 steps.

    Examples
    --------
    >>> auto_step_chunk(128, 5001)
    128
    """
    per_step = max(1, n_metrics * n_tokens * n_tokens * itemsize)
    return int(min(max(1, n_steps), max(1, TASK_OUTPUT_BYTES // per_step)))


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
        block = _widen(block[(slice(None),) + key[1:3]], self.kind)
        if self.nonfinite == "raise":
            _check_finite(block, path, step0)
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
        block = _widen(block[:, :, key[2]], self.kind)
        if self.nonfinite == "raise":
            _check_finite(block, path, step0, rows[0])
        return block


class _FileSource(_RawSource):
    """A history stored C-contiguous at ``start`` in one file: one positioned read per task."""

    def __init__(
        self, path: str | Location, start: int, raw_dtype: str, kind: str, shape: tuple[int, ...], nonfinite: str
    ):
        super().__init__(raw_dtype, kind, shape, nonfinite)
        self.path = path
        self.start = start

    def __getitem__(self, key: tuple) -> np.ndarray:
        lo, hi, key = self._steps(key)
        rows = self._row_range(key)
        if rows is not None:
            n, at = (rows[1] - rows[0]) * self.row_nbytes, self.start + rows[0] * self.row_nbytes
            raw = b"".join(pread_exact(self.path, at + s * self.step_nbytes, n) for s in range(lo, hi))
            return self._decode_rows(raw, hi - lo, rows, key, str(self.path), lo)
        raw = pread_exact(self.path, self.start + lo * self.step_nbytes, (hi - lo) * self.step_nbytes)
        return self._decode(raw, hi - lo, key, str(self.path), lo)


def _widen(block: np.ndarray, kind: str) -> np.ndarray:
    if kind == "BF16":
        # bf16 is the top half of a float32: the widening shift is exact
        return (block.astype(np.uint32) << 16).view(np.float32)
    if kind == "F16":
        return block.astype(np.float32)
    return np.ascontiguousarray(block)


def _check_finite(block: np.ndarray, path: str, step0: int, token0: int = 0) -> None:
    if block.ndim == 3 and not np.isfinite(block).all():
        s, t, _ = np.argwhere(~np.isfinite(block))[0]
        value = block[s, t][~np.isfinite(block[s, t])][0]
        raise InputError(
            f"{path}: history holds {value} at step index {step0 + s}, token {token0 + t};"
            " fix the input, or pass nonfinite='propagate' (--nonfinite propagate) to get NaN distances there"
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
    return Path(p.url.split("://", 1)[1]) if isinstance(p, Location) else p


def _url_checkpoints(
    spec: str | Sequence[str | os.PathLike[str]], storage_options: dict | None
) -> list[Path | Location]:
    # per-checkpoint files on object storage: a URL glob (files only) or a list of locations
    if isinstance(spec, str):
        found: list[Path | Location] = list(glob_locations(spec, storage_options))
    else:
        found = [locate(p, storage_options) for p in spec]
        for p in found:
            require_regular_file(p, "checkpoint file")
    for p in found:
        if p.name.endswith(INDEX_SUFFIX):
            raise InputError(f"{p}: sharded checkpoints on object storage are not supported yet; give the shard files")
    return sorted(found, key=lambda p: (_natural_key(p.name), _natural_key(str(p))))


def _open_checkpoints(
    spec: str | Sequence[str | os.PathLike[str]], key: str | None, nonfinite: str, storage_options: dict | None = None
) -> tuple[_StackSource, str, str, list[Path | Location], str]:
    checkpoints = _url_checkpoints(spec, storage_options) if any_url(spec) else checkpoint_paths(spec)
    starts = []
    paths = []
    first: tuple[Path | Location, TensorInfo] | None = None
    for checkpoint in checkpoints:
        # the shard holding key, for a sharded checkpoint
        path = checkpoint if isinstance(checkpoint, Location) else tensor_file(checkpoint, key)
        paths.append(path)
        tensors, _ = read_header(path)
        ndims = {n: len(t.shape) for n, t in tensors.items()}
        hint = ", e.g. model.embed_tokens.weight"
        key = _choose_key(path, ndims, key, 2, "tensor", "embedding matrix", _tensor_list(tensors), hint)
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
    info = first[1]
    src = _StackSource(
        [_picklable(p) for p in paths], starts, info.raw_dtype.str, info.dtype, (len(paths),) + info.shape, nonfinite
    )
    source = str(spec) if isinstance(spec, str) else f"{checkpoints[0]} .. {checkpoints[-1]} ({len(paths)} files)"
    return src, key, info.dtype, checkpoints, source


_NPY_KINDS = {"<f2": "F16", "<f4": "F32", "<f8": "F64"}


def _read_npy_header(path: str | os.PathLike[str] | Location) -> tuple[tuple[int, ...], bool, np.dtype, int]:
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

    path = path if isinstance(path, Location) else Path(path)
    found = require_regular_file(path)
    size = found if isinstance(found, int) else found.st_size
    try:
        with path.open(size) if isinstance(path, Location) else open(path, "rb") as f:
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
    shape, fortran, dtype, start = _read_npy_header(path)
    kind = _NPY_KINDS.get(dtype.str)
    if kind is None:
        raise InputError(f"{path}: array has dtype {dtype}; supported: float16, float32, float64 (little-endian)")
    if len(shape) != 3:
        raise InputError(f"{path}: array has shape {list(shape)}; expected 3-D (step, token, dim)")
    if fortran:
        raise InputError(f"{path}: array is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    return _FileSource(_picklable(path), start, np.dtype(dtype).str, kind, tuple(shape), nonfinite), "array", kind, None


def _open_zarr(
    path: Path | Location, key: str | None, chunks: Chunks, nonfinite: str
) -> tuple[da.Array, str, str, np.ndarray | None]:
    import zarr

    try:
        options = {"storage_options": dict(path.storage_options)} if isinstance(path, Location) else {}
        node = zarr.open(str(path), mode="r", **options)
    except Exception as exc:  # zarr raises several types for "not a store"
        raise InputError(f"{path}: cannot open as zarr ({exc})") from None
    steps = None
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
    if nonfinite == "raise":
        x = x.map_blocks(_finite_block, str(path), x.chunks[0], dtype=x.dtype, meta=np.empty((0, 0, 0), x.dtype))
    return x, key, kind, steps


def _finite_block(block: np.ndarray, path: str, step_chunks: tuple[int, ...], block_info=None) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    _check_finite(block, path, start)
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


#: A token subset's rows are read in runs; gaps up to this many bytes per step are read
#: through (one read beats two for small gaps), and at most _MAX_RUNS runs per step chunk.
_RUN_GAP_BYTES = 256 * 2**10
_MAX_RUNS = 64


def parse_token_ids(spec: str | Sequence[int] | np.ndarray, n_tokens: int) -> np.ndarray:
    """Token indices of a subset, sorted, validated against ``n_tokens``.

    Parameters
    ----------
    spec : str or sequence of int
        A comma list of indices and Python-style half-open ranges ``a:b`` (``a`` included,
        ``b`` excluded), e.g. ``"0:1000,5000,7000:7100"``; or ``"@FILE"``: a text file with
        one index per line (blank lines ignored); or a sequence of ints.
    n_tokens : int
        Tokens in the history; every index must be in ``0 .. n_tokens - 1``.

    Returns
    -------
    ndarray of int64, ascending (the order of the spec does not matter).

    Raises
    ------
    InputError
        Unparseable item, index out of range, empty or reversed range, a token listed twice,
        or an empty subset; the message names the spec and the item.

    Examples
    --------
    >>> parse_token_ids("7:10,2,0:2", 50).tolist()
    [0, 1, 2, 7, 8, 9]
    """
    where = f"token_ids {spec!r}" if isinstance(spec, str) else "token_ids"
    if isinstance(spec, str):
        parts: list[np.ndarray] = []
        if spec.startswith("@"):
            fpath = Path(spec[1:])
            try:
                lines = fpath.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise FileNotFoundError(f"{fpath}: token id file not found ({where})") from None
            except (UnicodeDecodeError, IsADirectoryError):
                raise InputError(f"{fpath}: not a text file of token indices, one per line ({where})") from None
            items = [(f"{fpath} line {n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        else:
            items = [(f"{where} item {n}", item.strip()) for n, item in enumerate(spec.split(","), 1)]
        for label, item in items:
            lo_text, colon, hi_text = item.partition(":")
            try:
                lo = int(lo_text)
                hi = int(hi_text) if colon else lo + 1
            except ValueError:
                raise InputError(
                    f"{label}: {item!r} is not an index or a range a:b; write e.g. '0:1000,5000' or '@ids.txt'"
                ) from None
            if lo < 0 or hi > n_tokens or lo >= hi:
                raise InputError(
                    f"{label}: {item!r} is outside 0..{n_tokens - 1} or an empty range (ranges are half-open:"
                    f" a:b means a..b-1, a < b); the history has {n_tokens} tokens"
                )
            parts.append(np.arange(lo, hi, dtype=np.int64))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    else:
        arr = np.asarray(spec)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InputError(f"{where}: expected a 1-D sequence of integers, got shape {arr.shape} {arr.dtype}")
        ids = arr.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= n_tokens)]
        if bad.size:
            raise InputError(f"{where}: index {bad[0]} is outside 0..{n_tokens - 1}; the history has {n_tokens} tokens")
    if ids.size == 0:
        raise InputError(f"{where}: selects no token; give at least one index")
    ids = np.sort(ids)
    dup = ids[1:][ids[1:] == ids[:-1]]
    if dup.size:
        raise InputError(f"{where}: token {dup[0]} is listed twice (overlapping ranges?); list each token once")
    return ids


def token_runs(ids: np.ndarray, n_tokens: int, row_nbytes: int) -> tuple[int, ...]:
    """Token chunks covering ``0..n_tokens`` whose subset-holding chunks are read whole.

    Pure arithmetic: sorted ``ids`` are grouped into runs, merging gaps up to 256 KiB of rows
    (more if needed to keep at most 64 runs); the gaps between runs are separate chunks that
    nothing reads.

    Examples
    --------
    >>> token_runs(np.array([0, 1, 2, 700, 701]), 1000, 1024)
    (3, 697, 2, 298)
    >>> token_runs(np.array([0, 5, 9]), 20, 1024)
    (10, 10)
    """
    gap = max(1, _RUN_GAP_BYTES // max(1, row_nbytes))
    while True:
        breaks = np.flatnonzero(np.diff(ids) > gap)
        if len(breaks) < _MAX_RUNS:
            break
        gap *= 2
    starts = np.concatenate([[ids[0]], ids[breaks + 1]])
    stops = np.concatenate([ids[breaks] + 1, [ids[-1] + 1]])
    edges = sorted({0, n_tokens, *starts.tolist(), *stops.tolist()})
    return tuple(int(b - a) for a, b in zip(edges[:-1], edges[1:], strict=True))


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


def _picklable(path: Path | Location) -> str | Location:
    # what a task holds: a local path as a string, a URL with its storage options
    return path if isinstance(path, Location) else str(path)


def _is_checkpoint_spec(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> bool:
    if isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(INDEX_SUFFIX):
        return True  # one sharded checkpoint
    if isinstance(path, str) and any_url(path):
        return any(c in path.split("://", 1)[1] for c in "*?[")
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
        token. ``"propagate"``: compute anyway (NaN distances there, as scipy gives).
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
    if _is_checkpoint_spec(path):
        stack, key, kind, checkpoints, source = _open_checkpoints(path, key, nonfinite, storage_options)  # type: ignore[arg-type]
        # steps given: the paths need not hold distinct numbers
        labels = (
            parse_steps(steps, len(checkpoints), source)
            if steps is not None
            else checkpoint_steps([_step_path(p) for p in checkpoints])
        )
        versions = [identity(p) for p in stack.paths]
        x = da.from_array(
            stack,
            chunks=(spec := _source_chunks(chunks, stack, token_ids))[0],
            name=f"history-{da.core.tokenize(versions, key, nonfinite, spec[0])}",
            meta=np.empty((0, 0, 0), dtype=stack.dtype),
            asarray=False,
            fancy=False,
        )
        fingerprint = hashlib.sha256(
            "\n".join(
                _fingerprint(locate(p), start) for p, start in zip(stack.paths, stack.starts, strict=True)
            ).encode()
        ).hexdigest()[:32]
        return _label(x, labels, tokens, source, key, kind, f"{len(stack.paths)} files:{fingerprint}", spec[1])
    path = locate(path, storage_options)  # type: ignore[arg-type]
    if not path.exists():
        if isinstance(path, Location):
            path.info("history file")  # raises with the backend's reason: no such bucket, no such key
        raise FileNotFoundError(f"{path}: history file not found")
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")):
            raise InputError(directory_hint(path))
        x, key, kind, labels = _open_zarr(path, key, chunks, nonfinite)
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
    if steps is not None:
        labels = parse_steps(steps, x.shape[0], str(path))
    return _label(x, labels, tokens, str(path), key, kind, fingerprint, spec[1])


def _label(
    x: da.Array,
    steps: np.ndarray | None,
    tokens: str | os.PathLike[str] | Sequence[str] | None,
    source: str,
    key: str,
    kind: str,
    fingerprint: str,
    ids: np.ndarray | None = None,
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
    if ids is not None:
        x = x[:, ids].rechunk({1: -1})  # chunks not holding a subset token are never read
        coords["token"] = ("token", coords["token"][1][ids])
        if tokens is not None:
            coords["token_id"] = ("token", ids)
        # a resumed store must have been made from the same subset
        fingerprint += f":tokens {len(ids)}:{hashlib.sha256(ids.tobytes()).hexdigest()[:16]}"
    attrs = {"source": source, "key": key, "input_dtype": kind, "source_fingerprint": fingerprint}
    return xr.DataArray(x, dims=HISTORY_DIMS, coords=coords, name=key, attrs=attrs)
