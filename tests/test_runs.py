"""Several runs in one graph (issue 13): one store per run named by the differing path
component, bit-identical to computing each run alone; complete stores skipped; stores read
back with a leading run dimension, steps aligned."""

from __future__ import annotations

import fsspec
import ml_dtypes
import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import save_file

import dask_pdist as dp
import dask_pdist.store.runs
from conftest import random_history
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError, StoreError
from dask_pdist.store.runs import compute_runs, find_runs, run_names

#: run name -> (steps, first step label); run_012 is shorter, run_003's steps are offset
RUNS = {"run_003": (13, 4), "run_007": (13, 0), "run_012": (9, 0)}


@pytest.fixture
def three_runs(tmp_path):
    """data/run_NNN/embedding_evolution.safetensors: bf16 (S, 11, 5) with a steps tensor."""
    for k, (name, (n_steps, first)) in enumerate(RUNS.items()):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        x = random_history((n_steps, 11, 5), seed=10 + k)
        save_file(
            {"emb": x.astype(ml_dtypes.bfloat16), "steps": (np.arange(n_steps) * 2 + first).astype(np.int64)},
            str(folder / "embedding_evolution.safetensors"),
        )
    return str(tmp_path / "data" / "run_*" / "embedding_evolution.safetensors")


def _alone(tmp_path, name: str) -> xr.Dataset:
    """The run computed on its own, through the single-history path."""
    out = tmp_path / "alone" / f"{name}.zarr"
    out.parent.mkdir(exist_ok=True)
    src = tmp_path / "data" / name / "embedding_evolution.safetensors"
    assert main(["compute", str(src), "-o", str(out), "--chunk-steps", "4", "--no-progress"]) == 0
    return dp.open_distances(out)


def test_run_names():
    assert run_names(["a/r1/x.safetensors", "a/r2/x.safetensors"]) == ["r1", "r2"]
    assert run_names(["a/r1/x1.npy", "a/r2/x2.npy"]) == ["r1-x1", "r2-x2"]  # several differ: joined
    assert run_names(["s3://b/r1/h.safetensors", "s3://b/r2/h.safetensors"]) == ["r1", "r2"]
    with pytest.raises(InputError, match=r"run name 'r1' .* is also that of"):
        run_names(["x/r1.npy", "x/r1.safetensors"])


