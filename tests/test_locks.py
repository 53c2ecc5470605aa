"""Every writer takes the same one-writer lock (issue 20.2): a second writer of an output is
refused, naming the holder; a stale lock is taken over by exactly one of the processes that
find it; concurrent runs to one output never both report success."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest

import dask_pdist as dp
from conftest import random_history
from dask_pdist.cli.main import main
from dask_pdist.io.locks import acquire_lock, holding_lock, lock_path, release_lock


@pytest.fixture
def history(write_safetensors):
    return write_safetensors("h.safetensors", {"embedding_history": random_history((23, 9, 5), seed=2)}, "F32")


@pytest.fixture
def holder(tmp_path):
    """Start a live process that holds the lock of an output; yields (start(path), its pid)."""
    procs = []

    def start(target: Path) -> int:
        code = textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from dask_pdist.io.locks import acquire_lock
            acquire_lock(Path({str(target)!r}), "test")
            print("held", flush=True)
            time.sleep(60)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_every_writer_is_refused_while_another_holds_the_output(history, tmp_path, holder, capsys):
    hist = dp.open_history(history, chunks=7)
    writers = {
        "d.zarr": lambda p: dp.to_zarr(dp.pairwise_distances(hist), p, progress=False),
        "n.zarr": lambda p: dp.neighbours_to_zarr(dp.neighbours(hist, k=2), p),
        "c.zarr": lambda p: dp.write_clusters(dp.clusters(hist, threshold=0.5), p),
        "d.safetensors": lambda p: dp.to_safetensors(dp.pairwise_distances(hist), p, progress=False),
        "e.csv": lambda p: __import__("dask_pdist.analyses.events", fromlist=["x"]).write_events_csv(
            dp.cluster_events(dp.clusters(hist).compute()), p
        ),
    }
    for name, write in writers.items():
        target = tmp_path / name
        pid = holder(target)
        with pytest.raises(dp.StoreError, match=rf"being written by pid {pid} on {socket.gethostname()}"):
            write(target)
        assert not os.path.lexists(target), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.") and "lock" not in p.name]
        assert json.loads(lock_path(target).read_text())["pid"] == pid  # the holder's lock is kept
    # the CLI says it in one line, exit 2
    target = tmp_path / "cli-n.zarr"
    pid = holder(target)
    assert main(["neighbours", str(history), "-k", "2", "-o", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"being written by pid {pid}" in err[0], err


def test_a_finished_writer_releases_its_lock(history, tmp_path):
    hist = dp.open_history(history, chunks=7)
    dp.neighbours_to_zarr(dp.neighbours(hist, k=2), tmp_path / "n.zarr")
    dp.write_clusters(dp.clusters(hist), tmp_path / "c.zarr")
    dp.to_safetensors(dp.pairwise_distances(hist), tmp_path / "d.safetensors", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "d.safetensors", "h.safetensors", "n.zarr"]


def test_a_failed_writer_releases_its_lock_and_leaves_nothing(history, tmp_path):
    # dask raises the first failed task's error while the tasks beside it still run: the writer
    # waits for them before discarding its partial output, or one of them writes it again (seen
    # once under load). Here a write task is surely running when the error comes: each failing
    # block waits until one has started, and that one ends only when the lock is released (what
    # a writer that did not wait does right after discarding) or after a second.
    hist = dp.open_history(history, chunks=7)
    target, started, ended = tmp_path / "n.zarr", threading.Event(), threading.Event()

    def write_late(block: np.ndarray) -> np.ndarray:
        started.set()
        deadline = time.monotonic() + 1.0
        while lock_path(target).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        ended.set()
        return block

    def boom(block: np.ndarray) -> np.ndarray:
        started.wait(timeout=30)
        raise RuntimeError("boom")

    bad = dp.neighbours(hist, k=2).copy()
    for name, fn in (("distance", boom), ("neighbour", write_late)):
        meta = np.empty((0,) * bad[name].ndim, bad[name].dtype)  # not called on an empty block
        bad[name] = bad[name].copy(data=bad[name].data.map_blocks(fn, meta=meta))
    with dask.config.set(num_workers=8), pytest.raises(RuntimeError, match="boom"):  # a thread free for write_late
        dp.neighbours_to_zarr(bad, target)
    assert started.is_set() and ended.is_set()  # every task it started ended before it raised
    assert list(tmp_path.iterdir()) == [history]  # no partial output, no lock


def _grab(target: str, barrier, results) -> None:  # a child of the race below
    barrier.wait()
    try:
        token = acquire_lock(Path(target))
        results.put(("won", token))
        time.sleep(1.0)  # hold it while the others try
    except dp.StoreError as exc:
        results.put(("refused", str(exc)))


def test_a_stale_lock_is_taken_over_by_exactly_one_process(tmp_path):
    target = tmp_path / "d.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "long ago", "token": "stale"}
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        lock_path(target).write_text(json.dumps(stale))
        n = 8
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_grab, args=(str(target), barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in range(n)]
        for p in procs:
            p.join()
        won = [o for o in outcomes if o[0] == "won"]
        assert len(won) == 1, outcomes
        assert all("being written by pid" in o[1] for o in outcomes if o[0] == "refused")
        assert not (tmp_path / ".d.zarr.lock.takeover").exists()
        lock_path(target).unlink(missing_ok=True)


def test_a_nested_writer_keeps_the_lock_it_holds(tmp_path):
    target = tmp_path / "x"
    with holding_lock(target) as outer:
        with holding_lock(target) as inner:
            assert inner == outer
        assert json.loads(lock_path(target).read_text())["token"] == outer  # still held
    assert not lock_path(target).exists()
    token = acquire_lock(target)
    release_lock(target, "someone else")
    assert lock_path(target).exists()  # only the holder's token releases it
    release_lock(target, token)


def test_concurrent_neighbours_runs_to_one_output_never_both_succeed(history, tmp_path):
    out = tmp_path / "n.zarr"
    cmd = [sys.executable, "-m", "dask_pdist", "neighbours", str(history), "-k", "3", "-o", str(out), "--no-progress"]
    for _ in range(3):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        codes = sorted(r[0] for r in results)
        assert codes == [0, 2], results
        refused = next(err for code, err in results if code == 2)
        assert "being written by pid" in refused or "already exists" in refused, refused
        nb = dp.open_neighbours(out)
        assert nb.sizes["step"] == 23 and "token" in nb.coords
        assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors", "n.zarr"]
        import shutil

        shutil.rmtree(out)


def test_a_lock_is_never_seen_empty_and_a_full_disk_leaves_none(tmp_path, monkeypatch):
    import errno as errno_

    from dask_pdist.io import paths

    target = tmp_path / "d.zarr"
    real_open = open

    def full(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "x" in mode and str(file).endswith(".partial") and ".lock." in str(file):
            raise OSError(errno_.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(OSError, match=r"d\.zarr: cannot create its lock file .*No space left") as raised:
        acquire_lock(target)
    assert not isinstance(raised.value, ValueError)  # the machine's failure, not bad input
    monkeypatch.setattr("builtins.open", real_open)
    assert list(tmp_path.iterdir()) == []  # no empty lock left to block the next run
    token = acquire_lock(target)
    assert json.loads(lock_path(target).read_text())["token"] == token
    release_lock(target, token)
    assert paths.create_exclusive(tmp_path / "x", b"content") and not paths.create_exclusive(tmp_path / "x", b"y")
    assert (tmp_path / "x").read_bytes() == b"content" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


@pytest.mark.parametrize(("code", "words", "exit_code"), [("ENOSPC", "No space left", 1), ("EACCES", "Permission", 2)])
def test_the_command_line_tells_a_full_disk_from_a_bad_output(tmp_path, monkeypatch, capsys, code, words, exit_code):
    # docs/compute.md: a failure that is not the input's (a full disk) exits 1; bad input 2
    import errno as errno_
    import os as os_

    from dask_pdist.cli.main import main
    from dask_pdist.io.synthetic import write_synthetic_history

    write_synthetic_history(tmp_path / "h.safetensors", steps=5, vocab=6, dim=3)
    real_open = open

    def failing(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if "x" in mode and ".lock." in str(file):
            raise OSError(getattr(errno_, code), os_.strerror(getattr(errno_, code)))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing)
    assert main(["compute", str(tmp_path / "h.safetensors"), "-o", str(tmp_path / "d.zarr")]) == exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "d.zarr: cannot create its lock file" in err[0] and words in err[0], err
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("pid", [0, -1, 99999999999999999999])
def test_a_lock_with_an_impossible_pid_is_unreadable_not_alive(tmp_path, pid):
    target = tmp_path / "d.zarr"
    lock_path(target).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "x"}))
    with pytest.raises(dp.StoreError, match="is unreadable"):
        acquire_lock(target)


def test_a_dangling_symlink_as_lock_is_named(tmp_path):
    target = tmp_path / "d.zarr"
    lock_path(target).symlink_to(tmp_path / "nowhere")
    with pytest.raises(dp.StoreError, match="is unreadable"):
        acquire_lock(target)


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc")


@LINUX_PROC
def test_process_start_is_the_processes_creation_time():
    # /proc start ticks since boot against psutil's creation time (seconds since the epoch)
    psutil = pytest.importorskip("psutil")
    from dask_pdist.io.publish import process_start

    for pid in (os.getpid(), os.getppid()):
        ticks = process_start(pid)
        seconds = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
        assert abs(seconds - psutil.Process(pid).create_time()) < 1.0, (pid, ticks)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_start(int(dead.stdout)) is None


@LINUX_PROC
@pytest.mark.parametrize("cli", [False, True])
def test_a_lock_whose_pid_was_reused_is_stale(history, tmp_path, capsys, cli):
    # a writer killed with SIGKILL whose pid now belongs to a later, live process (here: this
    # test's parent): the start time the lock recorded differs from that process's
    from dask_pdist.io.publish import process_start
    from dask_pdist.store.integrity import _live_lock

    target = tmp_path / "d.zarr"
    pid, host = os.getppid(), socket.gethostname()
    lock_path(target).write_text(
        json.dumps({"pid": pid, "host": host, "process_start": process_start(pid) - 1, "token": "killed"})
    )
    assert not _live_lock(target)  # readers and verify: not a running writer
    if cli:
        assert main(["compute", str(history), "-o", str(target), "--no-progress"]) == 0
    else:
        release_lock(target, acquire_lock(target))
    assert not lock_path(target).exists()
    # the same pid with its own start time, or with none recorded (a lock of an older version):
    # a live writer, refused
    for record in ({"process_start": process_start(pid)}, {}):
        lock_path(target).write_text(json.dumps({"pid": pid, "host": host, "token": "live", **record}))
        assert _live_lock(target)
        with pytest.raises(dp.StoreError, match=f"being written by pid {pid} on "):
            acquire_lock(target)
    lock_path(target).write_text(json.dumps({"pid": pid, "host": host, "token": "x", "process_start": "soon"}))
    with pytest.raises(dp.StoreError, match="is unreadable"):
        acquire_lock(target)


def test_a_lock_records_its_process_start(tmp_path):
    from dask_pdist.io.publish import process_start

    target = tmp_path / "d.zarr"
    with holding_lock(target):
        record = json.loads(lock_path(target).read_text())
    assert record["pid"] == os.getpid() and record["process_start"] == process_start(os.getpid())


def test_another_running_thread_of_this_process_keeps_its_lock(tmp_path):
    # two appends in one process (a training callback's thread beside a notebook's to_zarr):
    # the second used to take the first one's lock over (the same pid) and both wrote, one
    # append lost; now it is refused, naming the thread. A lock of a thread that ended, or of
    # this very thread (one job after another), is taken over as before.
    from dask_pdist import StoreError

    out = tmp_path / "d.zarr"
    taken, finish = threading.Event(), threading.Event()
    tokens = []

    def writer():
        tokens.append(acquire_lock(out))
        taken.set()
        finish.wait(30)

    thread = threading.Thread(target=writer, name="dask-pdist-append")
    thread.start()
    assert taken.wait(30)
    with pytest.raises(StoreError, match="another thread of this process.*dask-pdist-append"):
        acquire_lock(out)
    finish.set()
    thread.join()
    mine = acquire_lock(out)  # its thread ended without releasing it: stale
    assert mine != tokens[0]
    again = acquire_lock(out)  # this thread's own earlier lock: one job after another
    release_lock(out, again)
    assert not (tmp_path / ".d.zarr.lock").exists()
