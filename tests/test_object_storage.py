"""Histories on object storage, against a real S3 HTTP API (moto's server on 127.0.0.1, see
conftest.py): bit-identical to the same files read locally, one ranged request per task, and
one clean line naming the location for bad URLs, missing buckets and keys, wrong credentials."""

from __future__ import annotations

import pickle

import fsspec
import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import save_file

import dask_pdist as dp
from conftest import random_history, s3_upload
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError
from dask_pdist.io.paths import Location, locate


@pytest.fixture
def history_s3(s3_history):
    """(local path, URL) of one bf16 history (29 x 11 x 6) with a steps tensor."""
    return s3_history("runs/h.safetensors", seed=3, steps=np.arange(29) * 7 + 5)


def test_history_from_s3_is_bit_identical_and_reads_once_per_task(history_s3, monkeypatch):
    path, url = history_s3
    reads = []
    original = Location.read
    monkeypatch.setattr(Location, "read", lambda self, o, n: reads.append((o, n)) or original(self, o, n))
    remote = dp.open_history(url, chunks=8)
    header_reads = len(reads)
    assert header_reads <= 4  # magic, header, the steps tensor, fingerprint: no history data yet
    local = dp.open_history(path, chunks=8)
    assert remote.attrs["source"] == url
    assert remote.attrs["source_fingerprint"] == local.attrs["source_fingerprint"]
    # computes both; the input_version coordinate is where each was read from (an ETag, a local file)
    xr.testing.assert_identical(
        remote.drop_attrs().drop_vars("input_version"), local.drop_attrs().drop_vars("input_version")
    )
    assert (remote["input_version"].values != 0).all()  # an object's ETag vouches for it at once
    assert len(reads) - header_reads == 4  # 29 steps in chunks of 8: one ranged read per task
    e_remote = dp.pairwise_distances(remote).compute()
    e_local = dp.pairwise_distances(local).compute()
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(e_remote[name].values, e_local[name].values)


def test_graph_pickles_with_url_and_options_only(history_s3, s3_endpoint, monkeypatch):
    _, url = history_s3
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    h = dp.open_history(url, chunks=10, storage_options={"endpoint_url": s3_endpoint})
    graph = pickle.loads(pickle.dumps(dict(h.data.__dask_graph__())))  # no open handle, no client
    assert len(graph) >= 3
    np.testing.assert_array_equal(h.values[:3], dp.open_history(history_s3[0]).values[:3])


def test_checkpoint_glob_and_list_on_s3(tmp_path, s3_bucket):
    x = random_history((12, 7, 5), seed=4)
    for i in range(12):  # step_1 .. step_12: natural order puts step_10 after step_9
        save_file({"model.embed_tokens.weight": x[i]}, str(tmp_path / f"step_{i + 1}.safetensors"))
        s3_upload(tmp_path / f"step_{i + 1}.safetensors", f"{s3_bucket}/ckpt/step_{i + 1}.safetensors")
    remote = dp.open_history(f"{s3_bucket}/ckpt/step_*.safetensors", chunks=5)
    local = dp.open_history(str(tmp_path / "step_*.safetensors"), chunks=5)
    np.testing.assert_array_equal(remote.step.values, np.arange(1, 13))
    xr.testing.assert_identical(  # input_version: where each was read from (an ETag, a local file)
        remote.drop_attrs().drop_vars("input_version"), local.drop_attrs().drop_vars("input_version")
    )
    listed = dp.open_history([f"{s3_bucket}/ckpt/step_{i}.safetensors" for i in (3, 1, 2)])
    np.testing.assert_array_equal(listed.step.values, [1, 2, 3])
    np.testing.assert_array_equal(listed.values, x[:3])


def test_npy_and_zarr_histories_on_s3(tmp_path, s3_bucket):
    x = random_history((9, 6, 4), seed=5)
    np.save(tmp_path / "h.npy", x)
    s3_upload(tmp_path / "h.npy", f"{s3_bucket}/h.npy")
    np.testing.assert_array_equal(dp.open_history(f"{s3_bucket}/h.npy", chunks=4).values, x)
    xr.Dataset({"h": (("step", "token", "dim"), x)}).to_zarr(tmp_path / "h.zarr", zarr_format=3, consolidated=False)
    fsspec.filesystem("s3").put(str(tmp_path / "h.zarr"), f"{s3_bucket}/h.zarr", recursive=True)
    remote = dp.open_history(f"{s3_bucket}/h.zarr", key="h", chunks=4)
    np.testing.assert_array_equal(remote.values, x)


def test_cli_compute_from_s3_matches_local(tmp_path, history_s3, capsys):
    path, url = history_s3
    assert main(["compute", url, "-o", str(tmp_path / "remote.zarr"), "--no-progress", "--chunk-steps", "8"]) == 0
    assert main(["compute", str(path), "-o", str(tmp_path / "local.zarr"), "--no-progress", "--chunk-steps", "8"]) == 0
    remote, local = dp.open_distances(tmp_path / "remote.zarr"), dp.open_distances(tmp_path / "local.zarr")
    assert remote.attrs["source"] == url
    for name in ("euclidean", "chebyshev"):
        np.testing.assert_array_equal(remote[name].values, local[name].values)


