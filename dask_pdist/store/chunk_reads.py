"""A chunk of a local store read and decoded in the calling thread, checked as zarr checks it.

Why not zarr here: zarr's synchronous reads run every chunk's codecs on zarr's one event-loop
thread and copy each decoded chunk into a new output array, so dask's threads wait on that one
thread. On the 5,001 x 128 x 64 demo store (2 cores), decoding every chunk through zarr takes
0.29-0.30 s, and read here 0.145 s (docs/performance.md). Only the codecs the distance arrays
are written with are read here: ``bytes`` (little-endian), an optional Blosc, ``crc32c``. Any
other array (object storage, other codecs, sharding, a missing chunk file) is read by zarr,
through :class:`~dask_pdist.store.digests.CheckingStore`, with the same checks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dask_pdist.store.digests import Digests, Misplaced, _mismatch, keyed

__all__ = ["ChunkReader"]


class ChunkReader:
    """Reads whole chunks of array ``name`` of the local store at ``root``. Plain data: it
    pickles into dask tasks."""

    def __init__(
        self, root: Path, name: str, chunk_shape: tuple[int, ...], dtype: np.dtype, blosc: bool, encoding: Any
    ) -> None:
        self.root = root
        self.name = name
        self.chunk_shape = chunk_shape
        self.dtype = dtype
        self.blosc = blosc
        self.encoding = encoding  # zarr's chunk key encoding (the chunk's file name)

    @classmethod
    def of(cls, root: Any, name: str, array: Any) -> ChunkReader | None:
        """The reader for zarr array ``array`` (``name`` in the store at ``root``), or None
        where zarr must read it."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

        meta = array.metadata
        if not isinstance(root, Path) or getattr(meta, "zarr_format", None) != 3:
            return None
        codecs = list(meta.codecs)
        blosc = len(codecs) == 3 and isinstance(codecs[1], BloscCodec)
        if len(codecs) != 2 + blosc or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[-1], Crc32cCodec):
            return None
        dtype = np.dtype(array.dtype)
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and endian != "little" or dtype.hasobject:
            return None
        shape = getattr(meta.chunk_grid, "chunk_shape", None)
        if shape is None:
            return None
        return cls(root, name, tuple(int(n) for n in shape), dtype.newbyteorder("<"), blosc, meta.chunk_key_encoding)

    def key(self, idx: tuple[int, ...]) -> str:
        return f"{self.name}/{self.encoding.encode_chunk_key(idx)}"

    def read(self, idx: tuple[int, ...], expected: Digests) -> np.ndarray | None:
        """Chunk ``idx`` decoded, whole (edge chunks too, as stored), writable; None when its
        file is absent or not a file (zarr then decides: the fill value, or an error where a digest is
        recorded). Raises :class:`~.digests.Misplaced` for a chunk whose trailer is not the
        recorded one and ValueError for one that fails its crc32c or its size, as zarr does."""
        import google_crc32c

        key = self.key(idx)
        try:
            f = open(self.root / key, "rb")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None  # (zarr reads such a chunk as absent)
        with f:
            raw = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
            got = f.readinto(memoryview(raw))
        if got != raw.size or raw.size < 4:
            raise ValueError(f"chunk {key}: {raw.size} bytes, of which {got} could be read")
        trailer = int.from_bytes(raw[-4:].tobytes(), "little")
        want = expected.get(key)
        if want is not None and keyed(expected.store_id, key, trailer) != want:
            raise Misplaced(str(self.root), key, _mismatch(raw, trailer))
        body = raw[:-4]
        computed = google_crc32c.value(body)
        if computed != trailer:
            raise ValueError(
                f"Stored and computed checksum do not match. Stored: {raw[-4:].tobytes()!r}."
                f" Computed: {computed.to_bytes(4, 'little')!r}."
            )
        nbytes = math.prod(self.chunk_shape) * self.dtype.itemsize
        if self.blosc:
            from numcodecs import Blosc

            # Blosc's 16-byte header: the decoded size at bytes 4-8, the compressed one at 12-16
            decoded = int.from_bytes(body[4:8].tobytes(), "little") if body.size >= 16 else -1
            if decoded != nbytes or int.from_bytes(body[12:16].tobytes(), "little") != body.size:
                raise ValueError(f"chunk {key}: not a Blosc buffer of {nbytes} bytes (a {self.chunk_shape} chunk)")
            out = np.empty(self.chunk_shape, self.dtype)
            Blosc().decode(body, out=out)  # (Blosc's header says how it was compressed)
            return out
        if body.size != nbytes:
            raise ValueError(f"chunk {key}: {body.size} bytes, expected {nbytes} for a {self.chunk_shape} chunk")
        return body.view(self.dtype).reshape(self.chunk_shape)
