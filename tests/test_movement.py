"""Movement (``dp.movement``, ``dask-pdist movement``) against a float64 numpy loop, on shapes that
are not powers of two, with lags that cross chunk boundaries; bf16/f16/f32 inputs for the
distance in representable steps; the store, the CLI and the failure modes."""

from __future__ import annotations

import json
import os
import re
import socket

import ml_dtypes
import numpy as np
import pytest
import xarray as xr

import dask_pdist as dp
from conftest import history_array
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError, StoreError

S, V, D = 7, 13, 5


def format_line(fmt: str) -> np.ndarray:
    """Every non-NaN value of the format, sorted, +0 and -0 as one: a value's index here is its
    place on the line of representable values (an oracle independent of bit tricks)."""
    if fmt == "f32":
        raise ValueError("too many values; f32 places come from _f32_place")
    bits = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16 if fmt == "bf16" else np.float16)
    with np.errstate(invalid="ignore"):  # the NaN patterns
        values = bits.astype(np.float64)
    return np.unique(values[~np.isnan(values)])  # -0.0 == 0.0: np.unique keeps one


def _f32_place(v: float) -> int:
    # signed count of float32 values strictly between 0 and |v| plus one, by binade arithmetic in
    # float64 (exact): 2**23 values per binade, subnormals spaced 2**-149
    m = abs(v)
    if m < 2.0**-126:
        n = int(m / 2.0**-149)
    else:
        e = int(np.floor(np.log2(m)))
        n = 2**23 * (e + 127) + int((m - 2.0**e) / 2.0 ** (e - 23))
    return -n if v < 0 else n


def ulp_oracle(a: float, b: float, fmt: str, line: np.ndarray | None) -> int:
    if fmt == "f32":
        return abs(_f32_place(a) - _f32_place(b))
    return abs(int(np.searchsorted(line, a)) - int(np.searchsorted(line, b)))


def pair_oracle(cur: np.ndarray, prev: np.ndarray, fmt: str | None) -> dict[str, np.ndarray]:
    """float64 loop over steps, tokens and dims: cur[s, t] against prev[s, t]."""
    cur, prev = np.asarray(cur, dtype=np.float64), np.asarray(prev, dtype=np.float64)
    line = format_line(fmt) if fmt in ("bf16", "f16") else None
    out = {k: np.zeros(cur.shape[:2]) for k in ("euclidean", "chebyshev", "manhattan", "ulp", "changed")}
    for s in range(cur.shape[0]):
        for t in range(cur.shape[1]):
            e = c = m = 0.0
            u = changed = 0
            for d in range(cur.shape[2]):
                a, b = cur[s, t, d], prev[s, t, d]
                diff = abs(a - b)
                e += diff * diff
                c = max(c, diff)
                m += diff
                changed += a != b
                if fmt is not None:
                    u = max(u, ulp_oracle(a, b, fmt, line))
            out["euclidean"][s, t] = np.sqrt(e)
            out["chebyshev"][s, t], out["manhattan"][s, t] = c, m
            out["ulp"][s, t], out["changed"][s, t] = u, changed
    return out


def movement_oracle(x: np.ndarray, lag: int, fmt: str | None) -> dict[str, np.ndarray]:
    return pair_oracle(x[lag:], x[: len(x) - lag], fmt)


