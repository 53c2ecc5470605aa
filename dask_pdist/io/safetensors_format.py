"""Reading and writing the safetensors container ourselves.

Why not the official ``safetensors`` package here: its numpy loader cannot read BF16 without
``ml_dtypes``, it accepts duplicate keys (last one wins), it memory-maps the file (a file
truncated after opening kills the process with SIGBUS), its open handles cannot be pickled
into a dask graph, and it has no streaming writer (it builds the whole buffer in RAM).  The
format is simple: an 8-byte little-endian header length N, N bytes of JSON, then the data.
This module validates the header before any data is read, and writes headers for writers
that then fill the data in place with positioned writes.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dask_pdist.errors import InputError
from dask_pdist.io.paths import Location, is_remote, locate, open_reader, read_range

__all__ = [
    "SUPPORTED_DTYPES",
    "TensorInfo",
    "read_header",
    "require_regular_file",
    "header_bytes",
    "write_header",
    "pread_exact",
    "pwrite_all",
    "pwrite_segments",
]

#: Header size limit of the official loader; larger headers are refused before allocating.
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype name -> (itemsize, numpy dtype of the raw bytes)
_DTYPES: dict[str, tuple[int, str]] = {
    "BF16": (2, "<u2"),  # raw bits; widened to float32 by the reader
    "F16": (2, "<f2"),
    "F32": (4, "<f4"),
    "F64": (8, "<f8"),
    "I64": (8, "<i8"),
    "I32": (4, "<i4"),
    "U32": (4, "<u4"),
    "I16": (2, "<i2"),
    "U16": (2, "<u2"),
    "I8": (1, "<i1"),
    "U8": (1, "<u1"),
    "BOOL": (1, "|b1"),
    "U64": (8, "<u8"),
}
#: Dtypes a history tensor may have.
SUPPORTED_DTYPES: tuple[str, ...] = ("BF16", "F16", "F32", "F64")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header, with absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the first element in the file
    nbytes: int

    @property
    def itemsize(self) -> int:
        return _DTYPES[self.dtype][0]

    @property
    def raw_dtype(self) -> np.dtype:
        return np.dtype(_DTYPES[self.dtype][1])


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def require_regular_file(path: str | os.PathLike[str] | Location, role: str = "input file") -> os.stat_result | int:
    """Refuse anything but an existing regular file (following symlinks), without opening it.

    Opening a named pipe blocks until a writer appears, and a device never ends: both would
    hang a reader, so they are refused from their ``stat`` alone.

    A :class:`~dask_pdist.io.paths.Location` (a URL) must be an object, not a folder; its
    size is returned instead of a ``stat`` result.

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``path``.
    InputError
        ``path`` is a directory, a pipe, a socket or a device.

    Examples
    --------
    >>> require_regular_file("/dev/null")
    Traceback (most recent call last):
    dask_pdist.errors.InputError: /dev/null: input file is a character device, not a regular file; give a file
    """
    if is_remote(path):
        return path.size(role)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {role} not found") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise InputError(f"{path}: {role} is {kind}, not a regular file; give a file")
    return st


def read_header(path: str | os.PathLike[str] | Location) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate a safetensors header without reading any tensor data.

    Parameters
    ----------
    path : path-like or Location
        The safetensors file (a URL: one request for its size, one for a header up to 64 KiB).

    Returns
    -------
    tensors : dict of str to TensorInfo
        Every tensor, in file order.
    metadata : dict of str to str
        The ``__metadata__`` entry (empty if absent).

    Raises
    ------
    InputError
        The file is not a well-formed safetensors file; the message says what is wrong.

    Examples
    --------
    >>> tensors, meta = read_header("history.safetensors")  # doctest: +SKIP
    >>> tensors["embedding_history"].shape  # doctest: +SKIP
    (5001, 128, 64)
    """
    path = locate(path)
    found = require_regular_file(path)  # a pipe or a device would block or never end
    size = found if isinstance(found, int) else found.st_size
    with open_reader(path, size) as f:
        if size < 8:
            raise InputError(f"{path}: not a safetensors file: {size} bytes, shorter than the 8-byte header length")
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):  # what torch.save writes (.pt, .bin)
            raise InputError(
                f"{path}: not a safetensors file but a zip archive, as torch.save writes .pt/.bin files;"
                " convert it with safetensors.torch.save_file(torch.load(path), 'model.safetensors')"
            )
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise InputError(
                f"{path}: header length {n} exceeds the safetensors limit of {MAX_HEADER_BYTES} bytes;"
                " the file is corrupt or not a safetensors file"
            )
        if 8 + n > size:
            raise InputError(
                f"{path}: header length {n} runs past the end of the {size}-byte file;"
                " the file is truncated or not a safetensors file"
            )
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as exc:
        raise InputError(f"{path}: header lists key {exc.args[0]!r} twice; refusing an ambiguous file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: header is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        reason = str(exc).split(";")[0][:200]
        raise InputError(f"{path}: header is not a valid safetensors header ({reason})") from None
    except RecursionError:
        raise InputError(f"{path}: header nests JSON too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InputError(f"{path}: __metadata__ must map strings to strings, got {metadata!r:.200}")

    data_start = 8 + n
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        tensors[name] = _tensor_info(path, name, entry, data_start)
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise InputError(f"{path}: tensor {name!r} at data offset {begin} {what}")
        pos = end
    if data_start + pos > size:
        raise InputError(
            f"{path}: tensors need {pos} data bytes but the file holds {size - data_start}; the file is truncated"
        )
    if data_start + pos < size:
        raise InputError(
            f"{path}: {size - data_start - pos} trailing bytes after the last tensor;"
            " the file is corrupt or was written incompletely"
        )
    return tensors, dict(metadata)


def _tensor_info(path: Path | Location, name: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InputError(
            f"{path}: tensor {name!r} entry must have exactly dtype, shape and data_offsets, got {entry!r:.200}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InputError(
            f"{path}: tensor {name!r} has dtype {dtype!r}, which dask_pdist cannot read;"
            f" supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise InputError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise InputError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * _DTYPES[dtype][0]
    if offsets[1] - offsets[0] != nbytes:
        raise InputError(
            f"{path}: tensor {name!r} of shape {tuple(shape)} and dtype {dtype} needs {nbytes} bytes,"
            f" but data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], nbytes)


def pread_exact(path: str | os.PathLike[str] | Location, offset: int, nbytes: int) -> bytearray:
    """Read exactly ``nbytes`` at ``offset`` with positioned reads (no mmap: no SIGBUS).

    A :class:`~dask_pdist.io.paths.Location` (a URL) is read with one ranged request.

    Raises
    ------
    InputError
        The file is now shorter than expected (truncated or replaced after it was opened).
    """
    return read_range(path, offset, nbytes)


def header_bytes(
    tensors: list[tuple[str, str, tuple[int, ...]]],
    metadata: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """The first bytes of a safetensors file (length prefix and JSON header) and the absolute
    offset of each tensor's first byte; the tensors' data follows in the order given.

    Pure arithmetic: a streaming writer sends these bytes first, then each tensor's data.

    Examples
    --------
    >>> head, offsets = header_bytes([("x", "F32", (3, 4)), ("y", "F16", (2,))])
    >>> len(head) % 8, offsets["y"] - offsets["x"]
    (0, 48)
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    pos = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * _DTYPES[dtype][0]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the official writer pads the header to 8 bytes
    data_start = 8 + len(raw)
    offsets = {name: data_start + header[name]["data_offsets"][0] for name, _, _ in tensors}
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_header(
    path: str | os.PathLike[str],
    tensors: list[tuple[str, str, tuple[int, ...]]],
    metadata: dict[str, str] | None = None,
) -> dict[str, int]:
    """Create a safetensors file: header first, file sized once; data filled in later.

    Writers then place each tensor's bytes with positioned writes at the returned
    offsets, in any order, so no tensor is ever held whole in memory.

    Parameters
    ----------
    path : path-like
        File to create (truncated if it exists).
    tensors : list of (name, dtype, shape)
        In data order; dtype is a safetensors dtype name such as ``"F32"``.
    metadata : dict of str to str, optional
        Stored as ``__metadata__``.

    Returns
    -------
    dict of str to int
        Absolute file offset of each tensor's first byte.

    Examples
    --------
    >>> offsets = write_header("out.safetensors", [("x", "F32", (3, 4))])  # doctest: +SKIP
    """
    head, offsets = header_bytes(tensors, metadata)
    end = len(head) + sum(math.prod(shape) * _DTYPES[dtype][0] for _, dtype, shape in tensors)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(end)
    return offsets


def pwrite_all(path: str | os.PathLike[str], offset: int, data: np.ndarray) -> None:
    """Write an array's bytes at ``offset`` of an existing file (positioned, any order)."""
    pwrite_segments(path, [(offset, data)])


def pwrite_segments(path: str | os.PathLike[str], segments: list[tuple[int, np.ndarray]]) -> None:
    """Write each array's bytes at its offset of an existing file, opening it once."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in segments:
            view = memoryview(np.ascontiguousarray(data)).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)
