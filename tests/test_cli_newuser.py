"""A new user's first hour with the command line (issue 9): data safety, options, messages."""

from __future__ import annotations

import pytest

from dask_pdist.cli import main
from dask_pdist.synthetic import is_synthetic_history, write_synthetic_history


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dask-pdist: error: ")
    return err


def test_synth_refuses_to_overwrite_without_flag(tmp_path, capsys):
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"precious")
    assert "real.safetensors: already exists; pass overwrite=True (--overwrite)" in _error(
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
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"dask_pdist_version": "0"}}')
    assert "pairwise_distances.zarr: already exists" in _error(capsys, ["demo", "--output-dir", str(tmp_path)])
    assert store.is_dir() and not real.exists()
