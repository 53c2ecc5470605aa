"""Distance stores on object storage, against a real S3 HTTP API (moto's server on 127.0.0.1,
see conftest.py): written, resumed, verified, described and read through zarr's fsspec store,
bit-identical to the same job on local disk; one writer at a time; nothing foreign deleted."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
import xarray as xr

import dask_pdist as dp
from conftest import oracle, random_history, s3_upload
from dask_pdist.cli.main import main
from dask_pdist.errors import StoreError
from dask_pdist.io.paths import locate
from dask_pdist.store.layout import store_progress
from dask_pdist.store.verification import verify_store

CLI = [sys.executable, "-m", "dask_pdist"]
TIMEOUT = 120


def _fs():
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def _assert_same_store(a, b) -> None:
    """Every array of two stores equal, bit for bit (NaN where both are NaN), and their coordinates."""
    x, y = dp.open_distances(a), dp.open_distances(b)
    assert set(x.data_vars) == set(y.data_vars) == {"euclidean", "chebyshev"}
    for name in x.data_vars:
        np.testing.assert_array_equal(x[name].values, y[name].values)
    for name in ("step", "token_i", "token_j", "embedding_rms"):
        np.testing.assert_array_equal(x[name].values, y[name].values)


@pytest.fixture
def history_s3(s3_history):
    """(local path, URL) of one bf16 history (29 x 11 x 6) with a steps tensor."""
    return s3_history("in/h.safetensors", seed=5, steps=np.arange(29) * 3 + 1)


@pytest.mark.slow
def test_s3_round_trip_history_in_store_out_bit_identical(tmp_path, history_s3, s3_bucket, capsys):
    """The must-show round trip: history on S3 -> store on S3 (CLI) -> verify, info, summary,
    export to S3; the same as the local job, and the distances right against scipy."""
    path, url = history_s3
    store = f"{s3_bucket}/out/d.zarr"
    local = tmp_path / "d.zarr"
    assert main(["compute", url, "-o", store, "--chunk-steps", "8", "--no-progress"]) == 0
    assert main(["compute", str(path), "-o", str(local), "--chunk-steps", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {local}" in out
    _assert_same_store(store, local)
    remote = dp.open_distances(store)
    assert remote.attrs["source"] == url and remote.attrs["input_dtype"] == "BF16"
    e, c = oracle(dp.open_history(path)[16:18].values)
    np.testing.assert_allclose(remote.euclidean[16:18].values, e, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(remote.chebyshev[16:18].values, c, rtol=2e-6, atol=1e-6)
    assert _fs().find(f"{s3_bucket}/out") and not [k for k in _fs().find(s3_bucket) if k.endswith(".lock")]

    assert main(["verify", store, "--no-progress"]) == 0
    assert "every chunk present" in capsys.readouterr().out
    assert main(["info", store]) == 0
    info = capsys.readouterr().out
    assert "dask_pdist store" in info and "blocks written: 4/4 (complete)" in info
    assert main(["summary", store, "--no-progress"]) == 0
    remote_summary = capsys.readouterr().out
    assert main(["summary", str(local), "--no-progress"]) == 0
    assert remote_summary == capsys.readouterr().out
    # the store is plain xarray-on-zarr there too
    plain = xr.open_zarr(store, zarr_format=3)
    np.testing.assert_array_equal(plain.chebyshev.values, remote.chebyshev.values)

    # export out, to S3 too: the object's bytes equal the local export's but for the source
    exported = f"{s3_bucket}/out/d.safetensors"
    assert main(["export", store, exported, "--no-progress"]) == 0
    assert main(["export", str(local), str(tmp_path / "from_local.safetensors"), "--no-progress"]) == 0
    _fs().get_file(exported, str(tmp_path / "from_s3.safetensors"))
    _assert_same_export(tmp_path / "from_s3.safetensors", tmp_path / "from_local.safetensors", url, str(path))
    assert main(["export", store, str(tmp_path / "s3_to_disk.safetensors"), "--no-progress"]) == 0
    assert (tmp_path / "s3_to_disk.safetensors").read_bytes() == (tmp_path / "from_s3.safetensors").read_bytes()


def _assert_same_export(a, b, source_a: str, source_b: str) -> None:
    """Two safetensors exports: the same tensor bytes, the same metadata but for the source."""
    raw_a, raw_b = a.read_bytes(), b.read_bytes()
    na, nb = (int.from_bytes(r[:8], "little") for r in (raw_a, raw_b))
    head_a, head_b = json.loads(raw_a[8 : 8 + na]), json.loads(raw_b[8 : 8 + nb])
    meta_a, meta_b = head_a.pop("__metadata__"), head_b.pop("__metadata__")
    assert meta_a.pop("source") == source_a and meta_b.pop("source") == source_b
    assert meta_a == meta_b and head_a == head_b
    assert raw_a[8 + na :] == raw_b[8 + nb :]


@pytest.mark.slow
def test_three_run_batch_on_s3_matches_local(tmp_path, s3_bucket, write_safetensors, capsys):
    for i, steps in enumerate((13, 17, 13)):
        path = write_safetensors(f"run_{i:03d}.safetensors", {"emb": random_history((steps, 9, 5), seed=i)}, "BF16")
        s3_upload(path, f"{s3_bucket}/in/run_{i:03d}/h.safetensors")
        (tmp_path / "in" / f"run_{i:03d}").mkdir(parents=True)
        path.rename(tmp_path / "in" / f"run_{i:03d}" / "h.safetensors")
    args = ["--chunk-steps", "5", "--no-progress"]
    assert main(["compute", f"{s3_bucket}/in/run_*/h.safetensors", "-o", f"{s3_bucket}/out", *args]) == 0
    assert main(["compute", str(tmp_path / "in/run_*/h.safetensors"), "-o", str(tmp_path / "out"), *args]) == 0
    out = capsys.readouterr().out
    assert out.count("run_00") >= 6
    assert sorted(k.rsplit("/", 1)[-1] for k in _fs().ls(f"{s3_bucket}/out")) == [
        "run_000.zarr",
        "run_001.zarr",
        "run_002.zarr",
    ]
    remote = dp.open_distances(f"{s3_bucket}/out/run_*.zarr")
    local = dp.open_distances(str(tmp_path / "out" / "run_*.zarr"))
    assert list(remote["run"].values) == ["run_000", "run_001", "run_002"]
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())
    assert int(remote.euclidean.sel(run="run_000").isnull().all(axis=(1, 2)).sum()) == 4  # steps 13..16: NaN
    # again: complete stores are skipped, said so
    assert main(["compute", f"{s3_bucket}/in/run_*/h.safetensors", "-o", f"{s3_bucket}/out", *args]) == 0
    assert capsys.readouterr().err.count("is complete: skipped") == 3


def _n_done(store: str) -> int:
    return len(_fs().find(f"{store}/_dask_pdist/chunk_done/c"))


@pytest.mark.slow
def test_kill_then_resume_on_s3_is_bit_identical(tmp_path, s3_bucket):
    src = tmp_path / "h.safetensors"
    # 30 blocks of 3 steps, 41 tokens: every request to the local S3 server costs, so few blocks,
    # enough for the kill to land mid-write (after 5)
    assert main(["synth", str(src), "--steps", "90", "--vocab", "41", "--dim", "16"]) == 0
    url, store, ref = f"{s3_bucket}/h.safetensors", f"{s3_bucket}/d.zarr", tmp_path / "ref.zarr"
    s3_upload(src, url)
    assert main(["compute", str(src), "-o", str(ref), "--chunk-steps", "3", "--no-progress"]) == 0
    cmd = CLI + ["compute", url, "-o", store, "--chunk-steps", "3", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while _n_done(store) < 5:
        assert proc.poll() is None, f"writer exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "writer made no progress"
        time.sleep(0.01)  # a poll interval, not a synchronisation guess
    proc.kill()
    proc.wait(TIMEOUT)
    done, complete = store_progress(store)
    assert not complete and 5 <= done.sum() < done.size
    assert _fs().exists(f"{s3_bucket}/.d.zarr.lock")  # the killed writer's lock stays: its pid is dead
    with pytest.raises(StoreError, match=r"incomplete, \d+ of 30 blocks missing.*--resume"):
        dp.open_distances(store)
    assert subprocess.run(cmd + ["--resume"], timeout=TIMEOUT, capture_output=True).returncode == 0
    _assert_same_store(store, ref)
    assert verify_store(store) == []
    assert not _fs().exists(f"{s3_bucket}/.d.zarr.lock")
    # a complete store that lost an object: --resume recomputes that block alone
    _fs().rm(f"{store}/chebyshev/c/7/0/0")
    again = subprocess.run(cmd + ["--resume"], timeout=TIMEOUT, capture_output=True, text=True)
    assert again.returncode == 0 and "resuming, 1 of 30 blocks to compute" in again.stderr, again.stderr
    _assert_same_store(store, ref)


def test_damaged_store_on_s3_is_named_by_verify_and_reads(history_s3, s3_bucket, capsys):
    _, url = history_s3
    store = f"{s3_bucket}/d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(url, chunks=8)), store, progress=False)
    fs = _fs()
    fs.rm(f"{store}/euclidean/c/1/0/0")
    blob = bytearray(fs.cat(f"{store}/chebyshev/c/2/0/0"))
    blob[10] ^= 0xFF
    fs.pipe(f"{store}/chebyshev/c/2/0/0", bytes(blob))
    problems = [str(p) for p in verify_store(store)]
    assert problems == ["euclidean steps 25..46: missing (chunk object absent)", problems[1]]
    assert problems[1].startswith("chebyshev steps 49..70: corrupt")
    assert main(["verify", store, "--no-progress"]) == 1
    capsys.readouterr()
    ds = dp.open_distances(store)
    with pytest.raises(StoreError, match=rf"{store}: euclidean chunk \(1, 0, 0\), steps 25..46: missing"):
        _ = ds.euclidean[8:16].values
    with pytest.raises(StoreError, match=rf"{store}: chebyshev chunk \(2, 0, 0\), steps 49..70: corrupt"):
        _ = ds.chebyshev[16:24].values
    fresh = dp.pairwise_distances(dp.open_history(url, chunks=8)).euclidean[:8].values
    np.testing.assert_array_equal(ds.euclidean[:8].values, fresh)  # the intact chunks still read


@pytest.mark.slow
def test_outputs_on_s3_are_checked_before_any_work(history_s3, s3_bucket, capsys):
    _, url = history_s3
    fs = _fs()
    fs.pipe(f"{s3_bucket}/theirs.zarr/notes.txt", b"not ours")
    cases = [
        (f"{s3_bucket}/theirs.zarr", "exists and is not a dask_pdist store"),
        ("s3://no-such-bucket-13b/d.zarr", "bucket no-such-bucket-13b does not exist"),
        (s3_bucket, "give a store name inside the bucket"),
    ]
    for out, message in cases:
        for flag in ([], ["--overwrite"]):
            assert main(["compute", url, "-o", out, "--no-progress", *flag]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err and out in err, err
    assert fs.cat(f"{s3_bucket}/theirs.zarr/notes.txt") == b"not ours"  # nothing foreign deleted

    store = f"{s3_bucket}/d.zarr"
    assert main(["compute", url, "-o", store, "--no-progress", "--chunk-steps", "10"]) == 0
    assert main(["compute", url, "-o", store, "--no-progress"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    fs.pipe(f"{store}/euclidean/c/0/0/0.bak", b"x")  # something we never write
    assert main(["compute", url, "-o", store, "--no-progress", "--overwrite"]) == 2
    assert "holds files dask_pdist did not write (euclidean/c/0/0/0.bak)" in capsys.readouterr().err
    fs.rm(f"{store}/euclidean/c/0/0/0.bak")
    assert main(["compute", url, "-o", store, "--no-progress", "--overwrite", "--chunk-steps", "8"]) == 0
    ds = dp.open_distances(store)
    assert ds.euclidean.chunks[0] == (8, 8, 8, 5)
    assert len(_fs().find(f"{store}/euclidean/c")) == 4  # the old store's 3 chunks of 10 steps are gone
    assert verify_store(store) == []


def test_one_writer_at_a_time_on_s3(history_s3, s3_bucket, capsys):
    _, url = history_s3
    store = f"{s3_bucket}/d.zarr"
    lock = f"{s3_bucket}/.d.zarr.lock"
    other = {"pid": 4242, "host": "another-node", "started": "today", "token": "t"}
    _fs().pipe(lock, json.dumps(other).encode())
    ds = dp.pairwise_distances(dp.open_history(url, chunks=10))
    with pytest.raises(StoreError, match=r"being written by pid 4242 on another-node .*\.d\.zarr\.lock"):
        dp.to_zarr(ds, store, progress=False)
    assert not _fs().exists(f"{store}/zarr.json")
    # a lock of a dead process on this host is stale: taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _fs().pipe(lock, json.dumps({**other, "pid": int(dead.stdout), "host": socket.gethostname()}).encode())
    dp.to_zarr(ds, store, progress=False)
    assert verify_store(store) == [] and not _fs().exists(lock)


def test_stores_on_s3_through_storage_options_only(tmp_path, history_s3, s3_bucket, s3_endpoint, monkeypatch, capsys):
    """No AWS_ENDPOINT_URL: the endpoint reaches zarr's fsspec store (and the lock, the
    listings) through storage_options / --storage-options alone; a local input with them is fine."""
    path, url = history_s3
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"endpoint_url": s3_endpoint}
    store = f"{s3_bucket}/opts.zarr"
    flags = ["--storage-options", json.dumps(options), "--no-progress"]
    assert main(["compute", str(path), "-o", store, "--chunk-steps", "7", *flags]) == 0
    assert main(["verify", store, *flags]) == 0
    assert main(["info", store, *flags[:2]]) == 0
    assert "(complete)" in capsys.readouterr().out
    remote = dp.open_distances(store, storage_options=options)
    local = dp.pairwise_distances(dp.open_history(path)).compute()
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)
    assert locate(store, options).exists()


@pytest.mark.slow
def test_local_cluster_with_only_an_object_store(tmp_path, history_s3, s3_bucket):
    """Worker processes see neither the history nor the store on disk: both are URLs in the
    pickled graph, reached through the AWS_* variables the workers inherit."""
    import distributed

    path, url = history_s3
    local = dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=6)), tmp_path / "d.zarr", progress=False)
    expected = dp.summarize(local).compute(scheduler="sync")
    path.unlink()  # only the object store holds the history now
    (tmp_path / "d.zarr").rename(tmp_path / "elsewhere")
    store = f"{s3_bucket}/cluster.zarr"
    ds = dp.pairwise_distances(dp.open_history(url, chunks=6))
    with (
        distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.compute(dp.to_zarr(ds, store, compute=False)).result()
        summary = dp.summarize(dp.open_distances(store)).compute()  # workers read the store too
    _assert_same_store(store, tmp_path / "elsewhere")
    xr.testing.assert_identical(summary, expected)
    assert verify_store(store) == []


def test_wrong_credentials_for_a_store_is_one_line_exit_2(tmp_path, history_s3, s3_bucket, monkeypatch, capsys):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    path, _ = history_s3
    store = f"{s3_bucket}/d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path)), store, progress=False)
    # the server now checks signatures: "testing" is no access key it knows
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    _fs()
    for argv in (
        ["compute", str(path), "-o", f"{s3_bucket}/e.zarr", "--no-progress"],
        ["info", store],
        ["verify", store, "--no-progress"],
        ["summary", store, "--no-progress"],
        ["export", store, str(tmp_path / "x.safetensors"), "--no-progress"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "access denied" in err and s3_bucket in err, (argv, err)


def test_neighbours_and_clusters_stores_at_urls_are_refused_clearly(history_s3, s3_bucket, capsys):
    _, url = history_s3
    for argv, what in (
        (["neighbours", url, "-k", "2", "-o", f"{s3_bucket}/n.zarr", "--no-progress"], "neighbours store"),
        (["clusters", url, "-o", f"{s3_bucket}/c.zarr", "--no-progress"], "clusters store"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"a {what} on object storage is not supported yet" in err, err
    assert not _fs().find(s3_bucket + "/n.zarr") and not _fs().find(s3_bucket + "/c.zarr")


@pytest.mark.slow
def test_store_names_with_pattern_characters_are_exact_names(history_s3, s3_bucket, capsys):
    """fsspec's rm expands [ ] * ? as a pattern: --overwrite of lr=[ab]/d.zarr once deleted the
    objects of lr=a/d.zarr next to it (found by an attack review)."""
    _, url = history_s3
    args = ["--no-progress", "--chunk-steps", "10"]
    neighbour, odd, run1 = f"{s3_bucket}/sw/lr=a/d.zarr", f"{s3_bucket}/sw/lr=[ab]/d.zarr", f"{s3_bucket}/run[1].zarr"
    for out in (neighbour, odd, f"{s3_bucket}/run1.zarr", run1):
        assert main(["compute", url, "-o", out, *args]) == 0
    before = sorted(_fs().find(f"{s3_bucket}/sw/lr=a"))
    assert main(["compute", url, "-o", odd, *args, "--overwrite"]) == 0
    assert main(["compute", url, "-o", run1, "--no-progress", "--chunk-steps", "7", "--overwrite"]) == 0
    assert sorted(_fs().find(f"{s3_bucket}/sw/lr=a")) == before
    assert main(["compute", url, "-o", f"{s3_bucket}/sw//dbl.zarr", *args]) == 0  # an empty key segment...
    assert verify_store(f"{s3_bucket}/sw/dbl.zarr") == []  # ...is not kept: the store is found again
    for store in (neighbour, odd, run1, f"{s3_bucket}/run1.zarr"):
        assert verify_store(store) == [], store
    assert dp.open_distances(run1).euclidean.chunks[0] == (7, 7, 7, 7, 1)  # the literal name, not run1.zarr
    assert dp.open_distances(f"{s3_bucket}/run1.zarr").euclidean.chunks[0] == (10, 10, 9)


def test_unreachable_endpoint_and_upper_case_scheme(tmp_path, history_s3, s3_bucket, monkeypatch, capsys):
    path, url = history_s3
    store = f"{s3_bucket}/d.zarr".replace("s3://", "S3://")
    assert main(["compute", url.replace("s3://", "S3://"), "-o", store, "--no-progress"]) == 0
    assert verify_store(store) == [] and main(["verify", store, "--no-progress"]) == 0
    capsys.readouterr()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    flags = ["--storage-options", json.dumps({"endpoint_url": dead, "config_kwargs": {"retries": {"max_attempts": 1}}})]
    for argv in (["compute", str(path), "-o", f"{s3_bucket}/e.zarr", "--no-progress", *flags], ["info", url, *flags]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot reach the object store" in err and s3_bucket in err, err


def test_resume_hint_hides_storage_options():
    from dask_pdist.cli.common import _resume_command

    hint = _resume_command(["compute", "s3://b/h", "-o", "s3://b/d.zarr", "--storage-options", '{"secret": "XYZ"}'])
    assert "XYZ" not in hint and hint.endswith("--storage-options '...' --resume  (with the same --storage-options)")
    assert "XYZ" not in _resume_command(["compute", "h", "-o", "d", '--storage-options={"secret": "XYZ"}'])


def test_a_store_at_the_top_of_memory(history_s3):
    path, _ = history_s3
    ds = dp.pairwise_distances(dp.open_history(path, chunks=9))
    back = dp.to_zarr(ds, "memory://top-of-memory.zarr", progress=False)
    np.testing.assert_array_equal(back.chebyshev.values, ds.chebyshev.values)
    assert verify_store("memory://top-of-memory.zarr") == []
    with pytest.raises(StoreError, match=r"memory://: give a store name, e.g. memory://distances.zarr"):
        dp.to_zarr(ds, "memory://")


def test_storage_options_apply_to_urls_only_on_the_command_line(tmp_path, write_safetensors, capsys):
    """One --storage-options serves a command's URLs; a local input or output ignores it (the
    Python API refuses it for a local path, where it can only be a mistake)."""
    path = write_safetensors("h.safetensors", {"emb": random_history((6, 5, 3), seed=1)})
    opts = ["--storage-options", '{"anon": true}']
    assert main(["info", str(path), *opts]) == 0
    assert main(["neighbours", str(path), "-k", "2", "-o", str(tmp_path / "n.zarr"), "--no-progress", *opts]) == 0
    assert main(["compute", str(path), "-o", str(tmp_path / "d.zarr"), "--no-progress", *opts]) == 0
    assert main(["verify", str(tmp_path / "d.zarr"), "--no-progress", *opts]) == 0


def test_plot_and_events_files_at_urls_are_refused_before_any_work(tmp_path, write_safetensors, capsys):
    path = write_safetensors("h.safetensors", {"emb": random_history((6, 5, 3), seed=1)})
    store = tmp_path / "d.zarr"
    assert main(["compute", str(path), "-o", str(store), "--no-progress"]) == 0
    capsys.readouterr()
    for argv, what in (
        (["clusters", str(path), "--events", "s3://bucket/e.csv", "--no-progress"], "a file of events"),
        (["clusters", str(path), "--plot", "s3://bucket/p.png", "--no-progress"], "a plot"),
        (["summary", str(store), "--plot", "s3://bucket/p.png", "--no-progress"], "a plot"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr()
        assert f"{what} on object storage is not supported yet" in err.err and not err.out, (argv, err)


def test_export_targets_refused_before_any_work(tmp_path, history_s3, s3_bucket, capsys):
    """Found by an attack review: each of these failed only after the whole compute."""
    path, _ = history_s3
    store = tmp_path / "d.zarr"
    cases = [
        (f"{s3_bucket}/x.safetensors", '{"default_block_size": 1048576}', "at least 5242880 bytes"),
        (f"{s3_bucket}/x.safetensors", '{"default_block_size": "abc"}', "must be an integer"),
        ("s3:///x.safetensors", None, "give a file name inside a bucket"),
        (s3_bucket, None, "give a file name inside a bucket"),
    ]
    for target, opts, message in cases:
        extra = ["--storage-options", opts] if opts else []
        argv = ["compute", str(path), "-o", str(store), "--safetensors", target, "--no-progress", *extra]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
        assert not store.exists()
    assert main(["compute", str(path), "-o", str(store), "--no-progress"]) == 0
    _fs().pipe(f"{s3_bucket}/old.safetensors", b"old")
    argv = ["compute", str(path), "-o", str(store), "--safetensors", f"{s3_bucket}/old.safetensors", "--resume"]
    assert main([*argv, "--no-progress"]) == 2
    assert f"dask-pdist export {store} {s3_bucket}/old.safetensors --overwrite" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"dtype='bfloat16': choose one of"):
        dp.to_safetensors(dp.open_distances(store), str(tmp_path / "b.safetensors"), dtype="bfloat16")


def test_export_of_several_runs_and_a_store_given_as_history(tmp_path, write_safetensors, capsys):
    for i in range(2):
        (tmp_path / "in" / f"run_{i}").mkdir(parents=True)
        path = write_safetensors(f"r{i}.safetensors", {"emb": random_history((5, 4, 3), seed=i)})
        path.rename(tmp_path / "in" / f"run_{i}" / "h.safetensors")
    assert (
        main(["compute", str(tmp_path / "in/run_*/h.safetensors"), "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    )
    capsys.readouterr()
    assert main(["export", str(tmp_path / "out" / "*.zarr"), str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    assert "matches 2 run stores; a safetensors file holds one store" in capsys.readouterr().err
    store = str(tmp_path / "out" / "run_0.zarr")
    for argv in (
        ["neighbours", store, "-k", "2", "--key", "euclidean", "-o", str(tmp_path / "n.zarr")],
        ["compute", store, "--key", "euclidean", "-o", str(tmp_path / "e.zarr")],
    ):
        assert main([*argv, "--no-progress"]) == 2
        assert "a dask_pdist store (distances or neighbours), not an embedding history" in capsys.readouterr().err
