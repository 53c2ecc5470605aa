"""A local store's chunk files read and written in the calling thread, checked as zarr
checks them.

Why not zarr here: zarr's synchronous reads and writes run every chunk's codecs on zarr's one
event-loop thread (a read also copies each decoded chunk into a new array), so dask's threads
wait on that one thread. On the 5,001 x 128 x 64 demo store (2 cores): decoding every chunk
through zarr 0.29-0.30 s, read here 0.145 s; writing them all through zarr 0.42-0.44 s, here
0.24-0.29 s (docs/performance.md). Only the codecs the distance arrays are written with are
handled: ``bytes`` (little-endian), an optional Blosc, ``crc32c``; the files are the ones zarr
writes (same bytes, same atomic temp-file-and-rename). Any other array (object storage, other
codecs, sharding), a missing chunk file and a write that is not one whole chunk go through
zarr, through :class:`~dask_pdist.store.digests.CheckingStore`, with the same checks.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dask_pdist.io.publish import file_write
from dask_pdist.store.digests import Digests, Misplaced, keyed, mismatch_reason

__all__ = ["ChunkReader", "ChunkWriter"]

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class _ChunkFiles:
    """The chunk files of array ``name`` of the local store at ``root``. Plain data: it
    pickles into dask tasks."""

    def __init__(self, root: Path, name: str, array: Any, blosc: dict | None) -> None:
        meta = array.metadata
        self.root = root
        self.name = name
        self.shape = tuple(int(n) for n in array.shape)
        self.chunk_shape = tuple(int(n) for n in meta.chunk_grid.chunk_shape)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = meta.fill_value
        self.blosc = blosc  # numcodecs.Blosc's configuration, as zarr makes it; None: raw bytes
        self.encoding = meta.chunk_key_encoding  # the chunk's file name

    @classmethod
    def of(cls, root: Any, name: str, array: Any) -> Any:
        """The reader (writer) for zarr array ``array`` (``name`` in the store at ``root``),
        or None where zarr must read (write) it."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec

        meta = array.metadata
        if not isinstance(root, Path) or getattr(meta, "zarr_format", None) != 3:
            return None
        if getattr(meta.chunk_grid, "chunk_shape", None) is None:
            return None
        codecs = list(meta.codecs)
        has_blosc = len(codecs) == 3 and isinstance(codecs[1], BloscCodec)
        if len(codecs) != 2 + has_blosc or not isinstance(codecs[0], BytesCodec):
            return None
        if not isinstance(codecs[-1], Crc32cCodec):
            return None
        dtype = np.dtype(array.dtype)
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        if dtype.itemsize > 1 and endian != "little" or dtype.hasobject:
            return None
        blosc = None
        if has_blosc:
            b = codecs[1]
            blosc = {
                "cname": getattr(b.cname, "value", b.cname),
                "clevel": int(b.clevel),
                "shuffle": _SHUFFLES[getattr(b.shuffle, "value", b.shuffle)],
                "blocksize": int(b.blocksize),
                "typesize": int(b.typesize),
            }
        return cls(root, name, array, blosc)

    def key(self, idx: tuple[int, ...]) -> str:
        return f"{self.name}/{self.encoding.encode_chunk_key(idx)}"


class ChunkReader(_ChunkFiles):
    """Reads whole chunks (see :meth:`read`)."""

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
        if got != raw.size:
            raise ValueError(f"chunk {key}: {raw.size} bytes, of which {got} could be read")
        # (a file under 4 bytes too: checked as zarr's path checks it, the recorded digest first)
        trailer = int.from_bytes(raw[-4:].tobytes(), "little")
        want = expected.get(key)
        if want is not None and keyed(expected.store_id, key, trailer) != want:
            raise Misplaced(str(self.root), key, mismatch_reason(raw, trailer))
        body = raw[:-4]
        computed = google_crc32c.value(body)
        if computed != trailer or raw.size < 4:
            raise ValueError(
                f"Stored and computed checksum do not match. Stored: {raw[-4:].tobytes()!r}."
                f" Computed: {computed.to_bytes(4, 'little')!r}."
            )
        nbytes = math.prod(self.chunk_shape) * self.dtype.itemsize
        if self.blosc is not None:
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


class ChunkWriter(_ChunkFiles):
    """Writes whole chunks (see :meth:`write`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # The chunk folders this writer made or found, not made again (a folder removed since,
        # by a failed job's discard, fails the write: nothing is brought back). Not pickled.
        self._folders: set[Path] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_folders": set()}

    def write(self, region: tuple[slice, ...], block: np.ndarray, store_id: int) -> int | None:
        """Write ``block`` at ``region`` when that is one whole chunk (or the in-bounds part of
        an edge chunk, padded with the fill value as zarr pads it) of the array's dtype; returns
        the chunk's keyed digest (store/digests.py), or None where zarr must write it. The file
        is written under a temporary name and renamed (whole or absent), and only into the
        array's existing folder: a write still running when a failed job's output is removed
        cannot bring its folders back (``io/publish.py: file_write``)."""
        import google_crc32c

        if block.dtype != self.dtype or len(region) != len(self.chunk_shape):
            return None
        idx = []
        for r, c, n in zip(region, self.chunk_shape, self.shape, strict=True):
            if r.start % c or r.stop - r.start != min(c, n - r.start):
                return None
            idx.append(r.start // c)
        if block.shape != self.chunk_shape:  # an edge chunk: stored whole, as zarr stores it
            whole = np.full(self.chunk_shape, self.fill, dtype=self.dtype)
            whole[tuple(slice(0, k) for k in block.shape)] = block
            block = whole
        if self.blosc is not None:
            body = np.frombuffer(_blosc(self.blosc).encode(np.ascontiguousarray(block)), np.uint8)
        else:
            body = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
        trailer = google_crc32c.value(body)
        inner = self.encoding.encode_chunk_key(tuple(idx))  # "c/1/0/0"
        key = f"{self.name}/{inner}"
        path = self.root / key
        folder = self.root / self.name
        with file_write():
            for part in inner.split("/")[:-1]:
                folder = folder / part
                if folder not in self._folders:  # mkdir of an existing folder: ~0.1 ms here
                    folder.mkdir(exist_ok=True)  # (not parents=True: the array's folder must be there)
                    self._folders.add(folder)
            temp = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # as zarr names its temp files
            try:
                with open(temp, "wb") as f:
                    f.write(body)
                    f.write(trailer.to_bytes(4, "little"))
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return keyed(store_id, key, trailer)


def _blosc(config: dict) -> Any:
    # the codec zarr's BloscCodec makes (numcodecs takes the typesize from 0.16 on)
    from numcodecs import Blosc

    try:
        return Blosc(**config)
    except TypeError:
        return Blosc(**{k: v for k, v in config.items() if k != "typesize"})
