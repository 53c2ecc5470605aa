"""Every failure is one line (issue 20.4-20.6): an object store that dies mid-write, no memory,
no threads, a damaged zarr.json, a full disk during neighbours or clusters. The line names
the output and the cause and says how to go on; the lock is released; nothing half-written
is left; --debug adds the traceback and keeps the exit code."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dask_pdist as dp
from conftest import random_history
from dask_pdist.cli.main import main


@pytest.fixture
def history(write_safetensors):
    return write_safetensors("h.safetensors", {"embedding_history": random_history((31, 10, 6), seed=1)}, "F32")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("dask-pdist: error:")]
    assert len(errors) == 1, lines
    return errors[0]


@pytest.mark.parametrize(
    "exc, words",
    [
        (MemoryError("Unable to allocate 4.50 MiB"), "out of memory"),
        (RuntimeError("can't start new thread"), "cannot start threads"),
    ],
)
def test_no_memory_or_threads_is_one_line_with_the_resume_command(history, tmp_path, monkeypatch, capsys, exc, words):
    import dask_pdist.graphs.distances as graph

    calls = {"n": 0}
    real = graph.pairwise_block

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(graph, "pairwise_block", failing)
    out = tmp_path / "d.zarr"
    argv = ["compute", str(history), "-o", str(out), "--chunk-steps", "4", "--no-progress"]
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert words in line and str(out) in line and "resume with: dask-pdist compute" in line, line
    assert not (tmp_path / ".d.zarr.lock").exists()  # the lock is released
    monkeypatch.setattr(graph, "pairwise_block", real)
    assert main([*argv, "--resume"]) == 0
    assert dp.verify_store(out) == []
    capsys.readouterr()
    # --debug: the traceback, then the same line and exit code
    monkeypatch.setattr(graph, "pairwise_block", failing)
    calls["n"] = 0
    assert main([*argv[:3], str(tmp_path / "e.zarr"), *argv[4:], "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.strip().splitlines()[-1].startswith("dask-pdist: error:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_object_store_that_dies_mid_write_is_one_line_naming_it(tmp_path, monkeypatch):
    import fsspec

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import main; main(['-p', '{port}'])"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(key, env[key])
    try:
        for _ in range(100):
            try:
                fs = fsspec.filesystem("s3", skip_instance_cache=True)
                fs.mkdir("dying")
                break
            except Exception:
                time.sleep(0.1)
        src = tmp_path / "h.safetensors"
        assert main(["synth", str(src), "--steps", "1500"]) == 0
        job = subprocess.Popen(
            [sys.executable, "-m", "dask_pdist", "compute", str(src), "-o", "s3://dying/d.zarr"]
            + ["--chunk-steps", "10", "--no-progress"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:  # let it write some chunks, then take the endpoint away
            fs.invalidate_cache()
            try:
                if len(fs.find("dying/d.zarr/euclidean/c")) >= 3:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        _, err = job.communicate(timeout=300)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert job.returncode == 1, err
    line = _one_error_line(err)
    assert "s3://dying/d.zarr" in line and endpoint in line and "stopped answering" in line, line
    assert "resume with: dask-pdist compute" in line


def _damage(path: Path) -> None:
    path.write_text(path.read_text()[:40])  # truncated mid-string


def test_a_damaged_array_zarr_json_is_named_by_every_command(history, tmp_path, capsys):
    out = tmp_path / "d.zarr"
    assert main(["compute", str(history), "-o", str(out), "--chunk-steps", "8", "--no-progress"]) == 0
    _damage(out / "chebyshev" / "zarr.json")
    capsys.readouterr()
    for argv in (
        ["summary", str(out)],
        ["export", str(out), str(tmp_path / "x.safetensors"), "--no-progress"],
        ["clusters", str(out), "--no-progress"],
        ["compute", str(history), "-o", str(out), "--resume", "--chunk-steps", "8", "--no-progress"],
    ):
        assert main(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err)
        assert str(out) in line and "chebyshev/zarr.json is damaged" in line, (argv, line)
    assert main(["verify", str(out)]) == 1
    assert "chebyshev/zarr.json is damaged" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "DAMAGED dask_pdist store: chebyshev/zarr.json is damaged" in capsys.readouterr().out
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("when", ["creating", "computing"])
@pytest.mark.parametrize("command", ["neighbours", "clusters"])
def test_disk_full_during_neighbours_or_clusters_names_the_output_and_leaves_nothing(
    history, tmp_path, monkeypatch, capsys, command, when
):
    import zarr.storage

    real = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def full(self, key, value):
        calls["n"] += 1
        coordinate = key.split("/")[0] in ("step", "token", "rank")
        if "/c/" in key and coordinate == (when == "creating"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    out = tmp_path / "o.zarr"
    argv = (
        ["neighbours", str(history), "-k", "2", "-o", str(out), "--no-progress"]
        if command == "neighbours"
        else ["clusters", str(history), "-o", str(out), "--no-progress"]
    )
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "No space left" in line and "nothing was kept" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]


def test_the_lock_of_a_finished_run_is_gone_and_no_scratch_left(history, tmp_path):
    out = tmp_path / "n.zarr"
    assert main(["neighbours", str(history), "-k", "2", "-o", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors", "n.zarr"]
    assert json.loads((out / "zarr.json").read_text())["node_type"] == "group"
    assert np.isfinite(dp.open_neighbours(out).distance.values).all()


def test_cli_leftovers(history, tmp_path, capsys):
    # '-' is not an output; an unknown option points to the subcommand's help; sizes in kB
    with pytest.raises(SystemExit, match="2"):  # argparse: one error line
        main(["compute", str(history), "-o", "-"])
    assert "'-' (standard output) is not supported" in capsys.readouterr().err
    out = tmp_path / "d.zarr"
    assert main(["compute", str(history), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit, match="2"):
        main(["export", str(out), "-"])
    assert not (Path("-").exists()) and "standard output" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["compute", str(history), "-o", str(out), "--bogus"])
    assert "(see dask-pdist compute --help)" in capsys.readouterr().err
    assert main(["export", str(out), str(tmp_path / "d.safetensors")]) == 0
    assert " kB) in " in capsys.readouterr().out  # not "(0.0 MB)"
    # library wording becomes CLI wording
    assert main(["compute", str(history), "-o", str(out), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "pass --overwrite" in line and "overwrite=True" not in line


def test_resume_after_a_killed_overwrite_removes_its_hidden_store(history, tmp_path, capsys):
    out = tmp_path / "d.zarr"
    argv = ["compute", str(history), "-o", str(out), "--chunk-steps", "8", "--no-progress"]
    assert main(argv) == 0
    # what a kill -9 during --overwrite leaves: a hidden copy named after a dead writer
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".d.zarr.{socket.gethostname()}-{int(dead.stdout)}.0123abcd.partial"
    leftover.mkdir()
    (leftover / "zarr.json").write_text("{}")
    assert main([*argv, "--resume"]) == 0
    assert not leftover.exists()


def test_damaged_coordinates_and_lost_array_metadata_point_to_overwrite(history, tmp_path, capsys):
    out = tmp_path / "d.zarr"
    assert main(["compute", str(history), "-o", str(out), "--chunk-steps", "8", "--no-progress"]) == 0
    raw = bytearray((out / "step" / "c" / "0").read_bytes())
    raw[0] ^= 1
    (out / "step" / "c" / "0").write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["summary", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "step" in line and "--overwrite" in line and "--resume" not in line, line
    (out / "euclidean" / "zarr.json").unlink()
    assert main(["info", str(out)]) == 0
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["summary", str(out)]) == 2
    assert "euclidean/zarr.json is missing" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("overwrite", [False, True])
def test_disk_full_while_creating_a_store_names_it_and_keeps_the_old_one(
    history, tmp_path, monkeypatch, capsys, overwrite
):
    # ENOSPC while the store's metadata and coordinates are written (before any distance):
    # one line naming the store (it used to be a bare "[Errno 28] No space left on device"),
    # no lock, no hidden leftovers, and an existing store untouched
    import zarr.storage

    out = tmp_path / "d.zarr"
    if overwrite:
        assert main(["compute", str(history), "-o", str(out), "--no-progress"]) == 0
        before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = zarr.storage.LocalStore.set

    async def full(self, key, value):
        if key.startswith("step/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    argv = ["compute", str(history), "-o", str(out), "--no-progress"] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "No space left" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["h.safetensors"] + (["d.zarr"] if overwrite else []))
    if overwrite:
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_disk_full_while_creating_a_store_leaves_nothing_behind_later(history, tmp_path, monkeypatch, capsys):
    # zarr writes an array's zarr.json and its parents' with asyncio.gather: when one fails,
    # the error comes back at once while the others go on, and a local write recreates its
    # folder. A slow sibling write (a loaded machine; CI met it) came back after the hidden
    # store was removed and left a `.d.zarr.HOST-PID.*.partial` holding one zarr.json
    import asyncio
    import time

    import zarr.storage

    real = zarr.storage.LocalStore.set_if_not_exists

    real_set = zarr.storage.LocalStore.set

    async def full(self, key, value):
        if "/" in key:  # an array's document, not the root's
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    async def slow(self, key, value):
        await asyncio.sleep(0.3)
        return await real(self, key, value)

    # the first array's documents fail, while its parent's (the root zarr.json) is slow
    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    monkeypatch.setattr(zarr.storage.LocalStore, "set_if_not_exists", slow)
    out = tmp_path / "d.zarr"
    assert main(["compute", str(history), "-o", str(out), "--no-progress"]) == 1
    assert str(out) in _one_error_line(capsys.readouterr().err)
    time.sleep(0.6)  # past the slow write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]


@pytest.mark.parametrize("quiet", [True, False])
def test_lost_connection_echoes_of_the_object_store_client_are_dropped_as_the_program(quiet):
    # a dying endpoint left aiohttp request tasks holding a connection error; collected later,
    # asyncio printed "Task exception was never retrieved" and a traceback before the job's own
    # one-line error (seen once in the suite). As the program only those echoes are dropped.
    probe = (
        "import asyncio, gc, sys\n"
        "from aiohttp.client_exceptions import ClientConnectionResetError\n"
        "from dask_pdist.cli.common import quiet_lost_connections\n"
        f"if {quiet}: quiet_lost_connections()\n"
        "async def lost(): raise ClientConnectionResetError('Cannot write to closing transport')\n"
        "async def other(): raise ValueError('a real bug')\n"
        "async def full(): raise OSError(28, 'No space left on device')\n"
        "async def denied(): raise PermissionError(13, 'Permission denied')\n"
        "async def main():\n"
        "    for f in (lost, other, full, denied):\n"
        "        t = asyncio.ensure_future(f()); await asyncio.sleep(0.01); del t; gc.collect()\n"
        "asyncio.run(main())\n"
    )
    err = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stderr
    assert "ValueError: a real bug" in err  # anything else is still reported, OSErrors too
    assert "No space left on device" in err and "Permission denied" in err
    assert ("ClientConnectionResetError" in err) is not quiet
