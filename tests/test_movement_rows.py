"""The one-pass movement kernel (kernels/movement_rows.py) and its graph (one task per output chunk
over unshifted input chunks): against the float64 loop of test_movement.py and the numpy block,
on shapes that are not powers of two, lags above and below the chunk, every output dtype, NaN
rows, and values not of the format in either operand's chunk."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_movement import check_against_oracle, small_moves

import dask_pdist as dp
from conftest import history_array
from dask_pdist.errors import InputError
from dask_pdist.graphs.movement import ROW_VARIABLES, movement_step_chunk
from dask_pdist.kernels.movement import MOVEMENT_RECORD, movement_block, movement_summary
from dask_pdist.kernels.movement_rows import movement_rows

S, V, D = 11, 37, 19


@pytest.mark.parametrize("fmt", ["bf16", "f32", None])
@pytest.mark.parametrize(("lag", "step_chunk"), [(1, 2), (3, 2), (3, 4), (7, 3), (10, 4), (4, 4), (2, 11)])
def test_movement_matches_the_loop_for_lags_above_and_below_the_chunk(fmt, lag, step_chunk):
    x = small_moves((S, V, D), fmt or "f32", seed=lag + step_chunk)
    # the input chunked otherwise than the output: movement rechunks it to step_chunk
    ds = dp.movement(history_array(x.astype(np.float32), 5), lag=lag, number_format=fmt, step_chunk=step_chunk)
    assert ds.euclidean.chunks[0][0] == min(step_chunk, S - lag)
    check_against_oracle(ds, x, lag, fmt)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_every_output_dtype_is_one_rounding_of_the_float64_result(dtype):
    x = small_moves((S, V, 67), "bf16", seed=2)
    ds = dp.movement(history_array(x.astype(np.float32), 3), lag=2, number_format="bf16", dtype=dtype, step_chunk=3)
    assert ds.euclidean.dtype == dtype and ds.euclidean_max.dtype == dtype and ds.euclidean_mean.dtype == np.float64
    assert ds.changed_dims.dtype == np.uint8 and ds.chebyshev_ulp.dtype == np.uint16
    assert ds.moved_tokens.dtype == np.int64
    check_against_oracle(ds, x, 2, "bf16")


@pytest.mark.parametrize("fmt", ["bf16", "f32", None])
def test_kernel_equals_the_numpy_block_with_nan_and_signed_zeros(fmt):
    rng = np.random.default_rng(7)
    x = small_moves((5, 23, 13), fmt or "f32", seed=4).astype(np.float32)
    x[2, 3, 4] = np.nan
    x[3, 5, :] = np.nan
    x[1, 6, 0], x[2, 6, 0] = 0.0, -0.0
    x[4, 7] = x[3, 7] * np.float32(rng.choice([-1, 1]))
    cur, prev = x[1:], x[:-1]
    names = ROW_VARIABLES
    dtypes = ["f8", "f8", "f8", "u4" if fmt == "f32" else "u2", "u1"]
    outs = {n: np.empty(cur.shape[:2], t) for n, t in zip(names, dtypes, strict=True)}
    summ = np.empty((cur.shape[0], 8))
    assert movement_rows(cur, prev, fmt, outs, summ) is None
    rec = movement_block(cur, prev, fmt)
    for name in names:
        np.testing.assert_allclose(outs[name], rec[name].astype(outs[name].dtype), rtol=1e-15, err_msg=name)
    np.testing.assert_allclose(summ, movement_summary(rec), rtol=1e-13)
    assert np.isnan(summ[1:3, [0, 1, 2, 3, 4, 5]]).all() and not np.isnan(summ[0]).any()


def test_record_fields_are_the_row_variables():
    assert MOVEMENT_RECORD.names == ROW_VARIABLES  # the numpy path fills the same outputs


@pytest.mark.parametrize("where", [(6, 4, 2), (7, 0, 18), (1, 36, 0)])
@pytest.mark.parametrize("lag", [1, 3])
def test_a_value_not_of_the_format_is_found_in_either_operand(where, lag):
    x = small_moves((S, V, D), "bf16", seed=1).astype(np.float32)
    x[where] = np.float32(1.1)
    steps = np.arange(S) * 10
    ds = dp.movement(history_array(x, 2), lag=lag, number_format="bf16", step_chunk=2)
    with pytest.raises(InputError, match=rf"step {steps[where[0]]}, token position {where[1]}, dim {where[2]}:"):
        ds.compute()


def test_nan_payloads_are_not_foreign_values():
    x = np.ones((4, 3, 5), dtype=np.float32)
    x[2, 1].view(np.uint32)[3] = 0x7FC0_1234  # a NaN whose low bits are set
    got = dp.movement(history_array(x, 2), lag=1, number_format="bf16").compute()
    assert int(got.chebyshev_ulp.sel(step=20, token=1)) == np.iinfo(np.uint16).max
    assert np.isnan(got.chebyshev.sel(step=30, token=1)) and int(got.changed_dims.sel(step=20, token=1)) == 1


def test_one_task_per_output_chunk_reads_each_input_chunk_once():
    x = small_moves((S, V, D), "bf16").astype(np.float32)
    ds = dp.movement(history_array(x, 4), lag=1, step_chunk=4)
    graph = dict(ds.__dask_graph__())
    kernel_tasks = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("movement-")]
    assert len(kernel_tasks) == len(ds.euclidean.chunks[0]) == 3
    xr.testing.assert_identical(ds.compute(), dp.movement(history_array(x, 4), lag=1, step_chunk=4).compute())
    assert movement_step_chunk(10_000, 64) >= 6


def _widened(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _kernel(cur, prev, fmt, dtype, **kwargs):
    dtypes = [dtype] * 3 + ["u4" if fmt == "f32" else "u2", "u1"]
    outs = {n: np.empty(cur.shape[:2], t) for n, t in zip(ROW_VARIABLES, dtypes, strict=True)}
    summ = np.empty((cur.shape[0], 8))
    return movement_rows(cur, prev, fmt, outs, summ, **kwargs), outs, summ


@pytest.mark.parametrize("fmt", ["bf16", "f32", None])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_kernel_on_bf16_bit_patterns_equals_it_on_the_widened_values(fmt, dtype):
    # every bf16 pattern class: signed zeros, subnormals, the largest finite values, NaN payloads
    # (no check: propagated as on the float32 path), infinities, and random patterns
    rng = np.random.default_rng(12)
    edges = np.array(
        [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0x3F81], np.uint16
    )
    bits = rng.integers(0, 2**16, size=(6, 41, 67), dtype=np.uint16)
    bits[:, :20] = rng.choice(edges, size=(6, 20, 67))
    bits[2, 3, 4], bits[3, 5, :], bits[1, 7, 2], bits[4, 8, 1] = 0x7FC0, 0xFFC1, 0x7F80, 0xFF80
    got = _kernel(bits[1:], bits[:-1], fmt, dtype)
    ref = _kernel(_widened(bits[1:]), _widened(bits[:-1]), fmt, dtype)
    assert got[0] is None and ref[0] is None
    for name in ROW_VARIABLES:  # equal values (NaN where NaN), and equal bits wherever not NaN
        np.testing.assert_array_equal(got[1][name], ref[1][name], err_msg=name)
        both = ~np.isnan(ref[1][name].astype("f8"))
        np.testing.assert_array_equal(got[1][name][both].view("u1"), ref[1][name][both].view("u1"), err_msg=name)
    np.testing.assert_array_equal(got[2], ref[2])


@pytest.mark.parametrize(("where", "pattern"), [((0, 0, 0), 0x7FC0), ((2, 40, 66), 0xFF80), ((4, 17, 9), 0x7F80)])
def test_kernel_on_bit_patterns_finds_the_first_row_with_a_nan_or_infinity(where, pattern):
    bits = np.full((5, 41, 67), 0x3F80, np.uint16)  # all 1.0
    bits[where] = pattern
    s, t, _ = where
    # step s is compared as the later snapshot of pair s - 1 and the earlier one of pair s
    found, _, _ = _kernel(bits[1:], bits[:-1], "bf16", "f4", check_finite=True)
    assert found == (max(s - 1, 0), t)
    assert _kernel(bits[1:], bits[:-1], "bf16", "f4")[0] is None  # no check: propagated
