"""Chunks bound to their place (issue 20.1, 20.7): a chunk file swapped with another of the
same array, or copied in from another store, decodes cleanly (its crc32c matches its own
bytes); every reader must still refuse it, naming it, and ``--resume`` recomputes exactly the
blocks whose chunks fail their checks."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle, random_history
from dask_pdist import RepairWarning, StoreError, open_distances, open_history, pairwise_distances, to_zarr
from dask_pdist.cli.main import main
from dask_pdist.store.verification import verify_store

STEPS = np.arange(33, dtype=np.int64) * 10  # blocks of 7 steps: 0..60, 70..130, ...


@pytest.fixture
def history(write_safetensors):
    x = random_history((33, 11, 6), seed=3)
    path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": STEPS}, "F32")
    return path, x


@pytest.fixture
def store(history, tmp_path):
    path = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(open_history(history[0], chunks=7)), path, progress=False)
    return path


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _chunk(store: Path, name: str, *idx: int) -> Path:
    return store.joinpath(name, "c", *map(str, idx))


@pytest.mark.parametrize("name", ["euclidean", "chebyshev"])
def test_swapped_distance_chunks_are_refused_by_every_reader(store, name, tmp_path, capsys):
    a, b = _chunk(store, name, 1, 0, 0), _chunk(store, name, 2, 0, 0)
    if name == "euclidean":  # uncompressed: same size, only the position tells them apart
        assert a.stat().st_size == b.stat().st_size
    _swap(a, b)
    problems = [str(p) for p in verify_store(store)]
    assert len(problems) == 2 and all("misplaced" in p for p in problems), problems
    assert any("steps 70..130" in p for p in problems) and any("steps 140..200" in p for p in problems)
    with pytest.raises(StoreError, match=rf"{name} chunk \((1|2), 0, 0\), steps (70..130|140..200): misplaced"):
        _ = open_distances(store)[name].values
    with pytest.raises(StoreError, match="misplaced"):
        _ = open_distances(store, chunks=None)[name].sel(step=100).values
    # untouched steps still read
    assert np.isfinite(open_distances(store)[name].sel(step=slice(0, 60)).values).all()
    assert main(["verify", str(store)]) == 1
    out = tmp_path / "d.safetensors"
    assert main(["export", str(store), str(out), "--no-progress"]) == 2
    assert main(["summary", str(store)]) == 2
    err = capsys.readouterr().err
    assert "misplaced" in err and not out.exists()
    if name == "chebyshev":
        assert main(["clusters", str(store), "--no-progress"]) == 2
        assert "misplaced" in capsys.readouterr().err


def test_per_step_coordinate_swap_is_refused(store):
    # embedding_rms is written block by block like the distances
    _swap(_chunk(store, "embedding_rms", 0), _chunk(store, "embedding_rms", 3))
    with pytest.raises(StoreError, match="embedding_rms chunk \\((0|3),\\).*misplaced"):
        _ = open_distances(store).embedding_rms.values
    assert {p.variable for p in verify_store(store)} == {"embedding_rms"}


def test_a_coordinate_chunk_from_another_store_is_refused(store, history, tmp_path, write_safetensors):
    # the same shape, other step labels: its step coordinate chunk decodes cleanly
    other = tmp_path / "other.zarr"
    x = history[1]
    src = write_safetensors("o.safetensors", {"embedding_history": x, "steps": STEPS + 1}, "F32")
    to_zarr(pairwise_distances(open_history(src, chunks=7)), other, progress=False)
    shutil.copy(_chunk(other, "step", 0), _chunk(store, "step", 0))
    with pytest.raises(StoreError, match="step.*misplaced"):
        open_distances(store)
    assert any(p.variable == "step" and "misplaced" in p.problem for p in verify_store(store))


def test_resume_recomputes_exactly_the_blocks_that_fail(store, history, capsys):
    path, x = history
    ref = open_distances(store).euclidean.values
    before = {p: p.stat().st_mtime_ns for p in (store / "euclidean" / "c").glob("*/0/0")}
    assert len(before) == 5
    _swap(_chunk(store, "euclidean", 1, 0, 0), _chunk(store, "euclidean", 2, 0, 0))
    raw = bytearray(_chunk(store, "chebyshev", 4, 0, 0).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # corrupt, present
    _chunk(store, "chebyshev", 4, 0, 0).write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_zarr(pairwise_distances(open_history(path, chunks=7)), store, resume=True, progress=False)
    repairs = [str(w.message) for w in caught if issubclass(w.category, RepairWarning)]
    assert len(repairs) == 1 and "3 written block(s)" in repairs[0], repairs
    assert verify_store(store) == []
    np.testing.assert_array_equal(open_distances(store).euclidean.values, ref)
    euc, cheb = oracle(x)
    np.testing.assert_allclose(open_distances(store).euclidean.values, euc, rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(open_distances(store).chebyshev.values, cheb.astype(np.float32))
    # only the failing blocks were rewritten (block 4 for its chebyshev chunk: a block is one task)
    rewritten = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert rewritten == {_chunk(store, "euclidean", i, 0, 0) for i in (1, 2, 4)}


def test_cli_resume_says_which_chunks_it_recomputes(store, history, capsys):
    _swap(_chunk(store, "chebyshev", 0, 0, 0), _chunk(store, "chebyshev", 1, 0, 0))
    assert main(["compute", str(history[0]), "-o", str(store), "--resume", "--chunk-steps", "7", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 written block(s) fail their check and are recomputed" in err and "misplaced" in err
    assert "resuming, 2 of 5 blocks to compute" in err
    assert main(["compute", str(history[0]), "-o", str(store), "--resume", "--chunk-steps", "7", "--no-progress"]) == 0
    assert (
        "complete: nothing to compute (every written chunk is present and passes its checks)" in capsys.readouterr().err
    )


def test_swapped_objects_on_an_object_store_are_refused(s3_history, tmp_path):
    import fsspec

    local, url = s3_history("runs/h.safetensors", seed=5, steps=STEPS[:29])
    target = url.rsplit("/", 1)[0] + "/d.zarr"
    to_zarr(pairwise_distances(open_history(url, chunks=7)), target, progress=False)
    fs = fsspec.filesystem("s3")
    base = target.split("://", 1)[1]
    a, b = f"{base}/euclidean/c/1/0/0", f"{base}/euclidean/c/3/0/0"
    da_, db = fs.cat_file(a), fs.cat_file(b)
    fs.pipe_file(a, db)
    fs.pipe_file(b, da_)
    fs.invalidate_cache()
    with pytest.raises(StoreError, match=r"euclidean chunk \((1|3), 0, 0\).*misplaced"):
        _ = open_distances(target).euclidean.values
    assert sum("misplaced" in p.problem for p in verify_store(target)) == 2


def test_chunks_of_neighbours_and_clusters_stores_from_elsewhere_are_refused(history, tmp_path, write_safetensors):
    # a chunk copied from another store of the same shape decodes cleanly: only its recorded
    # digest tells it does not belong
    import dask_pdist as dp

    other = write_safetensors("o.safetensors", {"embedding_history": random_history((33, 11, 6), seed=4)}, "F32")
    for name, src in (("mine", history[0]), ("other", other)):
        hist = open_history(src, chunks=7)
        dp.neighbours_to_zarr(dp.neighbours(hist, k=3), tmp_path / f"{name}-n.zarr")
        dp.write_clusters(dp.clusters(hist, threshold=1.0), tmp_path / f"{name}-c.zarr")
    nb, cl = dp.open_neighbours(tmp_path / "mine-n.zarr"), dp.open_clusters(tmp_path / "mine-c.zarr")
    assert nb.load() is not None and cl.load() is not None  # intact: they read
    for kind, ds, opener in (("n", nb, dp.open_neighbours), ("c", cl, dp.open_clusters)):
        var = next(n for n in ds.data_vars if ds[n].ndim >= 2)
        mine = tmp_path / f"mine-{kind}.zarr" / var / "c"
        chunk = next(p for p in sorted(mine.rglob("*")) if p.is_file())
        theirs = tmp_path / f"other-{kind}.zarr" / var / "c" / chunk.relative_to(mine)
        assert chunk.read_bytes() != theirs.read_bytes()
        shutil.copy(theirs, chunk)
        with pytest.raises(ValueError, match="misplaced"):
            _ = opener(tmp_path / f"mine-{kind}.zarr")[var].values


def test_verify_checks_neighbours_and_clusters_stores_and_compute_will_not_take_them(history, tmp_path, capsys):
    import dask_pdist as dp

    hist = open_history(history[0], chunks=7)
    nb, cl = tmp_path / "n.zarr", tmp_path / "c.zarr"
    dp.neighbours_to_zarr(dp.neighbours(hist, k=3), nb)
    dp.write_clusters(dp.clusters(hist, threshold=1.0), cl)
    for store in (nb, cl):
        assert verify_store(store) == []
        chunk = next(p for p in sorted((store / "step" / "c").rglob("*")) if p.is_file())
        raw = bytearray(chunk.read_bytes())
        raw[0] ^= 0x01
        chunk.write_bytes(bytes(raw))
        assert [p.variable for p in verify_store(store)] == ["step"]
        assert main(["verify", str(store)]) == 1
        # not a distance store: compute --overwrite refuses to replace it
        assert main(["compute", str(history[0]), "-o", str(store), "--overwrite", "--no-progress"]) == 2
        assert "not a dask_pdist store" in capsys.readouterr().err


_BLOCK_FILES = (
    "euclidean/c/{b}/0/0",
    "chebyshev/c/{b}/0/0",
    "embedding_rms/c/{b}",
    "_dask_pdist/input_checksum/c/{b}",
    "_dask_pdist/chunk_digest/c/{b}/0/0/0",
)


def test_a_whole_block_moved_with_its_digest_record_is_refused(store, history, tmp_path, write_safetensors):
    # the record travels with the block: digests are keyed with their position and their store
    other = tmp_path / "other.zarr"
    src = write_safetensors("o.safetensors", {"embedding_history": random_history((33, 11, 6), seed=9)}, "F32")
    to_zarr(pairwise_distances(open_history(src, chunks=7)), other, progress=False)
    for pattern in _BLOCK_FILES:
        shutil.copy(other / pattern.format(b=3), store / pattern.format(b=3))
    with pytest.raises(StoreError, match="misplaced"):
        _ = open_distances(store).euclidean.values
    assert {p.variable for p in verify_store(store)} >= {"euclidean", "chebyshev"}
    # two blocks of one store swapped, every file of each
    fresh = tmp_path / "fresh.zarr"
    to_zarr(pairwise_distances(open_history(history[0], chunks=7)), fresh, progress=False)
    for pattern in _BLOCK_FILES:
        _swap(fresh / pattern.format(b=1), fresh / pattern.format(b=2))
    with pytest.raises(StoreError, match="misplaced"):
        _ = open_distances(fresh).euclidean.values
    assert verify_store(fresh) != []


@pytest.mark.parametrize("lose", ["chunk_digest", "manifest"])
def test_a_store_that_lost_its_digest_record_is_refused_not_trusted(store, lose, capsys):
    if lose == "chunk_digest":
        shutil.rmtree(store / "_dask_pdist" / "chunk_digest")
    else:
        meta = json.loads((store / "_dask_pdist" / "zarr.json").read_text())
        del meta["attributes"]["digests"]
        (store / "_dask_pdist" / "zarr.json").write_text(json.dumps(meta))
    _swap(_chunk(store, "euclidean", 1, 0, 0), _chunk(store, "euclidean", 2, 0, 0))
    lost = "record of chunk digests .* is missing|chunk_digest/zarr.json is missing"
    with pytest.raises(StoreError, match=lost):
        open_distances(store)
    assert any(re.search(lost, str(p)) for p in verify_store(store))
    assert main(["summary", str(store)]) == 2
    assert re.search(lost, capsys.readouterr().err)


def test_a_truncated_chunk_is_called_corrupt_not_misplaced(store):
    chunk = _chunk(store, "euclidean", 2, 0, 0)
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(StoreError, match=r"euclidean chunk \(2, 0, 0\).*corrupt"):
        _ = open_distances(store).euclidean.values


def _packed_chunk(store: Path) -> Path:
    return store / "_dask_pdist" / "chunk_digest_packed" / "c" / "0" / "0" / "0" / "0"


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_a_lost_or_damaged_packed_table_falls_back_to_the_blocks_records(store, history, damage):
    # the packed table is a copy of the per-block records: reads take those, swaps stay refused
    packed = _packed_chunk(store)
    if damage == "deleted":
        packed.unlink()
    else:
        data = bytearray(packed.read_bytes())
        data[len(data) // 2] ^= 0xFF
        packed.write_bytes(bytes(data))
    np.testing.assert_allclose(open_distances(store).euclidean.values, oracle(history[1])[0], rtol=1e-6, atol=0)
    _swap(_chunk(store, "euclidean", 1, 0, 0), _chunk(store, "euclidean", 2, 0, 0))
    with pytest.raises(StoreError, match="misplaced"):
        _ = open_distances(store).euclidean.values


def test_an_append_after_the_packed_table_was_lost_keeps_every_chunk_checked(history, tmp_path, write_safetensors):
    x = history[1]
    short = write_safetensors("short.safetensors", {"embedding_history": x[:20], "steps": STEPS[:20]}, "F32")
    store = tmp_path / "grown.zarr"
    to_zarr(pairwise_distances(open_history(short, chunks=7)), store, progress=False)
    _packed_chunk(store).unlink()
    to_zarr(pairwise_distances(open_history(history[0], chunks=7)), store, append=True, progress=False)
    _swap(_chunk(store, "euclidean", 0, 0, 0), _chunk(store, "euclidean", 1, 0, 0))
    with pytest.raises(StoreError, match="misplaced"):
        _ = open_distances(store).euclidean.values
    assert any("misplaced" in str(p) for p in verify_store(store))


def test_a_block_whose_digests_are_lost_is_refused_then_recomputed_by_resume(store, history):
    # a done block without its record (its chunk_digest file deleted, the packed copy not used)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["dask_pdist_digests_packed"] = 0
    (store / "zarr.json").write_text(json.dumps(meta))
    (store / "_dask_pdist" / "chunk_digest" / "c" / "2" / "0" / "0" / "0").unlink()
    _swap(_chunk(store, "euclidean", 2, 0, 0), _chunk(store, "euclidean", 3, 0, 0))
    with pytest.raises(
        StoreError, match=r"record of chunk digests .*step-block 2 of the blocks marked written.*--resume"
    ):
        open_distances(store)
    assert any("step-block 2" in str(p) for p in verify_store(store))
    # --resume recomputes the block without a record (and the one holding a swapped chunk)
    with pytest.warns(RepairWarning, match=r"block \(2, 0, 0\): its record of chunk digests is lost"):
        to_zarr(pairwise_distances(open_history(history[0], chunks=7)), store, resume=True, progress=False)
    assert verify_store(store) == []
    np.testing.assert_allclose(open_distances(store).euclidean.values, oracle(history[1])[0], rtol=1e-6, atol=0)
