"""An append re-reads only the stored steps whose input file changed: each step's file version
(path, size, mtime, inode; io/paths.py version_of) is recorded next to its input checksum, and a
stored step whose file is the very version recorded is not read again. A file rewritten since
(new mtime) is re-read and checked; one modified in the last two seconds is never vouched for."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import dask_pdist.io.history as history_module
from conftest import random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.io.paths import version_of

SHAPE = (9, 7, 5)


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (no test waits the two seconds a file's times must age)."""
    import dask_pdist.io.paths

    monkeypatch.setattr(dask_pdist.io.paths, "_SETTLED_NS", 0)


@pytest.fixture
def checkpoints(write_safetensors, tmp_path, settled):
    """One safetensors file per step, saved a minute ago; files(n) lists the first n."""
    x = random_history(SHAPE, seed=11)
    settled = time.time() - 60
    for i in range(SHAPE[0]):
        path = write_safetensors(f"step-{i:04d}.safetensors", {"embedding": x[i]})
        os.utime(path, (settled, settled))

    def files(n: int) -> list[str]:
        return [str(tmp_path / f"step-{i:04d}.safetensors") for i in range(n)]

    return x, files


@pytest.fixture
def read_steps(monkeypatch):
    """The number of steps whose input checksum is computed (what re-reading a step costs)."""
    count = []
    real = history_module._step_checksums

    def counting(block: np.ndarray) -> np.ndarray:
        count.append(len(block))
        return real(block)

    monkeypatch.setattr(history_module, "_step_checksums", counting)
    return count


def _distances(files: list[str]):
    return pairwise_distances(open_history(files, chunks=1))


def _versions(store: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(store / "_dask_pdist" / "input_version"), mode="r")[...])


def test_version_of_vouches_only_for_a_settled_file(tmp_path, monkeypatch):
    import dask_pdist.io.paths

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)
    assert version_of(path) == 0  # just written: its mtime cannot yet tell a rewrite apart
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert version_of(path) == 0  # its change time is now (utime cannot set that back)
    monkeypatch.setattr(dask_pdist.io.paths, "_SETTLED_NS", 0)  # two seconds later, say
    first = version_of(path)
    assert first != 0 and version_of(path) == first
    path.write_bytes(b"y" * 11)
    os.utime(path, (time.time() - 30, time.time() - 30))
    assert version_of(path) not in (0, first)


def test_append_reads_only_the_new_step(checkpoints, tmp_path, read_steps):
    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(6)), store)
    assert (_versions(store) != 0).all()  # settled files: every step vouched for
    read_steps.clear()
    to_zarr(_distances(files(7)), store, append=True)
    assert sum(read_steps) == 1  # the new step, by its write task; no stored step re-read
    assert open_distances(store)["step"].values.tolist() == list(range(7))


def test_a_rewritten_stored_file_is_read_again_and_refused(checkpoints, tmp_path, write_safetensors, read_steps):
    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(6)), store)
    changed = write_safetensors("step-0002.safetensors", {"embedding": x[2] + 1})
    os.utime(changed, (time.time() - 30, time.time() - 30))  # settled, but another version
    read_steps.clear()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in store.rglob("*"))
    with pytest.raises(StoreError, match=r"input changed since the store was written: step 2 \(index 2\)"):
        to_zarr(_distances(files(7)), store, append=True)
    assert sum(read_steps) == 1  # only the rewritten step was read to check it
    assert sorted((p.name, p.stat().st_mtime_ns) for p in store.rglob("*")) == before


def test_a_file_rewritten_with_the_same_values_is_checked_then_vouched_for(
    checkpoints, tmp_path, write_safetensors, read_steps
):
    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(6)), store)
    again = write_safetensors("step-0003.safetensors", {"embedding": x[3]})  # copied back, say
    os.utime(again, (time.time() - 30, time.time() - 30))
    read_steps.clear()
    to_zarr(_distances(files(7)), store, append=True)
    assert sum(read_steps) == 2  # step 3 re-read and found unchanged, and the new step
    assert _versions(store)[3] == version_of(again)  # recorded: not read again next time
    read_steps.clear()
    to_zarr(_distances(files(8)), store, append=True)
    assert sum(read_steps) == 1


