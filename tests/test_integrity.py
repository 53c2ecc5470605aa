"""Nothing silently wrong (issue 10): reads, verify and export never report success over a
missing or corrupt part of a store; completion, provenance, one writer, output safety."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_safetensors, to_zarr
from dask_pdist.analyses.info import describe
from dask_pdist.cli.main import main
from dask_pdist.store.layout import store_progress
from dask_pdist.store.verification import verify_store

STEPS = np.arange(40, dtype=np.int64) * 10  # labels 0, 10, ..., 390: blocks of 8 steps


@pytest.fixture
def history_file(write_safetensors):
    x = random_history((40, 9, 5), seed=7)
    return write_safetensors("h.safetensors", {"embedding_history": x, "steps": STEPS}, "BF16")


@pytest.fixture
def store(history_file, tmp_path):
    path = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(open_history(history_file, chunks=8)), path)
    return path


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def _arrays(store: Path) -> list[str]:
    """Every zarr array of the store, as a path relative to it."""
    return sorted(
        str(p.parent.relative_to(store))
        for p in store.rglob("zarr.json")
        if json.loads(p.read_text())["node_type"] == "array"
    )


def _done_dir(store: Path) -> Path:
    return store / "_dask_pdist" / "chunk_done"


def _interrupt(store: Path, blocks: list[int]) -> None:
    """Make the store look killed before ``blocks`` (step-block indices) were marked done."""
    for b in blocks:
        (_done_dir(store) / "c" / str(b) / "0" / "0").unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))


# -- 1. verify checks every variable the store says exists ---------------------------------


def test_verify_reports_a_deleted_variable_and_export_refuses(store, tmp_path, capsys):
    shutil.rmtree(store / "euclidean")
    problems = [str(p) for p in verify_store(store)]
    assert any(p.startswith("euclidean") and "missing" in p for p in problems), problems
    assert main(["verify", str(store)]) == 1
    out = tmp_path / "d.safetensors"
    assert main(["export", str(store), str(out), "--no-progress"]) == 2
    assert "euclidean" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".d.safetensors*"))


def test_verify_reports_a_chunk_replaced_by_a_directory(store):
    chunk = store / "chebyshev" / "c" / "1" / "0" / "0"
    chunk.unlink()
    chunk.mkdir()
    problems = [str(p) for p in verify_store(store)]
    assert problems == ["chebyshev steps 80..150: missing (chunk file absent)"]
    with pytest.raises(StoreError, match=r"d.zarr: chebyshev chunk \(1, 0, 0\), steps 80..150: missing"):
        _ = open_distances(store).chebyshev.values


def test_a_chunk_replaced_by_a_broken_symlink_is_missing_not_nan(store, tmp_path):
    # zarr reads a chunk it cannot open as the fill value (NaN): the presence check must not
    # count a symlink that points nowhere as a chunk
    chunk = store / "chebyshev" / "c" / "1" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(tmp_path / "nowhere")
    problems = [str(p) for p in verify_store(store)]
    assert problems == ["chebyshev steps 80..150: missing (chunk file absent)"]
    with pytest.raises(StoreError, match=r"chebyshev chunk \(1, 0, 0\), steps 80..150: missing"):
        _ = open_distances(store).chebyshev.values


# -- 2. a complete store's reads raise on an absent chunk ----------------------------------


def test_complete_store_read_of_a_missing_chunk_raises(store, tmp_path, capsys):
    (store / "euclidean" / "c" / "2" / "0" / "0").unlink()
    ds = open_distances(store)
    np.testing.assert_array_equal(ds.euclidean.sel(step=0).values, ds.euclidean.isel(step=0).values)  # others read
    with pytest.raises(StoreError, match=r"d.zarr: euclidean chunk \(2, 0, 0\), steps 160..230: missing.*verify"):
        _ = ds.euclidean.values
    with pytest.raises(StoreError, match=r"steps 160..230: missing"):
        _ = ds.euclidean.sel(step=170).values
    assert main(["summary", str(store)]) == 2
    assert "steps 160..230: missing" in capsys.readouterr().err
    with pytest.raises(StoreError, match="missing"):
        to_safetensors(ds, tmp_path / "x.safetensors")
    assert not list(tmp_path.glob("x.safetensors*")) and not list(tmp_path.glob(".x.*"))


def test_reads_without_dask_check_chunks_too(store):
    # open_distances(chunks=None): numpy reads straight through zarr, through the same checks
    (store / "euclidean" / "c" / "2" / "0" / "0").unlink()
    ds = open_distances(store, chunks=None)
    assert ds.euclidean.variable._in_memory is False and ds.euclidean.chunks is None
    np.testing.assert_array_equal(ds.euclidean.isel(step=0).values, open_distances(store).euclidean.isel(step=0).values)
    with pytest.raises(StoreError, match=r"d.zarr: euclidean chunk \(2, 0, 0\), steps 160..230: missing.*verify"):
        _ = ds.euclidean.sel(step=170).values


def test_incomplete_store_reads_nan_only_where_not_done(store):
    _interrupt(store, [3])
    ds = open_distances(store, allow_incomplete=True)
    e = ds.euclidean.values
    assert np.isnan(e[24:32]).all() and not np.isnan(e[:24]).any()
    (store / "euclidean" / "c" / "1" / "0" / "0").unlink()  # marked done, yet absent
    with pytest.raises(StoreError, match=r"steps 80..150: missing"):
        _ = open_distances(store, allow_incomplete=True).euclidean.values


# -- 3. every array carries a checksum, verify reads all of them ---------------------------


def test_every_array_has_a_checksum_and_verify_reads_it(store):
    arrays = _arrays(store)
    assert {"step", "token_i", "token_j", "embedding_rms", "euclidean", "chebyshev"} <= set(arrays)
    assert "_dask_pdist/chunk_done" in arrays and "_dask_pdist/input_checksum" in arrays
    for name in arrays:
        codecs = [c["name"] for c in json.loads((store / name / "zarr.json").read_text())["codecs"]]
        assert codecs[-1] == "crc32c", (name, codecs)
    for name in ("step", "token_i", "embedding_rms", "_dask_pdist/chunk_done"):
        chunk = next(p for p in sorted((store / name / "c").rglob("*")) if p.is_file())
        original = chunk.read_bytes()
        _flip(chunk)
        problems = [str(p) for p in verify_store(store)]
        assert len(problems) == 1 and problems[0].startswith(name) and "corrupt" in problems[0], (name, problems)
        chunk.write_bytes(original)
    assert verify_store(store) == []


def test_a_corrupt_step_coordinate_fails_to_open(store):
    _flip(store / "step" / "c" / "0")
    with pytest.raises(StoreError, match=r"d.zarr: step.*corrupt.*dask-pdist verify"):
        open_distances(store)


# -- 4. a corrupt chunk names store, variable, chunk, steps, and suggests verify ------------


def test_corrupt_chunk_read_names_the_chunk(store, tmp_path, capsys):
    _flip(store / "euclidean" / "c" / "2" / "0" / "0")
    with pytest.raises(StoreError, match=r"d.zarr: euclidean chunk \(2, 0, 0\), steps 160..230: corrupt.*verify"):
        _ = open_distances(store).euclidean.values
    assert main(["export", str(store), str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "euclidean chunk (2, 0, 0), steps 160..230: corrupt" in err and "dask-pdist verify" in err


# -- 5. the completion record is the last write ----------------------------------------------


def test_a_kill_while_finishing_never_leaves_a_complete_store_that_fails_to_open(history_file, tmp_path, monkeypatch):
    import dask_pdist.store.writer as store_mod

    out = tmp_path / "d.zarr"
    ds = pairwise_distances(open_history(history_file, chunks=8))
    job = to_zarr(ds, out, compute=False)

    def killed(*args, **kwargs):
        raise RuntimeError("killed while finishing")

    # the writes of the completion step: consolidated metadata, then the completion record
    monkeypatch.setattr(store_mod, "consolidate", killed)
    if hasattr(store_mod, "write_root_attrs"):
        monkeypatch.setattr(store_mod, "write_root_attrs", killed)
    with pytest.raises(RuntimeError, match="killed"):
        job.compute()
    monkeypatch.undo()
    done, complete = store_progress(out)
    assert done.all() and not complete
    assert "INCOMPLETE" in describe(out)
    # this process still holds the writer lock (killed in-process): verify says so
    (problem,) = [str(p) for p in verify_store(out)]
    assert problem.startswith("store: not marked complete: a job holds its writer lock") and ".d.zarr.lock" in problem
    # while the lock is live a reader sees the steps whose blocks are done (here all of them)
    assert open_distances(out).attrs["being_written"].startswith(f"{ds.sizes['step']} of {ds.sizes['step']} steps")
    from dask_pdist.store.layout import release_lock

    release_lock(out)  # the job gone: the store is incomplete, not shown
    with pytest.raises(StoreError, match="incomplete"):
        open_distances(out)
    to_zarr(ds, out, resume=True)
    assert store_progress(out)[1] and verify_store(out) == []
    _ = open_distances(out).euclidean.values


def test_complete_withoutconsolidated_metadata_reads_as_incomplete(store, history_file):
    # a store killed between the two writes of the old _finish
    meta = json.loads((store / "zarr.json").read_text())
    del meta["consolidated_metadata"]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert not store_progress(store)[1]
    assert "INCOMPLETE" in describe(store)
    to_zarr(pairwise_distances(open_history(history_file, chunks=8)), store, resume=True)
    assert store_progress(store)[1]
    _ = open_distances(store).euclidean.values


# -- issue 9 item 6: bookkeeping hidden from plain xarray, old layout still read -----------


def test_plain_xarray_lists_no_bookkeeping(store):
    plain = xr.open_zarr(store)
    assert set(plain.data_vars) == {"euclidean", "chebyshev"}
    assert set(plain.dims) == {"step", "token_i", "token_j"}


def _to_old_layout(store: Path) -> None:
    """The layout of stores written before the bookkeeping sub-group: chunk_done at the root."""
    import zarr

    from dask_pdist.store.digests import STORE_ID_ATTR
    from dask_pdist.store.layout import consolidate, write_root_attrs

    os.rename(store / "_dask_pdist" / "chunk_done", store / "chunk_done")
    shutil.rmtree(store / "_dask_pdist")
    write_root_attrs(store, **{STORE_ID_ATTR: None})  # nor chunk digests
    zarr.open_group(str(store), mode="r+", use_consolidated=False)  # still a valid group
    consolidate(store)


def test_old_layout_store_opens_verifies_and_resumes(store, history_file):
    ref = open_distances(store).euclidean.values
    _to_old_layout(store)
    assert "chunk_done" in xr.open_zarr(store).data_vars  # what old stores looked like
    np.testing.assert_array_equal(open_distances(store).euclidean.values, ref)
    assert verify_store(store) == []
    (store / "chunk_done" / "c" / "4" / "0" / "0").unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    (store / "euclidean" / "c" / "4" / "0" / "0").unlink()
    assert "1 blocks missing" in describe(store)
    to_zarr(pairwise_distances(open_history(history_file, chunks=8)), store, resume=True)
    assert store_progress(store)[1] and verify_store(store) == []
    np.testing.assert_array_equal(open_distances(store).euclidean.values, ref)


# -- 7. resume checks the input data of the done blocks ------------------------------------


def _poke(history: Path, step: int, xor: int = 0, value: bytes | None = None) -> None:
    """Change the first value of ``step`` of ``embedding_history`` in place."""
    raw = bytearray(history.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    info = json.loads(raw[8 : 8 + n])["embedding_history"]
    step_bytes = (info["data_offsets"][1] - info["data_offsets"][0]) // info["shape"][0]
    at = 8 + n + info["data_offsets"][0] + step * step_bytes
    if value is None:
        raw[at] ^= xor
    else:
        raw[at : at + len(value)] = value
    history.write_bytes(bytes(raw))


def test_resume_refuses_an_input_whose_data_changed(store, history_file):
    _interrupt(store, [4])
    _poke(history_file, 11, 0x01)  # step index 11 (label 110): same size and header
    with pytest.raises(StoreError, match=r"input changed.*step 110.*--overwrite"):
        to_zarr(pairwise_distances(open_history(history_file, chunks=8)), store, resume=True)


# -- 8. one writer at a time ----------------------------------------------------------------


def _lock_path(store: Path) -> Path:
    return store.parent / f".{store.name}.lock"


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(history_file, tmp_path):
    out = tmp_path / "d.zarr"
    ds = pairwise_distances(open_history(history_file, chunks=8))
    lock = _lock_path(out)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "earlier"}))
        with pytest.raises(StoreError, match=rf"d.zarr: being written by pid {live.pid} on .* since earlier"):
            to_zarr(ds, out)
        assert not out.exists()
    finally:
        live.kill()
        live.wait()
    to_zarr(ds, out)  # its writer is dead: the lock is stale
    assert verify_store(out) == [] and not lock.exists()


def test_a_store_directory_without_root_metadata_is_recognised(store, history_file, capsys):
    (store / "zarr.json").unlink()  # as two racing writers could leave it
    assert "DAMAGED dask_pdist store" in describe(store)
    src = str(history_file)
    assert main(["compute", src, "-o", str(store), "--chunk-steps", "8", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compute", src, "-o", str(store), "--chunk-steps", "8", "--no-progress", "--overwrite"]) == 0
    assert verify_store(store) == []


# -- 9. a compute stopped by its input ------------------------------------------------------


def test_nan_everywhere_leaves_no_store(write_safetensors, tmp_path, capsys):
    x = random_history((40, 9, 5))
    x[::8, 2, 1] = np.nan  # every block fails
    src = write_safetensors("nan.safetensors", {"embedding_history": x}, "F32")
    out = tmp_path / "d.zarr"
    assert main(["compute", str(src), "-o", str(out), "--chunk-steps", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "nothing was written" in err and "--resume" not in err
    assert not out.exists() and not list(tmp_path.glob(".d.zarr*"))


def test_nan_after_some_blocks_says_the_real_cause_and_the_way_forward(write_safetensors, tmp_path, capsys):
    x = random_history((40, 9, 5))
    src = write_safetensors("h.safetensors", {"embedding_history": x}, "F32")
    out = tmp_path / "d.zarr"
    args = ["compute", str(src), "-o", str(out), "--chunk-steps", "8", "--no-progress"]
    assert main(args) == 0
    _interrupt(out, [4])
    _poke(src, 35, value=np.float32(np.nan).tobytes())  # in a block not yet written
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "step index 35" in err and "--nonfinite propagate" in err and "keeps 4 of 5 blocks" in err
    assert "stopped by its input" in describe(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "stopped by its input" in err and "interrupted" not in err
    with pytest.raises(StoreError, match="stopped by its input"):
        open_distances(out)
    assert main(args + ["--resume", "--nonfinite", "propagate"]) == 0
    assert np.isnan(open_distances(out).euclidean.sel(step=35).values[0]).all()


# -- 10. overwrite only our own layout; never the input ------------------------------------


def test_overwrite_refuses_a_users_own_zarr_and_unknown_files(store, history_file, tmp_path):
    mine = tmp_path / "mine.zarr"
    open_distances(store).to_zarr(mine, zarr_format=3, consolidated=False)
    (mine / "NOTES.md").write_text("my notes")
    ds = pairwise_distances(open_history(history_file, chunks=8))
    with pytest.raises(StoreError, match=r"mine.zarr: .*not written by dask_pdist.*NOTES.md"):
        to_zarr(ds, mine, overwrite=True)
    assert (mine / "NOTES.md").exists()
    (store / "euclidean" / "README.txt").write_text("x")
    with pytest.raises(StoreError, match=r"d.zarr: holds files dask_pdist did not write.*euclidean/README.txt"):
        to_zarr(ds, store, overwrite=True)
    assert (store / "euclidean" / "README.txt").exists()


def test_overwrite_refuses_when_the_input_lies_inside_the_output(store, history_file):
    inside = store / "h.safetensors"
    shutil.copy(history_file, inside)
    with pytest.raises(StoreError, match=r"input .*h.safetensors lies inside the output"):
        to_zarr(pairwise_distances(open_history(inside, chunks=8)), store, overwrite=True)
    assert inside.exists()


def test_overwrite_refuses_a_symlinked_output(store, history_file, tmp_path):
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    with pytest.raises(StoreError, match=r"link.zarr: is a symbolic link to .*d.zarr"):
        to_zarr(pairwise_distances(open_history(history_file, chunks=8)), link, overwrite=True)
    assert store.exists() and link.is_symlink()


def test_resume_refuses_token_labels_the_store_lacks(store, history_file, tmp_path):
    _interrupt(store, [4])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"t{i}\n" for i in range(9)))
    with pytest.raises(StoreError, match=r"cannot resume.*tokens"):
        to_zarr(pairwise_distances(open_history(history_file, chunks=8, tokens=tokens)), store, resume=True)


# -- 11. stale export partials ---------------------------------------------------------------


def test_export_removes_stale_partials_of_its_target_only(store, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".x.safetensors.{host}-{dead.pid}.0123abcd.partial"
    live = tmp_path / f".x.safetensors.{host}-{os.getppid()}.4567abcd.partial"
    other = tmp_path / f".y.safetensors.{host}-{dead.pid}.89abcdef.partial"
    for p in (stale, live, other):
        p.write_bytes(b"\0" * 100)
    to_safetensors(open_distances(store), tmp_path / "x.safetensors")
    assert not stale.exists() and live.exists() and other.exists()


def test_outputs_whose_chunks_equal_the_fill_value_verify_clean(tmp_path, write_safetensors, capsys):
    # no groups, all tokens in one cluster, nothing moved: chunks equal to the fill value are
    # still written, so verify does not call them missing (it used to: exit 1 on healthy stores)
    from dask_pdist.cli.main import main

    rand = write_safetensors("rand.safetensors", {"e": random_history((6, 9, 4), seed=2)}, "BF16")
    const = write_safetensors("const.safetensors", {"e": np.zeros((6, 5, 3))}, "BF16")
    runs = [
        ["clusters", str(rand), "--threshold", "bf16", "-o", str(tmp_path / "none.zarr")],
        ["clusters", str(const), "-o", str(tmp_path / "one.zarr")],
        ["movement", str(const), "-o", str(tmp_path / "still.zarr"), "--chunk-steps", "2"],
    ]
    for argv in runs:
        assert main([*argv, "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["verify", argv[-1] if argv[0] != "movement" else argv[3], "--no-progress"]) == 0, (
            capsys.readouterr()
        )
        assert "every chunk present" in capsys.readouterr().out
