"""Bad input gets one line on stderr naming the file, and exit code 2: crafted files built
byte by byte in tmp_path, each a case that used to give a traceback, a message without the
file, a silently wrong step, or a hang. Also Ctrl-C twice: exit 130 with the resume hint."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dask_pdist import InputError, open_history, pairwise_distances
from dask_pdist.cli.main import main
from dask_pdist.store.layout import store_progress

CLI = [sys.executable, "-m", "dask_pdist"]
TIMEOUT = 120


def _safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _f32(shape: list, extra: dict | None = None) -> dict:
    n = 4 * int(np.prod(shape))
    return {"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, n]}, **(extra or {})}


def _npy(path: Path, header: str, data: bytes = b"") -> Path:
    head = header.encode()
    head += b" " * (-(10 + len(head) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data)
    return path


def _visible(err: str) -> list[str]:
    """stderr as a terminal shows it: a progress bar redrawn with \\r, then cleared, leaves nothing."""
    return [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def _one_error_line(capsys, argv: list[str], name: str) -> str:
    code = main(argv)
    err = _visible(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith("dask-pdist: error: ") and name in err[0], err
    return err[0]


def _nested(tmp: Path) -> Path:
    return _safetensors(tmp / "nested.safetensors", b"[" * 200_000)


def _dtype_list(tmp: Path) -> Path:
    header = {"x": {"dtype": ["F32"], "shape": [2, 2, 2], "data_offsets": [0, 32]}}
    return _safetensors(tmp / "dtype_list.safetensors", header, bytes(32))


def _long_integer(tmp: Path) -> Path:
    raw = b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b', 2, 2], "data_offsets": [0, 16]}}'
    return _safetensors(tmp / "long_int.safetensors", raw, bytes(16))


def _unbalanced_npy(tmp: Path) -> Path:
    return _npy(tmp / "unbalanced.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), ", bytes(32))


def _negative_npy(tmp: Path) -> Path:
    return _npy(tmp / "negative.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -3, 4), }", bytes(96))


@pytest.mark.parametrize(
    "build, match",
    [
        (_nested, r"nested.safetensors: header nests JSON too deeply"),
        (_dtype_list, r"dtype_list.safetensors: tensor 'x' has dtype \['F32'\], which dask_pdist cannot read"),
        (_long_integer, r"long_int.safetensors: header is not a valid safetensors header \(Exceeds the limit"),
        (_unbalanced_npy, r"unbalanced.npy: not a valid .npy file \(header: "),
        (_negative_npy, r"negative.npy: not a valid .npy file \(negative dimension in shape \[-2, -3, 4\]\)"),
    ],
)
def test_malformed_headers(tmp_path, capsys, build, match):
    path = build(tmp_path)
    with pytest.raises(InputError, match=match):
        open_history(path)
    line = _one_error_line(capsys, ["compute", str(path), "-o", str(tmp_path / "o.zarr")], path.name)
    assert re.search(match, line)
    _one_error_line(capsys, ["info", str(path)], path.name)


@pytest.mark.parametrize("shape", [[0, 4, 3], [3, 0, 3], [3, 4, 0]])
def test_zero_size_history_is_refused_before_any_store_exists(tmp_path, capsys, shape):
    path = _safetensors(tmp_path / "empty.safetensors", _f32(shape))
    with pytest.raises(InputError, match=rf"empty.safetensors: 'x' has shape \{shape}.*every axis must be non-empty"):
        open_history(path)
    npy = tmp_path / "empty.npy"
    np.save(npy, np.zeros(shape, np.float32))
    for src in (path, npy):
        _one_error_line(capsys, ["compute", str(src), "-o", str(tmp_path / "o.zarr")], src.name)
    assert not list(tmp_path.glob("o.zarr*")) and not list(tmp_path.glob(".o.zarr*"))  # no store, no hidden build
    # in memory, through the Python API
    h = xr.DataArray(np.zeros(shape, np.float32), dims=("step", "token", "dim"))
    with pytest.raises(ValueError, match=r"every axis \(step, token, dim\) must be non-empty"):
        pairwise_distances(h)


def test_checkpoint_pattern_matching_only_directories(tmp_path, capsys):
    for name in ("step_1.safetensors", "step_2.safetensors"):
        (tmp_path / name).mkdir()
    pattern = str(tmp_path / "step_*.safetensors")
    with pytest.raises(InputError, match=r"step_\*.safetensors: the pattern matches only directories"):
        open_history(pattern)
    _one_error_line(capsys, ["compute", pattern, "-o", str(tmp_path / "o.zarr")], "step_*.safetensors")
    # the same names expanded by the shell: a list of directories
    listed = [str(tmp_path / "step_1.safetensors"), str(tmp_path / "step_2.safetensors")]
    line = _one_error_line(capsys, ["compute", *listed, "-o", str(tmp_path / "o.zarr")], "step_1.safetensors")
    assert "checkpoint file is a directory" in line


def test_tokens_path_that_is_a_directory(tmp_path, capsys):
    src = tmp_path / "h.npy"
    np.save(src, np.ones((3, 4, 2), np.float32))
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match=r"labels: token file is a directory, not a regular file"):
        open_history(src, tokens=tmp_path / "labels")
    line = _one_error_line(
        capsys, ["compute", str(src), "--tokens", str(tmp_path / "labels"), "-o", str(tmp_path / "o.zarr")], "labels"
    )
    assert "token file is a directory" in line


def test_info_on_a_truncated_npy_names_the_file(tmp_path, capsys):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((4, 3, 2), np.float32))
    path.write_bytes(path.read_bytes()[:-10])
    line = _one_error_line(capsys, ["info", str(path)], "cut.npy")
    assert "file has 214 bytes, the header promises 224; it is truncated" in line


def test_info_on_a_directory_that_is_not_zarr_names_it(tmp_path, capsys):
    # said only "No group found in store StorePath(LocalStore, 'file://...') at path ''"
    (tmp_path / "x.safetensors").mkdir()
    line = _one_error_line(capsys, ["info", str(tmp_path / "x.safetensors")], "x.safetensors")
    assert line.startswith(f"dask-pdist: error: {tmp_path / 'x.safetensors'}: a directory that is not a zarr")


def test_unsigned_step_above_2_63_is_refused(tmp_path, capsys):
    header = _f32([3, 2, 2], {"steps": {"dtype": "U64", "shape": [3], "data_offsets": [48, 72]}})
    steps = np.array([1, 2, 2**63 + 5], dtype="<u8")
    path = _safetensors(tmp_path / "steps.safetensors", header, bytes(48) + steps.tobytes())
    with pytest.raises(InputError, match=r"tensor 'steps' holds 9223372036854775813 at index 2, above the largest"):
        open_history(path)
    _one_error_line(capsys, ["compute", str(path), "-o", str(tmp_path / "o.zarr")], "steps.safetensors")
    ok = np.array([1, 2, 2**63 - 1], dtype="<u8")  # the largest step still fits
    path = _safetensors(tmp_path / "ok.safetensors", header, bytes(48) + ok.tobytes())
    assert open_history(path)["step"].values[-1] == 2**63 - 1


def test_a_step_number_twice_is_refused(tmp_path, capsys):
    header = _f32([4, 2, 2], {"steps": {"dtype": "I64", "shape": [4], "data_offsets": [64, 96]}})
    steps = np.array([0, 10, 20, 10], dtype="<i8")  # analyses select and align runs by step
    path = _safetensors(tmp_path / "dup.safetensors", header, bytes(64) + steps.tobytes())
    with pytest.raises(InputError, match=r"dup.safetensors: tensor 'steps' holds step 10 twice \(indices 1 and 3\)"):
        open_history(path)
    _one_error_line(capsys, ["compute", str(path), "-o", str(tmp_path / "o.zarr")], "dup.safetensors")
    assert not (tmp_path / "o.zarr").exists()


def test_neighbours_of_a_one_token_history_says_so(tmp_path, capsys):
    path = _safetensors(tmp_path / "one.safetensors", _f32([3, 1, 2]), bytes(24))
    _one_error_line(capsys, ["neighbours", str(path), "-k", "1", "-o", str(tmp_path / "n.zarr")], "1 token")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    good = tmp_path / "h.npy"
    np.save(good, np.ones((3, 4, 2), np.float32))
    for argv in (
        ["compute", str(fifo), "-o", str(tmp_path / "o.zarr")],
        ["info", str(fifo)],
        ["compute", str(good), "--tokens", str(fifo), "-o", str(tmp_path / "o.zarr")],
    ):
        # in a thread with a timeout: a regression opens the pipe and waits for a writer forever
        result: dict[str, int] = {}
        worker = threading.Thread(target=lambda r=result, a=argv: r.setdefault("code", main(a)), daemon=True)
        worker.start()
        worker.join(TIMEOUT)
        if worker.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
            pytest.fail(f"{argv}: opened the named pipe and blocked")
        err = _visible(capsys.readouterr().err)
        assert result["code"] == 2 and len(err) == 1, err
        assert "pipe.safetensors" in err[0] and "is a named pipe (FIFO), not a regular file" in err[0]


@pytest.mark.parametrize("progress", [False, True])
def test_nan_found_during_compute_is_one_line(tmp_path, capsys, progress):
    x = np.random.default_rng(0).standard_normal((60, 6, 4)).astype(np.float32)
    x[47, 3, 1] = np.nan
    src = tmp_path / "nan.npy"
    np.save(src, x)
    argv = ["compute", str(src), "-o", str(tmp_path / "o.zarr"), "--chunk-steps", "5"]
    line = _one_error_line(capsys, argv + ([] if progress else ["--no-progress"]), "nan.npy")
    assert "holds nan at step index 47, token 3" in line


def _start_compute(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    src = tmp_path / "h.safetensors"
    # 1,000 blocks, ~5 s of work here: the signal, sent after 5 blocks, lands mid-run even when
    # this process is slow to see them (CI once sent it with 600 steps and 200 blocks after the
    # job had finished: exit 0, nothing on stderr)
    assert main(["synth", str(src), "--steps", "3000", "--vocab", "160", "--dim", "8"]) == 0
    out = tmp_path / "d.zarr"
    args = CLI + ["compute", str(src), "-o", str(out), "--chunk-steps", "3", "--no-progress"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _blocks_done(out: Path) -> int:
    try:
        return int(store_progress(out)[0].sum())
    except (FileNotFoundError, ValueError, KeyError):  # not created yet
        return 0


def test_two_quick_ctrl_c_still_exit_130_with_the_resume_hint(tmp_path):
    proc, out = _start_compute(tmp_path)
    deadline = time.monotonic() + TIMEOUT
    while _blocks_done(out) < 5:
        assert proc.poll() is None, f"compute exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "compute made no progress"
        time.sleep(0.005)  # a poll interval
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # the second Ctrl-C lands while the first one is being handled
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Task was destroyed" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("dask-pdist: interrupted; ") and "blocks are written and kept" in lines[0], err
    assert lines[-1].strip().endswith("--resume") and len(lines) == 2, err