def test_a_just_written_file_is_read_again_next_time(checkpoints, tmp_path, read_steps, monkeypatch):
    import dask_pdist.io.known_files

    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(5)), store)
    newest = str(Path(files(6)[-1]))
    real = dask_pdist.io.known_files.version_of
    # saved a moment ago, as --follow usually meets a checkpoint: version_of cannot vouch for it
    monkeypatch.setattr(
        dask_pdist.io.known_files, "version_of", lambda p, st=None: 0 if str(p) == newest else real(p, st)
    )
    to_zarr(_distances(files(6)), store, append=True)
    assert _versions(store)[5] == 0  # not vouched for: its mtime may not yet show a rewrite
    monkeypatch.setattr(dask_pdist.io.known_files, "version_of", real)  # it has aged since
    read_steps.clear()
    to_zarr(_distances(files(7)), store, append=True)
    assert sum(read_steps) == 2  # step 5 checked again, and the new step


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_read_again(checkpoints, tmp_path, monkeypatch):
    # same path, size and inode, mtime set back: the change time (which no call can set back) tells
    import dask_pdist.io.paths

    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(6)), store)
    path = Path(files(6)[2])
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last value's lowest mantissa bit
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    for settle in (2_000_000_000, 0):  # at once (its ctime is recent), and once it has aged
        monkeypatch.setattr(dask_pdist.io.paths, "_SETTLED_NS", settle)
        with pytest.raises(StoreError, match=r"input changed since the store was written: step 2"):
            to_zarr(_distances(files(7)), store, append=True)


def test_a_damaged_version_record_only_costs_reading(checkpoints, tmp_path, read_steps):
    x, files = checkpoints
    store = tmp_path / "d.zarr"
    to_zarr(_distances(files(6)), store)
    chunk = store / "_dask_pdist" / "input_version" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    read_steps.clear()
    to_zarr(_distances(files(7)), store, append=True)
    assert sum(read_steps) == 7  # every stored step checked by its checksum, and the new one
    assert (_versions(store) != 0).all()  # the record written anew
    read_steps.clear()
    to_zarr(_distances(files(8)), store, append=True)
    assert sum(read_steps) == 1


def test_opening_again_reads_only_changed_headers(checkpoints, monkeypatch, write_safetensors):
    # a settled checkpoint file still its recorded version is not read again when the run is
    # opened again (following a run: each save opens the whole run); a rewritten one is
    import dask_pdist.io.known_files as known_files

    x, files = checkpoints
    read = []
    real = known_files.read_header
    monkeypatch.setattr(known_files, "read_header", lambda p: read.append(str(p)) or real(p))
    first = open_history(files(6), chunks=1)
    assert len(read) == 6
    again = open_history(files(7), chunks=1)
    assert read[6:] == files(7)[6:]  # only the new checkpoint
    assert again.attrs["source_fingerprint"] != first.attrs["source_fingerprint"]
    np.testing.assert_array_equal(again[:6].values, first.values)
    changed = x[2] + 1
    write_safetensors(Path(files(3)[2]).name, {"other": np.zeros(3, np.float32), "embedding": changed})
    del read[:]
    now = open_history(files(7), chunks=1)
    assert read == [files(3)[2]]  # its version changed: read again, its new header used
    np.testing.assert_array_equal(now[2].values, changed)
    assert now.attrs["source_fingerprint"] != again.attrs["source_fingerprint"]
    assert now["input_version"].values[2] not in (0, again["input_version"].values[2])


@pytest.mark.parametrize("unvouched", [None, 2])
def test_growth_writes_the_versions_it_would_read(checkpoints, tmp_path, monkeypatch, unvouched):
    # the growth takes the labels and versions the checks read (store/append.py Stored) instead
    # of reading them again: the same files, byte for byte, as a growth that reads them; with a
    # stored step re-vouched (its recorded version 0: its file was new when stored)
    import shutil

    from dask_pdist.store import append, writer

    _, files = checkpoints
    base = tmp_path / "base.zarr"
    to_zarr(pairwise_distances(open_history(files(5), chunks=1)), base)
    if unvouched is not None:
        where = zarr.open_array(str(base / "_dask_pdist" / "input_version"), mode="r+")
        where[unvouched] = 0
    taken, read = tmp_path / "taken.zarr", tmp_path / "read.zarr"
    shutil.copytree(base, taken)
    shutil.copytree(base, read)
    to_zarr(pairwise_distances(open_history(files(7), chunks=1)), taken, append=True)
    monkeypatch.setattr(writer, "grow", lambda ds, path, fingerprint, seen=None: append.grow(ds, path, fingerprint))
    to_zarr(pairwise_distances(open_history(files(7), chunks=1)), read, append=True)
    left = {str(p.relative_to(taken)): p.read_bytes() for p in sorted(taken.rglob("*")) if p.is_file()}
    right = {str(p.relative_to(read)): p.read_bytes() for p in sorted(read.rglob("*")) if p.is_file()}
    assert sorted(left) == sorted(right)
    assert [name for name in left if left[name] != right[name]] == []
    versions = np.asarray(zarr.open_array(str(taken / "_dask_pdist" / "input_version"), mode="r")[:])
    assert versions.tolist() == [version_of(Path(p)) for p in files(7)]
