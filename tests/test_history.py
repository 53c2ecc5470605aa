"""open_history: lazy, validated readers for safetensors, .npy and zarr."""

from __future__ import annotations

import json
import pickle
import struct

import dask
import ml_dtypes
import numpy as np
import pytest
import zarr

from conftest import random_history
from dask_pdist import InputError, open_history


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
def test_safetensors_dtypes_widen_exactly(write_safetensors, dtype):
    x = random_history((13, 9, 5), scale=0.1)
    path = write_safetensors("h.safetensors", {"embedding_history": x}, dtype)
    h = open_history(path, chunks=4)
    want = {
        "BF16": x.astype(ml_dtypes.bfloat16).astype(np.float32),
        "F16": x.astype(np.float16).astype(np.float32),
        "F32": x,
        "F64": x.astype(np.float64),
    }[dtype]
    assert h.dims == ("step", "token", "dim") and h.dtype == want.dtype
    assert h.chunks == ((4, 4, 4, 1), (9,), (5,))
    np.testing.assert_array_equal(h.values, want)
    np.testing.assert_array_equal(h["step"].values, np.arange(13))
    assert h.attrs["input_dtype"] == dtype and h.attrs["key"] == "embedding_history"


def test_steps_tensor_becomes_the_step_coordinate(write_safetensors):
    x = random_history((6, 4, 3))
    steps = np.array([0, 10, 20, 30, 40, 50], dtype=np.int64)
    path = write_safetensors("h.safetensors", {"hist": x, "steps": steps})
    h = open_history(path)
    np.testing.assert_array_equal(h["step"].values, steps)
    np.testing.assert_array_equal(h.sel(step=30).values, x[3])


def test_default_key_is_the_only_3d_tensor_and_key_selects(write_safetensors):
    x = random_history((5, 4, 3))
    path = write_safetensors("h.safetensors", {"a": x, "b": x[0], "c": x * 2})
    with pytest.raises(InputError, match=r"2 tensors are 3-D.*a \[5, 4, 3\].*--key"):
        open_history(path)
    np.testing.assert_array_equal(open_history(path, key="c").values, x * 2)


def test_reading_is_lazy_and_the_graph_pickles(write_safetensors, no_compute):
    x = random_history((20, 6, 4))
    path = write_safetensors("h.safetensors", {"h": x})
    with no_compute():
        h = open_history(path, chunks=3)
        graph = dict(h.data.__dask_graph__())
    pickle.loads(pickle.dumps(graph))  # no open handle or mmap in the graph
    np.testing.assert_array_equal(h.isel(step=slice(5, 9)).values, x[5:9])


def test_npy_and_zarr_inputs(tmp_path):
    x = random_history((11, 7, 5))
    np.save(tmp_path / "h.npy", x)
    np.testing.assert_array_equal(open_history(tmp_path / "h.npy", chunks=4).values, x)
    g = zarr.open_group(tmp_path / "h.zarr", mode="w", zarr_format=3)
    g.create_array("emb", data=x.astype(np.float16), chunks=(5, 7, 5))
    g.create_array("step", data=np.arange(100, 111))
    g.create_array("other", data=x[0])
    h = open_history(tmp_path / "h.zarr", key="emb")
    np.testing.assert_array_equal(h.values, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(h["step"].values, np.arange(100, 111))
    with pytest.raises(InputError, match=r"no array 'nope'.*emb \[11, 7, 5\]"):
        open_history(tmp_path / "h.zarr", key="nope")


def test_token_labels_from_file(write_safetensors, tmp_path):
    path = write_safetensors("h.safetensors", {"h": random_history((3, 4, 2))})
    (tmp_path / "tok.txt").write_text("the\nof\nand\n<eos>\n")
    h = open_history(path, tokens=tmp_path / "tok.txt")
    assert list(h["token"].values) == ["the", "of", "and", "<eos>"]
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match=r"short.txt: 2 token labels.*4 tokens"):
        open_history(path, tokens=tmp_path / "short.txt")


