"""The seed notebook's torch loop, run as written on a small history, against dask_pdist."""

from __future__ import annotations

import numpy as np
import torch
from conftest import oracle
from safetensors.torch import load_file, save_file

from dask_pdist import open_history, pairwise_distances


def _notebook_loop(embedding_history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # cell 5 of ../shared/seed/000_3809b5424cceb33d.txt, verbatim but for tqdm
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
