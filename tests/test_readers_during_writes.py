"""Readers while a job grows the store: every open sees one consistent store, its leading whole
steps (never a NaN hole, a half-resized array or a chunk checked against the other version's
digest), and a failure caused by a writer says so instead of advising to recompute.

The writer is frozen between two of its writes (the metadata files an append replaces one at
a time, and the step labels rewritten before their digests): the reader runs at that moment,
in the writer's own thread, so every interleaving is tested deterministically."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import oracle, random_history
from dask_pdist import StoreError, iter_steps, open_distances, open_history, pairwise_distances, summarize, to_zarr
from dask_pdist.store.export import to_safetensors

SHAPE = (11, 7, 5)  # steps, tokens, dims: not powers of two


@pytest.fixture
def grown(write_safetensors):
    """(history x, its steps, a writer of the history's first n steps, the oracle)."""
    x = random_history(SHAPE, seed=21)
    steps = np.arange(SHAPE[0]) * 7 + 3

    def write(n: int) -> Path:
        return write_safetensors(f"h{n}.safetensors", {"embedding_history": x[:n], "steps": steps[:n]})

    return x, steps, write, oracle(x)


def _distances(path: Path, chunk: int) -> xr.Dataset:
    return pairwise_distances(open_history(path, chunks=chunk))


def _check_view(store: Path, steps: np.ndarray, truth: tuple[np.ndarray, np.ndarray], tmp: Path) -> int:
    """Open the store as a reader would now; everything it shows must be whole and right.
    Returns the number of steps seen."""
    euclid, cheb = truth
    ds = open_distances(store)
    n = ds.sizes["step"]
    assert n >= 1
    np.testing.assert_array_equal(ds["step"].values, steps[:n])  # strictly increasing, no hole
    np.testing.assert_allclose(ds.euclidean.values, euclid[:n], rtol=1e-5, atol=1e-5)  # no NaN either
    np.testing.assert_allclose(ds.chebyshev.isel(step=-1).values, cheb[n - 1], rtol=1e-5, atol=1e-5)
    lazy = open_distances(store, chunks=None)  # the path without dask: the same view
    np.testing.assert_array_equal(lazy["step"].values, steps[: lazy.sizes["step"]])
    np.testing.assert_allclose(lazy.euclidean.isel(step=-1).values, euclid[lazy.sizes["step"] - 1], rtol=1e-5)
    seen = [int(s) for s, _ in iter_steps(ds, ["euclidean"])]
    assert seen == steps[:n].tolist()
    stats = summarize(ds).compute()
    assert stats.sizes["step"] == n
    # export writes the steps seen so far, and says in the file when the store is being written
    to_safetensors(ds, tmp / "out.safetensors", overwrite=True)
    from safetensors import safe_open

    with safe_open(str(tmp / "out.safetensors"), "np") as f:
        assert ("being_written" in f.metadata()) == bool(ds.attrs.get("being_written"))
        np.testing.assert_allclose(f.get_tensor("euclidean_distances"), euclid[:n], rtol=1e-5, atol=1e-5)
    return n


@pytest.mark.parametrize(
    ("chunk", "place"), [(1, "local"), (4, "local"), pytest.param(1, "s3", marks=pytest.mark.slow)]
)
def test_reader_between_every_metadata_write_of_an_append(grown, tmp_path, monkeypatch, request, chunk, place):
    import dask_pdist.store.layout as layout

    _, steps, write, truth = grown
    store = tmp_path / "d.zarr" if place == "local" else f"{request.getfixturevalue('s3_bucket')}/d.zarr"
    to_zarr(_distances(write(6), chunk), store)
    real, seen, one_at_a_time = layout.replace_bytes, [], threading.Lock()

    def frozen(where, data):  # the writer stops after each metadata file it replaces
        real(where, data)
        # not in the job's worker threads; the growth writes the arrays' documents from a pool
        # of its own (each thread stops after its file while a reader looks, one at a time)
        thread = threading.current_thread()
        if thread is threading.main_thread() or thread.name.startswith("dask_pdist-metadata"):
            with one_at_a_time:
                name = str(where)[len(str(store)) :].lstrip("/")
                seen.append((name, _check_view(store, steps, truth, tmp_path)))

    monkeypatch.setattr(layout, "replace_bytes", frozen)
    to_zarr(_distances(write(9), chunk), store, append=True)
    to_zarr(_distances(write(11), chunk), store, append=True)
    monkeypatch.undo()
    # the root (incomplete), each array resized, the root again (consolidated), per append
    files = [f for f, _ in seen]
    assert files.count("zarr.json") >= 4 and "euclidean/zarr.json" in files and "step/zarr.json" in files
    counts = [n for _, n in seen]
    # the leading whole steps: a partly filled last block being recomputed is not shown (4 of 6
    # in chunks of 4); with one step per chunk (--follow) no step once shown disappears
    assert min(counts) >= 4 and counts[-1] >= 8
    assert chunk != 1 or counts == sorted(counts)
    assert _check_view(store, steps, truth, tmp_path) == SHAPE[0]


def test_reader_between_step_labels_and_their_digests(grown, tmp_path, monkeypatch):
    # an append rewrites the last chunk of step labels, then records its digest: a reader in
    # between meets a chunk newer than the record it read. It must not call that damage.
    import dask_pdist.store.append as append

    _, steps, write, truth = grown
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(6), 1), store)
    real, outcomes = append.add_to_manifest, []

    def frozen(path, digests):
        try:
            outcomes.append(_check_view(store, steps, truth, tmp_path))
        except StoreError as exc:
            outcomes.append(str(exc))
        real(path, digests)

    monkeypatch.setattr(append, "add_to_manifest", frozen)
    to_zarr(_distances(write(8), 1), store, append=True)
    monkeypatch.undo()
    (outcome,) = outcomes
    # the writer is frozen there, its lock held: nothing records the new chunk yet, so the reader
    # looks again for a moment (a live writer's next write is due within milliseconds), then
    # says to open it again; never damage, never "recompute"
    assert isinstance(outcome, str) and "open it again in a moment" in outcome, outcome
    assert "recompute" not in outcome and "misplaced" not in outcome
    assert _check_view(store, steps, truth, tmp_path) == 8


