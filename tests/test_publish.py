"""The one publishing primitive (io/publish.py): a kill at any moment leaves the old output or the
new one, whole, for every output kind; leftovers of dead writers are tidied, live ones never."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dask_pdist as dp
from dask_pdist.io import publish as pub
from dask_pdist.io.safetensors_format import read_header

# -- the primitive itself -----------------------------------------------------------------------


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "zarr.json").write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_swaps_a_folder_in_and_removes_the_old_one(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(pub, "_RENAMEAT2", [None])
    target = _folder(tmp_path / "d.zarr", "old")
    hidden = _folder(pub.hidden_name(target), "new")
    pub.publish(hidden, target, replace=True)
    assert (target / "zarr.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_publish_without_replace_refuses_a_target_that_appeared(tmp_path):
    target = _folder(tmp_path / "d.zarr", "theirs")
    hidden = _folder(pub.hidden_name(target), "ours")
    with pytest.raises(dp.StoreError, match="appeared while writing"):
        pub.publish(hidden, target, replace=False)
    assert (target / "zarr.json").read_text() == "theirs" and not hidden.exists()


def test_publish_a_file_is_atomic_replace(tmp_path):
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")
    hidden = pub.hidden_name(target)
    hidden.write_bytes(b"new")
    pub.publish(hidden, target, replace=True)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clean_stale_restores_an_old_output_moved_aside_and_spares_live_writers(tmp_path):
    host = socket.gethostname()
    target = tmp_path / "d.zarr"
    aside = _folder(tmp_path / f".d.zarr.{host}-{_dead_pid()}.0123abcd.replaced", "old")  # killed mid-swap
    dead = _folder(tmp_path / f".d.zarr.{host}-{_dead_pid()}.4567abcd.partial", "half")
    live = _folder(tmp_path / f".d.zarr.{host}-{os.getpid()}.89abcdef.partial", "building")
    other = _folder(tmp_path / f".e.zarr.{host}-{_dead_pid()}.01234567.partial", "not ours")
    assert pub.clean_stale(target) == [dead]
    assert (target / "zarr.json").read_text() == "old"
    assert not aside.exists() and not dead.exists() and live.exists() and other.exists()


def test_check_parent_says_which_folder(tmp_path):
    with pytest.raises(dp.StoreError, match=r"parent directory .*nowhere does not exist"):
        pub.check_parent(tmp_path / "nowhere" / "d.zarr")


# -- kills at random moments, one output kind at a time -----------------------------------------

_WRITE = {
    "store": "dp.to_zarr(dp.pairwise_distances(h), out, overwrite=True, progress=False)",
    "export": "dp.to_safetensors(dp.open_distances(src), out, overwrite=True, progress=False)",
    "clusters": "dp.write_clusters(dp.clusters(h, threshold=0.05), out, overwrite=True)",
    "neighbours": "dp.neighbours_to_zarr(dp.neighbours(h, k=3), out, overwrite=True)",
}


def _read(kind: str, out: Path) -> object:
    if kind == "store":
        ds = dp.open_distances(out, allow_incomplete=True)
        return ds.euclidean.values
    if kind == "export":
        tensors, _ = read_header(out)
        return out.read_bytes() if tensors else None
    if kind == "clusters":
        return xr.open_zarr(out, zarr_format=3, consolidated=True).cluster.values
    return dp.open_neighbours(out).neighbour.values


def _same(a: object, b: object) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return a == b
    return np.array_equal(a, b, equal_nan=True)


@pytest.fixture(scope="module")
def two_histories(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    made = []
    for seed in (1, 2):
        path = root / f"h{seed}.safetensors"
        dp.write_synthetic_history(path, steps=300, vocab=48, dim=16, seed=seed)
        store = root / f"d{seed}.zarr"
        dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=20)), store, progress=False)
        made.append((path, store))
    return made


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_WRITE))
def test_a_kill_at_any_moment_leaves_the_old_output_or_the_new_one(two_histories, tmp_path, kind):
    (old_h, old_store), (new_h, new_store) = two_histories
    out = tmp_path / ("x.safetensors" if kind == "export" else "x.zarr")
    script = (
        "import sys, dask_pdist as dp\n"
        "out, src = sys.argv[1], sys.argv[2]\n"
        "h = dp.open_history(sys.argv[3], chunks=20)\n"
        "print('ready', flush=True)\n" + _WRITE[kind] + "\n"
    )

    def run(history: Path, store: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", script, str(out), str(store), str(history)], stdout=subprocess.PIPE, text=True
        )

    first = run(old_h, old_store)
    assert first.wait(timeout=120) == 0
    old = _read(kind, out)
    kept = tmp_path / "kept" / out.name  # the old output as its writer left it, copied back each round
    kept.parent.mkdir()
    (shutil.copytree if out.is_dir() else shutil.copy2)(out, kept)
    new_proc = run(new_h, new_store)
    new_proc.wait(timeout=120)
    assert new_proc.returncode == 0
    new = _read(kind, out)
    assert not _same(old, new)
    rng = np.random.default_rng(sum(map(ord, kind)))
    outcomes = set()
    for delay in rng.uniform(0.0, 1.5, size=4):
        # back to the old output, then a replacement killed after `delay` seconds of work
        (shutil.rmtree if out.is_dir() else os.unlink)(out)
        (shutil.copytree if kept.is_dir() else shutil.copy2)(kept, out)
        assert _same(_read(kind, out), old)
        proc = run(new_h, new_store)
        assert proc.stdout.readline().strip() == "ready"  # imports and input opened: the write starts
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        pub.clean_stale(out)  # what the next writer does first
        now = _read(kind, out)
        if _same(now, old):
            outcomes.add("old")
        elif kind == "store" and _store_is_new_and_truthful(out, new):
            outcomes.add("new")
        else:
            assert _same(now, new), f"{kind}: after a kill at {delay:.2f} s the output is neither the old nor the new"
            outcomes.add("new")
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.") and "lock" not in p.name]
    assert outcomes  # which ones depends on timing; each is whole


def _store_is_new_and_truthful(out: Path, new: np.ndarray) -> bool:
    # a distance store is published when it is created, then filled block by block: the new
    # store may be incomplete, and then says so; every block it calls done holds the new values
    from dask_pdist.store.layout import store_progress

    done, _ = store_progress(out)
    values = dp.open_distances(out, allow_incomplete=True).euclidean.values
    rows = np.repeat(done[:, 0, 0].astype(bool), 20)[: len(values)]
    return np.array_equal(values[rows], new[rows]) and bool(np.isnan(values[~rows]).all())


def test_a_kill_between_the_two_renames_leaves_the_old_store_for_the_next_writer(two_histories, tmp_path):
    # the fallback swap (no renameat2): the process dies right after moving the old store aside
    (old_h, _), _ = two_histories
    out = tmp_path / "c.zarr"
    dp.write_clusters(dp.clusters(dp.open_history(old_h, chunks=20)), out)
    old = xr.open_zarr(out, zarr_format=3, consolidated=True).cluster.values
    script = (
        "import os, signal, sys, dask_pdist as dp\n"
        "from dask_pdist.io import publish\n"
        "publish._RENAMEAT2[:] = [None]\n"
        "real = os.rename\n"
        "def rename(a, b):\n"
        "    real(a, b)\n"
        "    if str(a).endswith('c.zarr'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.rename = rename\n"
        "dp.write_clusters(dp.clusters(dp.open_history(sys.argv[1], chunks=20), threshold=0.05), sys.argv[2],"
        " overwrite=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(old_h), str(out)])
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the worst moment: the old store is under its hidden name
    pub.clean_stale(out)
    assert np.array_equal(xr.open_zarr(out, zarr_format=3, consolidated=True).cluster.values, old)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["clusters", "neighbours"])
def test_a_kill_right_after_a_folder_is_deleted_never_loses_both(two_histories, tmp_path, kind):
    # the moment the old code lost both stores: it deleted the old one, then renamed the new one
    (old_h, _), (new_h, _) = two_histories
    out = tmp_path / "x.zarr"
    write = _WRITE[kind].replace("dp.clusters(h, threshold=0.05)", "dp.clusters(h)")
    script = (
        "import os, shutil, signal, sys, dask_pdist as dp\n"
        "out, h = sys.argv[1], dp.open_history(sys.argv[2], chunks=20)\n"
        "if len(sys.argv) > 3:\n"
        "    real = shutil.rmtree\n"
        "    def rmtree(path, *a, **k):\n"
        "        real(path, *a, **k)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    shutil.rmtree = rmtree\n" + write + "\n"
    )
    assert subprocess.run([sys.executable, "-c", script, str(out), str(old_h)]).returncode == 0
    old = _read(kind, out)
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(new_h), "kill"])
    assert proc.returncode == -signal.SIGKILL
    pub.clean_stale(out)
    now = _read(kind, out)  # whole: the old store, or the new one
    assert out.exists() and now is not None
    assert _same(now, old) or not np.isnan(np.asarray(now, dtype=float)).any()
