"""Per-checkpoint inputs as training frameworks save them (issue 9, item 5): Hugging Face style
folders, sharded checkpoints, and step labels given by the user."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from conftest import random_history
from dask_pdist import InputError, open_history
from dask_pdist.cli.main import main

KEY = "model.embed_tokens.weight"


def _bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.fixture
def hf_folders(tmp_path, write_safetensors):
    """ckpt/checkpoint-{500,1000,1500}/model.safetensors (lexical order differs from numeric)."""
    x = random_history((3, 7, 5), seed=21, scale=0.1)
    for k, step in enumerate([500, 1000, 1500]):
        (tmp_path / "ckpt" / f"checkpoint-{step}").mkdir(parents=True)
        write_safetensors(f"ckpt/checkpoint-{step}/model.safetensors", {KEY: x[k], "lm_head.weight": x[k].T}, "BF16")
    return tmp_path / "ckpt", x


def test_hf_folders_take_the_step_from_the_varying_part_of_the_path(hf_folders):
    ckpt, x = hf_folders
    for spec in (f"{ckpt}/checkpoint-*/model.safetensors", f"{ckpt}/checkpoint-*"):  # files, or the folders
        h = open_history(spec, key=KEY)
        np.testing.assert_array_equal(h["step"].values, [500, 1000, 1500])
        np.testing.assert_array_equal(h.values, _bf16(x))


def test_steps_given_as_range_file_or_list(hf_folders, tmp_path):
    ckpt, x = hf_folders
    spec = f"{ckpt}/checkpoint-*"
    np.testing.assert_array_equal(open_history(spec, key=KEY, steps="10:31:10")["step"].values, [10, 20, 30])
    (tmp_path / "steps.txt").write_text("7\n8\n\n9\n")
    np.testing.assert_array_equal(open_history(spec, key=KEY, steps=tmp_path / "steps.txt")["step"].values, [7, 8, 9])
    np.testing.assert_array_equal(open_history(spec, key=KEY, steps=[3, 2, 1])["step"].values, [3, 2, 1])
    with pytest.raises(
        InputError,
        match=r"steps range 10:30:10 \(STOP excluded, as in Python\): gives 2 steps \(10..20\), but .* has 3",
    ):
        open_history(spec, key=KEY, steps="10:30:10")
    with pytest.raises(InputError, match=r"step 2 appears twice"):
        open_history(spec, key=KEY, steps=[1, 2, 2])
    (tmp_path / "bad.txt").write_text("1\ntwo\n3\n")
    with pytest.raises(InputError, match=r"bad.txt: steps file holds a line that is not an integer"):
        open_history(spec, key=KEY, steps=tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match=r"nope.txt: steps file not found"):
        open_history(spec, key=KEY, steps=str(tmp_path / "nope.txt"))


def test_steps_resolve_names_without_distinct_numbers(tmp_path, write_safetensors):
    x = random_history((2, 5, 4), seed=22)
    (tmp_path / "a").mkdir()
    paths = [
        write_safetensors("a/step_7.safetensors", {"w": x[0]}),
        write_safetensors("step_7.safetensors", {"w": x[1]}),
    ]
    with pytest.raises(InputError, match=r"step 7 from its file name is also the step of .*give steps= / --steps"):
        open_history(paths)
    np.testing.assert_array_equal(open_history(paths, steps="0:2")["step"].values, [0, 1])


def test_steps_apply_to_a_single_history_file(write_safetensors):
    path = write_safetensors("h.safetensors", {"h": random_history((4, 3, 2))})
    np.testing.assert_array_equal(open_history(path, steps="100:500:100")["step"].values, [100, 200, 300, 400])


def _sharded(tmp_path, write_safetensors, name: str, emb: np.ndarray, shard_of_emb: int) -> None:
    folder = tmp_path / name
    folder.mkdir()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tensors = [{"layers.0.weight": np.ones((3, 3), np.float32)}, {"lm_head.weight": np.ones((2, 3), np.float32)}]
    tensors[shard_of_emb][KEY] = emb
    for shard, content in zip(shards, tensors, strict=True):
        write_safetensors(f"{name}/{shard}", content, "F32")
    weight_map = {k: shard for shard, content in zip(shards, tensors, strict=True) for k in content}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoints_read_the_shard_the_index_names(tmp_path, write_safetensors):
    x = random_history((3, 6, 4), seed=23)
    for k, step in enumerate([100, 200, 300]):
        _sharded(tmp_path, write_safetensors, f"checkpoint-{step}", x[k], shard_of_emb=k % 2)
    index = [tmp_path / f"checkpoint-{s}" / "model.safetensors.index.json" for s in (300, 100, 200)]
    for spec in (str(tmp_path / "checkpoint-*"), index, str(tmp_path / "checkpoint-*/model.safetensors.index.json")):
        h = open_history(spec, key=KEY)
        np.testing.assert_array_equal(h["step"].values, [100, 200, 300])
        np.testing.assert_array_equal(h.values, x)
    with pytest.raises(
        InputError,
        match=r"index.json: a sharded checkpoint: name its embedding matrix \(3 tensors .* e.g. model.embed_tokens.weight\); give key= / --key",
    ):
        open_history(index)
    with pytest.raises(InputError, match=r"index.json: no tensor 'nope' in it"):
        open_history(index, key="nope")
    (tmp_path / "checkpoint-200" / "model-00002-of-00002.safetensors").unlink()  # holds its embedding
    with pytest.raises(
        FileNotFoundError, match=r"model-00002-of-00002.safetensors: the shard holding 'model.embed_tokens.weight'"
    ):
        open_history(index, key=KEY)
    index[1].write_text("{}")  # checkpoint-100, read first
    with pytest.raises(InputError, match=r"index.json: not a safetensors index"):
        open_history(index, key=KEY)


def test_cli_compute_and_info_with_hf_folders_and_steps(hf_folders, tmp_path, capsys):
    ckpt, x = hf_folders
    out = tmp_path / "d.zarr"
    args = ["compute", f"{ckpt}/checkpoint-*", "--key", KEY, "-o", str(out), "--steps", "0:3", "--no-progress"]
    assert main(args) == 0
    from dask_pdist import open_distances

    np.testing.assert_array_equal(open_distances(out)["step"].values, [0, 1, 2])
    capsys.readouterr()
    assert main(["info", f"{ckpt}/checkpoint-*", "--key", KEY]) == 0
    text = capsys.readouterr().out
    assert "3 checkpoints:" in text and "stacked to shape [3, 7, 5] BF16, steps 500..1500" in text
    assert "lm_head.weight: shape [5, 7] BF16" in text


def test_a_followed_globs_newest_files_being_written_are_skipped_with_a_note(tmp_path, write_safetensors):
    # save_file writes in place: a glob may match the newest checkpoint half-written; it is
    # skipped with a note (as an incomplete checkpoint folder is), never read half-written
    from dask_pdist.io.checkpoints import following

    x = random_history((4, 7, 5), seed=4)
    paths = [write_safetensors(f"step_{k}.safetensors", {"w": x[k]}) for k in range(4)]
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    spec = str(tmp_path / "step_*.safetensors")
    with pytest.raises(InputError, match=r"step_3.safetensors: .*truncated"):
        open_history(spec)  # a one-shot compute refuses it: only a follower waits for it
    with following():
        _newest_skipped(spec, paths, data, x)


def _newest_skipped(spec, paths, data, x):
    from dask_pdist.errors import SkippedCheckpointWarning
    from dask_pdist.io.checkpoints import checkpoint_paths

    with pytest.warns(
        SkippedCheckpointWarning, match=r"step_3.safetensors: skipped, incomplete: .*shorter than its header"
    ):
        assert checkpoint_paths(spec) == paths[:3]
    with pytest.warns(SkippedCheckpointWarning):
        np.testing.assert_array_equal(open_history(spec).values, x[:3])
    paths[3].write_bytes(data)  # the save finished
    np.testing.assert_array_equal(open_history(spec).values, x)
    paths[2].write_bytes(paths[2].read_bytes()[:-8])  # damaged before a whole one: read, and refused
    with pytest.raises(InputError, match=r"step_2.safetensors: .*truncated"):
        open_history(spec)
    for p in paths:
        p.write_bytes(p.read_bytes()[:20])
    with (
        pytest.raises(InputError, match=r"holds no complete checkpoint yet \(4 being saved\)"),
        pytest.warns(SkippedCheckpointWarning),
    ):
        checkpoint_paths(spec)


@pytest.mark.parametrize("spec", ["list", "glob"])
def test_a_reopened_run_reads_only_new_or_changed_checkpoints_and_sees_every_change(
    tmp_path, write_safetensors, monkeypatch, spec
):
    # following a run reopens it whole at every save: the checkpoints seen before are taken
    # from the last open (io/known_files.py known_run) while each is the same settled file; a
    # rewritten one (another size, or the same size and new values) is read again
    import os

    import dask_pdist.io.known_files as known_files
    import dask_pdist.io.paths

    monkeypatch.setattr(dask_pdist.io.paths, "_SETTLED_NS", 0)  # settled at once
    x = random_history((6, 7, 5), seed=4)

    def save(i: int, value: np.ndarray) -> None:
        write_safetensors(f"run/step_{i}.safetensors", {"embedding": value})

    (tmp_path / "run").mkdir()
    for i in range(4):
        save(i, x[i])
    names = lambda n: [str(tmp_path / "run" / f"step_{i}.safetensors") for i in range(n)]  # noqa: E731
    opened = (lambda n: names(n)) if spec == "list" else (lambda n: str(tmp_path / "run" / "step_*.safetensors"))
    read = []
    real = known_files.read_header
    monkeypatch.setattr(known_files, "read_header", lambda path: read.append(os.path.basename(path)) or real(path))
    np.testing.assert_array_equal(open_history(opened(4)).values, x[:4])
    read.clear()
    save(4, x[4])
    np.testing.assert_array_equal(open_history(opened(5)).values, x[:5])
    assert read == ["step_4.safetensors"]  # the new one only
    # a stored checkpoint rewritten with new values (same size): read again, its new values
    read.clear()
    save(2, x[5])
    h = open_history(opened(5))
    assert read == ["step_2.safetensors"]
    np.testing.assert_array_equal(h.values, np.concatenate([x[:2], x[5:6], x[3:5]]))
    # and with another shape: refused, naming it
    save(1, x[1][:, :3])
    with pytest.raises(InputError, match=r"step_1\.safetensors.*shape \[7, 3\]"):
        open_history(opened(5))
    # another key asked for: not the same reading
    save(1, x[1])
    with pytest.raises(InputError, match="other"):
        open_history(opened(5), key="other")
