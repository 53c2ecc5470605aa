"""Divergence between runs (``dp.divergence``, ``dask-pdist divergence``) against a float64 numpy
loop: each run against a reference or every pair, step alignment with the dropped steps named,
the store, the CLI and the failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_movement import check_values, pair_oracle, small_moves

import dask_pdist as dp
from conftest import history_array
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError

S, V, D = 7, 13, 5


def three_runs(fmt: str = "bf16") -> list[np.ndarray]:
    base = small_moves((S, V, D), fmt, seed=0)
    other = small_moves((S, V, D), fmt, seed=1)
    near = base.copy()
    near[:, 3:6] = other[:, 3:6]  # differs from the base run in three tokens only
    return [base, other, near]


def test_each_run_against_the_reference_matches_a_float64_loop(write_safetensors):
    xs = three_runs("bf16")
    steps = np.arange(S) * 10
    paths = [
        write_safetensors(f"r{i}.safetensors", {"embedding_history": x, "steps": steps}, "BF16")
        for i, x in enumerate(xs)
    ]
    runs = {f"r{i}": dp.open_history(p, chunks=3) for i, p in enumerate(paths)}
    ds = dp.divergence(runs, reference="r1", step_chunk=3)
    assert list(ds["pair"].values) == ["r0 vs r1", "r2 vs r1"]
    assert list(ds["run"].values) == ["r0", "r2"] and list(ds["reference"].values) == ["r1", "r1"]
    got = ds.compute()
    for i, pair in ((0, "r0 vs r1"), (2, "r2 vs r1")):
        check_values(
            got.sel(pair=pair), pair_oracle(xs[i], xs[1], "bf16"), "bf16", "differing_dims", "differing_tokens"
        )


def test_every_pair_and_the_default_reference():
    xs = [x.astype(np.float32) for x in three_runs("f32")]
    runs = [history_array(x, 3) for x in xs]
    ds = dp.divergence(runs, pairs="all", number_format=None, dtype="float64")
    assert list(ds["pair"].values) == ["run0 vs run1", "run0 vs run2", "run1 vs run2"]
    got = ds.compute()
    check_values(
        got.sel(pair="run1 vs run2"), pair_oracle(xs[1], xs[2], None), None, "differing_dims", "differing_tokens"
    )
    np.testing.assert_array_equal(got.differing_tokens.sel(pair="run0 vs run2").values, 3)  # the three swapped tokens
    default = dp.divergence(runs).compute()
    assert list(default["pair"].values) == ["run1 vs run0", "run2 vs run0"]


def test_runs_with_different_steps_are_aligned_and_the_dropped_steps_named():
    xs = [x.astype(np.float32) for x in three_runs("f32")]
    a = history_array(xs[0], 3, steps=np.arange(S) * 10)  # 0..60
    b = history_array(xs[1][2:], 2, steps=np.arange(2, S) * 10 + np.array([0, 0, 5, 0, 0]))  # 20, 30, 45, 50, 60
    with pytest.warns(
        UserWarning, match=r"aligned on the 4 steps.*run 'run0' loses 3 \(0, 10, 40\).*'run1' loses 1 \(45\)"
    ):
        ds = dp.divergence([a, b], step_chunk=2)
    np.testing.assert_array_equal(ds["step"].values, [20, 30, 50, 60])
    assert "run 'run1' loses 1 (45)" in ds.attrs["dropped_steps"]
    got = ds.compute().isel(pair=0)
    ia, ib = [2, 3, 5, 6], [0, 1, 3, 4]
    check_values(got, pair_oracle(xs[1][2:][ib], xs[0][ia], "f32"), "f32", "differing_dims", "differing_tokens")


def test_steps_in_another_order_are_matched_by_label():
    xs = [x.astype(np.float32) for x in three_runs("f32")]
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    a = history_array(xs[0], 3, steps=np.arange(S))
    b = history_array(xs[1][order], 3, steps=order)
    got = dp.divergence({"a": a, "b": b}, reference="a").compute()
    np.testing.assert_array_equal(got["step"].values, np.arange(S))
    check_values(got.isel(pair=0), pair_oracle(xs[1], xs[0], "f32"), "f32", "differing_dims", "differing_tokens")


def test_divergence_is_lazy(no_compute):
    runs = [history_array(x.astype(np.float32), 3) for x in three_runs("f32")]
    with no_compute():
        dp.divergence(runs, pairs="all")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda r: r[:1], ValueError, "at least two runs, got 1"),
        (lambda r: [r[0], r[1].isel(token=slice(0, 5))], InputError, "run 'run1' has 5 tokens x 5 dims"),
        (lambda r: [r[0], r[1].assign_coords(step=r[1].step + 1000)], InputError, "no step in common"),
        (lambda r: [r[0], r[1].assign_coords(step=np.zeros(S, int))], InputError, "run 'run1': its step labels repeat"),
        (lambda r: [r[0], r[1].assign_coords(token=r[1].token + 1)], InputError, "token labels differ"),
        (lambda r: [r[0], r[1].assign_attrs(input_dtype="BF16")], InputError, "different number formats"),
        (lambda r: r[0], TypeError, "several runs"),
    ],
)
def test_bad_runs(change, error, match):
    runs = [history_array(x.astype(np.float32), 3) for x in three_runs("f32")]
    with pytest.raises(error, match=match):
        dp.divergence(change(runs))


def test_bad_reference_and_pairs():
    runs = {n: history_array(x.astype(np.float32), 3) for n, x in zip("ab", three_runs("f32"), strict=False)}
    with pytest.raises(ValueError, match=r"reference='c': not a run; the runs are \['a', 'b'\]"):
        dp.divergence(runs, reference="c")
    with pytest.raises(ValueError, match="pairs='some': choose one of"):
        dp.divergence(runs, pairs="some")


def test_cli_divergence_writes_warns_and_info_describes(tmp_path, write_safetensors, capsys):
    xs = three_runs("bf16")
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed2").mkdir()
    a = write_safetensors("seed1/h.safetensors", {"embedding_history": xs[0]}, "BF16")
    b = write_safetensors("seed2/h.safetensors", {"embedding_history": xs[2][:5]}, "BF16")
    out = tmp_path / "d.zarr"
    assert main(["divergence", str(a), str(b), "-o", str(out), "--reference", "seed2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert (
        "dask-pdist: warning: runs aligned on the 5 steps" in captured.err and "'seed1' loses 2 (5, 6)" in captured.err
    )
    assert "seed1 vs seed2:" in captured.out
    back = xr.open_zarr(out)
    np.testing.assert_array_equal(
        back.sel(pair="seed1 vs seed2", step=4).chebyshev_ulp.values,
        pair_oracle(xs[0][4:5], xs[2][4:5], "bf16")["ulp"][0],
    )
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "dask_pdist divergence store" in info and "runs: seed1, seed2; reference: seed2" in info
    assert "dropped" in info
    assert main(["divergence", str(a), "-o", str(tmp_path / "e.zarr"), "--no-progress"]) == 2
    assert "dask-pdist: error: divergence needs two or more runs" in capsys.readouterr().err
    assert main(["divergence", str(a), str(b), "-o", str(out), "--reference", "x", "--overwrite"]) == 2
    assert "reference='x': not a run" in capsys.readouterr().err
