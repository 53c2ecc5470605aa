"""DistancesCallback: a tiny GPT-2 trained by transformers' Trainer on CPU appends each saved
checkpoint to a store; the store equals a one-shot compute of the run folder, bit for bit, and
its distances those of scipy on the checkpoints' own embedding matrices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_append import _assert_same_arrays

from conftest import oracle
from dask_pdist import StoreError, open_distances, verify_store
from dask_pdist.cli.main import main


def _train(run: Path, callback, max_steps: int = 12, save_steps: int = 3) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = transformers.TrainingArguments(
        str(run),
        max_steps=max_steps,
        save_steps=save_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1000,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()


def test_callback_appends_each_save(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    from dask_pdist.training import DistancesCallback

    run, store = tmp_path / "run", tmp_path / "d.zarr"
    callback = DistancesCallback(store)
    _train(run, callback)
    assert 1 <= callback.appends <= 4  # saves during a running append are taken by the next one
    ds = open_distances(store)
    assert ds["step"].values.tolist() == [3, 6, 9, 12]
    assert verify_store(store) == []
    assert main(["compute", str(run), "-o", str(tmp_path / "whole.zarr"), "--chunk-steps", "1", "--no-progress"]) == 0
    _assert_same_arrays(tmp_path / "whole.zarr", store)
    wte = np.stack(
        [load_file(str(run / f"checkpoint-{s}" / "model.safetensors"))["transformer.wte.weight"] for s in (3, 6, 9, 12)]
    )
    assert not np.array_equal(wte[0], wte[-1])  # training moved the embeddings
    e, c = oracle(wte)
    np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))


def test_a_failed_append_is_raised_at_the_end_of_training(tmp_path):
    pytest.importorskip("transformers")
    from dask_pdist.training import DistancesCallback

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("a user's folder")
    # said when it happens too (an attack: a refused append surfaced only at train end)
    with (
        pytest.raises(StoreError, match="not a dask_pdist store"),
        pytest.warns(RuntimeWarning, match="training goes on"),
    ):
        _train(tmp_path / "run", DistancesCallback(taken), max_steps=4, save_steps=2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-2", "checkpoint-4"]  # trained on
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_without_transformers_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "dask_pdist.training", raising=False)
    with pytest.raises(ImportError, match=r'pip install "dask_pdist\[hf\]"'):
        import dask_pdist.training  # noqa: F401
