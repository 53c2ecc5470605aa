"""Nothing lost: completeness, resume after kill / Ctrl-C / disk full, integrity, safety.

Subprocess tests poll the store's done flags (files under _dask_pdist/chunk_done/) instead of sleeping
for a fixed time, and are bounded by timeouts.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed
import numpy as np
import pytest
import xarray as xr

from conftest import random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.cli.main import main
from dask_pdist.store.layout import store_progress
from dask_pdist.store.verification import verify_store

CLI = [sys.executable, "-m", "dask_pdist"]
TIMEOUT = 120
#: 3-step blocks of the `big` history: enough that a signal sent after the first blocks lands
#: mid-run also on a slow CI machine (a 200-block job there finished before a test's signal)
BLOCKS = 400


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A history whose compute takes a few seconds in BLOCKS blocks, and its reference store."""
    work = tmp_path_factory.mktemp("faults")
    src = work / "h.safetensors"
    assert main(["synth", str(src), "--steps", str(3 * BLOCKS), "--vocab", "160", "--dim", "32"]) == 0
    ref = work / "ref.zarr"
    assert main(["compute", str(src), "-o", str(ref), "--chunk-steps", "3", "--no-progress"]) == 0
    return src, ref


def _n_done(store: Path) -> int:
    root = store / "_dask_pdist" / "chunk_done" / "c"
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.endswith(".partial")) if root.exists() else 0


