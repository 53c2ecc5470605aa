"""A new user's first hour with the command line (issue 9): data safety, options, messages."""

from __future__ import annotations

import numpy as np
import pytest

from dask_pdist.cli.main import main
from dask_pdist.io.synthetic import is_synthetic_history, write_synthetic_history


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dask-pdist: error: ")
    return err


def test_synth_refuses_to_overwrite_without_flag(tmp_path, capsys):
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"precious")
    assert "real.safetensors: already exists; pass --overwrite" in _error(
        capsys, ["synth", str(real), "--steps", "3", "--vocab", "4", "--dim", "2"]
    )
    assert real.read_bytes() == b"precious"
    with pytest.raises(FileExistsError, match="already exists"):
        write_synthetic_history(real, steps=3, vocab=4, dim=2)
    assert main(["synth", str(real), "--steps", "3", "--vocab", "4", "--dim", "2", "--overwrite"]) == 0
    assert is_synthetic_history(real)


def test_demo_refuses_to_replace_real_data(tmp_path, capsys):
    real = tmp_path / "embedding_evolution.safetensors"
    real.write_bytes(b"a real history")
    msg = _error(capsys, ["demo", "--output-dir", str(tmp_path), "--no-progress"])
    assert "embedding_evolution.safetensors: already exists and is not an earlier demo's output" in msg
    assert "--overwrite" in msg and real.read_bytes() == b"a real history"
    real.unlink()
    store = tmp_path / "pairwise_distances.zarr"  # a real store, no history next to it
    store.mkdir()
    (store / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "group", "attributes": {"dask_pdist_version": "0"}}'
    )
    assert "pairwise_distances.zarr: already exists" in _error(capsys, ["demo", "--output-dir", str(tmp_path)])
    assert store.is_dir() and not real.exists()


@pytest.fixture
def incomplete_store(tmp_path, write_safetensors):
    """A store whose job stopped after 2 of its 3 blocks (as a killed job leaves it)."""
    import dask

    from conftest import random_history
    from dask_pdist import open_history, pairwise_distances, to_zarr

    src = write_safetensors("h.safetensors", {"embedding_history": random_history((6, 5, 3))})
    out = tmp_path / "d.zarr"
    job = to_zarr(pairwise_distances(open_history(src, chunks=2)), out, compute=False)
    graph = dict(job.__dask_graph__())
    blocks = sorted(dask.core.get_dependencies(graph, job.key))
    assert len(blocks) == 3
    dask.get(graph, blocks[:2])  # write two blocks, never the last step
    from dask_pdist.store.layout import release_lock

    release_lock(out)  # the job is gone (killed): its lock no longer live
    return out


def test_allow_incomplete_is_reachable_where_the_message_suggests_it(incomplete_store, tmp_path, capsys):
    store = str(incomplete_store)
    for argv in (["summary", store], ["export", store, str(tmp_path / "x.safetensors")]):
        assert "open with --allow-incomplete to read missing blocks as NaN" in _error(capsys, argv)
    assert main(["summary", store, "--allow-incomplete"]) == 0
    assert "Over training" in capsys.readouterr().out
    out = tmp_path / "x.safetensors"
    assert main(["export", store, str(out), "--allow-incomplete", "--no-progress"]) == 0
    from safetensors.numpy import load_file

    cheb = load_file(out)["chebyshev_distances"]
    assert np.isnan(cheb).any() and not np.isnan(cheb).all()
    assert main(["info", store]) == 0  # info describes an incomplete store as it is
    assert "1 blocks missing" in capsys.readouterr().out


