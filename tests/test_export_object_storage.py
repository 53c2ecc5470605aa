"""Export to object storage (issue 13), against a real S3 HTTP API (moto's server on 127.0.0.1,
see conftest.py): the object is byte-identical to the local export of the same store, it is
streamed in file order with bounded memory (multipart upload), and a failed export leaves no
object under the final name (the old one stays). Bad targets: one line naming the URL, exit 2."""

from __future__ import annotations

import json
import math
import re
import uuid

import dask
import fsspec
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load as load_bytes
from tqdm import tqdm

import dask_pdist as dp
from conftest import oracle, random_history
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError, StoreError
from dask_pdist.io import upload

KEYS = {"euclidean": "euclidean_distances", "chebyshev": "chebyshev_distances"}
PART = 5 * 2**20  # S3's smallest part; s3fs refuses smaller blocks


def _s3():
    return fsspec.filesystem("s3")


def _local_export(ds, tmp_path, **kwargs) -> bytes:
    out = tmp_path / f"local-{uuid.uuid4().hex[:6]}.safetensors"
    dp.to_safetensors(ds, out, progress=False, **kwargs)
    return out.read_bytes()


def _remote_bytes(url: str) -> bytes:
    _s3().invalidate_cache()
    return _s3().cat_file(url)


@pytest.fixture
def small(tmp_path, write_safetensors):
    """(bf16-rounded history, local store): 23 steps x 29 tokens, step chunks of 5."""
    x = random_history((23, 29, 7), seed=7, scale=0.3)
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": np.arange(23) * 9 + 1}, "BF16")
    store = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=5)), store, progress=False)
    return x.astype(ml_dtypes.bfloat16).astype(np.float64), store


@pytest.fixture
def big(tmp_path, write_safetensors):
    """A local store whose float32 export (7.9 MB) is two 5 MiB parts: 37 steps x 163 tokens."""
    x = random_history((37, 163, 5), seed=11)
    path = write_safetensors("big.safetensors", {"embedding_history": x})
    store = tmp_path / "big.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=4)), store, progress=False)
    return store


@pytest.mark.parametrize("dtype", [None, "float16"])
def test_s3_export_is_byte_identical_to_the_local_export(small, tmp_path, s3_bucket, dtype):
    x, store = small
    ds = dp.open_distances(store)
    url = f"{s3_bucket}/out/pairwise_distances.safetensors"
    dp.to_safetensors(ds, url, dtype=dtype, progress=False)
    remote = _remote_bytes(url)
    assert remote == _local_export(ds, tmp_path, dtype=dtype)
    tensors = load_bytes(remote)
    e, c = oracle(x)  # scipy, float64, on the bf16 values the store was computed from
    got_e, got_c = tensors[KEYS["euclidean"]].astype(np.float64), tensors[KEYS["chebyshev"]].astype(np.float64)
    assert got_e.shape == (23, 29, 29)
    if dtype is None:  # float32: Euclidean within 1e-6, Chebyshev correctly rounded
        np.testing.assert_allclose(got_e, e, rtol=1e-6, atol=0)
        np.testing.assert_allclose(got_c, c, rtol=2.0**-24, atol=0)
    else:  # float16: one rounding more (relative 2^-11; absolute 2^-25 below its normal range)
        np.testing.assert_allclose(got_e, e, rtol=2.0**-11 + 1e-6, atol=2.0**-25)
        np.testing.assert_allclose(got_c, c, rtol=2.0**-11 + 1e-7, atol=2.0**-25)


@pytest.mark.parametrize("step_chunk", [5, 1])  # whole step-blocks; one-step blocks sent as row bands
def test_token_tiled_store_to_s3_is_byte_identical_and_memory_is_windowed(
    tmp_path, s3_bucket, write_safetensors, monkeypatch, step_chunk
):
    x = random_history((11, 29, 6), seed=2)
    h = dp.open_history(write_safetensors("t.safetensors", {"h": x}), chunks=step_chunk)
    store = tmp_path / "tiled.zarr"
    dp.to_zarr(dp.pairwise_distances(h, token_chunk=6), store, progress=False)
    ds = dp.open_distances(store)
    assert len(ds.euclidean.chunks[1]) == 5 and len(ds.euclidean.chunks[2]) == 5  # really tiled
    windows = []
    original = upload._windows
    monkeypatch.setattr(upload, "_windows", lambda pieces: (windows.append(w) or w for w in original(pieces)))
    url = f"{s3_bucket}/tiled.safetensors"
    with dask.config.set(num_workers=3):
        dp.to_safetensors(ds, url, dtype="float16", progress=False)
    assert _remote_bytes(url) == _local_export(ds, tmp_path, dtype="float16")
    # a few blocks at a time, never a whole tensor: one window is at most one block per thread
    pieces = [p for w in windows for _, p in w]
    # per metric: step-blocks 0:5, 5:10, then step 10 alone as 5 row bands; or 11 steps x 5 row bands
    assert len(pieces) == (2 * (2 + 5) if step_chunk == 5 else 2 * 11 * 5)
    assert max(len(w) for w in windows) <= 3 and len(windows) == math.ceil(len(pieces) / 3)
    assert max(p.nbytes for p in pieces) == (5 * 29 * 29 * 4 if step_chunk == 5 else 6 * 29 * 4)


