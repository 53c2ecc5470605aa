"""The one path API (io/paths.py): a local path and an s3:// URL answer the operations the store
and reader code uses alike, pickle without a live filesystem, and differ only where the
storage does (an object store has no folders, no rename, no O_EXCL)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from dask_pdist.io.paths import (
    Location,
    create_exclusive,
    disk_usage,
    files_under,
    is_remote,
    key_path,
    locate,
    missing_bucket,
    open_reader,
    read_range,
    remove_tree,
    replace_bytes,
    storage_options_of,
)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """An empty folder: a local directory, or a key prefix in a new bucket."""
    if request.param == "local":
        return locate(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return locate(f"{bucket}/root")


def _folder(root):
    if not is_remote(root):
        root.mkdir()
    return root


def test_the_store_operations_agree_local_and_s3(root):
    root = _folder(root)
    f = root / "a" / "zarr.json"
    if not is_remote(root):
        f.parent.mkdir()
    assert not f.exists()
    f.write_bytes(b"{}")
    assert f.exists() and f.is_file() and not f.is_dir() and root.is_dir()
    assert f.read_bytes() == b"{}" and f.read_text() == "{}"
    assert (f.name, f.stem, f.suffix, f.parent.name) == ("zarr.json", "zarr", ".json", "a")
    assert f.with_name("b.json").name == "b.json" and f.with_name("b.json").parent == f.parent

    replace_bytes(f, b'{"x": 1}')  # whole or not at all, and nothing left beside it
    assert f.read_bytes() == b'{"x": 1}'
    assert files_under(root) == ["a/zarr.json"]

    lock = root / ".lock"
    assert create_exclusive(lock, b"me") is True
    assert create_exclusive(lock, b"you") is False
    assert lock.read_bytes() == b"me"
    lock.unlink()
    lock.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        lock.unlink()

    data = bytes(range(256)) * 4
    blob = root / "blob.bin"
    blob.write_bytes(data)
    assert read_range(blob, 100, 50) == bytearray(data[100:150])
    assert read_range(blob, 0, 0) == bytearray()
    with open_reader(blob, len(data)) as r:
        assert r.read(3) == data[:3] and r.read(5) == data[3:8] and r.tell() == 8
    assert disk_usage(blob) == len(data) and disk_usage(root) == len(data) + len(b'{"x": 1}')
    assert missing_bucket(root) is None
    assert key_path(blob).parts[-2:] == ("root", "blob.bin")

    remove_tree(root)
    assert not root.exists() and not f.exists()


def test_reading_past_the_end_says_truncated(root):
    blob = _folder(root) / "short.bin"
    blob.write_bytes(b"12345")
    with pytest.raises(Exception, match="ended at byte 5"):
        read_range(blob, 2, 10)


def test_tree_removal_takes_names_with_pattern_characters_literally(root):
    root = _folder(root)
    for name in ("lr=a", "lr=b", "lr=[ab]", "x*y", "q?"):
        d = root / name
        if not is_remote(root):
            d.mkdir()
        (d / "zarr.json").write_bytes(b"{}")
    remove_tree(root / "lr=[ab]")
    remove_tree(root / "x*y")
    assert files_under(root) == ["lr=a/zarr.json", "lr=b/zarr.json", "q?/zarr.json"]


def test_listing_sees_what_another_writer_just_wrote(s3_bucket):
    import fsspec

    root = locate(f"{s3_bucket}/fresh")
    assert files_under(root) == [] and not root.exists()
    other = fsspec.filesystem("s3", skip_instance_cache=True)  # another process, in effect
    other.pipe_file(f"{s3_bucket}/fresh/zarr.json", b"{}")
    assert root.is_dir() and files_under(root) == ["zarr.json"]
    other.rm_file(f"{s3_bucket}/fresh/zarr.json")
    assert not (root / "zarr.json").exists() and files_under(root) == []


def test_a_location_pickles_as_its_url_and_options(s3_bucket):
    loc = locate(f"{s3_bucket}/d.zarr", {"anon": False})
    loc.exists()  # a filesystem is made and cached in this process ...
    data = pickle.dumps(loc)
    assert b"S3FileSystem" not in data and len(data) < 300  # ... but does not travel
    back = pickle.loads(data)
    assert back == loc and storage_options_of(back) == {"anon": False}
    assert storage_options_of(locate("d.zarr")) == {}


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("S3://bkt//runs///d.zarr", "s3://bkt/runs/d.zarr"),
        ("s3://bkt/lr=[ab]/d*.zarr", "s3://bkt/lr=[ab]/d*.zarr"),
        ("memory://x/y", "memory://x/y"),
    ],
)
def test_urls_are_normalised_not_expanded(given, url):
    loc = locate(given)
    assert isinstance(loc, Location) and str(loc) == url and is_remote(loc) and is_remote(given)


def test_file_urls_and_plain_paths_are_local(tmp_path):
    assert not is_remote(locate(f"file://{tmp_path}")) and not is_remote(f"file://{tmp_path}")
    assert not is_remote(tmp_path) and not is_remote(str(tmp_path))


def test_local_paths_do_not_import_fsspec(tmp_path):
    code = (
        "import sys\n"
        "from dask_pdist.io.paths import locate, files_under, read_range, replace_bytes\n"
        f"p = locate({str(tmp_path)!r})\n"
        "replace_bytes(p / 'f', b'abc'); assert read_range(p / 'f', 1, 2) == b'bc'\n"
        "assert files_under(p) == ['f']\n"
        "print('fsspec' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
