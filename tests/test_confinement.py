"""Paths that come from inside an input stay inside it (issue 20.3): a sharded checkpoint's
weight_map names plain files in the index's folder, and a symbolic link leaving the input's
folder is refused unless the caller asks to follow it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import dask_pdist as dp
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError


def _checkpoints(root: Path, write_safetensors, n: int = 3) -> list[Path]:
    """n sharded checkpoints (index + one shard holding the embedding) under root/ckpt-K."""
    folders = []
    for k in range(n):
        folder = root / f"checkpoint-{(k + 1) * 10}"
        folder.mkdir(parents=True)
        x = np.random.default_rng(k).standard_normal((7, 5)).astype(np.float32)
        shard = write_safetensors(f"s{k}.safetensors", {"model.embed.weight": x})
        os.replace(shard, folder / "model-00001-of-00001.safetensors")
        index = {"metadata": {}, "weight_map": {"model.embed.weight": "model-00001-of-00001.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        folders.append(folder)
    return folders


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.safetensors", "sub/model.safetensors", "..", ""])
def test_a_weight_map_entry_that_is_not_a_plain_name_is_refused(tmp_path, write_safetensors, entry, capsys):
    folders = _checkpoints(tmp_path / "run", write_safetensors)
    outside = write_safetensors("outside.safetensors", {"model.embed.weight": np.ones((7, 5), np.float32)})
    os.replace(outside, tmp_path / "run" / "outside.safetensors")
    index = folders[1] / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"model.embed.weight": entry}}))
    with pytest.raises(InputError, match=rf"{index}: weight_map entry 'model.embed.weight' -> .*plain file name"):
        dp.open_history(str(tmp_path / "run" / "checkpoint-*"), key="model.embed.weight")
    argv = ["compute", str(tmp_path / "run" / "checkpoint-*"), "--key", "model.embed.weight", "-o", str(tmp_path / "d")]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plain file name" in err[0] and str(index) in err[0]
    assert not (tmp_path / "d").exists()


def test_a_shard_symlink_leaving_the_folder_is_refused_unless_followed(tmp_path, write_safetensors, capsys):
    folders = _checkpoints(tmp_path / "run", write_safetensors)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = folders[2] / "model-00001-of-00001.safetensors"
    os.replace(shard, elsewhere / "shard.safetensors")
    shard.symlink_to(elsewhere / "shard.safetensors")
    spec = str(tmp_path / "run" / "checkpoint-*")
    with pytest.raises(InputError, match=r"symbolic link to .*elsewhere/shard.safetensors, outside .*follow-symlinks"):
        dp.open_history(spec, key="model.embed.weight")
    h = dp.open_history(spec, key="model.embed.weight", follow_symlinks=True)
    assert h.sizes["step"] == 3
    out = tmp_path / "d.zarr"
    base = ["compute", spec, "--key", "model.embed.weight", "-o", str(out), "--no-progress"]
    assert main(base) == 2 and "symbolic link" in capsys.readouterr().err
    assert main([*base, "--follow-symlinks"]) == 0 and dp.open_distances(out).sizes["step"] == 3


def test_a_symlink_inside_the_folder_and_the_huggingface_cache_layout_are_read(tmp_path, write_safetensors):
    folders = _checkpoints(tmp_path / "run", write_safetensors)
    shard = folders[0] / "model-00001-of-00001.safetensors"
    os.replace(shard, folders[0] / "real.safetensors")
    shard.symlink_to("real.safetensors")  # stays in the folder
    assert dp.open_history(str(tmp_path / "run" / "checkpoint-*"), key="model.embed.weight").sizes["step"] == 3
    # huggingface_hub: models--org--name/snapshots/REV/FILE -> ../../blobs/SHA
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    x = np.arange(35, dtype=np.float32).reshape(7, 5)
    os.replace(write_safetensors("b.safetensors", {"model.embed.weight": x}), repo / "blobs" / "sha")
    (snap / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / "sha")
    h = dp.open_history([str(snap), str(snap)], key="model.embed.weight", steps=[1, 2])
    np.testing.assert_array_equal(h.values[0], x)


def test_a_checkpoint_folder_whose_file_links_outside_is_refused(tmp_path, write_safetensors):
    x = np.ones((7, 5), np.float32)
    folder = tmp_path / "run" / "checkpoint-10"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").symlink_to(write_safetensors("o.safetensors", {"w": x}))
    with pytest.raises(InputError, match="checkpoint file is a symbolic link"):
        dp.open_history([str(folder)], key="w")
