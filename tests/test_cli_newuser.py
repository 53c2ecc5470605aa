"""A new user's first hour with the command line (issue 9): data safety, options, messages."""

from __future__ import annotations

import numpy as np
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
    return out


def test_allow_incomplete_is_reachable_where_the_message_suggests_it(incomplete_store, tmp_path, capsys):
    store = str(incomplete_store)
    for argv in (["summary", store], ["export", store, str(tmp_path / "x.safetensors")]):
        assert "(--allow-incomplete) to read missing blocks as NaN" in _error(capsys, argv)
    assert main(["summary", store, "--allow-incomplete"]) == 0
    assert "Over training" in capsys.readouterr().out
    out = tmp_path / "x.safetensors"
    assert main(["export", store, str(out), "--allow-incomplete", "--no-progress"]) == 0
    from safetensors.numpy import load_file

    cheb = load_file(out)["chebyshev_distances"]
    assert np.isnan(cheb).any() and not np.isnan(cheb).all()
    assert main(["info", store]) == 0  # info describes an incomplete store as it is
    assert "1 blocks missing" in capsys.readouterr().out