def test_multipart_export_is_byte_identical(big, tmp_path, s3_bucket):
    ds = dp.open_distances(big)
    url = f"{s3_bucket}/big.safetensors"
    dp.to_safetensors(ds, url, storage_options={"default_block_size": PART}, progress=False)
    local = _local_export(ds, tmp_path)
    assert len(local) > PART
    assert _remote_bytes(url) == local
    assert _s3().info(url)["ETag"].strip('"').endswith("-2")  # two parts: a multipart upload


def _writes_then_fails(monkeypatch, exc: BaseException):
    """The writer fails once it has sent its first part."""
    original = upload._write_blocks

    def write(f, blocks, bar):
        original(f, blocks, bar)
        if getattr(f, "parts", None):  # s3fs: the parts uploaded so far
            raise exc

    monkeypatch.setattr(upload, "_write_blocks", write)


@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt()])
@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_after_a_part_leaves_no_object_and_the_old_one_intact(big, s3_bucket, monkeypatch, exc, overwrite):
    ds = dp.open_distances(big)
    url = f"{s3_bucket}/big.safetensors"
    if overwrite:
        _s3().pipe_file(url, b"the old object")
    _writes_then_fails(monkeypatch, exc)
    with pytest.raises(type(exc)):
        dp.to_safetensors(ds, url, overwrite=overwrite, storage_options={"default_block_size": PART}, progress=False)
    _s3().invalidate_cache()
    if overwrite:
        assert _s3().cat_file(url) == b"the old object"
    else:
        assert not _s3().exists(url)
    assert _s3().list_multipart_uploads(s3_bucket.removeprefix("s3://")) == []  # aborted, not left behind


def test_float16_overflow_keeps_the_old_object(tmp_path, s3_bucket, write_safetensors):
    x = random_history((6, 9, 4), seed=1, scale=3e4)
    ds = dp.pairwise_distances(dp.open_history(write_safetensors("b.safetensors", {"h": x}), chunks=2))
    url = f"{s3_bucket}/d16.safetensors"
    _s3().pipe_file(url, b"old")
    with pytest.raises(OverflowError, match=rf"{url}: euclidean_distances: distance .* exceeds float16's largest"):
        dp.to_safetensors(ds, url, dtype="float16", overwrite=True, progress=False)
    _s3().invalidate_cache()
    assert _s3().cat_file(url) == b"old"


def test_memory_url_target(small, tmp_path):
    _, store = small
    ds = dp.open_distances(store)
    url = f"memory://export-{uuid.uuid4().hex[:8]}/d.safetensors"
    fs = fsspec.filesystem("memory")
    try:
        dp.to_safetensors(ds, url, progress=False)
        assert fs.cat_file(url) == _local_export(ds, tmp_path)
        with pytest.raises(StoreError, match=rf"{url}: already exists"):
            dp.to_safetensors(ds, url, progress=False)
        with pytest.raises(OverflowError):  # 1e6 times the distances do not fit float16
            dp.to_safetensors(ds * 1e6, url, dtype="float16", overwrite=True, progress=False)
        assert fs.cat_file(url) == _local_export(ds, tmp_path)  # the old file, and no temporary one
        assert fs.ls(url.rsplit("/", 1)[0], detail=False) == [url.removeprefix("memory:/")]
    finally:
        fs.rm(url.rsplit("/", 1)[0], recursive=True)


def test_compute_false_streams_when_computed(small, tmp_path, s3_bucket, no_compute):
    _, store = small
    ds = dp.open_distances(store)
    url = f"{s3_bucket}/lazy.safetensors"
    with no_compute():
        delayed = dp.to_safetensors(ds, url, compute=False)
    assert not _s3().exists(url)
    delayed.compute()
    assert _remote_bytes(url) == _local_export(ds, tmp_path)


def test_progress_bar_counts_the_bytes_sent(small, s3_bucket, capsys):
    _, store = small
    url = f"{s3_bucket}/p.safetensors"
    dp.to_safetensors(dp.open_distances(store), url, dtype="float16", progress=True)
    err = capsys.readouterr().err
    size = tqdm.format_sizeof(_s3().info(url)["size"])  # the bar's total is the file's size
    assert "exporting" in err and "100%" in err and f"{size}/{size}" in err, err


