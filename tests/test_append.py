"""to_zarr(append=True): a store grown at its end equals a one-shot store of the final history,
bit for bit, writes only the new blocks (and a partly filled last one), and refuses anything
that does not continue the store, leaving it untouched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import oracle, random_history
from dask_pdist import StoreError, open_distances, open_history, pairwise_distances, to_zarr, verify_store
from dask_pdist.store.layout import consolidate, release_lock

SHAPE = (14, 9, 5)


@pytest.fixture
def history(write_safetensors):
    x = random_history(SHAPE, seed=3)
    steps = np.arange(SHAPE[0]) * 10 + 5

    def write(n: int, name: str | None = None, values: np.ndarray | None = None, labels=None):
        data = x[:n] if values is None else values
        labels = steps[:n] if labels is None else labels
        return write_safetensors(name or f"h{n}.safetensors", {"embedding_history": data, "steps": labels})

    return x, steps, write


def _distances(path: Path, **kwargs):
    return pairwise_distances(open_history(path, chunks=kwargs.pop("chunks", 4)), **kwargs)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    out = {}

    def walk(group, prefix=""):
        for name, arr in group.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(store), mode="r"))
    return out


def _assert_same_arrays(a: Path, b: Path) -> None:
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype and left[name].shape == right[name].shape, name
        if name.endswith("input_version"):  # the input files' identities when read (0 while just written)
            continue
        if name.endswith(("chunk_digest", "chunk_digest_packed")):  # keyed with each store's own random id
            assert np.array_equal(left[name] != 0, right[name] != 0), name  # recorded for the same blocks
            continue
        assert left[name].tobytes() == right[name].tobytes(), name  # bit for bit, NaN included
    assert verify_store(a) == [] and verify_store(b) == []  # and every chunk matches its own store's digest
    for arrays in (left, right):  # the packed copy a complete store's readers use holds the same digests
        assert np.array_equal(arrays["_dask_pdist/chunk_digest_packed"], arrays["_dask_pdist/chunk_digest"])


def _tree(store: Path) -> dict[str, tuple[bytes, int, int]]:
    # every file's bytes, inode and time: a chunk rewritten (temp file + rename) differs in one
    return {
        str(p.relative_to(store)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("grown", [[10, 14], [10, 11, 12, 14], [8, 14]])
def test_append_equals_one_shot(history, tmp_path, grown):
    x, steps, write = history
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write(SHAPE[0])), whole)
    store = tmp_path / "grown.zarr"
    to_zarr(_distances(write(grown[0])), store)
    for n in grown[1:]:
        to_zarr(_distances(write(n), chunks=3), store, append=True)  # the store's chunks (4) win
    _assert_same_arrays(whole, store)
    assert verify_store(store) == []
    ds = open_distances(store)
    np.testing.assert_array_equal(ds["step"].values, steps)
    e, c = oracle(x)
    np.testing.assert_allclose(ds.euclidean.values, e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.chebyshev.values, c.astype(np.float32))


def test_append_rewrites_only_the_partial_block(history, tmp_path):
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)  # blocks of 4 steps: 4, 4, 2
    before = _tree(store)
    to_zarr(_distances(write(14)), store, append=True)  # block 2 completed, block 3 new
    after = _tree(store)
    for var in ("euclidean", "chebyshev"):
        for block in (0, 1):
            assert after[f"{var}/c/{block}/0/0"] == before[f"{var}/c/{block}/0/0"]
        assert after[f"{var}/c/2/0/0"][1] != before[f"{var}/c/2/0/0"][1]
        assert f"{var}/c/3/0/0" in after and f"{var}/c/3/0/0" not in before
    changed = {k for k in after if k not in before or after[k] != before[k]}
    data = {k for k in changed if not k.endswith("zarr.json")}
    per_step = ["euclidean/c/{}/0/0", "chebyshev/c/{}/0/0", "embedding_rms/c/{}", "_dask_pdist/input_checksum/c/{}"]
    books = ["_dask_pdist/chunk_done/c/{}/0/0", "_dask_pdist/chunk_digest/c/{}/0/0/0"]
    # the partly filled block 2 and the new block 3, the chunk of step labels holding the old
    # end (1,024 labels per chunk), and the (last) chunk of the packed digest table that holds
    # blocks 2 and 3
    packed = "_dask_pdist/chunk_digest_packed/c/0/0/0/0"
    assert data == {f.format(b) for f in per_step + books for b in (2, 3)} | {"step/c/0", packed}
    assert len(after[packed][0]) < 1_000  # compressed: the digests, not the chunk's unfilled end
    # metadata: a fixed amount per append (the arrays' shapes), whatever V and the step count
    assert sum(len(after[k][0]) for k in changed - data) < 25_000


def test_nothing_new_writes_nothing(history, tmp_path):
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    before = _tree(store)
    to_zarr(_distances(write(10)), store, append=True)
    assert _tree(store) == before


def test_append_creates_a_missing_store(history, tmp_path):
    _, _, write = history
    to_zarr(_distances(write(14)), tmp_path / "whole.zarr")
    to_zarr(_distances(write(14)), tmp_path / "new.zarr", append=True)
    _assert_same_arrays(tmp_path / "whole.zarr", tmp_path / "new.zarr")


def _refused(store: Path, ds, match: str, **kwargs) -> None:
    before = _tree(store)
    with pytest.raises(StoreError, match=match):
        to_zarr(ds, store, append=True, **kwargs)
    assert _tree(store) == before
    assert not (store.parent / f".{store.name}.lock").exists()


def test_refuses_changed_stored_step(history, tmp_path):
    x, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    changed = x.copy()
    changed[6, 2, 1] += 1
    ds = _distances(write(14, "changed.safetensors", changed))
    _refused(store, ds, r"cannot append: the input changed since the store was written: step 65 \(index 6\)")


def test_refuses_step_before_the_last(history, tmp_path):
    x, steps, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    labels = steps.copy()
    labels[10:] = [1, 2, 3, 4]
    labels = np.concatenate([steps[:5], [47], steps[5:13]])
    ds = _distances(write(14, "early.safetensors", x, labels))
    _refused(store, ds, r"has step 47, before the store's last step 95.*grows only at its end")


def test_refuses_a_shorter_input_after_an_interrupted_append(history, tmp_path):
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    to_zarr(_distances(write(14)), store, append=True, compute=False)  # grown, then killed
    release_lock(store)
    _refused(store, _distances(write(12)), r"the input has 12 steps, fewer than the store's 14")


@pytest.mark.parametrize(
    "tail, match", [([93], "has step 93 after step 95"), ([140, 137], "has step 137 after step 140")]
)
def test_refuses_new_steps_not_increasing(history, tmp_path, tail, match):
    x, steps, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    labels = np.concatenate([steps[:10], tail])
    ds = _distances(write(len(labels), "tail.safetensors", x[: len(labels)], labels))
    _refused(store, ds, match + r": new steps must increase past the store's last step 95")


def test_refuses_lacking_step(history, tmp_path):
    x, steps, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    keep = [i for i in range(14) if i != 3]
    ds = _distances(write(13, "lacking.safetensors", x[keep], steps[keep]))
    _refused(store, ds, r"lacks step 35, which the store holds")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"metrics": ["euclidean"]}, r"variables: store has"),
        ({"dtype": "float64"}, r"variables: store has {'chebyshev': 'float32'.*now {'chebyshev': 'float64'"),
        ({"token_chunk": 4}, r"chunks: store has \[4, 9, 9\], now \[4, 4, 4\]"),
    ],
)
def test_refuses_other_parameters(history, tmp_path, change, match):
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    _refused(store, _distances(write(14), **change), "cannot append: the input or parameters differ.*" + match)


def test_refuses_other_input_dtype_tokens_and_codecs(history, tmp_path, write_safetensors):
    x, steps, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    bf16 = write_safetensors("bf16.safetensors", {"embedding_history": x, "steps": steps}, "BF16")
    _refused(store, _distances(bf16), r"input_dtype: store has 'F32', now 'BF16'")
    fewer = write(14, "fewer.safetensors", x[:, :8])
    _refused(store, _distances(fewer), r"tokens: store has 9, now 8")
    labelled = pairwise_distances(open_history(write(14), chunks=4, tokens=[f"t{i}" for i in range(9)]))
    _refused(store, labelled, r"tokens: store has 'none \(token index\)', now 'labels sha256:")
    _refused(store, _distances(write(14)), r"compressor: store has 'auto', now 'zstd'", compressor="zstd")


def test_interrupted_append_is_finished_by_append_or_resume(history, tmp_path, monkeypatch):
    _, _, write = history
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write(14)), whole)
    for how in ("append", "resume"):
        store = tmp_path / f"{how}.zarr"
        to_zarr(_distances(write(10)), store)
        job = to_zarr(_distances(write(14)), store, append=True, compute=False)  # grown, killed before writing
        del job
        # the writer's lock is held: a reader sees the steps whose blocks are whole (the partly
        # filled block 8..11 is being recomputed), nothing the append is writing
        seen = open_distances(store)
        assert seen.attrs["being_written"].startswith("8 of 14 steps whole so far")
        ref = open_distances(whole).isel(step=slice(0, 8))
        np.testing.assert_array_equal(seen["step"].values, ref["step"].values)
        np.testing.assert_array_equal(seen.euclidean.values, ref.euclidean.values)
        # verify says a job is writing it in one line, not one per chunk it has not written yet
        (problem,) = [str(p) for p in verify_store(store)]
        assert (
            "a job holds its writer lock" in problem and "chunks of blocks not written yet were not checked" in problem
        )
        release_lock(store)
        with pytest.raises(StoreError, match="incomplete"):
            open_distances(store)
        to_zarr(_distances(write(14)), store, **{how: True})
        _assert_same_arrays(whole, store)
        assert verify_store(store) == []


@pytest.mark.parametrize("where", ["consolidate_changed", "_write_steps", "resize_in_metadata", "add_to_manifest"])
@pytest.mark.parametrize("how", ["append", "resume"])
def test_append_killed_while_growing_is_finished(history, tmp_path, monkeypatch, how, where):
    # killed after every array was resized, between the resize of `step` and its new labels,
    # or after the store was marked incomplete, before any array was resized, or after the new
    # labels were written, before their digests were recorded (found by a follower stopped by
    # a flood of SIGTERMs: the store finished, then could not be opened, "step: misplaced")
    import dask_pdist.store.append as append

    _, _, write = history
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write(14)), whole)
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(append, where, killed)
    with pytest.raises(KeyboardInterrupt):
        to_zarr(_distances(write(14)), store, append=True)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="incomplete"):
        open_distances(store)
    to_zarr(_distances(write(14)), store, **{how: True})
    _assert_same_arrays(whole, store)
    assert verify_store(store) == []
    assert os.listdir(tmp_path).count(".d.zarr.lock") == 0


@pytest.mark.parametrize("writes", [2, 4, 7])
@pytest.mark.parametrize("how", ["append", "resume"])
def test_append_killed_between_metadata_writes_is_finished(history, tmp_path, monkeypatch, how, writes):
    # the growth writes the root (incomplete), then each array's zarr.json: killed after some
    # arrays were resized and others not, --append and --resume still finish it
    import dask_pdist.store.layout as layout

    _, _, write = history
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write(14)), whole)
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    real, calls = layout.replace_bytes, []

    def killed(where, data):
        calls.append(where)
        if len(calls) > writes:
            raise KeyboardInterrupt
        real(where, data)

    monkeypatch.setattr(layout, "replace_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        to_zarr(_distances(write(14)), store, append=True)
    monkeypatch.undo()
    assert calls[0] == store / "zarr.json" and any(c != store / "zarr.json" for c in calls[1:writes])
    with pytest.raises(StoreError, match="incomplete"):
        open_distances(store)
    # verify lists what is missing (it raised IndexError: arrays resized past the step labels)
    assert any("not marked complete" in str(p) for p in verify_store(store))
    to_zarr(_distances(write(14)), store, **{how: True})
    _assert_same_arrays(whole, store)
    assert verify_store(store) == []


def test_append_consolidated_metadata_is_zarrs(history, tmp_path):
    # an append writes the consolidated metadata itself (the arrays it resized): what zarr's
    # own consolidation of the grown store gives
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    to_zarr(_distances(write(14)), store, append=True)
    ours = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]
    consolidate(store)  # zarr's consolidate_metadata
    theirs = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]
    assert ours == theirs
    assert ours["metadata"]["euclidean"]["shape"][0] == 14


def test_reader_opened_before_an_append(history, tmp_path):
    # whole blocks stay readable; the one partly filled block, rewritten, is refused, never
    # mixed, and the error says the store changed since it was opened (not damage to recompute)
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    before = open_distances(store)
    expected = before.euclidean.values
    to_zarr(_distances(write(14)), store, append=True)
    np.testing.assert_array_equal(before.euclidean[:8].values, expected[:8])
    with pytest.raises(
        StoreError, match=r"(euclidean|chebyshev|embedding_rms) chunk .*steps 85..95: the store was changed by a writer"
    ) as caught:
        before.euclidean[8:].compute()
    assert "recompute" not in str(caught.value)
    np.testing.assert_array_equal(open_distances(store).euclidean[:10].values, expected)


def _checkpoints(folder: Path, x: np.ndarray, steps: np.ndarray, write_safetensors) -> None:
    # Trainer's layout: checkpoint-N/model.safetensors
    for i in range(len(x)):
        (folder / f"checkpoint-{steps[i]}").mkdir(parents=True, exist_ok=True)
        write_safetensors(
            str((folder / f"checkpoint-{steps[i]}" / "model.safetensors").relative_to(folder.parent)),
            {"transformer.wte.weight": x[i], "transformer.wpe.weight": x[i, :3]},
        )


def test_cli_append_checkpoints(history, tmp_path, write_safetensors, capsys):
    from dask_pdist.cli.main import main

    x, steps, _ = history
    run = tmp_path / "run"
    _checkpoints(run, x[:7], steps[:7], write_safetensors)
    glob = str(run / "checkpoint-*")
    store = str(tmp_path / "d.zarr")
    opts = ["--key", "transformer.wte.weight", "--no-progress"]
    assert main(["compute", glob, "-o", store, "--chunk-steps", "3", *opts]) == 0
    _checkpoints(run, x, steps, write_safetensors)  # the run saved more
    capsys.readouterr()
    # other step chunks than the store's: said, not silently ignored
    assert main(["compute", glob, "-o", store, "--append", "--chunk-steps", "2", *opts]) == 2
    err = capsys.readouterr().err
    assert "--chunk-steps 2: " in err and "holds chunks of 3 steps" in err, err
    assert main(["compute", glob, "-o", store, "--append", "--chunk-steps", "3", *opts]) == 0  # the same: fine
    assert "appending 7 steps to its 7" in capsys.readouterr().err
    assert main(["compute", glob, "-o", str(tmp_path / "whole.zarr"), "--chunk-steps", "3", *opts]) == 0
    _assert_same_arrays(tmp_path / "whole.zarr", Path(store))
    assert verify_store(store) == []
    capsys.readouterr()
    assert main(["compute", glob, "-o", store, "--append", *opts]) == 0
    assert "(14 in all): nothing to append" in capsys.readouterr().out

    before = _tree(Path(store))
    (run / "checkpoint-20").mkdir()
    write_safetensors("run/checkpoint-20/model.safetensors", {"transformer.wte.weight": x[0]})
    assert main(["compute", glob, "-o", store, "--append", *opts]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dask-pdist: error: ") and err.count("\n") == 1
    assert "has step 20, before the store's last step 135" in err
    shutil.rmtree(run / "checkpoint-20")
    write_safetensors("run/checkpoint-15/model.safetensors", {"transformer.wte.weight": x[0]})
    assert main(["compute", glob, "-o", store, "--append", *opts]) == 2
    assert "the input changed since the store was written: step 15 (index 1)" in capsys.readouterr().err
    assert _tree(Path(store)) == before
    assert main(["compute", glob, "-o", store, "--append", "--overwrite", *opts]) == 2
    assert "overwrite and append exclude each other" in capsys.readouterr().err


def test_append_on_object_storage(history, tmp_path, s3_bucket):
    # the store at an s3:// URL (moto's server): grown the same way, equal to a local one-shot store
    _, steps, write = history
    whole = tmp_path / "whole.zarr"
    to_zarr(_distances(write(14)), whole)
    url = f"{s3_bucket}/d.zarr"
    to_zarr(_distances(write(10)), url)
    to_zarr(_distances(write(14)), url, append=True)
    assert verify_store(url) == []
    remote, local = open_distances(url), open_distances(whole)
    for name in ("euclidean", "chebyshev", "step", "embedding_rms"):
        assert remote[name].values.tobytes() == local[name].values.tobytes(), name
    before = open_distances(url)["step"].values.tolist()
    with pytest.raises(StoreError, match="has step 47 after step 135: new steps must increase past the store's"):
        x15 = np.concatenate([random_history(SHAPE, seed=3), random_history((1, 9, 5))])
        to_zarr(_distances(write(15, "late.safetensors", x15, np.concatenate([steps, [47]]))), url, append=True)
    assert open_distances(url)["step"].values.tolist() == before == steps.tolist()


def test_resume_of_a_grown_input_points_to_append(history, tmp_path):
    _, _, write = history
    store = tmp_path / "d.zarr"
    to_zarr(_distances(write(10)), store)
    with pytest.raises(StoreError, match=r"cannot resume, .*the input grew \(new steps\): finish it with append=True"):
        to_zarr(_distances(write(12)), store, resume=True)
