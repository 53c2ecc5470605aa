"""Clusters and neighbours stores grow too (write_clusters / neighbours_to_zarr append=True,
`clusters --append`, `neighbours --append`): a store grown step by step equals a one-shot
store of the final history, value for value, with the events and the churn across each
old/new boundary those of the one-shot run; anything that does not continue the store is
refused with the store unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import random_history
from dask_pdist import (
    StoreError,
    cluster_events,
    clusters,
    neighbour_churn,
    neighbours,
    neighbours_to_zarr,
    open_clusters,
    open_history,
    open_neighbours,
    write_clusters,
)
from dask_pdist.cli.main import main

SHAPE = (11, 13, 5)


@pytest.fixture
def grown(write_safetensors):
    """A history whose tokens merge and split over steps (so events happen), written at each length."""
    x = random_history(SHAPE, seed=8)
    x[3:7, 1] = x[3:7, 2]  # tokens 1 and 2 identical at steps 3..6: a formation at 3, an evaporation at 7
    x[5:, 4] = x[5:, 9]  # tokens 4 and 9 from step 5 on
    x[6:9, 10] = x[6:9, 4]  # token 10 joins them for steps 6..8
    steps = np.arange(SHAPE[0]) * 7 + 3

    def write(n: int):
        return write_safetensors(f"h{n}.safetensors", {"embedding_history": x[:n], "steps": steps[:n]})

    return x, write


def _same(a, b) -> None:
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize("threshold", [0.0, "bf16"])
def test_clusters_grown_equal_one_shot(grown, tmp_path, threshold):
    x, write = grown
    store = tmp_path / "c.zarr"
    for n in (2, 3, 6, 7, 11):  # boundaries before, at and inside each event
        write_clusters(clusters(open_history(write(n), chunks=2), threshold), store, append=True)
    whole = clusters(open_history(write(SHAPE[0])), threshold).compute()
    got = open_clusters(store)
    _same(got.compute(), whole)
    events = cluster_events(got)
    assert events.equals(cluster_events(whole)) and len(events) >= 3


def test_nothing_new_writes_nothing(grown, tmp_path):
    x, write = grown
    store = tmp_path / "c.zarr"
    write_clusters(clusters(open_history(write(5))), store, append=True)
    before = {p.relative_to(store): p.stat().st_mtime_ns for p in store.rglob("*")}
    write_clusters(clusters(open_history(write(5))), store, append=True)
    assert {p.relative_to(store): p.stat().st_mtime_ns for p in store.rglob("*")} == before


@pytest.mark.parametrize(
    "change, match",
    [
        ("threshold", "threshold: store has '0.0', now 'bf16'"),
        ("history", "are not the store's"),
        ("tokens", "coordinate 'token' differs"),
    ],
)
def test_clusters_append_refuses_what_does_not_continue(grown, tmp_path, write_safetensors, change, match):
    x, write = grown
    store = tmp_path / "c.zarr"
    write_clusters(clusters(open_history(write(5))), store)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    if change == "threshold":
        ds = clusters(open_history(write(8)), "bf16")
    elif change == "history":
        y = x.copy()
        y[2, 0, 0] += 1.0
        ds = clusters(open_history(write_safetensors("other.safetensors", {"embedding_history": y[:8]})))
    else:
        ds = clusters(open_history(write(8), tokens=[f"t{i}" for i in range(SHAPE[1])]))
    with pytest.raises(StoreError, match=match):
        write_clusters(ds, store, append=True)
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("metric", ["euclidean", "chebyshev"])
def test_neighbours_grown_equal_one_shot(grown, tmp_path, metric):
    x, write = grown
    store = tmp_path / "n.zarr"
    for n in (1, 4, 5, 11):
        neighbours_to_zarr(neighbours(open_history(write(n), chunks=3), k=3, metric=metric), store, append=True)
    whole = neighbours(open_history(write(SHAPE[0])), k=3, metric=metric).compute()
    got = open_neighbours(store)
    _same(got.compute(), whole)
    np.testing.assert_array_equal(
        neighbour_churn(got)["mean_churn"].values, neighbour_churn(whole)["mean_churn"].values
    )


def test_neighbours_append_refuses_another_k(grown, tmp_path):
    x, write = grown
    store = tmp_path / "n.zarr"
    neighbours_to_zarr(neighbours(open_history(write(4)), k=3), store)
    with pytest.raises(StoreError, match="k: store has 3, now 2"):
        neighbours_to_zarr(neighbours(open_history(write(6)), k=2), store, append=True)
    assert open_neighbours(store).sizes["step"] == 4


def test_cli_clusters_and_neighbours_append(grown, tmp_path, capsys):
    x, write = grown
    for n in (4, 11):
        assert main(["clusters", str(write(n)), "-o", str(tmp_path / "c.zarr"), "--append", "--no-progress"]) == 0
        assert (
            main(["neighbours", str(write(n)), "-k", "2", "-o", str(tmp_path / "n.zarr"), "--append", "--no-progress"])
            == 0
        )
    capsys.readouterr()
    _same(open_clusters(tmp_path / "c.zarr").compute(), clusters(open_history(write(11))).compute())
    _same(open_neighbours(tmp_path / "n.zarr").compute(), neighbours(open_history(write(11)), k=2).compute())
    assert main(["clusters", str(write(11)), "-o", str(tmp_path / "c.zarr"), "--append", "--overwrite"]) == 2
    assert "--append" in capsys.readouterr().err


def test_cli_clusters_append_rewrites_its_events(grown, tmp_path, capsys):
    # --events with --append: the events of the grown store, replacing the file of the store it was
    x, write = grown
    store, events = str(tmp_path / "c.zarr"), str(tmp_path / "ev.csv")
    for n in (4, 11):
        assert main(["clusters", str(write(n)), "-o", store, "--events", events, "--append", "--no-progress"]) == 0
    whole = str(tmp_path / "whole.csv")
    assert main(["clusters", str(write(11)), "--events", whole, "--no-progress"]) == 0
    text = Path(events).read_text()
    assert text == Path(whole).read_text() and len(text.splitlines()) >= 4


@pytest.mark.parametrize("command", [["clusters"], ["neighbours", "-k", "3"]])
def test_follow_keeps_clusters_and_neighbours_current(tmp_path, command):
    from test_follow import Follower, _save_like_trainer
    from test_run_folders import gpt2_tensors, save_checkpoint

    x = random_history((4, 12, 6), seed=4)
    x[2:, 3] = x[2:, 5]  # a group forms at the third checkpoint
    folder = tmp_path / "run"
    save_checkpoint(folder, 10, gpt2_tensors(x[0]))
    out = tmp_path / "o.zarr"
    f = Follower(*command, str(folder), "-o", str(out), "--follow", "--idle-exit", "3", "--no-progress")
    f.wait_for("up to step 10")
    for i in (1, 2, 3):
        _save_like_trainer(folder, 10 * (i + 1), x[i])
        f.wait_for(f"up to step {10 * (i + 1)}")
    code, err = f.finish()
    assert code == 0, err
    assert "Traceback" not in err and not (tmp_path / ".o.zarr.lock").exists()
    if command[0] == "clusters":
        got, whole = open_clusters(out), clusters(open_history(folder)).compute()
        assert cluster_events(got).equals(cluster_events(whole)) and len(cluster_events(whole)) == 1
    else:
        got, whole = open_neighbours(out), neighbours(open_history(folder), k=3).compute()
    _same(got.compute(), whole)


@pytest.mark.parametrize("kind", ["clusters", "neighbours"])
def test_append_refuses_a_changed_stored_step(grown, tmp_path, write_safetensors, kind):
    # the stored steps' input checksums are recorded: a rewritten earlier checkpoint is refused,
    # as compute --append refuses it, instead of silently mixing old and new results
    x, write = grown
    store = tmp_path / f"{kind}.zarr"
    y = x.copy()
    y[2, 7] = y[2, 6]  # step 2 rewritten after the store was made
    changed = write_safetensors("changed.safetensors", {"embedding_history": y, "steps": np.arange(SHAPE[0]) * 7 + 3})
    if kind == "clusters":
        write_clusters(clusters(open_history(write(4))), store)
        before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
        with pytest.raises(StoreError, match=r"the input changed since the store was written: step 17 \(index 2\)"):
            write_clusters(clusters(open_history(changed)), store, append=True)
    else:
        neighbours_to_zarr(neighbours(open_history(write(4)), k=3), store)
        before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
        with pytest.raises(StoreError, match=r"the input changed since the store was written: step 17 \(index 2\)"):
            neighbours_to_zarr(neighbours(open_history(changed), k=3), store, append=True)
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