def test_reader_sees_real_damage_while_unchanged(grown, tmp_path):
    # the store did not change since it was opened: a damaged chunk is still damage
    _, steps, write, _ = grown
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(6), 2), store)
    ds = open_distances(store)
    for name, where in (("euclidean", "1/0/0"), ("step", "0")):
        chunk = store / name / "c" / where
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"euclidean chunk \(1, 0, 0\).*corrupt.*--resume") as caught:
        ds.euclidean.compute()
    assert "changed by a writer" not in str(caught.value)
    with pytest.raises(StoreError, match=r"step.*corrupt.*recompute the store"):
        open_distances(store)


_READER = """
import sys, numpy as np, dask_pdist as dp
store, stop = sys.argv[1], sys.argv[2]
import os
opened = 0
while not os.path.exists(stop) or opened < 3:
    ds = dp.open_distances(store)
    s = ds["step"].values
    assert (np.diff(s) > 0).all() and not np.isnan(ds.euclidean.isel(step=-1).values).any()
    opened += 1
print(opened)
"""


@pytest.mark.slow
def test_concurrent_reader_while_appending(grown, tmp_path):
    # a reader process opens the store in a loop while this process appends one step at a time
    _, steps, write, _ = grown
    store, stop = tmp_path / "d.zarr", tmp_path / "stop"
    to_zarr(_distances(write(3), 1), store)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(store), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for n in range(4, SHAPE[0] + 1):
            to_zarr(_distances(write(n), 1), store, append=True)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    assert int(out.split()[-1]) >= 3


