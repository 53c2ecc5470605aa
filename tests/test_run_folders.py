"""Hugging Face Trainer output folders as inputs: `compute RUN_DIR` without a glob, the
embedding key from config.json, checkpoints being saved skipped with a note, `-o` creating
its parent folders. The Trainer layout is written exactly as Trainer writes it:
checkpoint-N/ with model.safetensors and config.json, trainer_state.json written last, and
tmp-checkpoint-N/ while saving."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle, random_history
from dask_pdist import InputError, SkippedCheckpointWarning, open_distances, open_history
from dask_pdist.cli.main import main

GPT2 = {"model_type": "gpt2", "vocab_size": 12, "n_embd": 6}


def save_checkpoint(
    run: Path, step: int, tensors: dict, config: dict | None = None, state: bool = True, tmp: bool = False
) -> Path:
    """One Trainer checkpoint: weights, config.json, then trainer_state.json (written last)."""
    from safetensors.numpy import save_file

    folder = run / f"{'tmp-' if tmp else ''}checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or GPT2))
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def gpt2_tensors(wte: np.ndarray) -> dict:
    # a GPT-2 checkpoint's 2-D tensors: wte (vocab, d), wpe (positions, d), attention weights
    d = wte.shape[1]
    return {
        "transformer.wte.weight": wte,
        "transformer.wpe.weight": np.ones((16, d), np.float32),
        "transformer.h.0.attn.c_attn.weight": np.ones((d, 3 * d), np.float32),
    }


@pytest.fixture
def run(tmp_path):
    x = random_history((5, 12, 6), seed=5)
    folder = tmp_path / "run"
    for i in range(4):
        save_checkpoint(folder, 50 * (i + 1), gpt2_tensors(x[i]))
    return folder, x


def test_run_folder_is_an_input(run):
    folder, x = run
    h = open_history(folder)
    assert h.name == "transformer.wte.weight"
    np.testing.assert_array_equal(h["step"].values, [50, 100, 150, 200])
    np.testing.assert_array_equal(h.values, x[:4])


def test_incomplete_checkpoints_are_skipped_with_a_note(run):
    folder, x = run
    save_checkpoint(folder, 250, gpt2_tensors(x[4]), tmp=True)  # being saved (Trainer's tmp- folder)
    save_checkpoint(folder, 300, gpt2_tensors(x[4]), state=False)  # weights there, state not yet
    short = save_checkpoint(folder, 350, gpt2_tensors(x[4]))
    data = (short / "model.safetensors").read_bytes()
    (short / "model.safetensors").write_bytes(data[: len(data) - 10])  # still being written
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        h = open_history(folder)
    said = sorted(str(w.message) for w in notes if issubclass(w.category, SkippedCheckpointWarning))
    assert len(said) == 3
    assert "checkpoint-300: skipped, incomplete: no trainer_state.json yet" in said[0]
    assert "checkpoint-350: skipped, incomplete:" in said[1] and "shorter than its header says" in said[1]
    assert "tmp-checkpoint-250: skipped, incomplete: being saved" in said[2]
    np.testing.assert_array_equal(h["step"].values, [50, 100, 150, 200])
    np.testing.assert_array_equal(h.values, x[:4])
    # the same through a glob of the folders
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        np.testing.assert_array_equal(open_history(str(folder / "checkpoint-*"))["step"].values, [50, 100, 150, 200])


def test_only_checkpoints_being_saved_is_a_clear_error(tmp_path):
    x = random_history((1, 12, 6))
    save_checkpoint(tmp_path / "run", 50, gpt2_tensors(x[0]), tmp=True)
    with pytest.warns(SkippedCheckpointWarning), pytest.raises(InputError, match="holds no complete checkpoint yet"):
        open_history(tmp_path / "run")


@pytest.mark.parametrize(
    "config, tensors, key",
    [
        ({"model_type": "llama", "vocab_size": 12}, ["model.embed_tokens.weight", "lm_head.weight"], 0),
        ({"model_type": "qwen2", "vocab_size": 12}, ["model.embed_tokens.weight", "lm_head.weight"], 0),
        ({"model_type": "mistral", "vocab_size": 12}, ["model.embed_tokens.weight", "lm_head.weight"], 0),
        ({"model_type": "gpt_neox", "vocab_size": 12}, ["embed_out.weight", "gpt_neox.embed_in.weight"], 1),
        ({"model_type": "newarch", "vocab_size": 12}, ["blocks.proj.weight", "tok_embeddings.weight"], 1),
    ],
)
def test_embedding_key_from_config(tmp_path, config, tensors, key):
    x = random_history((2, 12, 6), seed=1)
    folder = tmp_path / "run"
    for i in range(2):
        save_checkpoint(folder, i + 1, {tensors[key]: x[i], tensors[1 - key]: x[i] + 1}, config)
    h = open_history(folder)
    assert h.name == tensors[key]
    np.testing.assert_array_equal(h.values, x)


def test_undecidable_key_lists_the_2d_tensors(tmp_path):
    x = random_history((1, 12, 6))
    folder = tmp_path / "run"
    tensors = {"a.weight": x[0], "b.weight": x[0][:, :4], "embed_x.weight": x[0], "embed_y.weight": x[0]}
    save_checkpoint(folder, 1, tensors, {"model_type": "newarch", "vocab_size": 12})
    with pytest.raises(InputError) as err:
        open_history(folder)
    msg = str(err.value)
    assert "cannot choose the embedding matrix (config.json says model_type 'newarch', vocab_size 12)" in msg
    assert "a.weight [12, 6], b.weight [12, 4], embed_x.weight [12, 6], embed_y.weight [12, 6]" in msg
    assert "e.g. --key embed_x.weight" in msg
    assert open_history(folder, key="embed_y.weight").name == "embed_y.weight"


def test_cli_run_folder_with_new_output_folder(run, tmp_path, capsys):
    folder, x = run
    save_checkpoint(folder, 250, gpt2_tensors(x[4]), tmp=True)
    out = tmp_path / "new" / "deeper" / "d.zarr"
    assert main(["compute", str(folder), "-o", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "dask-pdist: note: " in err and "tmp-checkpoint-250: skipped, incomplete: being saved" in err
    ds = open_distances(out)
    assert ds.attrs["source_key"] == "transformer.wte.weight"
    np.testing.assert_array_equal(ds["step"].values, [50, 100, 150, 200])
    e, c = oracle(x[:4])
    np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))


def test_one_checkpoint_takes_its_folder_step(tmp_path):
    x = random_history((1, 12, 6))
    save_checkpoint(tmp_path / "run", 500, gpt2_tensors(x[0]))
    assert open_history(tmp_path / "run")["step"].values.tolist() == [500]


@pytest.mark.parametrize("pattern", ["runs/*", "runs/seed*/checkpoint-*"])
def test_several_run_folders_are_several_runs(tmp_path, monkeypatch, pattern):
    # two Trainer runs with the same step numbers: one store each, a `run` dimension together
    monkeypatch.chdir(tmp_path)
    xs = {name: random_history((3, 12, 6), seed=seed) for name, seed in (("seed1", 1), ("seed2", 2))}
    for name, x in xs.items():
        for i in range(3):
            save_checkpoint(Path("runs") / name, 10 * (i + 1), gpt2_tensors(x[i]))
    assert main(["compute", pattern, "-o", "out/", "--no-progress"]) == 0
    ds = open_distances("out/*.zarr")
    assert ds["run"].values.tolist() == ["seed1", "seed2"]
    for k, x in enumerate(xs.values()):
        e, c = oracle(x)
        np.testing.assert_allclose(ds.euclidean.isel(run=k).values, e, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ds.chebyshev.isel(run=k).values, c.astype(np.float32))
        np.testing.assert_array_equal(ds["step"].values, [10, 20, 30])


def test_some_checkpoints_of_several_runs_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        for step in (10, 20):
            save_checkpoint(Path("runs") / name, step, gpt2_tensors(random_history((1, 12, 6))[0]))
    assert main(["compute", "runs/*/checkpoint-10", "-o", "out/", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "leaves out runs/a/checkpoint-20, runs/b/checkpoint-20" in err and "'runs/*'" in err
    assert not Path("out").exists()


def test_runs_whose_input_grew_are_refused_then_appended(tmp_path, monkeypatch, capsys):
    # a complete store is skipped only while its run's input is what it was computed from
    monkeypatch.chdir(tmp_path)
    xs = {name: random_history((4, 12, 6), seed=seed) for name, seed in (("r1", 1), ("r2", 2))}
    for name, x in xs.items():
        for i in range(3):
            save_checkpoint(Path("runs") / name, 10 * (i + 1), gpt2_tensors(x[i]))
    assert main(["compute", "runs/*", "-o", "out/", "--no-progress"]) == 0
    save_checkpoint(Path("runs") / "r1", 40, gpt2_tensors(xs["r1"][3]))  # r1 trained on
    capsys.readouterr()
    assert main(["compute", "runs/*", "-o", "out/", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "out/r1.zarr: complete, but run r1's input changed since it was computed (3 steps stored, 4 now)" in err
    assert "--append" in err
    assert main(["compute", "runs/*", "-o", "out/", "--no-progress", "--append"]) == 0
    ds = open_distances("out/*.zarr")
    assert ds["step"].values.tolist() == [10, 20, 30, 40]
    e, c = oracle(xs["r1"])
    np.testing.assert_allclose(ds.euclidean.sel(run="r1").values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.sel(run="r1").values, c.astype(np.float32))
    assert np.isnan(ds.euclidean.sel(run="r2", step=40).values).all()  # r2 has no step 40
    assert main(["compute", "runs/*", "-o", "out/", "--no-progress"]) == 0  # both current now: skipped
    assert "is complete: skipped" in capsys.readouterr().err


def test_pytorch_bin_checkpoints_are_named_not_waited_for(tmp_path):
    folder = tmp_path / "run" / "checkpoint-10"
    folder.mkdir(parents=True)
    (folder / "pytorch_model.bin").write_bytes(b"torch pickle")
    (folder / "trainer_state.json").write_text("{}")
    with pytest.raises(InputError, match=r"checkpoint-10: holds PyTorch \.bin weights only; .*save_safetensors=True"):
        open_history(tmp_path / "run")


def test_opening_a_run_again_looks_only_into_changed_folders(run, monkeypatch):
    # a settled checkpoint folder, unchanged since it was found complete, is not listed and
    # read again (following a run opens it at every save); a new or changed one is
    import dask_pdist.io.checkpoints as checkpoints
    import dask_pdist.io.paths

    folder, x = run
    monkeypatch.setattr(dask_pdist.io.paths, "_SETTLED_NS", 0)  # as if saved two seconds ago
    looked = []
    real = checkpoints._checkpoint_in
    monkeypatch.setattr(checkpoints, "_checkpoint_in", lambda f, *a: looked.append(f.name) or real(f, *a))
    open_history(folder)
    assert sorted(looked) == [f"checkpoint-{s}" for s in (100, 150, 200, 50)]
    del looked[:]
    save_checkpoint(folder, 250, gpt2_tensors(x[4]), state=False)  # being saved: skipped
    with pytest.warns(SkippedCheckpointWarning, match="checkpoint-250: skipped"):
        h = open_history(folder)
    assert looked == [] and len(h.step) == 4
    (folder / "checkpoint-250" / "trainer_state.json").write_text("{}")
    changed = x[1] + 1
    save_checkpoint(folder, 100, gpt2_tensors(changed))  # rewritten: looked into again
    h = open_history(folder)
    assert sorted(looked) == ["checkpoint-100", "checkpoint-250"]
    np.testing.assert_array_equal(h.values[[1, 4]], [changed, x[4]])
    (folder / "checkpoint-150" / "trainer_state.json").unlink()  # the folder changed: looked into again
    with pytest.warns(SkippedCheckpointWarning, match="checkpoint-150: skipped, incomplete: no trainer_state"):
        h = open_history(folder)
    assert h.step.values.tolist() == [50, 100, 200, 250]