def _start(src: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    args = CLI + ["compute", str(src), "-o", str(out), "--chunk-steps", "3", "--no-progress", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_blocks(proc: subprocess.Popen, store: Path, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _n_done(store) < n:
        assert proc.poll() is None, f"writer exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "writer made no progress"
        time.sleep(0.005)  # a poll interval, not a synchronisation guess


def _assert_same(a: Path, b: Path) -> None:
    x, y = open_distances(a), open_distances(b)
    for name in ("euclidean", "chebyshev"):
        assert bool((x[name] == y[name]).all().compute()), name
    np.testing.assert_array_equal(x.embedding_rms.values, y.embedding_rms.values)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(big, tmp_path):
    src, ref = big
    out = tmp_path / "d.zarr"
    proc = _start(src, out)
    _wait_for_blocks(proc, out, 20)
    proc.kill()
    proc.wait(TIMEOUT)
    done, complete = store_progress(out)
    assert not complete and 20 <= done.sum() < done.size
    with pytest.raises(StoreError, match=rf"incomplete, \d+ of {BLOCKS} blocks missing.*--resume"):
        open_distances(out)
    leftover = out / "euclidean" / "c" / "0" / "0" / "0.deadbeef.partial"  # as a killed zarr write leaves
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a chunk")
    code = subprocess.run(
        CLI + ["compute", str(src), "-o", str(out), "--chunk-steps", "3", "--no-progress", "--resume"], timeout=TIMEOUT
    ).returncode
    assert code == 0
    assert not list(out.rglob("*.partial"))
    _assert_same(out, ref)


def _ignore_ctrl_c():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup ... &` starts a job


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, nohup",
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["ctrl-c", "sigterm", "sigterm-under-nohup"],
)
def test_ctrl_c_stops_promptly_and_says_how_to_resume(big, tmp_path, signum, nohup):
    """Ctrl-C, and SIGTERM (how SLURM and Kubernetes stop a job, also a job started with nohup,
    which ignores Ctrl-C): the same clean stop."""
    src, ref = big
    out = tmp_path / "d.zarr"
    proc = _start(src, out, preexec_fn=_ignore_ctrl_c) if nohup else _start(src, out)
    _wait_for_blocks(proc, out, 10)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    resume_cmd = err.strip().splitlines()[-1].split("dask-pdist ", 1)[1]
    assert subprocess.run(CLI + resume_cmd.split(), timeout=TIMEOUT).returncode == 0
    _assert_same(out, ref)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_disk_full_is_a_clean_error_and_resumable(big, tmp_path):
    src, ref = big
    out = tmp_path / "d.zarr"
    proc = _start(src, out, preexec_fn=_limit_file_size)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, err
    assert "File too large" in err and "--resume" in err and "Traceback" not in err
    assert not store_progress(out)[1]
    assert (
        subprocess.run(
            CLI + ["compute", str(src), "-o", str(out), "--chunk-steps", "3", "--no-progress", "--resume"],
            timeout=TIMEOUT,
        ).returncode
        == 0
    )
    _assert_same(out, ref)


@pytest.mark.slow
def test_reader_never_sees_a_done_block_with_wrong_data(big, tmp_path):
    src, ref = big
    expected = open_distances(ref)
    out = tmp_path / "d.zarr"
    proc = _start(src, out)
    _wait_for_blocks(proc, out, 1)
    partial_views = checked = 0
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        ds = open_distances(out, allow_incomplete=True)
        done, _ = store_progress(out)  # may be newer than the reader's: only ever more done
        seen = ds.euclidean.data.map_blocks(lambda b: b[:1, :1, :1], chunks=(1, 1, 1)).compute()
        flags = ~np.isnan(seen[:, 0, 0])  # what this reader sees as written
        assert not (flags & (done[:, 0, 0] == 0)).any()
        blocks = np.flatnonzero(flags)
        if 0 < len(blocks) < done.shape[0]:
            partial_views += 1
        for b in blocks[-3:]:  # the newest blocks are the ones a racing writer could tear
            sl = slice(3 * b, 3 * b + 3)
            np.testing.assert_array_equal(ds.euclidean[sl].values, expected.euclidean[sl].values)
            np.testing.assert_array_equal(ds.chebyshev[sl].values, expected.chebyshev[sl].values)
            checked += 1
    proc.wait(TIMEOUT)
    assert proc.returncode == 0
    assert partial_views >= 2 and checked > 0
    _assert_same(out, ref)


@pytest.mark.slow
def test_killed_distributed_worker_does_not_lose_work(big, tmp_path):
    src, ref = big
    out = tmp_path / "d.zarr"
    ds = pairwise_distances(open_history(src, chunks=3))
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        future = client.compute(to_zarr(ds, out, compute=False))
        deadline = time.monotonic() + TIMEOUT
        while _n_done(out) < 10:
            assert not future.done() and time.monotonic() < deadline
            time.sleep(0.005)
        pids = list(client.run(os.getpid).values())
        assert not future.done()
        os.kill(pids[0], signal.SIGKILL)
        assert future.result(timeout=TIMEOUT) == BLOCKS
    _assert_same(out, ref)


def test_verify_names_corrupt_and_missing_chunks(big, tmp_path, capsys):
    src, _ = big
    out = tmp_path / "d.zarr"
    x = random_history((40, 9, 5))
    ds = pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")).chunk({"step": 8}))
    to_zarr(ds, out)
    assert verify_store(out) == [] and main(["verify", str(out)]) == 0
    chunk = out / "euclidean" / "c" / "2" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    (out / "chebyshev" / "c" / "4" / "0" / "0").unlink()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert "euclidean steps 16..23: corrupt" in lines[0] and "checksum" in lines[0]
    assert "chebyshev steps 32..39: missing" in lines[1]


def test_resume_recomputes_blocks_whose_chunk_files_are_gone(tmp_path, write_safetensors, capsys):
    """A complete store that lost chunk files (deleted by hand, a bad copy) is repaired by
    --resume: those blocks alone are recomputed, the rest is left as it is."""
    src = write_safetensors("h.safetensors", {"emb": random_history((37, 13, 6), seed=4)})
    out, ref = tmp_path / "d.zarr", tmp_path / "ref.zarr"
    args = ["--chunk-steps", "8", "--no-progress"]
    assert main(["compute", str(src), "-o", str(ref), *args]) == 0
    assert main(["compute", str(src), "-o", str(out), *args]) == 0
    (out / "chebyshev" / "c" / "1" / "0" / "0").unlink()
    (out / "euclidean" / "c" / "3" / "0" / "0").unlink()
    untouched = (out / "euclidean" / "c" / "0" / "0" / "0").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compute", str(src), "-o", str(out), "--resume", *args]) == 0
    assert "resuming, 2 of 5 blocks to compute" in capsys.readouterr().err
    assert (out / "euclidean" / "c" / "0" / "0" / "0").stat().st_mtime_ns == untouched
    _assert_same(out, ref)
    assert verify_store(out) == []
    assert main(["compute", str(src), "-o", str(out), "--resume", *args]) == 0
    assert (
        "complete: nothing to compute (every written chunk is present and passes its checks)" in capsys.readouterr().err
    )


def test_verify_and_reads_name_a_store_that_lost_its_root_metadata(tmp_path, capsys):
    out = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(xr.DataArray(random_history((9, 5, 3)), dims=("step", "token", "dim"))), out)
    (out / "zarr.json").unlink()
    for call in (verify_store, open_distances):
        with pytest.raises(StoreError, match=r"d.zarr: a damaged dask_pdist store: its root zarr.json is missing"):
            call(out)
    assert main(["verify", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_verify_of_a_store_being_written_names_the_lock(tmp_path):
    from dask_pdist.store.layout import acquire_lock, release_lock, write_root_attrs

    out = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(xr.DataArray(random_history((9, 5, 3)), dims=("step", "token", "dim"))), out)
    write_root_attrs(out, complete=False)
    token = acquire_lock(out)  # as a running writer holds it
    try:
        (problem,) = verify_store(out)
        assert "a job holds its writer lock" in str(problem) and ".d.zarr.lock" in str(problem)
    finally:
        release_lock(out, token)
    (problem,) = verify_store(out)
    assert "the job was interrupted or stopped" in str(problem)


def test_resume_refuses_a_different_job(big, tmp_path, write_safetensors):
    src, _ = big
    out = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(open_history(src, chunks=3)), out, compute=False)  # interrupted before any block
    with pytest.raises(StoreError, match=r"cannot resume.*compute_dtype|variables"):
        to_zarr(pairwise_distances(open_history(src, chunks=3), dtype="float16"), out, resume=True)
    with pytest.raises(StoreError, match=r"cannot resume.*chunks: store has \[3, 160, 160\], now \[5, 160, 160\]"):
        to_zarr(pairwise_distances(open_history(src, chunks=5)), out, resume=True)
    other = tmp_path / "other.safetensors"
    shutil.copy(src, other)
    with open(other, "r+b") as f:  # same size, one header byte changed
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(b" " if byte != b" " else b"\t")
    try:
        hist = open_history(other, chunks=3)
    except Exception:
        hist = None
    if hist is not None:
        with pytest.raises(StoreError, match=r"cannot resume.*source_fingerprint"):
            to_zarr(pairwise_distances(hist), out, resume=True)
    to_zarr(pairwise_distances(open_history(src, chunks=3)), out, resume=True)
    assert int(store_progress(out)[0].sum()) == BLOCKS


def test_output_safety(tmp_path, monkeypatch, capsys):
    x = random_history((6, 5, 3))
    ds = pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")).chunk({"step": 2}))
    with pytest.raises(ValueError, match="overwrite and resume exclude each other"):
        to_zarr(ds, tmp_path / "a.zarr", overwrite=True, resume=True)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    with pytest.raises(StoreError, match=r"parent directory .*ro is not writable"):
        to_zarr(ds, ro / "d.zarr")
    assert not (ro / "d.zarr").exists()


def test_all_nan_block_is_written_not_missing(tmp_path):
    # nonfinite="propagate": a block that is all NaN equals the fill value, yet must be on disk
    x = random_history((12, 5, 3))
    x[4:8] = np.nan
    ds = pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")).chunk({"step": 4}))
    to_zarr(ds, tmp_path / "d.zarr")
    assert verify_store(tmp_path / "d.zarr") == []
    back = open_distances(tmp_path / "d.zarr").euclidean.values
    assert np.isnan(back[4:8]).all() and not np.isnan(back[:4]).any()


@pytest.mark.slow
def test_a_second_compute_on_a_running_output_is_refused(big, tmp_path, capsys):
    src, ref = big
    out = tmp_path / "d.zarr"
    other = tmp_path / "other.safetensors"
    shutil.copy(src, other)
    proc = _start(src, out)
    _wait_for_blocks(proc, out, 5)
    for extra in ([], ["--overwrite"], ["--resume"]):  # in this process: no import time, no race
        second = main(["compute", str(other), "-o", str(out), "--chunk-steps", "3", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert second == 2 and f"being written by pid {proc.pid}" in err, err
    assert proc.poll() is None, "the writer finished before the checks: make the job longer"
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert open_distances(out).attrs["source"] == str(src)  # provenance: the run that wrote the data
    _assert_same(out, ref)
    assert not (tmp_path / ".d.zarr.lock").exists()


def test_sigkilled_export_leaves_a_partial_the_next_export_removes(big, tmp_path):
    _, ref = big
    out = tmp_path / "x.safetensors"
    proc = subprocess.Popen(CLI + ["export", str(ref), str(out), "--no-progress"])
    deadline = time.monotonic() + TIMEOUT
    while not list(tmp_path.glob(".x.safetensors.*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait(TIMEOUT)
    assert list(tmp_path.glob(".x.safetensors.*.partial"))
    assert main(["export", str(ref), str(out), "--no-progress"]) == 0
    assert not list(tmp_path.glob(".x.safetensors.*.partial"))


def test_export_write_failure_names_the_file(big, tmp_path):
    _, ref = big
    out = tmp_path / "x.safetensors"
    proc = subprocess.run(
        CLI + ["export", str(ref), str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_limit_file_size,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{out}: export failed: File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob(".x.safetensors*")) and not out.exists()
