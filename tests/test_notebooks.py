"""The notebooks: ours run top to bottom on a small synthetic history, so they cannot rot; the
research notebook this tool replaces (its torch loop, as written) gives the same numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from safetensors.torch import load_file, save_file

from conftest import oracle
from dask_pdist import open_history, pairwise_distances

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["pairwise_distances.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs_and_executes(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "store notebooks without outputs"
    monkeypatch.setenv("DASK_PDIST_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("DASK_PDIST_NOTEBOOK_STEPS", "120")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default: inline
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "work" / "pairwise_distances.zarr" / "zarr.json").exists()
    assert (tmp_path / "work" / "distances_over_training.png").stat().st_size > 1000
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Final distances (step 119)" in outputs
    assert "euclidean_distances [120, 128, 128]" in outputs
    assert "(equal embeddings); 120 steps x 128 tokens" in outputs  # the clusters section
    assert "24, emission, {6 7 8 9 10} -> 10 alone" in outputs  # a planted event (20 % of the run)
    assert (tmp_path / "work" / "clusters.png").stat().st_size > 1000
    # the plot shows in the notebook (inline), not only in a file
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "writing: 100%" in outputs  # to_zarr's progress bar, on in a notebook


def test_notebook_writes_where_git_ignores():
    source = "".join(c.source for c in nbformat.read(NOTEBOOKS[0], as_version=4).cells)
    assert 'matplotlib.use("Agg")' not in source
    default = Path(__file__).parent.parent / "notebooks" / "notebook_output"
    assert 'os.environ.get("DASK_PDIST_NOTEBOOK_DIR", "notebook_output")' in source
    ignored = subprocess.run(["git", "check-ignore", "-q", str(default / "x.zarr")], cwd=default.parent.parent)
    assert ignored.returncode == 0, f"{default} is not ignored by git"


def _notebook_loop(embedding_history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the research notebook's distance loop (its cell 5), verbatim but for tqdm
    n_snapshots, vocab_size, _ = embedding_history.shape
    euclidean_distances = torch.zeros((n_snapshots, vocab_size, vocab_size), dtype=torch.float32)
    chebyshev_distances = torch.zeros((n_snapshots, vocab_size, vocab_size), dtype=torch.float32)
    for i in range(n_snapshots):
        gamma = embedding_history[i].float()
        diff = gamma.unsqueeze(0) - gamma.unsqueeze(1)
        euclidean_distances[i] = torch.norm(diff, p=2, dim=2)
        chebyshev_distances[i] = torch.abs(diff).max(dim=2)[0]
    return euclidean_distances, chebyshev_distances


def test_same_numbers_as_the_notebook(tmp_path):
    gen = torch.Generator().manual_seed(42)
    hist = (torch.randn((31, 27, 13), generator=gen) * 0.05).to(torch.bfloat16)
    hist[:, 26] = hist[:, 3]
    path = tmp_path / "embedding_evolution.safetensors"
    save_file({"embedding_history": hist}, str(path))

    nb_e, nb_c = _notebook_loop(load_file(str(path))["embedding_history"])
    ds = pairwise_distances(open_history(path, chunks=8))
    e, c = ds.euclidean.values, ds.chebyshev.values

    np.testing.assert_array_equal(c, nb_c.numpy())  # both: max |float32 difference|
    ref, _ = oracle(hist.float().numpy())
    mask = ref > 0
    for got in (e, nb_e.numpy()):
        assert (np.abs(got - ref)[mask] / ref[mask]).max() <= 1e-6
    assert (e[~mask] == 0).all()