def small_moves(shape, fmt: str, seed: int = 0) -> np.ndarray:
    """A history whose values move by a few representable steps, some not at all, some through
    zero (+0 -> -0 included), in the given format (as float64 values)."""
    rng = np.random.default_rng(seed)
    dtype = {"bf16": ml_dtypes.bfloat16, "f16": np.float16, "f32": np.float32}[fmt]
    x = np.empty(shape, dtype=dtype)
    x[0] = rng.standard_normal(shape[1:]).astype(dtype)
    for s in range(1, shape[0]):
        x[s] = x[s - 1]
        hops = rng.integers(-3, 4, size=shape[1:])
        for _ in range(3):  # a few hops of one representable value, per coordinate
            up = np.nextafter(x[s].astype(np.float32), np.float32(np.inf)).astype(dtype)
            down = np.nextafter(x[s].astype(np.float32), -np.float32(np.inf)).astype(dtype)
            if fmt != "f32":  # nextafter in float32 does not step a bf16/f16 value: go by the bits
                raw = x[s].view(np.uint16).astype(np.int32)
                sign = raw & 0x8000
                mag = raw & 0x7FFF
                up_raw = np.where(sign == 0, mag + 1, np.where(mag == 0, 1, raw - 1))
                down_raw = np.where(sign == 0, np.where(mag == 0, 0x8001, raw - 1), raw + 1)
                up = up_raw.astype(np.uint16).view(dtype)
                down = down_raw.astype(np.uint16).view(dtype)
            x[s] = np.where(hops > 0, up, np.where(hops < 0, down, x[s]))
            hops = hops - np.sign(hops)
        x[s, 0] = x[s - 1, 0]  # token 0 never moves
    x[2:, 1, 0] = 0.0
    x[3, 1, 0] = -0.0  # +0 -> -0 -> +0: not a move
    x[4, 2, :] = -x[3, 2, :]  # through zero: many representable values apart
    return x.astype(np.float64)


def check_against_oracle(ds: xr.Dataset, x: np.ndarray, lag: int, fmt: str | None) -> None:
    got = ds.compute()
    assert got.sizes == {"step": x.shape[0] - lag, "token": x.shape[1]}
    check_values(got, movement_oracle(x, lag, fmt), fmt, "changed_dims", "moved_tokens")


def check_values(got: xr.Dataset, ref: dict[str, np.ndarray], fmt: str | None, changed: str, tokens: str) -> None:
    """Every variable of a movement or divergence Dataset (one pair) against the loop's values."""
    for name in ("euclidean", "chebyshev", "manhattan"):
        expect = ref[name].astype(got[name].dtype)
        # one rounding from float64: within one unit of the stored dtype; Chebyshev exactly
        if name == "chebyshev":
            np.testing.assert_array_equal(got[name].values, expect)
        else:
            np.testing.assert_allclose(got[name].values, ref[name], rtol=float(np.finfo(got[name].dtype).eps), atol=0)
        np.testing.assert_array_equal(got[f"{name}_max"].values, got[name].values.max(axis=1))
        np.testing.assert_allclose(
            got[f"{name}_max"].values, expect.max(axis=1), rtol=float(np.finfo(expect.dtype).eps)
        )
        np.testing.assert_allclose(got[f"{name}_mean"].values, ref[name].mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(got[changed].values, ref["changed"])
    np.testing.assert_array_equal(got[tokens].values, (ref["changed"] > 0).sum(axis=1))
    if fmt is None:
        assert "chebyshev_ulp" not in got
    else:
        np.testing.assert_array_equal(got["chebyshev_ulp"].values, ref["ulp"])
        np.testing.assert_array_equal(got["chebyshev_ulp_max"].values, ref["ulp"].max(axis=1))


@pytest.mark.parametrize("kind", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("lag", [1, 2])
def test_movement_matches_a_float64_loop_across_chunk_boundaries(write_safetensors, kind, lag):
    fmt = {"BF16": "bf16", "F16": "f16", "F32": "f32"}[kind]
    x = small_moves((S, V, D), fmt, seed=lag)
    steps = np.arange(S, dtype=np.int64) * 100 + 5
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": steps}, kind)
    history = dp.open_history(path, chunks=3)
    ds = dp.movement(history, lag=lag, step_chunk=3)
    assert ds.euclidean.chunks[0][0] == 3  # a lag-crossing chunk boundary at every third step
    np.testing.assert_array_equal(ds["step"].values, steps[lag:])
    np.testing.assert_array_equal(ds["previous_step"].values, steps[:-lag])
    assert ds.attrs["number_format"] == fmt and ds.attrs["input_dtype"] == kind
    check_against_oracle(ds, x, lag, fmt)
    assert ds["chebyshev_ulp"].dtype == (np.uint32 if fmt == "f32" else np.uint16)
    assert int(ds.chebyshev_ulp.isel(token=0).max()) == 0  # token 0 never moves
    assert int(ds.chebyshev_ulp.values.max()) > 100  # the move through zero


@pytest.mark.parametrize("step_chunk", [1, 2, 4, "auto"])
def test_chunking_does_not_change_the_result(step_chunk):
    x = small_moves((S, V, D), "f32", seed=3).astype(np.float32)
    ref = dp.movement(history_array(x, S), lag=2).compute()
    got = dp.movement(history_array(x, 2), lag=2, step_chunk=step_chunk).compute()
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())


def test_float64_output_and_float64_input(write_safetensors):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((S, V, D))
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "F64")
    ds = dp.movement(dp.open_history(path, chunks=3), lag=2, dtype="float64")
    assert ds.attrs["number_format"] == "none"
    ref = movement_oracle(x, 2, None)
    got = ds.compute()
    assert "chebyshev_ulp" not in got and "chebyshev_ulp_max" not in got
    for name in ("euclidean", "chebyshev", "manhattan"):
        np.testing.assert_allclose(got[name].values, ref[name], rtol=1e-15)