def test_handle_open_across_an_overwrite_says_the_store_changed(grown, tmp_path):
    # another job rewrote the store (--overwrite, new chunks and digests) after this handle was
    # opened: its reads say so, and to open again; they never advise recomputing
    x, steps, write, truth = grown
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(6), 2), store)
    before = open_distances(store)
    to_zarr(_distances(write(9), 4), store, overwrite=True)
    with pytest.raises(StoreError, match="changed by a writer since it was opened.*open it again") as caught:
        before.euclidean.compute()
    assert "recompute" not in str(caught.value)
    assert _check_view(store, steps, truth, tmp_path) == 9


@pytest.mark.parametrize("writer_ran", [True, False])
def test_verify_during_a_write_says_so_instead_of_reporting_damage(grown, tmp_path, writer_ran):
    # an attack: verify run while appends grew the store reported "misplaced" and "missing"
    # chunks of a healthy store. A verification during which the root document was rewritten
    # (a writer ran) and that found problems says so; real damage is still reported
    from dask_pdist import verify_store
    from dask_pdist.store.layout import write_root_attrs

    _, _, write, _ = grown
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(8), 2), store)
    chunk = store / "euclidean" / "c" / "3" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 1  # what the verification meets (a chunk half-seen, or damage)
    chunk.write_bytes(bytes(raw))
    seen = []

    def progress(done: int, total: int) -> None:
        if not seen and writer_ran:
            write_root_attrs(store, note="an append")  # the root rewritten mid-verification
        seen.append(done)

    if writer_ran:
        with pytest.raises(StoreError, match="changed by a writer while it was verified"):
            verify_store(store, progress=progress)
    else:
        problems = verify_store(store, progress=progress)
        assert [p.variable for p in problems] == ["euclidean"]


def test_summary_reads_again_when_a_writer_changed_the_store_under_it(grown, tmp_path, monkeypatch, capsys):
    # an attack: `dask-pdist summary` failed 1-2 times in 5 during fast appends with "the store
    # was changed by a writer since it was opened" (a read after the open met a rewritten
    # block). It opens and reads again (printing once); a store changed at every try still fails
    import dask_pdist.analyses.summary as summary_module
    from dask_pdist.cli.main import main
    from dask_pdist.store.layout import changed_since_opened

    _, _, write, _ = grown
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(9), 2), store)
    real, calls = summary_module.summarize, []

    def flaky(ds, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise changed_since_opened(store, "euclidean chunk (4, 0, 0)")
        return real(ds, **kwargs)

    monkeypatch.setattr(summary_module, "summarize", flaky)
    failures = 2
    assert main(["summary", str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("Over training:") == 1 and len(calls) == 3
    calls.clear()
    failures = 99
    assert main(["summary", str(store), "--no-progress"]) == 2
    assert "changed by a writer since it was opened" in capsys.readouterr().err


def test_every_store_reading_command_reads_again_with_its_arguments_as_given(capsys):
    # cli/common.py read_again, as the CLI runs summary, export, clusters, neighbours, report
    # and info: each try starts from the arguments as given (a command may change them), and
    # what a dropped try printed is not printed
    import argparse

    from dask_pdist import StoreChangedError
    from dask_pdist.cli.common import READ_TRIES, READS_STORES, read_again

    assert {"summary", "export", "clusters", "neighbours", "report"} <= set(READS_STORES)
    seen = []

    def command(args):
        seen.append(list(args.store))
        print(f"try {len(seen)}")
        args.store = args.store[0]  # as summary does
        if len(seen) < 3:
            raise StoreChangedError("d.zarr: the store was changed by a writer since it was opened")
        return 7

    assert read_again(command, argparse.Namespace(store=["d.zarr"])) == 7
    assert seen == [["d.zarr"]] * 3
    assert capsys.readouterr().out == "try 3\n"
    seen.clear()

    def always(args):
        seen.append(1)
        print("partial")
        raise StoreChangedError("d.zarr: the store was changed by a writer since it was opened")

    with pytest.raises(StoreChangedError):
        read_again(always, argparse.Namespace(store=["d.zarr"]))
    assert len(seen) == READ_TRIES and capsys.readouterr().out == "partial\n"