def test_nonfinite_raise_names_step_and_token(write_safetensors):
    x = random_history((10, 5, 3))
    x[7, 2, 1] = np.inf
    path = write_safetensors("h.safetensors", {"h": x})
    h = open_history(path, chunks=3)
    with pytest.raises(InputError, match=r"inf at step index 7, token 2.*propagate"):
        _ = h.values
    assert np.isinf(open_history(path, nonfinite="propagate").values[7, 2, 1])


def test_finite_values_whose_sum_overflows_are_not_taken_for_infinities(write_safetensors):
    # the reader proves a block finite by its sum; a sum that overflows (or cancels to NaN:
    # +max and -max) must fall back to looking at each value, not raise
    big = np.finfo(np.float32).max
    x = np.full((3, 4, 5), big, dtype=np.float32)
    x[1] = -big
    path = write_safetensors("h.safetensors", {"h": x})
    np.testing.assert_array_equal(open_history(path, chunks=1).values, x)
    np.testing.assert_array_equal(open_history(path, chunks=3).values, x)
    x[2, 3, 4] = np.nan
    path = write_safetensors("n.safetensors", {"h": x})
    with pytest.raises(InputError, match=r"nan at step index 2, token 3"):
        _ = open_history(path, chunks=3).values


# --- bad files, built byte by byte -------------------------------------------------------


