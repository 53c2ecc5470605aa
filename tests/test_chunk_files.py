"""Chunks of a local store decoded in dask's threads (store/chunk_files.py) read exactly what
zarr reads, with the same checks; arrays it does not know are read by zarr."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr

from conftest import random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.store.chunk_files import ChunkReader, ChunkWriter
from dask_pdist.store.digests import Digests
from dask_pdist.store.integrity import CheckedChunks

# not powers of two: 7 steps in chunks of 3 (an edge chunk of 1), 13 tokens in chunks of 5
SHAPE = (7, 13, 6)


@pytest.fixture
def history_file(write_safetensors):
    return write_safetensors("h.safetensors", {"embedding_history": random_history(SHAPE, seed=3)})


def _store(history_file, tmp_path, compressor, dtype="float32", metrics=("euclidean", "chebyshev")):
    path = tmp_path / f"{compressor}-{dtype}.zarr"
    ds = pairwise_distances(open_history(history_file, chunks=3), dtype=dtype, token_chunk=5, metrics=metrics)
    to_zarr(ds, path, compressor=compressor)
    return path


@pytest.mark.parametrize("compressor", ["none", "lz4", "zstd", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_reads_what_zarr_reads(history_file, tmp_path, compressor, dtype):
    path = _store(history_file, tmp_path, compressor, dtype)
    ds = open_distances(path)
    for name in ("euclidean", "chebyshev", "embedding_rms"):
        array = zarr.open_array(path / name, mode="r")
        assert ChunkReader.of(path, name, array) is not None  # this path is the one under test
        got = ds[name].values
        want = array[...]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), name  # bit for bit, NaN included
    # parts of chunks, across chunks, single steps, a chunk at the edge
    euclidean = zarr.open_array(path / "euclidean", mode="r")[...]
    for sel in [dict(step=6), dict(step=slice(2, 5)), dict(token_i=slice(4, 11)), dict(step=[0, 6], token_j=3)]:
        np.testing.assert_array_equal(
            ds["euclidean"].isel(sel).values,
            euclidean[tuple(sel.get(d, slice(None)) for d in ("step", "token_i", "token_j"))],
        )


def test_the_rest_is_read_by_zarr(history_file, tmp_path):
    path = _store(history_file, tmp_path, "none")
    other = zarr.create_array(
        tmp_path / "other.zarr", shape=(4,), chunks=(2,), dtype="f4", compressors=zarr.codecs.ZstdCodec()
    )
    assert ChunkReader.of(tmp_path / "other.zarr", "", other) is None  # a codec it does not read
    assert ChunkReader.of(str(path), "euclidean", zarr.open_array(path / "euclidean", mode="r")) is None  # not a Path


@pytest.mark.parametrize("compressor", ["none", "lz4"])
def test_a_damaged_chunk_fails_as_through_zarr(history_file, tmp_path, compressor):
    path = _store(history_file, tmp_path, compressor)
    chunk = path / "chebyshev" / "c" / "1" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x04
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"chebyshev chunk \(1, 0, 0\), steps 3..5: corrupt"):
        np.asarray(open_distances(path)["chebyshev"])
    # a chunk with its own valid checksum that is not the recorded one: misplaced
    other = path / "chebyshev" / "c" / "0" / "0" / "0"
    chunk.write_bytes(other.read_bytes())
    with pytest.raises(StoreError, match="misplaced"):
        np.asarray(open_distances(path)["chebyshev"])


def test_a_truncated_chunk_is_corrupt_not_short(history_file, tmp_path):
    import google_crc32c

    path = _store(history_file, tmp_path, "lz4")
    ds = open_distances(path)
    source = ds["chebyshev"].data.dask  # (the graph holds the CheckedChunks)
    checked = next(v for v in source.values() if isinstance(v, CheckedChunks))
    reader = ChunkReader.of(path, "chebyshev", zarr.open_array(path / "chebyshev", mode="r"))
    chunk = path / "chebyshev" / "c" / "2" / "0" / "0"
    body = chunk.read_bytes()[:-4]
    short = body[: len(body) // 2]
    chunk.write_bytes(short + google_crc32c.value(short).to_bytes(4, "little"))  # valid crc, too short
    with pytest.raises(ValueError, match="not a Blosc buffer"):
        reader.read((2, 0, 0), Digests({}))  # (no recorded digest: the size is what catches it)
    raw_path = _store(history_file, tmp_path, "none")
    raw_reader = ChunkReader.of(raw_path, "euclidean", zarr.open_array(raw_path / "euclidean", mode="r"))
    chunk = raw_path / "euclidean" / "c" / "0" / "0" / "0"
    body = chunk.read_bytes()[:-8]
    chunk.write_bytes(body + google_crc32c.value(body).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="bytes, expected"):
        raw_reader.read((0, 0, 0), Digests({}))
    assert pickle.loads(pickle.dumps(checked))._reader is False  # pickles without its reader


@pytest.mark.parametrize("content", [b"", b"ab", b"abcd"])
@pytest.mark.parametrize("recorded", [True, False])
def test_a_chunk_under_5_bytes_fails_as_through_zarr(history_file, tmp_path, monkeypatch, content, recorded):
    # an attack: a zero-length (or 1-3 byte) chunk file failed here with "0 bytes, of which 0
    # could be read", through zarr as damaged ("its bytes do not match its own crc32c")
    from dask_pdist.store import chunk_files

    path = _store(history_file, tmp_path, "lz4")
    (path / "chebyshev" / "c" / "1" / "0" / "0").write_bytes(content)
    array = zarr.open_array(path / "chebyshev", mode="r")
    reader = ChunkReader.of(path, "chebyshev", array)
    with pytest.raises(ValueError) as zarrs:
        array.get_block_selection((1, 0, 0))  # (no recorded digest: zarr's own check)
    with pytest.raises(ValueError) as ours:
        reader.read((1, 0, 0), Digests({}))
    assert str(ours.value) == str(zarrs.value)
    if not recorded:
        return

    def message():
        with pytest.raises(StoreError) as info:
            np.asarray(open_distances(path)["chebyshev"].isel(step=4))
        return str(info.value)

    here = message()
    monkeypatch.setattr(chunk_files.ChunkReader, "of", classmethod(lambda cls, *a: None))
    assert here == message()
    assert "corrupt (its bytes do not match its own crc32c" in here


def test_a_chunk_missing_is_still_an_error(history_file, tmp_path):
    path = _store(history_file, tmp_path, "lz4")
    (path / "euclidean" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"euclidean chunk \(2, 0, 0\), steps 6..6: missing"):
        np.asarray(open_distances(path)["euclidean"])


def _chunk_bytes(store, names=("euclidean", "chebyshev", "embedding_rms")):
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for name in names
        for p in (store / name).rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("compressor", ["none", "lz4", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_writes_the_files_zarr_writes(history_file, tmp_path, monkeypatch, compressor, dtype):
    from dask_pdist.store import chunk_files

    calls = []
    write = chunk_files.ChunkWriter.write
    monkeypatch.setattr(chunk_files.ChunkWriter, "write", lambda self, *a: calls.append(self.name) or write(self, *a))
    (tmp_path / "ours").mkdir()
    (tmp_path / "zarr").mkdir()
    ours = _store(history_file, tmp_path / "ours", compressor, dtype)
    wrote = {"euclidean", "chebyshev", "embedding_rms", "_dask_pdist/chunk_done", "_dask_pdist/chunk_digest"}
    assert wrote <= set(calls)  # the path under test wrote them
    monkeypatch.setattr(chunk_files.ChunkWriter, "of", classmethod(lambda cls, *a: None))
    theirs = _store(history_file, tmp_path / "zarr", compressor, dtype)
    # (the digests differ: each store's are keyed with its own random id; verify checks them)
    names = ("euclidean", "chebyshev", "embedding_rms", "_dask_pdist/chunk_done", "_dask_pdist/input_checksum")
    a, b = _chunk_bytes(ours, names), _chunk_bytes(theirs, names)
    assert sorted(a) == sorted(b) and len(a) > 3
    assert [k for k in a if a[k] != b[k]] == []  # the same bytes, edge chunks (7 steps in 3s) too
    assert not list(ours.rglob("*.partial"))
    from dask_pdist.store.verification import verify_store

    assert verify_store(ours) == []


def test_a_write_into_a_removed_output_brings_nothing_back(history_file, tmp_path):
    path = _store(history_file, tmp_path, "lz4")
    writer = ChunkWriter.of(path, "chebyshev", zarr.open_array(path / "chebyshev", mode="r"))
    block = np.zeros((3, 5, 5), np.float32)
    warm = ChunkWriter.of(path, "chebyshev", zarr.open_array(path / "chebyshev", mode="r"))
    assert warm.write((slice(3, 6), slice(0, 5), slice(0, 5)), block, 1) is not None  # its folders known
    copy = pickle.loads(pickle.dumps(warm))  # as a task gets it: knows no folders
    assert copy._folders == set() and warm._folders
    import shutil

    shutil.rmtree(path)
    for w in (writer, warm, copy):  # a writer that made the folders before too
        with pytest.raises(FileNotFoundError):
            w.write((slice(0, 3), slice(0, 5), slice(0, 5)), block, 1)
        assert not path.exists()
    # not one whole chunk, or another dtype: left to zarr
    assert writer.write((slice(1, 3), slice(0, 5), slice(0, 5)), block[:2], 1) is None
    assert writer.write((slice(0, 3), slice(0, 5), slice(0, 5)), block.astype(np.float64), 1) is None


def test_discard_waits_for_a_chunk_file_being_written(tmp_path):
    import threading

    from dask_pdist.io.publish import discard, file_write

    hidden = tmp_path / ".out.partial-test"
    hidden.mkdir()
    inside, finished = threading.Event(), []

    def writer():
        with file_write():
            inside.set()
            for _ in range(20):  # a slow write, still going when discard is called
                threading.Event().wait(0.01)
            (hidden / "late").write_bytes(b"x")
            finished.append(True)

    t = threading.Thread(target=writer)
    t.start()
    inside.wait()
    discard(hidden)
    assert finished == [True]  # discard returned only after the write ended...
    assert not hidden.exists()  # ...so what it wrote was removed too
    t.join()