def test_batch_cli_bit_identical_to_single_runs(tmp_path, three_runs, capsys):
    out = tmp_path / "out"
    assert main(["compute", three_runs, "--output", str(out), "--chunk-steps", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["run_003.zarr", "run_007.zarr", "run_012.zarr"]
    for name, (n_steps, _) in RUNS.items():
        assert f"  {name}: {n_steps} steps x 11 tokens -> {out / name}.zarr; step " in text
        got, alone = dp.open_distances(out / f"{name}.zarr"), _alone(tmp_path, name)
        for var in ("euclidean", "chebyshev"):
            np.testing.assert_array_equal(got[var].values, alone[var].values)
        np.testing.assert_array_equal(got.step.values, alone.step.values)
    # again: every store is complete, nothing is computed, each one says so
    capsys.readouterr()
    assert main(["compute", three_runs, "--output", str(out), "--chunk-steps", "4", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("is complete: skipped") == 3
    assert captured.out.count("(skipped: complete)") == 3


def test_one_graph_and_resume(tmp_path, three_runs):
    out = tmp_path / "out"
    batch = compute_runs(three_runs, out, chunks=4, compute=False)
    assert [(r.name, r.state, r.blocks) for r in batch.runs] == [
        ("run_003", "compute", 4),
        ("run_007", "compute", 4),
        ("run_012", "compute", 3),
    ]
    with pytest.raises(StoreError, match="incomplete"):  # created, nothing computed yet
        dp.open_distances(out / "run_007.zarr")
    with pytest.raises(StoreError, match="--resume"):  # an incomplete store is not written over
        compute_runs(three_runs, out, chunks=4)
    batch = compute_runs(three_runs, out, chunks=4, resume=True, compute=False)
    assert {r.state for r in batch.runs} == {"resume"}
    batch.compute()  # one dask.compute for all three runs
    for name in RUNS:
        assert dp.open_distances(out / f"{name}.zarr").sizes["step"] == RUNS[name][0]
    assert {r.state for r in compute_runs(three_runs, out, chunks=4).runs} == {"complete"}


def test_open_distances_runs(tmp_path, three_runs, no_compute):
    out = tmp_path / "out"
    compute_runs(three_runs, out, chunks=4)
    with no_compute():
        ds = dp.open_distances(str(out / "*.zarr"))  # lazy
        listed = dp.open_distances([out / "run_012.zarr", out / "run_003.zarr"])
    assert ds.euclidean.dims == ("run", "step", "token_i", "token_j")
    assert list(ds.run.values) == ["run_003", "run_007", "run_012"]
    assert list(listed.run.values) == ["run_012", "run_003"]
    # steps: the union, NaN where a run has no such step
    assert list(ds.step.values) == sorted(set(range(0, 26, 2)) | set(range(4, 30, 2)))
    for name in RUNS:
        alone = dp.open_distances(out / f"{name}.zarr")
        part = ds.euclidean.sel(run=name)
        np.testing.assert_array_equal(part.sel(step=alone.step).values, alone.euclidean.values)
        missing = np.setdiff1d(ds.step.values, alone.step.values)
        assert missing.size and np.isnan(part.sel(step=missing).values).all()
    # summarize keeps the run dimension and matches each run's own summary
    s = dp.summarize(ds).compute()
    assert s.euclidean_mean.dims == ("run", "step")
    alone = dp.summarize(dp.open_distances(out / "run_012.zarr")).compute()
    np.testing.assert_array_equal(s.euclidean_mean.sel(run="run_012", step=alone.step).values, alone.euclidean_mean)


def test_open_distances_runs_must_agree(tmp_path, three_runs):
    out = tmp_path / "out"
    compute_runs(three_runs, out, chunks=4)
    other = tmp_path / "other" / "h.safetensors"
    other.parent.mkdir()
    save_file({"emb": random_history((5, 7, 5))}, str(other))
    dp.to_zarr(dp.pairwise_distances(dp.open_history(other)), tmp_path / "other" / "small.zarr")
    dp.to_zarr(dp.pairwise_distances(dp.open_history(other), metrics=["chebyshev"]), tmp_path / "other" / "cheb.zarr")
    with pytest.raises(StoreError, match=r"small.zarr: its 7 tokens differ from the 11 of .*run_003.zarr"):
        dp.open_distances([out / "run_003.zarr", tmp_path / "other" / "small.zarr"])
    with pytest.raises(
        StoreError, match=r"cheb.zarr: holds \['chebyshev'\], but .* holds \['chebyshev', 'euclidean'\]"
    ):
        dp.open_distances([out / "run_003.zarr", tmp_path / "other" / "cheb.zarr"])
    with pytest.raises(ValueError, match="several stores .* need chunks='store'"):
        dp.open_distances([out / "run_003.zarr", out / "run_007.zarr"], chunks=None)
    with pytest.raises(FileNotFoundError, match="no store matches"):
        dp.open_distances(str(tmp_path / "nothing" / "*.zarr"))


def test_summary_cli_per_run(tmp_path, three_runs, capsys):
    out = tmp_path / "out"
    compute_runs(three_runs, out, chunks=4)
    capsys.readouterr()
    assert main(["summary", str(out / "*.zarr")]) == 0
    text = capsys.readouterr().out
    assert text.count("Run run_") == 3 and "Final distances (step 16)" in text  # run_012: steps 0..16
    assert "3 runs, 15 distinct steps" in text
    assert main(["summary", str(out / "*.zarr"), "--plot", "x.png"]) == 2


def test_a_folder_or_glob_of_run_stores_where_one_store_is_expected(tmp_path, three_runs, capsys):
    out = tmp_path / "out"
    compute_runs(three_runs, out, chunks=4)
    hint = f"3 dask_pdist stores (run_003.zarr, run_007.zarr, run_012.zarr), one per run: give one of them, e.g. {out}"
    for argv in (
        ["summary", str(out)],
        ["report", str(out / "*"), "-o", str(tmp_path / "r.html")],
        ["clusters", str(out / "*"), "-o", str(tmp_path / "c.zarr")],
        ["neighbours", str(out), "-k", "2", "-o", str(tmp_path / "n.zarr")],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert hint in err and "Traceback" not in err, (argv, err)


def test_checkpoint_globs_are_not_runs(tmp_path):
    for i in range(3):
        save_file({"w": random_history((1, 6, 4))[0]}, str(tmp_path / f"step_{i}.safetensors"))
    assert find_runs(str(tmp_path / "step_*.safetensors")) is None
    assert find_runs(str(tmp_path / "step_0.safetensors")) is None


def test_batch_errors(tmp_path, three_runs, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["compute", three_runs, "-o", str(tmp_path / "file"), "--no-progress"]) == 2
    assert "must be a folder for several runs" in capsys.readouterr().err
    assert main(["compute", three_runs, "-o", str(tmp_path / "o"), "--safetensors", "x.safetensors"]) == 2
    assert "--safetensors exports one store" in capsys.readouterr().err


def test_batch_from_s3_bit_identical(tmp_path, three_runs, s3_bucket):
    fs = fsspec.filesystem("s3")
    for name in RUNS:
        fs.put_file(
            str(tmp_path / "data" / name / "embedding_evolution.safetensors"),
            f"{s3_bucket}/data/{name}/embedding_evolution.safetensors",
        )
    out = tmp_path / "from_s3"
    url = f"{s3_bucket}/data/run_*/embedding_evolution.safetensors"
    assert main(["compute", url, "--output", str(out), "--chunk-steps", "4", "--no-progress"]) == 0
    for name in RUNS:
        got, alone = dp.open_distances(out / f"{name}.zarr"), _alone(tmp_path, name)
        assert got.attrs["source"] == f"{s3_bucket}/data/{name}/embedding_evolution.safetensors"
        for var in ("euclidean", "chebyshev"):
            np.testing.assert_array_equal(got[var].values, alone[var].values)


def test_clusters_keep_the_run_dimension(tmp_path, three_runs):
    out = tmp_path / "out"
    compute_runs(three_runs, out, chunks=4)
    ds = dp.open_distances(str(out / "*.zarr"))
    c = dp.clusters(ds, "bf16").compute()
    assert c.cluster.dims == ("run", "step", "token") and list(c.run.values) == list(RUNS)
    for name in RUNS:
        alone = dp.clusters(dp.open_distances(out / f"{name}.zarr"), "bf16").compute()
        part = c.sel(run=name)
        xr.testing.assert_equal(part.sel(step=alone.step).drop_vars("run"), alone)
        missing = np.setdiff1d(c.step.values, alone.step.values)
        assert (part.cluster.sel(step=missing) == -1).all() and part.threshold.sel(step=missing).isnull().all()
        events = dp.cluster_events(part)  # the run's own steps only
        assert events.equals(dp.cluster_events(alone))
    with pytest.raises(ValueError, match="events are per run; select one"):
        dp.cluster_events(c)


def test_stores_finishing_at_once_do_not_leak_the_consolidation_warning(tmp_path, monkeypatch):
    """Several runs' stores finish in parallel threads of one graph; each finish silences
    zarr's consolidated-metadata warning with process-wide filters (warnings are errors in
    this suite). Staggered: the first finish restores the filters while the second is still
    consolidating; without a lock around the filters the second one's warning escapes."""
    import time
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    from dask_pdist.store.layout import consolidate

    def slow_consolidate(path):
        time.sleep(0.1)
        warnings.warn(
            "Consolidated metadata is currently not part in the Zarr format 3 specification.", UserWarning, stacklevel=2
        )

    monkeypatch.setattr(zarr, "consolidate_metadata", slow_consolidate)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(consolidate, tmp_path / "a.zarr")
        time.sleep(0.03)
        second = pool.submit(consolidate, tmp_path / "b.zarr")
        first.result(), second.result()