def _raw(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


GOOD = {"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [0, 32]}}


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x01\x02\x03", r"3 bytes, shorter than the 8-byte header length"),
        (_raw(GOOD, bytes(32), length=10_000), r"header length 10000 runs past the end"),
        (_raw(GOOD, bytes(32), length=200_000_000), r"exceeds the safetensors limit"),
        (_raw(b"{not json}  "), r"header is not valid JSON"),
        (_raw(b"\xff\xfe{}"), r"header is not UTF-8"),
        (_raw(b"[1, 2]"), r"header is a JSON list, expected an object"),
        (
            _raw(
                b'{"h": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "h": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                bytes(4),
            ),
            r"lists key 'h' twice",
        ),
        (
            _raw({"h": {"dtype": "F8_E4M3", "shape": [2, 2, 2], "data_offsets": [0, 8]}}, bytes(8)),
            r"dtype 'F8_E4M3'.*supported: BF16, F16, F32, F64",
        ),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [0, 30]}}, bytes(30)),
            r"needs 32 bytes, but data_offsets \[0, 30\] span 30",
        ),
        (_raw(GOOD, bytes(20)), r"need 32 data bytes but the file holds 20"),
        (_raw(GOOD, bytes(40)), r"8 trailing bytes"),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [4, 36]}}, bytes(36)),
            r"leaves a gap of 4 bytes",
        ),
        (_raw({"__metadata__": {"a": 1}, **GOOD}, bytes(32)), r"__metadata__ must map strings to strings"),
        (
            _raw({**GOOD, "g": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}, bytes(32)),
            r"tensor '(g|h)' at data offset 16 overlaps the previous tensor",
        ),
        (
            _raw({**GOOD, "g": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, bytes(32)),
            r"at data offset 0 overlaps the previous tensor",
        ),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [1000, 1032]}}, bytes(32)),
            r"'h' at data offset 1000 leaves a gap of 1000 bytes",
        ),
        (
            _raw({**GOOD, "g": {"dtype": "F32", "shape": [2], "data_offsets": [32, 40]}}, bytes(32)),
            r"tensors need 40 data bytes but the file holds 32; the file is truncated",
        ),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [32, 0]}}, bytes(32)),
            r"'h' has invalid data_offsets \[32, 0\]",
        ),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, -2, 2], "data_offsets": [0, 32]}}, bytes(32)),
            r"'h' has invalid shape \[2, -2, 2\]",
        ),
        (
            _raw({"h": {"dtype": "F32", "shape": [2, 2, 2]}}, bytes(32)),
            r"'h' entry must have exactly dtype, shape and data_offsets",
        ),
        (
            _raw({"h": {"dtype": "I32", "shape": [2, 2, 2], "data_offsets": [0, 32]}}, bytes(32)),
            r"'h' has dtype I32; supported: BF16, F16, F32, F64",
        ),
        (
            _raw({"h": {"dtype": "BOOL", "shape": [2, 2, 2], "data_offsets": [0, 8]}}, bytes(8)),
            r"'h' has dtype BOOL; supported: BF16, F16, F32, F64",
        ),
        (
            _raw({"h": {"dtype": "F8_E5M2", "shape": [2, 2, 2], "data_offsets": [0, 8]}}, bytes(8)),
            r"dtype 'F8_E5M2'.*supported: BF16, F16, F32, F64",
        ),
        (_raw(b'{"__metadata__": {"a": "1", "a": "2"}}'), r"lists key 'a' twice"),
        (
            _raw(b'{"h": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [0, 32], "dtype": "F16"}}', bytes(32)),
            r"lists key 'dtype' twice",
        ),
    ],
)
def test_bad_safetensors_files(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        open_history(path)
    assert str(path) in str(info.value)


def test_missing_key_lists_available_tensors(write_safetensors):
    path = write_safetensors("h.safetensors", {"embedding_history": random_history((3, 4, 2)), "steps": np.arange(3)})
    with pytest.raises(
        InputError, match=r"no tensor 'emb'; available: embedding_history \[3, 4, 2\] F32, steps \[3\] I64"
    ):
        open_history(path, key="emb")


def test_not_3d_and_unsupported_dtype(write_safetensors):
    path = write_safetensors("h.safetensors", {"m": np.zeros((4, 3), np.float32), "i": np.zeros((2, 2, 2), np.int32)})
    with pytest.raises(InputError, match=r"'m' has shape \[4, 3\]; expected 3-D \(step, token, dim\)"):
        open_history(path, key="m")
    with pytest.raises(InputError, match=r"'i' has dtype I32; supported: BF16, F16, F32, F64"):
        open_history(path, key="i")


def test_missing_file_and_bad_npy(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors: history file not found"):
        open_history(tmp_path / "nothere.safetensors")
    np.save(tmp_path / "two.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(InputError, match=r"two.npy: array has shape \[3, 4\]; expected 3-D"):
        open_history(tmp_path / "two.npy")


def test_file_truncated_after_opening_is_a_clean_error(write_safetensors):
    x = random_history((8, 4, 3))
    path = write_safetensors("h.safetensors", {"h": x})
    h = open_history(path, chunks=2)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 50)
    with pytest.raises(InputError, match="truncated or replaced after it was opened"):
        dask.compute(h.data, scheduler="sync")


# --- per-checkpoint inputs: one (token, dim) matrix per file -------------------------------


def _checkpoints(write_safetensors, x, steps, dtype="BF16", key="model.embed_tokens.weight", extra=None):
    # written shuffled, so the order can only come from the file names
    order = np.random.default_rng(0).permutation(len(steps))
    for k in order:
        tensors = {key: x[k], **(extra or {})}
        write_safetensors(f"step_{steps[k]}.safetensors", tensors, dtype)


def test_checkpoint_glob_stacks_in_natural_order_with_steps_from_names(write_safetensors, tmp_path, no_compute):
    x = random_history((12, 9, 5), seed=4, scale=0.1)
    steps = [0, 5, 9, 10, 11, 100, 250, 999, 1000, 1001, 5000, 12000]  # lexical order differs
    _checkpoints(write_safetensors, x, steps, extra={"lm_head.bias": np.zeros(9, np.float32)})
    with no_compute():
        h = open_history(str(tmp_path / "step_*.safetensors"), key="model.embed_tokens.weight", chunks=5)
        graph = dict(h.data.__dask_graph__())
    pickle.loads(pickle.dumps(graph))
    assert h.sizes == {"step": 12, "token": 9, "dim": 5} and h.chunks[0] == (5, 5, 2)
    np.testing.assert_array_equal(h["step"].values, steps)
    np.testing.assert_array_equal(h.values, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(h.sel(step=1000).values, x[8].astype(ml_dtypes.bfloat16).astype(np.float32))
    assert h.attrs["input_dtype"] == "BF16" and h.attrs["key"] == "model.embed_tokens.weight"


def test_checkpoint_list_and_default_key(write_safetensors, tmp_path):
    x = random_history((3, 6, 4), seed=5)
    paths = [
        write_safetensors(name, {"emb": x[k]}, "F32")
        for k, name in enumerate(["b.safetensors", "c.safetensors", "a.safetensors"])
    ]
    h = open_history(paths)  # the only 2-D tensor; names without numbers: steps 0..S-1 in name order
    np.testing.assert_array_equal(h["step"].values, [0, 1, 2])
    np.testing.assert_array_equal(h.values, x[[2, 0, 1]])
    x4 = random_history((4, 6, 4), seed=6)
    # the key is chosen in the first file (natural order), then required in every file
    paths.append(write_safetensors("0.safetensors", {"emb": x4[0], "other": x4[1]}, "F32"))
    with pytest.raises(
        InputError,
        match=r"0.safetensors: cannot choose the embedding matrix \(no config.json next to it\); its 2-D tensors:"
        r" emb \[6, 4\], other \[6, 4\]; name one with key= / --key; e.g. --key emb",
    ):
        open_history(paths)


def test_checkpoint_shape_or_dtype_mismatch_names_the_odd_file(write_safetensors, tmp_path):
    x = random_history((4, 6, 4), seed=7)
    for k in range(3):
        write_safetensors(f"ck{k}.safetensors", {"w": x[k]}, "BF16")
    write_safetensors("ck3.safetensors", {"w": x[3][:5]}, "BF16")
    with pytest.raises(
        InputError,
        match=r"ck3.safetensors: tensor 'w' has shape \[5, 4\] and dtype BF16, but .*ck0.safetensors \(the first checkpoint\) has shape \[6, 4\] and dtype BF16",
    ):
        open_history(str(tmp_path / "ck*.safetensors"))
    write_safetensors("ck3.safetensors", {"w": x[3]}, "F16")
    with pytest.raises(
        InputError, match=r"ck3.safetensors: tensor 'w' has shape \[6, 4\] and dtype F16, but .* dtype BF16"
    ):
        open_history(str(tmp_path / "ck*.safetensors"))
    write_safetensors("ck3.safetensors", {"v": x[3]}, "BF16")
    with pytest.raises(InputError, match=r"ck3.safetensors: no tensor 'w'; available: v \[6, 4\] BF16"):
        open_history(str(tmp_path / "ck*.safetensors"), key="w")
    write_safetensors("ck3.safetensors", {"w": x}, "BF16")
    with pytest.raises(
        InputError, match=r"ck3.safetensors: tensor 'w' has shape \[4, 6, 4\]; a per-checkpoint file holds one 2-D"
    ):
        open_history(str(tmp_path / "ck*.safetensors"))
    (tmp_path / "ck3.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(InputError, match=r"ck3.safetensors: not a safetensors file"):
        open_history(str(tmp_path / "ck*.safetensors"))


def test_checkpoint_errors_missing_duplicate_step_nonfinite(write_safetensors, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none_\*.safetensors: no file matches"):
        open_history(str(tmp_path / "none_*.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"gone.safetensors: checkpoint file not found"):
        open_history([tmp_path / "gone.safetensors"])
    x = random_history((3, 5, 4), seed=8)
    (tmp_path / "a").mkdir()
    a = write_safetensors("a/step_7.safetensors", {"w": x[0]})
    b = write_safetensors("step_7.safetensors", {"w": x[1]})
    with pytest.raises(InputError, match=r"step 7 from its file name is also the step of"):
        open_history([a, b])
    x[2, 3, 1] = np.nan
    c = write_safetensors("step_9.safetensors", {"w": x[2]})
    h = open_history([b, c], chunks=2)
    with pytest.raises(InputError, match=r"step_9.safetensors: history holds nan at step 9 \(index 1\), token 3"):
        _ = h.values
    assert np.isnan(open_history([b, c], nonfinite="propagate").values[1, 3, 1])


def test_checkpoint_truncated_after_opening_is_a_clean_error(write_safetensors, tmp_path):
    x = random_history((4, 5, 4), seed=9)
    paths = [write_safetensors(f"s{k}.safetensors", {"w": x[k]}) for k in range(4)]
    h = open_history(paths, chunks=2)
    with open(paths[3], "r+b") as f:
        f.truncate(paths[3].stat().st_size - 10)
    np.testing.assert_array_equal(h.isel(step=slice(0, 2)).values, x[:2])  # other tasks unaffected
    with pytest.raises(InputError, match=r"s3.safetensors: file ended .* truncated or replaced after it was opened"):
        dask.compute(h.data, scheduler="sync")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "step_chunk"), [((11, 37, 13), 3), ((7, 131, 67), 1)])
def test_step_rms_one_task_per_step_chunk(shape, step_chunk, dtype):
    # whole (token, dim) chunks: one task per step-chunk, the same bits as dask's reduction over
    # the same chunks (what stores written before hold), and float64's value over the finite
    # coordinates (NaN where none is)
    import dask.array as da

    from dask_pdist.io.history import step_rms

    x = random_history(shape, scale=3.0).astype(dtype)
    x[0, 2, 1], x[1, 0, 0], x[2] = np.nan, np.inf, np.nan
    data = da.from_array(x, chunks=(step_chunk, -1, -1))
    got = step_rms(data)
    assert len(dict(got.__dask_graph__())) == 2 * data.numblocks[0]  # the input's tasks and one per chunk
    got = got.compute()
    finite = da.isfinite(data)
    count = finite.sum(axis=(1, 2))
    squares = da.where(finite, data.astype("float64") ** 2, 0.0).sum(axis=(1, 2))
    np.testing.assert_array_equal(got, da.where(count > 0, da.sqrt(squares / da.maximum(count, 1)), np.nan).compute())
    finite = np.isfinite(x)
    want = [np.sqrt(np.sum(x[i][finite[i]].astype(np.float64) ** 2) / finite[i].sum()) for i in range(3, shape[0])]
    np.testing.assert_allclose(got[3:], want, rtol=1e-13)
    assert np.isnan(got[2]) and got.dtype == np.float64
    tiled = step_rms(da.from_array(x, chunks=(step_chunk, 5, 4))).compute()  # the reduction's path
    np.testing.assert_allclose(tiled, got, rtol=1e-14)


def test_step_rms_of_float64_values_whose_squares_overflow():
    # float64 coordinates past ~1.3e154: their squares overflow, the step's RMS does not (it is
    # computed scaled by the step's largest value), without a warning; other steps keep their bits
    import warnings

    import dask.array as da

    from dask_pdist.io.history import step_rms

    x = np.random.default_rng(7).standard_normal((3, 5, 3))
    x[1, 2, 0] = 1e200
    x[2, 4, 1] = -1e300
    x[2, 0, 0] = np.inf  # left out, as in every step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = step_rms(da.from_array(x, chunks=(2, 5, 3))).compute()
    want0 = np.sqrt(np.mean(np.square(x[0])))
    assert got[0] == step_rms(da.from_array(x[:1])).compute()[0] and got[0] == pytest.approx(want0, rel=1e-15)
    assert got[1] == pytest.approx(1e200 / np.sqrt(15), rel=1e-14)
    assert got[2] == pytest.approx(1e300 / np.sqrt(14), rel=1e-14)
