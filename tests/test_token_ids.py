"""Token subsets: open_history(token_ids=...), --token-ids, reading only the subset's rows."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import dask_pdist as dp
import dask_pdist.io.sources
from conftest import random_history
from dask_pdist import InputError, open_history, parse_token_ids
from dask_pdist.cli.main import main
from dask_pdist.errors import StoreError

SPEC = "40:45,3,7:9,63"
IDS = [3, 7, 8, 40, 41, 42, 43, 44, 63]


def test_parse_spec_ranges_file_and_sequences(tmp_path):
    assert parse_token_ids(SPEC, 64).tolist() == IDS
    assert parse_token_ids(" 5 , 0:2 ", 6).tolist() == [0, 1, 5]
    (tmp_path / "ids.txt").write_text("9\n\n2\n 4\n")
    assert parse_token_ids(f"@{tmp_path / 'ids.txt'}", 10).tolist() == [2, 4, 9]
    assert parse_token_ids([5, 1], 6).tolist() == [1, 5]
    assert parse_token_ids(np.array([0], dtype=np.uint16), 1).tolist() == [0]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("0:5,64", r"token_ids '0:5,64' item 2: '64' is outside 0..63"),
        ("5:5", r"'5:5' is outside 0..63 or an empty range \(ranges are half-open"),
        ("9:3", r"empty range"),
        ("0:65", r"'0:65' is outside"),
        ("-1", r"'-1' is outside"),
        ("1,a:3", r"item 2: 'a:3' is not an index or a range a:b"),
        ("1,,2", r"item 2: '' is not an index"),
        ("0:10,5", r"token 5 is listed twice"),
        ("", r"item 1: '' is not an index"),
        ([1, 99], r"token_ids: index 99 is outside 0..63"),
        ([[1, 2]], r"expected a 1-D sequence of integers"),
        ([1.5], r"expected a 1-D sequence of integers"),
        ([], r"selects no token"),
        ([4, 4], r"token 4 is listed twice"),
    ],
)
def test_bad_specs_name_the_spec_and_item(spec, match):
    with pytest.raises(InputError, match=match):
        parse_token_ids(spec, 64)


def test_bad_file_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.txt: token id file not found \(token_ids '@"):
        parse_token_ids(f"@{tmp_path / 'nope.txt'}", 10)
    (tmp_path / "ids.txt").write_text("1\n2\nthree\n")
    with pytest.raises(InputError, match=r"ids.txt line 3: 'three' is not an index"):
        parse_token_ids(f"@{tmp_path / 'ids.txt'}", 10)
    with pytest.raises(InputError, match=r"not a text file of token indices"):
        parse_token_ids(f"@{tmp_path}", 10)


def _inputs(kind, tmp_path, write_safetensors, x):
    if kind == "safetensors":
        return write_safetensors("h.safetensors", {"h": x}, "BF16")
    if kind == "npy":
        np.save(tmp_path / "h.npy", x)
        return tmp_path / "h.npy"
    if kind == "zarr":
        zarr.create_array(str(tmp_path / "h.zarr"), data=x, chunks=(3, 16, x.shape[2]))
        return tmp_path / "h.zarr"
    paths = [write_safetensors(f"step_{s}.safetensors", {"w": x[s]}) for s in range(len(x))]
    return [str(p) for p in paths]


@pytest.mark.parametrize("kind", ["safetensors", "npy", "zarr", "checkpoints"])
def test_subset_distances_are_the_sub_matrix_of_the_full_result(kind, tmp_path, write_safetensors):
    x = random_history((7, 64, 6), seed=5)
    path = _inputs(kind, tmp_path, write_safetensors, x)
    full = dp.pairwise_distances(open_history(path, chunks=3), token_chunk=20).compute()
    h = open_history(path, chunks=3, token_ids=SPEC)
    assert h["token"].values.tolist() == IDS and h.chunks[1] == (len(IDS),)
    sub = dp.pairwise_distances(h).compute()
    for m in ("euclidean", "chebyshev"):
        want = full[m].values[:, IDS][:, :, IDS]
        np.testing.assert_array_equal(sub[m].values.view(np.int32), want.view(np.int32))  # bit for bit
    np.testing.assert_array_equal(sub["token_i"].values, IDS)


@pytest.mark.parametrize("kind", ["safetensors", "checkpoints"])
def test_subset_reads_only_its_rows(kind, tmp_path, write_safetensors, monkeypatch):
    # rows of 512 (bf16) or 1024 bytes: gaps over 256 KiB (512 rows) are not read through
    x = random_history((3, 2000, 256))
    path = _inputs(kind, tmp_path, write_safetensors, x)
    reads: list[int] = []
    real = dask_pdist.io.sources.pread_exact

    def spy(p, offset, n):
        reads.append(n)
        return real(p, offset, n)

    monkeypatch.setattr(dask_pdist.io.sources, "pread_exact", spy)
    h = open_history(path, token_ids="0:10,1990:1995")
    reads.clear()
    got = h.values
    itemsize = 2 if kind == "safetensors" else 4
    assert sum(reads) == 3 * 15 * 256 * itemsize  # 15 rows per step, not 2000
    np.testing.assert_array_equal(got, open_history(path).values[:, list(range(10)) + list(range(1990, 1995))])


def test_subset_with_labels_keeps_labels_and_indices(write_safetensors, tmp_path):
    x = random_history((3, 10, 4))
    path = write_safetensors("h.safetensors", {"h": x})
    (tmp_path / "tok.txt").write_text("\n".join("abcdefghij") + "\n")
    h = open_history(path, tokens=tmp_path / "tok.txt", token_ids=[9, 2, 4])
    assert h["token"].values.tolist() == ["c", "e", "j"] and h["token_id"].values.tolist() == [2, 4, 9]
    np.testing.assert_array_equal(h.values, x[:, [2, 4, 9]])


def test_resume_refuses_another_subset_of_the_same_size(write_safetensors, tmp_path):
    x = random_history((4, 12, 3))
    path = write_safetensors("h.safetensors", {"h": x})
    out = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(open_history(path, token_ids="0:5")), out)
    with pytest.raises(StoreError, match="source_fingerprint"):
        dp.to_zarr(dp.pairwise_distances(open_history(path, token_ids="5:10")), out, resume=True)


def test_cli_compute_token_ids(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "9", "--vocab", "30", "--dim", "5"])
    (tmp_path / "ids.txt").write_text("29\n0\n3\n")
    out = tmp_path / "d.zarr"
    assert main(["compute", str(src), "-o", str(out), "--token-ids", f"@{tmp_path / 'ids.txt'}", "--no-progress"]) == 0
    ds = dp.open_distances(out)
    assert ds["token_i"].values.tolist() == [0, 3, 29]
    full = dp.pairwise_distances(open_history(src)).euclidean.values
    np.testing.assert_array_equal(ds.euclidean.values, full[:, [0, 3, 29]][:, :, [0, 3, 29]])
    capsys.readouterr()
    assert main(["compute", str(src), "-o", str(tmp_path / "e.zarr"), "--token-ids", "0:31"]) == 2
    assert "'0:31' is outside 0..29" in capsys.readouterr().err


def test_clusters_on_a_subset(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "6", "--vocab", "40", "--dim", "4"])
    full = dp.clusters(open_history(src)).compute()
    ids = np.array([0, 1, 2, 3, 4, 20, 37, 38, 39])
    sub = dp.clusters(open_history(src, token_ids=ids)).compute()
    assert sub["token"].values.tolist() == ids.tolist()
    # threshold 0 groups equal embeddings: the subset's groups are the full groups cut to it
    labels = full.cluster.values[:, ids]
    want = (labels[:, :, None] == labels[:, None, :]).sum(-1)
    np.testing.assert_array_equal(sub.cluster_size.values, want)
    assert (want[0] == len(ids)).all()  # all tokens identical at step 0
    capsys.readouterr()
    assert main(["clusters", str(src), "--token-ids", "0:5,20,37:40", "--no-progress"]) == 0
    store = tmp_path / "d.zarr"
    main(["compute", str(src), "-o", str(store), "--no-progress"])
    capsys.readouterr()
    assert main(["clusters", str(store), "--token-ids", "0:5", "--no-progress"]) == 2
    assert "--token-ids applies to a history" in capsys.readouterr().err