def test_movement_is_lazy(no_compute):
    x = small_moves((S, V, D), "bf16").astype(np.float32)
    with no_compute():
        ds = dp.movement(history_array(x, 3), lag=1)
    assert ds.euclidean.chunks is not None


def test_value_not_of_the_format_names_its_step():
    x = np.full((S, V, D), 1.0, dtype=np.float32)
    x[5, 3, 1] = 1.1  # not a bfloat16 value
    ds = dp.movement(history_array(x, 3), lag=1, number_format="bf16")
    with pytest.raises(InputError, match=r"step 50, token position 3, dim 1: .*not a bfloat16 value"):
        ds.compute()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lag": 0}, ValueError, "lag=0: give a positive number"),
        ({"lag": S}, InputError, f"lag={S}, but the history has {S} steps"),
        ({"number_format": "bf8"}, ValueError, r"number_format='bf8': choose one of"),
        ({"dtype": "int8"}, ValueError, "dtype='int8': choose one of"),
        ({"step_chunk": 0}, ValueError, "step_chunk=0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        dp.movement(history_array(np.zeros((S, V, D), np.float32), 3), **kwargs)


def test_not_a_history():
    with pytest.raises(TypeError, match="history must be an xarray.DataArray"):
        dp.movement(np.zeros((S, V, D)))
    with pytest.raises(ValueError, match=r"dims \('a', 'b', 'c'\)"):
        dp.movement(xr.DataArray(np.zeros((S, V, D)), dims=("a", "b", "c")))


def test_store_opens_with_xarray_and_slices_by_step(tmp_path, write_safetensors):
    x = small_moves((S, V, D), "bf16")
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = dp.movement(dp.open_history(path, chunks=3), lag=2, step_chunk=3)
    out = tmp_path / "m.zarr"
    assert dp.write_comparison(ds, out) == str(out)
    back = xr.open_zarr(out)
    ref = movement_oracle(x, 2, "bf16")
    np.testing.assert_array_equal(back.chebyshev_ulp.sel(step=4).values, ref["ulp"][2])
    np.testing.assert_array_equal(back.chebyshev.sel(step=slice(3, 5)).values, ref["chebyshev"][1:4].astype(np.float32))
    assert back.attrs["dask_pdist_kind"] == "movement" and back.attrs["lag"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors", "m.zarr"]  # no lock, no hidden build
    xr.testing.assert_identical(dp.open_comparison(out).load(), back.load())
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        dp.write_comparison(ds, out)
    dp.write_comparison(ds, out, overwrite=True)


def test_a_store_chunk_holds_several_tasks_written_by_one_task(tmp_path, write_safetensors, monkeypatch):
    import functools

    import dask_pdist.analyses.movement_store as movement_store
    from dask_pdist.planning import plan_store_steps

    x = small_moves((S + 10, V, D), "bf16", seed=9)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = dp.movement(dp.open_history(path, chunks=4), lag=1, step_chunk=2)
    # a budget of 3 tasks of 2 steps per store chunk (the default holds every step of so small a store)
    budget = 3 * 2 * V * 4
    monkeypatch.setattr(movement_store, "plan_store_steps", functools.partial(plan_store_steps, budget=budget))
    job = dp.write_comparison(ds, tmp_path / "m.zarr", compute=False)
    graph = dict(job.__dask_graph__())
    writes = [k for k in graph if re.fullmatch(r"write-chunks-[0-9a-f]+-\d+", str(k))]
    assert len(writes) == 3  # 16 steps in store chunks of 6: 6, 6, 4, each written by one task
    job.compute()
    back = xr.open_zarr(tmp_path / "m.zarr")
    assert back.euclidean.encoding["chunks"] == (6, V) and back.moved_tokens.encoding["chunks"] == (6,)
    ref = movement_oracle(x, 1, "bf16")
    np.testing.assert_array_equal(back.chebyshev_ulp.values, ref["ulp"])
    np.testing.assert_array_equal(back.changed_dims.values, ref["changed"])
    np.testing.assert_array_equal(back.euclidean.values, ref["euclidean"].astype(np.float32))
    np.testing.assert_array_equal(back.moved_tokens.values, (ref["changed"] > 0).sum(axis=1))
    back.attrs.pop("dask_pdist_store_id")
    xr.testing.assert_identical(back.load().drop_encoding(), ds.compute())


def _peak_alive(graph: dict, prefix: str) -> int:
    # the most results of keys named prefix... held at once when the graph runs in dask's
    # static order (a result is released when its last dependent has run)
    from dask.core import get_dependencies
    from dask.order import order

    deps = {k: get_dependencies(graph, k) for k in graph}
    waiting = {k: 0 for k in graph}
    for ds in deps.values():
        for d in ds:
            waiting[d] += 1
    alive, peak = set(), 0
    for key, _ in sorted(order(graph).items(), key=lambda kv: kv[1]):
        for d in deps[key]:
            waiting[d] -= 1
            if waiting[d] == 0:
                alive.discard(d)
        if waiting[key]:
            alive.add(key)
        peak = max(peak, sum(1 for k in alive if isinstance(k, tuple) and str(k[0]).startswith(prefix)))
    return peak


def test_writing_a_store_holds_a_few_input_chunks_whatever_the_steps(tmp_path, write_safetensors, monkeypatch):
    # measured before: dask's order ran every kernel task before the writes of 12 of the 13
    # variables (peak memory growing with the steps); then store chunks visited out of step
    # order kept the input chunk two of them share
    import functools

    import dask_pdist.analyses.movement_store as movement_store
    from dask_pdist.planning import plan_store_steps

    budget = 3 * 2 * V * 4  # store chunks of 3 tasks of 2 steps
    monkeypatch.setattr(movement_store, "plan_store_steps", functools.partial(plan_store_steps, budget=budget))
    peaks = []
    for n_steps in (40, 160):
        x = np.ones((n_steps, V, D), dtype=np.float32)
        path = write_safetensors(f"h{n_steps}.safetensors", {"embedding_history": x}, "BF16")
        ds = dp.movement(dp.open_history(path), step_chunk=2)
        job = dp.write_comparison(ds, tmp_path / f"m{n_steps}.zarr", compute=False)
        graph = dict(job.__dask_graph__())
        peaks.append((_peak_alive(graph, "history-"), _peak_alive(graph, "movement-")))
        job.compute()
    assert peaks[0] == peaks[1]  # flat in the number of steps
    assert peaks[0][0] <= 6 and peaks[0][1] <= 3  # about one store chunk's input and kernel results


def test_writer_refuses_a_foreign_target_and_a_held_lock(tmp_path):
    ds = dp.movement(history_array(np.zeros((S, V, D), np.float32), 3))
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError, match="other: exists and is not a movement store"):
        dp.write_comparison(ds, tmp_path / "other")
    # a live writer elsewhere on this host (pid 1 always runs)
    lock = tmp_path / ".m.zarr.lock"
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": "now", "token": "x"}))
    with pytest.raises(StoreError, match="being written by pid 1"):
        dp.write_comparison(ds, tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists()


def test_failed_write_leaves_nothing(tmp_path, write_safetensors):
    x = small_moves((S, V, D), "f32")
    x[4, 2, 1] = np.nan
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "F32")
    ds = dp.movement(dp.open_history(path, chunks=3))
    with pytest.raises(InputError, match="nan at step index 4, token 2"):
        dp.write_comparison(ds, tmp_path / "m.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]


def test_nan_propagates_when_asked(write_safetensors):
    x = small_moves((S, V, D), "f32")
    x[4, 2, 1] = np.nan
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "F32")
    got = dp.movement(dp.open_history(path, chunks=3, nonfinite="propagate")).compute()
    assert np.isnan(got.euclidean.sel(step=4, token=2)) and np.isnan(got.chebyshev.sel(step=5, token=2))
    assert int(got.chebyshev_ulp.sel(step=4, token=2)) == np.iinfo(np.uint32).max
    assert np.isnan(got.chebyshev_max.sel(step=4)) and not np.isnan(got.chebyshev_max.sel(step=3))


def test_cli_movement_writes_prints_and_info_describes(tmp_path, write_safetensors, capsys):
    x = small_moves((S, V, D), "bf16")
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    out = tmp_path / "m.zarr"
    assert main(["movement", str(path), "-o", str(out), "--lag", "2", "--chunk-steps", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Movement between steps 2 apart (5 steps; the first 2 dropped)" in printed
    back = xr.open_zarr(out)
    np.testing.assert_array_equal(back.chebyshev_ulp.values, movement_oracle(x, 2, "bf16")["ulp"])
    assert back.euclidean.encoding["chunks"] == (5, V)  # whole tasks of 2 steps up to 4 MiB: every step
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "dask_pdist movement store" in info and "lag: 2" in info and "steps: 5 (2..6)" in info
    assert main(["summary", str(out)]) == 0  # the same per-step table as the run printed
    assert "Movement between steps 2 apart (5 steps; the first 2 dropped)" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    capsys.readouterr()
    assert main(["movement", str(path), "-o", str(out), "--no-progress"]) == 2
    assert "dask-pdist: error:" in capsys.readouterr().err
    assert main(["movement", str(path), "-o", str(out), "--overwrite", "--no-progress", "--dtype", "float64"]) == 0
    assert xr.open_zarr(out).euclidean.dtype == np.float64


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--lag", "9"], "lag=9, but the history has 7 steps"),
        (["--lag", "0"], "0 must be at least 1"),
        (["--number-format", "int8"], "'int8': choose auto, bf16, f16, f32 or none"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, write_safetensors, capsys, args, match):
    path = write_safetensors("h.safetensors", {"embedding_history": np.zeros((S, V, D))}, "BF16")
    try:
        code = main(["movement", str(path), "-o", str(tmp_path / "m.zarr"), "--no-progress", *args])
    except SystemExit as stop:  # argparse's own check of an option
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dask-pdist") and " error: " in err[0] and match in err[0], err
    assert not os.path.exists(tmp_path / "m.zarr")


def _one_nonfinite(value: float) -> np.ndarray:
    x = small_moves((S, V, D), "bf16", seed=6)
    x[4, 2, 1] = value
    return x


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_bf16_file_is_read_as_bit_patterns_and_a_nonfinite_value_is_refused_as_the_reader_does(
    write_safetensors, value
):
    x = _one_nonfinite(value)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = dp.movement(dp.open_history(path, chunks=3), step_chunk=2)
    assert any(name.startswith("history-bits-") for name in ds.__dask_graph__().layers)  # no float32 copy
    with pytest.raises(InputError) as kernel_error:
        ds.compute()
    with pytest.raises(InputError) as reader_error:
        dp.open_history(path, chunks=3).compute()
    assert str(kernel_error.value) == str(reader_error.value)
    assert f"holds {value} at step index 4, token 2" in str(kernel_error.value)
    # propagated: what the float32 path gives for the same values
    got = dp.movement(dp.open_history(path, chunks=3, nonfinite="propagate"), step_chunk=2).compute()
    widened = history_array(x.astype(np.float32), 3, steps=np.arange(S))
    ref = dp.movement(widened, step_chunk=2, number_format="bf16").compute()
    assert np.isnan(got.chebyshev.sel(step=4, token=2)) == np.isnan(value)
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())


def test_per_checkpoint_bf16_files_name_the_file_holding_the_nonfinite_value(write_safetensors):
    x = _one_nonfinite(np.nan)
    paths = [write_safetensors(f"step-{10 * s + 5}.safetensors", {"wte": x[s]}, "BF16") for s in range(S)]
    ds = dp.movement(dp.open_history([str(p) for p in paths]), step_chunk=3)
    assert any(name.startswith("history-bits-") for name in ds.__dask_graph__().layers)
    with pytest.raises(InputError, match=rf"{paths[4]}: history holds nan at step 45 \(index 4\), token 2;"):
        ds.compute()


def test_a_token_subset_of_a_bf16_file_takes_the_float32_path(write_safetensors):
    x = small_moves((S, V, D), "bf16", seed=8)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, "BF16")
    ds = dp.movement(dp.open_history(path, chunks=3, token_ids=[1, 4, 6]), step_chunk=2)
    assert not any(name.startswith("history-bits-") for name in ds.__dask_graph__().layers)
    check_against_oracle(ds, x[:, [1, 4, 6]], 1, "bf16")


@pytest.mark.parametrize("kind", ["F32", "BF16", "zarr"])  # the reader's check, the kernel's (bf16 bits), zarr's
def test_a_nonfinite_value_is_named_by_its_step_label(tmp_path, write_safetensors, capsys, kind):
    x = _one_nonfinite(np.inf)  # step index 4, token 2
    labels = np.arange(S, dtype=np.int64) * 100 + 7
    if kind == "zarr":
        import zarr

        path = tmp_path / "h.zarr"
        group = zarr.open_group(str(path), mode="w")
        group.create_array("embedding_history", data=x.astype(np.float32))
        group.create_array("step", data=labels)
    else:
        path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": labels}, kind)
    assert main(["movement", str(path), "-o", str(tmp_path / "m.zarr"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: history holds inf at step 407 (index 4), token 2; fix the input" in err, err
    # labels given by steps=: those are named
    ds = dp.movement(dp.open_history(path, chunks=3, steps="1000:1700:100"), step_chunk=2)
    with pytest.raises(InputError, match=r"holds inf at step 1400 \(index 4\), token 2;"):
        ds.compute()


@pytest.mark.parametrize("fmt", ["f32", "bf16"])
def test_an_infinity_propagates_as_the_help_says(tmp_path, write_safetensors, capsys, fmt):
    # --nonfinite propagate: an infinity gives infinite distances (as numpy's float64 arithmetic
    # does), NaN where a dim holds the same infinity at both steps compared; a NaN gives NaN
    x = small_moves((S, V, D), fmt, seed=4)
    x[4, 2, 1] = np.inf
    x[5, 6, 0] = x[6, 6, 0] = -np.inf
    x[3, 8, 2] = np.nan
    path = write_safetensors("h.safetensors", {"embedding_history": x}, fmt.upper())
    out = tmp_path / "m.zarr"
    assert main(["movement", str(path), "-o", str(out), "--nonfinite", "propagate", "--no-progress"]) == 0
    got = dp.open_comparison(out)
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(x64[1:] - x64[:-1])
        expected = {"euclidean": np.sqrt((diff**2).sum(axis=2)), "manhattan": diff.sum(axis=2)}
    for name, want in expected.items():  # steps 1.., tokens: float64, compared in their stored float32
        np.testing.assert_allclose(got[name].values, want.astype(np.float32), rtol=1e-6, equal_nan=True)
    assert np.isinf(got.euclidean.sel(step=4, token=2)) and np.isinf(got.chebyshev.sel(step=5, token=2))
    assert np.isinf(got.euclidean.sel(step=5, token=6)) and np.isnan(got.euclidean.sel(step=6, token=6))
    assert np.isnan(got.euclidean.sel(step=3, token=8)) and np.isnan(got.euclidean.sel(step=4, token=8))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["movement", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a NaN gives NaN distances, an infinity infinite ones (NaN where it meets the same infinity)" in text