# -- errors: one line naming the location ------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "error", "match"),
    [
        ("s3://no-such-bucket-13/h.safetensors", FileNotFoundError, r"s3://no-such-bucket-13/h.safetensors: .*bucket"),
        ("{bucket}/missing.safetensors", FileNotFoundError, r"missing.safetensors: history file not found"),
        ("{bucket}/nothing_*.safetensors", FileNotFoundError, r"nothing_\*.safetensors: no file matches"),
        ("nosuchscheme://b/h.safetensors", InputError, r"nosuchscheme://b/h.safetensors: unknown URL scheme"),
    ],
)
def test_bad_locations(s3_bucket, where, error, match, capsys):
    where = where.format(bucket=s3_bucket)
    with pytest.raises(error, match=match):
        dp.open_history(where)
    capsys.readouterr()
    assert main(["compute", where, "-o", "out.zarr", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and where in err, err


def test_wrong_credentials_is_one_line_exit_2(history_s3, monkeypatch, capsys):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    _, url = history_s3
    # the server now checks signatures: "testing" is no access key it knows
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    fsspec.filesystem("s3").invalidate_cache()
    with pytest.raises(PermissionError, match=r"s3://.*h.safetensors: access denied .*AWS_ACCESS_KEY_ID"):
        dp.open_history(url)
    assert main(["compute", url, "-o", "out.zarr", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "access denied" in err, err


def test_storage_options_errors(tmp_path, history_s3, capsys):
    path, url = history_s3
    with pytest.raises(InputError, match=r"storage_options apply to URLs"):
        dp.open_history(path, storage_options={"anon": True})
    with pytest.raises(InputError, match=r"storage options .* rejected"):
        dp.open_history(url, storage_options={"no_such_option": 1})
    with pytest.raises(SystemExit, match="2"):  # argparse: one error line
        main(["compute", url, "-o", "o.zarr", "--storage-options", "{nope"])
    assert "is not JSON" in capsys.readouterr().err


def test_file_urls_are_local_paths(tmp_path):
    assert locate(f"file://{tmp_path}/h.safetensors") == tmp_path / "h.safetensors"
    assert locate(tmp_path) == tmp_path


def test_token_subset_from_s3_reads_ranges_and_matches_local(history_s3):
    path, url = history_s3
    remote = dp.open_history(url, chunks=8, token_ids="1:4,8")
    local = dp.open_history(path, chunks=8, token_ids="1:4,8")
    xr.testing.assert_identical(  # input_version: where each was read from (an ETag, a local file)
        remote.drop_attrs().drop_vars("input_version"), local.drop_attrs().drop_vars("input_version")
    )


def test_clusters_and_neighbours_cli_take_storage_options(tmp_path, history_s3, s3_endpoint, monkeypatch, capsys):
    path, url = history_s3
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # reachable only through --storage-options now
    options = ["--storage-options", f'{{"endpoint_url": "{s3_endpoint}"}}', "--no-progress"]
    assert main(["clusters", url, "--events", str(tmp_path / "remote.csv"), *options]) == 0
    assert main(["clusters", str(path), "--events", str(tmp_path / "local.csv"), "--no-progress"]) == 0
    assert (tmp_path / "remote.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert main(["neighbours", url, "-k", "3", "-o", str(tmp_path / "n.zarr"), *options]) == 0
    assert main(["neighbours", str(path), "-k", "3", "-o", str(tmp_path / "m.zarr"), "--no-progress"]) == 0
    remote, local = dp.open_neighbours(tmp_path / "n.zarr"), dp.open_neighbours(tmp_path / "m.zarr")
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())


def test_info_of_an_input_on_s3(history_s3, capsys):
    path, url = history_s3
    assert main(["info", url]) == 0
    remote = capsys.readouterr().out.splitlines()
    assert main(["info", str(path)]) == 0
    local = capsys.readouterr().out.splitlines()
    assert remote[0] == url and remote[1:-1] == local[1:-1]  # the tensors, shapes, dtypes
    from dask_pdist.conventions import human_size

    assert remote[-1] == f"  size: {human_size(path.stat().st_size)}"
    assert main(["info", f"{url}.missing"]) == 2
    assert "not found" in capsys.readouterr().err


def test_sharded_checkpoint_on_s3_is_refused_clearly(tmp_path, s3_bucket):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-1.safetensors"}}')
    s3_upload(tmp_path / "model.safetensors.index.json", f"{s3_bucket}/ckpt/model.safetensors.index.json")
    with pytest.raises(InputError, match=r"model.safetensors.index.json: sharded checkpoints on object storage"):
        dp.open_history(f"{s3_bucket}/ckpt/model.safetensors.index.json", key="w")
