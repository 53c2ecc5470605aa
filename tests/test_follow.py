"""`compute RUN_DIR --follow`: a running command appends each checkpoint the test saves (as
Trainer saves them: tmp-checkpoint-N, then the weights, trainer_state.json last), waits for
the ones being written, and ends cleanly on --idle-exit, SIGTERM or Ctrl-C; the store then
equals a one-shot compute of the final run, bit for bit."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_append import _assert_same_arrays
from test_run_folders import gpt2_tensors, save_checkpoint

from conftest import oracle, random_history
from dask_pdist import open_distances, verify_store
from dask_pdist.cli.main import main

WAIT = 60  # seconds a step of the run may take on a loaded machine before the test fails


class Follower:
    """The command running in a subprocess, its output read line by line as it comes."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dask_pdist", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str) -> None:
        while not any(text in line for line in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=WAIT))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(
                    f"no {text!r} within {WAIT} s; got {self.seen}: {self.proc.stderr.read()}"
                ) from None

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=WAIT)
        return code, self.proc.stderr.read()

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then finish: where --idle-exit is not what a test checks, it ends the
        follower once the test saw what it waits for, instead of after idle seconds."""
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()


def _save_like_trainer(run: Path, step: int, wte: np.ndarray) -> None:
    # Trainer: weights into tmp-checkpoint-N, renamed to checkpoint-N, trainer_state.json last;
    # a half-written file sits there first, as a reader polling mid-save would find it
    tmp = save_checkpoint(run, step, gpt2_tensors(wte), state=False, tmp=True)
    data = (tmp / "model.safetensors").read_bytes()
    (tmp / "model.safetensors").write_bytes(data[: len(data) // 2])
    final = run / f"checkpoint-{step}"
    tmp.rename(final)  # renamed with the weights still half-written, no trainer_state.json
    (final / "model.safetensors").write_bytes(data)
    save_checkpoint(run, step, gpt2_tensors(wte))  # rewrites the same weights, then the state


@pytest.fixture
def run(tmp_path):
    x = random_history((6, 12, 6), seed=9)
    folder = tmp_path / "run"
    for i in range(2):
        save_checkpoint(folder, 50 * (i + 1), gpt2_tensors(x[i]))
    save_checkpoint(folder, 150, gpt2_tensors(x[2]), state=False, tmp=True)  # being saved when we start
    return folder, x


def _one_shot(run: Path, tmp_path: Path) -> Path:
    whole = tmp_path / "whole.zarr"
    assert main(["compute", str(run), "-o", str(whole), "--chunk-steps", "1", "--no-progress"]) == 0
    return whole


def test_follow_appends_each_checkpoint_then_idle_exit(run, tmp_path):
    folder, x = run
    store = tmp_path / "out" / "d.zarr"
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--idle-exit", "4", "--no-progress")
    f.wait_for("up to step 100")
    (folder / "tmp-checkpoint-150").rename(tmp_path / "discarded")  # Trainer gave that save up
    _save_like_trainer(folder, 150, x[2])
    f.wait_for("up to step 150")
    assert open_distances(store)["step"].values.tolist() == [50, 100, 150]  # readable between appends
    for i in (3, 4, 5):
        _save_like_trainer(folder, 50 * (i + 1), x[i])
    f.wait_for("up to step 300")
    code, err = f.finish()
    assert code == 0, err
    assert "no new checkpoint for 4 s: done" in err and "Traceback" not in err
    assert not (store.parent / ".d.zarr.lock").exists()
    _assert_same_arrays(_one_shot(folder, tmp_path), store)
    assert verify_store(store) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_ends_cleanly_on_a_signal(run, tmp_path, sig):
    folder, x = run
    store = tmp_path / "d.zarr"
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--no-progress")
    f.wait_for("up to step 100")
    _save_like_trainer(folder, 200, x[3])
    f.wait_for("up to step 200")
    f.proc.send_signal(sig)
    code, err = f.finish()
    assert code == 0, err
    assert "stopped following" in err and "Traceback" not in err
    assert not (tmp_path / ".d.zarr.lock").exists()
    assert verify_store(store) == []
    (folder / "tmp-checkpoint-150").rename(tmp_path / "discarded")
    _assert_same_arrays(_one_shot(folder, tmp_path), store)
    # following again continues the same store
    _save_like_trainer(folder, 250, x[4])
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--idle-exit", "1", "--no-progress")
    f.wait_for("up to step 250")
    assert f.finish()[0] == 0
    assert open_distances(store)["step"].values.tolist() == [50, 100, 200, 250]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_a_second_sigterm_while_stopping_does_not_kill_the_follower(run, tmp_path, delay):
    # an attack: two SIGTERMs (a scheduler's, a user's) gave exit 143 in 3 of 4 timings:
    # the second met Python's shutdown, which sets its handlers back to the default. After the
    # first, later ones are ignored: exit 0 (or 130 when the second lands in the stop itself)
    import time

    folder, _ = run
    store = tmp_path / "d.zarr"
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--no-progress")
    f.wait_for("up to step 100")
    f.proc.send_signal(signal.SIGTERM)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):
        f.proc.send_signal(signal.SIGTERM)
    code, err = f.finish()
    assert code in (0, 130), (code, err)
    assert "Traceback" not in err
    assert not (tmp_path / ".d.zarr.lock").exists()
    assert verify_store(store) == []


def test_follow_refuses_a_single_history_file(tmp_path, write_safetensors, capsys):
    path = write_safetensors("h.safetensors", {"embedding_history": random_history((3, 4, 2))})
    assert main(["compute", str(path), "-o", str(tmp_path / "d.zarr"), "--follow"]) == 2
    assert "--follow watches a run folder" in capsys.readouterr().err
    assert main(["compute", str(path), "-o", str(tmp_path / "d.zarr"), "--idle-exit", "3"]) == 2
    assert "--idle-exit applies to --follow" in capsys.readouterr().err


def _upload_checkpoint(folder: Path, url: str) -> None:
    # as a sync of a Trainer checkpoint would: weights and config first, trainer_state.json last
    from conftest import s3_upload

    for name in ("model.safetensors", "config.json", "trainer_state.json"):
        s3_upload(folder / name, f"{url}/{folder.name}/{name}")


def test_run_folder_on_object_storage_computed_and_followed(tmp_path, s3_bucket):
    # a Trainer run folder at an s3:// URL (moto's server): an input as a local one is, and
    # --follow polls it and appends each checkpoint uploaded while it runs, into an s3:// store
    from conftest import s3_upload

    x = random_history((4, 12, 6), seed=12)
    local, run = tmp_path / "run", f"{s3_bucket}/runs/r1"
    for i in range(4):
        save_checkpoint(local, 10 * (i + 1), gpt2_tensors(x[i]))
    for i in range(2):
        _upload_checkpoint(local / f"checkpoint-{10 * (i + 1)}", run)
    s3_upload(local / "checkpoint-30" / "model.safetensors", f"{run}/checkpoint-30/model.safetensors")  # being synced
    assert main(["compute", run, "-o", f"{s3_bucket}/once.zarr", "--no-progress"]) == 0
    assert open_distances(f"{s3_bucket}/once.zarr")["step"].values.tolist() == [10, 20]
    store = f"{s3_bucket}/out/d.zarr"
    f = Follower("compute", run, "-o", store, "--follow", "--no-progress")
    f.wait_for("up to step 20")
    for i in (2, 3):
        _upload_checkpoint(local / f"checkpoint-{10 * (i + 1)}", run)
    f.wait_for("up to step 40")
    code, err = f.stop()
    assert code == 0, err
    assert verify_store(store) == []
    ds = open_distances(store)
    assert ds["step"].values.tolist() == [10, 20, 30, 40]
    e, c = oracle(x)
    np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))


@pytest.mark.parametrize("state", ["absent", "empty", "logs only"])
def test_follow_waits_for_a_run_that_has_not_saved_yet(tmp_path, state):
    # started with the training, before its first checkpoint: it waits, then follows
    folder = tmp_path / "run"
    if state != "absent":
        folder.mkdir()
    if state == "logs only":
        (folder / "runs").mkdir()  # Trainer's TensorBoard logs come before any checkpoint
    store = tmp_path / "d.zarr"
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--no-progress")
    x = random_history((2, 12, 6), seed=3)
    f.wait_for(f"waiting for the first complete checkpoint in {folder}")
    for i in range(2):
        _save_like_trainer(folder, 10 * (i + 1), x[i])
    f.wait_for("up to step 20")
    code, err = f.stop()
    assert code == 0, err
    assert open_distances(store)["step"].values.tolist() == [10, 20]


def test_follow_a_run_that_deletes_old_checkpoints(run, tmp_path):
    # save_total_limit=2: each save deletes the oldest but one, so the run never holds more
    # than two checkpoints; the follower keeps the stored steps and appends each new one
    import shutil

    folder, x = run
    shutil.rmtree(folder / "tmp-checkpoint-150")
    store = tmp_path / "d.zarr"
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--no-progress")
    f.wait_for("up to step 100")
    for i in (2, 3, 4, 5):
        _save_like_trainer(folder, 50 * (i + 1), x[i])
        shutil.rmtree(folder / f"checkpoint-{50 * (i - 1)}")
        f.wait_for(f"up to step {50 * (i + 1)}")
    assert "d.zarr: 6 steps, up to step 300" in f.seen[-1]  # the store's steps, not the run folder's two
    code, err = f.stop()
    assert code == 0 and "Traceback" not in err, err
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-250",
        "checkpoint-300",
    ]
    assert open_distances(store)["step"].values.tolist() == [50, 100, 150, 200, 250, 300]
    for i in range(4):  # every checkpoint ever saved, for the one-shot store
        save_checkpoint(folder, 50 * (i + 1), gpt2_tensors(x[i]))
    _assert_same_arrays(_one_shot(folder, tmp_path), store)
    assert verify_store(store) == []


def test_follow_grows_a_store_made_by_a_plain_compute(run, tmp_path):
    # the follow page's first two commands: compute RUN_DIR, then --follow it (auto step chunks)
    import shutil

    folder, x = run
    shutil.rmtree(folder / "tmp-checkpoint-150")
    store = tmp_path / "d.zarr"
    assert main(["compute", str(folder), "-o", str(store), "--no-progress"]) == 0
    f = Follower("compute", str(folder), "-o", str(store), "--follow", "--no-progress")
    _save_like_trainer(folder, 150, x[2])
    f.wait_for("up to step 150")
    code, err = f.stop()
    assert code == 0 and "Traceback" not in err, err
    assert open_distances(store)["step"].values.tolist() == [50, 100, 150]


def test_a_checkpoint_deleted_while_read_is_appended_again_at_once(run, tmp_path, capsys):
    # Trainer deleted a checkpoint the append was reading: the follower says so and appends
    # again with the checkpoints kept, instead of ending
    import argparse

    from dask_pdist.cli.common import deleted_while_read
    from dask_pdist.cli.follow import follow

    folder, _ = run
    calls = []

    def compute(*args):
        calls.append(args)
        if len(calls) == 1:
            missing = folder / "checkpoint-50" / "gone.safetensors"
            try:
                raise FileNotFoundError(2, "No such file or directory", str(missing))
            except FileNotFoundError as exc:
                raise RuntimeError("reading failed") from exc
        return True

    args = argparse.Namespace(idle_exit=0.5, overwrite=False, chunk_steps=None)
    assert follow(args, str(folder), str(tmp_path / "d.zarr"), compute) == 0
    assert len(calls) == 2
    assert "checkpoint-50/gone.safetensors was deleted while it was read; appending again" in capsys.readouterr().out
    assert deleted_while_read(RuntimeError("x")) is None
    assert deleted_while_read(FileNotFoundError(2, "gone", str(folder))) is None  # still there: not deleted


@pytest.mark.parametrize("failures", [3, None])
def test_checkpoints_deleted_while_read_again_and_again(run, tmp_path, capsys, failures):
    # an attack: the retry itself met another deleted checkpoint and --follow died with a
    # traceback (CheckpointGone). It retries while checkpoints go (3 in a row, then appends);
    # never-ending deletions end in one line (InputError, exit 2 from the CLI)
    import argparse

    from dask_pdist import InputError
    from dask_pdist.cli.common import CheckpointGone
    from dask_pdist.cli.follow import _GONE_RETRIES, follow

    folder, _ = run
    calls = []

    def compute(*args):
        calls.append(args)
        if failures is None or len(calls) <= failures:
            raise CheckpointGone(str(folder / f"checkpoint-{len(calls)}" / "model.safetensors"))
        return True

    args = argparse.Namespace(idle_exit=0.5, overwrite=False, chunk_steps=None)
    if failures is None:
        with pytest.raises(InputError, match=f"deleted while they were read {_GONE_RETRIES + 1} times in a row"):
            follow(args, str(folder), str(tmp_path / "d.zarr"), compute)
        assert len(calls) == _GONE_RETRIES + 1
        return
    assert follow(args, str(folder), str(tmp_path / "d.zarr"), compute) == 0
    assert len(calls) == failures + 1
    assert capsys.readouterr().out.count("was deleted while it was read; appending again") == failures


def test_follow_of_a_glob_waits_for_a_file_being_written(tmp_path, write_safetensors):
    # safetensors' save_file writes the newest file in place: the follower of a glob must wait
    # for it (it used to read it half-written and stop with "the file is truncated")
    import time

    x = random_history((4, 12, 6), seed=5)
    (tmp_path / "ck").mkdir()
    paths = [write_safetensors(f"ck/step_{k}.safetensors", {"w": x[k]}) for k in range(4)]
    later = {p: p.read_bytes() for p in paths[2:]}
    for p in paths[2:]:
        p.unlink()
    store = tmp_path / "d.zarr"
    f = Follower("compute", str(tmp_path / "ck" / "step_*.safetensors"), "-o", str(store), "--follow", "--no-progress")
    f.wait_for("up to step 1")
    for p in paths[2:]:
        p.write_bytes(later[p][: len(later[p]) // 2])
        time.sleep(1.5)  # the follower sees the half-written file (a file-system event)
        p.write_bytes(later[p])
        f.wait_for(f"up to step {p.stem.split('_')[1]}")
    code, err = f.stop()
    assert code == 0, err
    assert "Traceback" not in err and "truncated" not in err
    whole = tmp_path / "whole.zarr"
    assert (
        main(
            [
                "compute",
                str(tmp_path / "ck" / "step_*.safetensors"),
                "-o",
                str(whole),
                "--chunk-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    _assert_same_arrays(whole, store)
