"""`compute --append` killed by SIGKILL once the store is grown: `--resume` (or `--append`) with
the same input finishes it in the store's own step chunks (those its first job chose, or one step
per chunk as `--follow` makes), to the arrays of an uninterrupted compute."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from test_append import _assert_same_arrays

from conftest import oracle, random_history
from dask_pdist import StoreError, open_distances
from dask_pdist.cli.main import main

# the CLI, SIGKILLed by itself once the store is grown and before any new block is written
_KILLED_AFTER_GROWING = """
import os, signal, sys
import dask_pdist.store.writer as writer
grow = writer.grow
def killed_after(*args, **kwargs):  # whichever path then writes the blocks (graph or fast append)
    grow(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
writer.grow = killed_after
from dask_pdist.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def history(write_safetensors):
    x = random_history((14, 9, 5), seed=3)
    steps = np.arange(14) * 10 + 5

    def write(n: int):
        return write_safetensors(f"h{n}.safetensors", {"embedding_history": x[:n], "steps": steps[:n]})

    return x, steps, write


def _killed(*argv: str) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_GROWING, *argv], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


# the store's first job: a 3-step history in auto chunks (one chunk of 3 steps, where a fresh
# job over the 14 steps chooses one of 14), or one step per chunk, as --follow makes a store
@pytest.mark.parametrize(("first", "chunk"), [([], 3), (["--chunk-steps", "1"], 1)])
@pytest.mark.parametrize("how", ["--resume", "--append"])
def test_append_killed_after_growing_is_finished(history, tmp_path, capsys, first, chunk, how):
    x, steps, write = history
    short, long = str(write(3)), str(write(14))
    store = tmp_path / "d.zarr"
    assert main(["compute", short, "-o", str(store), "--no-progress", *first]) == 0
    _killed("compute", long, "-o", str(store), "--append", "--no-progress")
    assert (tmp_path / ".d.zarr.lock").exists()  # the killed writer's
    with pytest.raises(StoreError, match=r"incomplete, .*finish it with the same `dask-pdist compute \.\.\. --resume`"):
        open_distances(store)
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    assert "the same command and --resume" in capsys.readouterr().out  # what follows makes this advice true

    assert main(["compute", long, "-o", str(store), how, "--no-progress"]) == 0
    err = capsys.readouterr().err
    blocks = -(-14 // chunk) - 3 // chunk
    if how == "--resume":
        assert f"resuming, {blocks} of {-(-14 // chunk)} blocks to compute" in err, err
    else:  # the store already holds the 14 steps: 11 of them are written now, not "0 steps appended"
        assert "finishing an interrupted append: 11 of its 14 steps not written yet" in err, err
        assert "appending 0" not in err
    ds = open_distances(store)
    assert ds.euclidean.encoding["chunks"][0] == chunk
    np.testing.assert_array_equal(ds["step"].values, steps)
    e, c = oracle(x)
    np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))
    whole = tmp_path / "whole.zarr"  # an uninterrupted compute in the same chunks: the same arrays, bit for bit
    assert main(["compute", long, "-o", str(whole), "--chunk-steps", str(chunk), "--no-progress"]) == 0
    _assert_same_arrays(whole, store)
    assert main(["verify", str(store)]) == 0


def test_resume_refuses_other_step_chunks_than_the_stores(history, tmp_path, capsys):
    _, _, write = history
    short, long = str(write(3)), str(write(14))
    store = tmp_path / "d.zarr"
    assert main(["compute", short, "-o", str(store), "--no-progress"]) == 0
    _killed("compute", long, "-o", str(store), "--append", "--no-progress")
    capsys.readouterr()
    assert main(["compute", long, "-o", str(store), "--resume", "--chunk-steps", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dask-pdist: error: --chunk-steps 5: ") and err.count("\n") == 1, err
    assert "holds chunks of 3 steps, and --resume finishes it in the store's chunks: leave out --chunk-steps" in err
    assert main(["compute", long, "-o", str(store), "--resume", "--chunk-steps", "3", "--no-progress"]) == 0
    assert open_distances(store).sizes["step"] == 14


def test_runs_resume_a_killed_append_in_each_stores_chunks(tmp_path):
    from safetensors.numpy import save_file

    from dask_pdist import open_history, pairwise_distances, to_zarr
    from dask_pdist.store.layout import release_lock
    from dask_pdist.store.runs import compute_runs

    x = {name: random_history((13, 7, 5), seed=k) for k, name in enumerate(("run_a", "run_b"))}
    steps = np.arange(13) * 3 + 1

    def write(n: int) -> str:
        for name, values in x.items():
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            save_file({"emb": values[:n], "steps": steps[:n]}, str(tmp_path / "data" / name / "h.safetensors"))
        return str(tmp_path / "data" / "run_*" / "h.safetensors")

    out = tmp_path / "out"
    compute_runs(write(3), out)  # auto chunks: one chunk of 3 steps for each run
    glob = write(13)
    for name in x:  # grown to 13 steps, killed before writing them
        store = out / f"{name}.zarr"
        job = to_zarr(
            pairwise_distances(open_history(tmp_path / "data" / name / "h.safetensors")),
            store,
            append=True,
            compute=False,
        )
        del job
        release_lock(store)
    batch = compute_runs(glob, out, resume=True, compute=False)  # chunks="auto": each store's own
    assert [(r.name, r.state, r.blocks) for r in batch.runs] == [("run_a", "resume", 4), ("run_b", "resume", 4)]
    batch.compute()
    for name, values in x.items():
        ds = open_distances(out / f"{name}.zarr")
        assert ds.euclidean.encoding["chunks"][0] == 3
        e, c = oracle(values)
        np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))


def test_info_of_a_store_marked_incomplete_with_every_block_written(history, tmp_path, capsys):
    # an attack: info said "INCOMPLETE: 0 blocks missing, resume with --resume" for a store
    # whose job was interrupted after its last block, before its completion record
    from dask_pdist.store.layout import write_root_attrs

    _, _, write = history
    store = tmp_path / "d.zarr"
    assert main(["compute", str(write(5)), "-o", str(store), "--no-progress"]) == 0
    write_root_attrs(store, complete=False)
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE: every block written, not yet marked complete" in out and "0 blocks missing" not in out
    assert main(["compute", str(write(5)), "-o", str(store), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    assert "(complete)" in capsys.readouterr().out