@pytest.fixture
def tiny_store(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    assert main(["synth", str(src), "--steps", "9", "--vocab", "5", "--dim", "3"]) == 0
    out = tmp_path / "d.zarr"
    assert main(["compute", str(src), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return src, out


def test_debug_works_after_the_subcommand_too(tmp_path, capsys):
    missing = str(tmp_path / "nope.safetensors")
    for argv in (["compute", missing, "-o", str(tmp_path / "o.zarr"), "--debug"], ["info", missing, "--debug"]):
        assert main(argv) == 2  # the same exit code as without --debug
        assert "Traceback" in capsys.readouterr().err
    assert "not found" in _error(capsys, ["info", missing])  # and without it, one line


def test_torch_zip_and_checkpoint_directory_get_plain_messages(tmp_path, capsys, write_safetensors):
    import zipfile

    pt = tmp_path / "model.pt"
    with zipfile.ZipFile(pt, "w") as z:  # what torch.save writes
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    for argv in (["compute", str(pt), "-o", str(tmp_path / "o.zarr")], ["info", str(pt)]):
        assert "model.pt: not a safetensors file but a zip archive, as torch.save writes" in _error(capsys, argv)
    flat = tmp_path / "flat"
    flat.mkdir()
    write_safetensors("flat/step_1.safetensors", {"w": np.zeros((3, 2), np.float32)})
    hf = tmp_path / "hf"
    (hf / "checkpoint-5").mkdir(parents=True)
    write_safetensors("hf/checkpoint-5/model.safetensors", {"w": np.zeros((3, 2), np.float32)})
    for argv in (["compute", str(flat), "-o", str(tmp_path / "o.zarr")], ["info", str(flat)]):
        assert f"a directory, not a zarr store: did you mean '{flat}/*.safetensors'?" in _error(capsys, argv)
    # a Trainer output folder (checkpoint-N/) is an input of its own (issue 21)
    assert main(["compute", str(hf), "-o", str(tmp_path / "o.zarr"), "--no-progress"]) == 0
    from dask_pdist import open_distances

    assert open_distances(tmp_path / "o.zarr")["step"].values.tolist() == [5]


def test_info_takes_globs_and_lists_like_compute(tmp_path, capsys, write_safetensors):
    x = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    paths = [str(write_safetensors(f"step_{10 * k}.safetensors", {"w": x[k]})) for k in range(4)]
    for argv in (["info", str(tmp_path / "step_*.safetensors")], ["info", *paths]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "4 checkpoints:" in out and "stacked to shape [4, 3, 2] F32, steps 0..30" in out


def test_summary_step_without_plot_prints_that_step(tiny_store, capsys):
    from dask_pdist import open_distances
    from dask_pdist.analyses.summary import step_summary

    _, store = tiny_store
    assert main(["summary", str(store), "--step", "4"]) == 0
    out = capsys.readouterr().out
    lo, hi, mean = step_summary(open_distances(store), 4)["euclidean"]
    assert f"Step 4:\n  Euclidean: min={lo:.6f}, max={hi:.6f}, mean={mean:.6f}\n" in out
    assert "Quantization neighbours:" in out.split("Step 4:")[1]


def test_summary_of_one_token_says_there_are_no_pairs(tmp_path, write_safetensors, capsys):
    # V = 1: no pair, so no statistic (it used to print min=max=mean=0, distances of nothing)
    from dask_pdist import open_distances
    from dask_pdist.analyses.summary import step_summary

    h = write_safetensors("one.safetensors", {"e": np.ones((3, 1, 4))})
    store = tmp_path / "one.zarr"
    assert main(["compute", str(h), "-o", str(store), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["summary", str(store), "--step", "2"]) == 0
    assert "Step 2:\n  Euclidean: no pairs (one token)\n  Chebyshev: no pairs (one token)" in capsys.readouterr().out
    assert all(np.isnan(v) for v in step_summary(open_distances(store), 0)["euclidean"])


@pytest.mark.parametrize("command", [["summary", "STORE"], ["info", "STORE"]])
def test_broken_pipe_exits_quietly(tiny_store, command):
    import subprocess
    import sys

    _, store = tiny_store
    argv = [sys.executable, "-m", "dask_pdist", *[str(store) if a == "STORE" else a for a in command]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_every_option_has_help_with_its_default():
    import argparse

    from dask_pdist.cli.main import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in [("dask-pdist", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            where = f"{name} {'/'.join(action.option_strings)}"
            assert action.help, f"{where}: no help text"
            assert action.required or "(default: " in action.help, f"{where}: help does not give the default"
            checked += 1
    assert checked > 30
