"""The notebooks run, top to bottom, on a small synthetic history, so they cannot rot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["pairwise_distances.ipynb"]


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