def test_cli_compute_safetensors_and_export_to_s3(small, tmp_path, s3_bucket, s3_endpoint, monkeypatch, capsys):
    _, store = small
    src = tmp_path / "h.safetensors"
    local = _local_export(dp.open_distances(store), tmp_path)
    url = f"{s3_bucket}/cli.safetensors"
    args = ["compute", str(src), "-o", str(tmp_path / "c.zarr"), "--chunk-steps", "5", "--no-progress"]
    assert main([*args, "--safetensors", url]) == 0
    assert _remote_bytes(url) == local
    both = f"{s3_bucket}/both.safetensors"  # the store on S3 too: exported from there
    args = ["compute", str(src), "-o", f"{s3_bucket}/c.zarr", "--chunk-steps", "5", "--no-progress"]
    assert main([*args, "--safetensors", both]) == 0
    assert _remote_bytes(both) == local
    capsys.readouterr()
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # reachable only through --storage-options now
    options = ["--storage-options", json.dumps({"endpoint_url": s3_endpoint}), "--no-progress"]
    assert main(["export", str(store), url, "--dtype", "float16", "--overwrite", *options]) == 0
    assert f"Wrote {url} (" in capsys.readouterr().out
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert _remote_bytes(url) == _local_export(dp.open_distances(store), tmp_path, dtype="float16")


# -- refused targets: one line naming the URL, exit 2, before any work -------------------------


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("{bucket}/exists.safetensors", StoreError, r"{target}: already exists; pass overwrite=True"),
        ("{bucket}/folder", StoreError, r"{target}: is a directory \(objects exist under this prefix\)"),
        ("s3://no-such-bucket-13/d.safetensors", StoreError, r"{target}: bucket no-such-bucket-13 does not exist"),
        ("nosuchscheme://b/d.safetensors", InputError, r"{target}: unknown URL scheme"),
        ("{bucket}/", StoreError, r"{target}: give a file name"),
    ],
)
def test_refused_targets(small, s3_bucket, target, error, match, monkeypatch, capsys):
    _, store = small
    _s3().pipe_file(f"{s3_bucket}/exists.safetensors", b"x")
    _s3().pipe_file(f"{s3_bucket}/folder/part.bin", b"x")
    target = target.format(bucket=s3_bucket)
    computed = []
    monkeypatch.setattr(upload, "_windows", lambda pieces: computed.append(1) or iter(()))
    with pytest.raises(error, match=match.format(target=re.escape(target))):
        dp.to_safetensors(dp.open_distances(store), target)
    capsys.readouterr()
    assert main(["export", str(store), target, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and target in err, err
    assert not computed
    _s3().invalidate_cache()
    assert _s3().cat_file(f"{s3_bucket}/exists.safetensors") == b"x"


def test_wrong_credentials_is_one_line_exit_2(small, s3_bucket, monkeypatch, capsys):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    _, store = small
    url = f"{s3_bucket}/d.safetensors"
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks signatures
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    _s3().invalidate_cache()
    with pytest.raises(PermissionError, match=rf"{url}: access denied .*AWS_ACCESS_KEY_ID"):
        dp.to_safetensors(dp.open_distances(store), url)
    assert main(["export", str(store), url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "access denied" in err, err


def test_storage_options_for_a_local_target_are_refused(small, tmp_path):
    _, store = small
    with pytest.raises(InputError, match=r"storage_options apply to URLs"):
        dp.to_safetensors(dp.open_distances(store), tmp_path / "d.safetensors", storage_options={"anon": True})


@pytest.mark.parametrize("multipart", [False, True], ids=["one-put", "multipart"])
def test_an_object_that_appears_during_the_export_is_never_replaced(
    multipart, small, big, tmp_path, s3_bucket, monkeypatch
):
    # without overwrite the publication itself is conditional (If-None-Match): no window
    # between a check and the upload's completion
    ds = dp.open_distances(big if multipart else small[1])
    url = f"{s3_bucket}/raced.safetensors"
    import s3fs

    original = s3fs.core.S3File.commit

    def commit(self):
        _s3().pipe_file(url, b"someone else's")  # another writer finished first, after any check
        return original(self)

    monkeypatch.setattr(s3fs.core.S3File, "commit", commit)
    with pytest.raises(dp.StoreError, match="appeared while exporting; pass overwrite=True"):
        dp.to_safetensors(ds, url, storage_options={"default_block_size": PART}, progress=False)
    assert _s3().cat_file(url) == b"someone else's"
    bucket = s3_bucket.split("://")[1]
    assert not _s3().call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads")  # aborted
