"""Growing a distance store at its end: the checks before an append, and the growth itself.

An append is a resume whose store first grows: every per-step array (the distances,
``step``, ``embedding_rms``, and the bookkeeping ``chunk_done``, ``chunk_digest`` and
``input_checksum``) is resized along ``step``, the new step labels are written, and the new
blocks are then written by the ordinary write graph of :mod:`.writer`. Chunks along ``step``
stay as they are; a last step-chunk the store holds only partly (10 steps in chunks of 4)
is recomputed whole, the only earlier chunk rewritten (its old steps get the same bytes: a
step's distances depend on that step's input only).

Nothing is written before every check has passed (same parameters, the stored steps a prefix
of the input's, their input unchanged), so a refused append leaves the store as it was. Then
the store is marked incomplete first and complete last, as a first write is: a kill at any
moment leaves a store that ``--append`` or ``--resume`` with the same input finishes.
"""

from __future__ import annotations

import json
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from dask_pdist.conventions import BOOKKEEPING, COMPLETE_ATTR, FINGERPRINT_ATTR, INPUT_CHECKSUM, INPUT_VERSION
from dask_pdist.errors import StoreError
from dask_pdist.io.paths import zarr_array
from dask_pdist.store.digests import DIGEST, PACKED, PACKED_ATTR, STORE_ID_ATTR, recording_array
from dask_pdist.store.fast_append import add_to_manifest, described_array, stored_labels, stored_values
from dask_pdist.store.layout import (
    StorePath,
    consolidate,
    consolidate_changed,
    done_path,
    is_complete,
    read_attrs,
    read_root,
    resize_in_metadata,
    store_progress,
    write_root_attrs,
)

__all__ = ["stored_fingerprint", "check_append", "grow", "keep_gone_steps", "Stored", "VERSION_CHUNK"]

#: Steps per chunk of the recorded input versions (8 kB) and, at least, of the step labels:
#: every append reads them all.
VERSION_CHUNK = 1024

# fingerprint entries that an appended input may change: its step count, and the identity of
# the file(s) it is read from (a longer history is another file)
_MAY_CHANGE = ("source_fingerprint",)


class Stored:
    """What one append reads of its store and uses more than once: the step labels, the
    recorded input versions (each read at its first use). Made under the writer lock for one
    append, so the store does not change meanwhile but by the append itself; the growth uses
    what the checks read instead of reading it again (an append's cost is mostly such
    fixed costs)."""

    def __init__(self, path: StorePath) -> None:
        self.path = path
        self._labels: np.ndarray | None = None
        self.versions: np.ndarray | None = None  # as read by the checks (None: not read, or unreadable)

    def labels(self) -> np.ndarray:
        """The step labels the store holds (:func:`.fast_append.stored_labels`)."""
        if self._labels is None:
            self._labels = stored_labels(self.path)
        return self._labels

    def labels_read(self) -> np.ndarray | None:
        """The step labels if :meth:`labels` read them, else None."""
        return self._labels


def stored_fingerprint(path: StorePath) -> dict[str, Any]:
    """The parameters a store was made with (``{}`` for a store without the record)."""
    return json.loads((read_attrs(path) or {}).get(FINGERPRINT_ATTR, "{}"))


def _refuse(path: StorePath, why: str) -> StoreError:
    return StoreError(f"{path}: cannot append: {why}; the store is unchanged")


def _per_checkpoint(ds: xr.Dataset) -> bool:
    # a history read from one file per checkpoint (io/history.py records "N files:" in its fingerprint)
    return " files:" in str(ds.attrs.get("source_fingerprint", ""))


def _gone(block: np.ndarray, block_info: Any = None) -> np.ndarray:
    raise StoreError(
        "internal error: the distances of a stored step whose input is gone were to be computed again"
    )  # never: their blocks are done, and the write graph starts after them


def keep_gone_steps(
    ds: xr.Dataset, path: StorePath, seen: Stored | None = None
) -> tuple[xr.Dataset, np.ndarray | None]:
    """A per-checkpoint input that lacks stored steps (their checkpoints deleted since, as
    Trainer's ``save_total_limit`` does) continues the store: ``ds`` with the store's steps
    put back in front of its new ones (their distances never computed again: reading one
    raises), and the mask of the stored steps whose input is gone; ``(ds, None)`` when
    nothing is gone or ``ds`` is not read from one file per checkpoint (a history file that
    lacks a stored step is refused by :func:`check_append`, as is an input whose stored steps
    are out of order or that has a step between stored ones)."""
    if not _per_checkpoint(ds) or not (path / "step" / "zarr.json").exists():
        return ds, None
    labels = (seen or Stored(path)).labels()
    # an interrupted append's steps not written yet are not stored: if their checkpoints are
    # gone too, they are left out (the store shrinks back to its written steps)
    stored = labels if is_complete(read_root(path)) else labels[: _whole_steps(path, len(labels))]
    steps = ds["step"].values
    if not len(stored):
        return ds, None
    after = steps > stored[-1]
    n_old = int(np.argmax(after)) if after.any() else len(steps)  # the input's stored steps come first
    old, new = steps[:n_old], steps[n_old:]
    pos = np.searchsorted(stored, old)
    dropped = len(stored) < len(labels) and not np.isin(labels[len(stored) :], steps).all()
    if (
        (len(old) == len(stored) and not dropped)
        or np.any(new <= stored[-1])
        or np.any(pos >= len(stored))
        or not np.array_equal(stored[np.minimum(pos, len(stored) - 1)], old)
        or np.any(np.diff(pos) <= 0)
    ):
        return ds, None  # nothing gone, or not a continuation: check_append says why
    gone = np.ones(len(stored), bool)
    gone[pos] = False
    src = np.concatenate([np.full(len(stored), -1), len(old) + np.arange(len(new))])
    src[pos] = np.arange(len(old))
    return _expanded(ds, path, src), gone


def _expanded(ds: xr.Dataset, path: StorePath, src: np.ndarray) -> xr.Dataset:
    # every per-step array of ds at the store's positions: ds's row src[i], or a placeholder
    # where src[i] is -1 (dask: raises if computed; numpy: the store's recorded value, or 0)
    def rows(name: str, var: xr.Variable) -> Any:
        data = var.data
        if isinstance(data, da.Array):
            pieces, i = [], 0
            while i < len(src):
                j = i
                while j < len(src) and (src[j] < 0) == (src[i] < 0) and (src[i] < 0 or src[j] - src[i] == j - i):
                    j += 1
                if src[i] < 0:
                    zeros = da.zeros((j - i, *data.shape[1:]), dtype=data.dtype, chunks=(1, *data.chunks[1:]))
                    meta = np.empty((0,) * data.ndim, data.dtype)
                    # checksums of gone steps read as 0: computed along with their chunk's other
                    # steps when those are checked, never compared (check_append skips them)
                    gone = zeros if name == INPUT_CHECKSUM else zeros.map_blocks(_gone, dtype=data.dtype, meta=meta)
                    pieces.append(gone)
                else:
                    pieces.append(data[src[i] : src[i] + j - i])
                i = j
            return da.concatenate(pieces, axis=0)
        values = np.asarray(data)
        out = np.zeros((len(src), *values.shape[1:]), dtype=values.dtype)
        known = src >= 0
        out[known] = values[src[known]]
        where = path / name if name == "step" else path / BOOKKEEPING / name
        if (where / "zarr.json").exists() and (~known).any():
            recorded = np.asarray(zarr_array(where)[...])
            out[~known] = recorded[np.flatnonzero(~known)]
        return out

    def rebuilt(name: str, var: xr.Variable) -> xr.Variable:
        if not var.dims or var.dims[0] != "step":
            return var
        return xr.Variable(var.dims, rows(name, var), attrs=var.attrs, encoding=var.encoding)

    variables = {name: rebuilt(str(name), var.variable) for name, var in ds.data_vars.items()}
    coords = {name: rebuilt(str(name), var.variable) for name, var in ds.coords.items()}
    return xr.Dataset(variables, coords=coords, attrs=ds.attrs)


def check_append(
    ds: xr.Dataset,
    path: StorePath,
    fingerprint: dict[str, Any],
    gone: np.ndarray | None = None,
    seen: Stored | None = None,
) -> int:
    """Check that ``ds`` continues the store at ``path``; return the number of stored steps.

    Refused (``StoreError``, the store untouched) when the parameters differ (anything the
    fingerprint records but the step count and the input's file identity), when the input
    lacks a stored step or has a new step not after the last stored one, or when the input
    of a stored step changed (crc32c of its values against ``input_checksum``); the stored
    steps marked in ``gone`` (see :func:`keep_gone_steps`) are not checked. ``seen``: what
    this append has read of the store already, and keeps what the checks read."""
    seen = seen or Stored(path)
    old = stored_fingerprint(path)
    diff = [
        f"{k}: store has {old.get(k)!r}, now {v!r}"
        for k, v in fingerprint.items()
        if k not in _MAY_CHANGE and k != "shape" and old.get(k) != v
    ]
    shape, now = old.get("shape") or [0, 0, 0], fingerprint["shape"]
    if list(shape[1:]) != list(now[1:]):
        diff.append(f"tokens: store has {shape[1]}, now {now[1]}")
    if diff:
        raise _refuse(path, "the input or parameters differ from the store's: " + "; ".join(diff))
    stored = seen.labels()
    steps = ds["step"].values
    if len(steps) < len(stored) and gone is None:  # (gone: steps never written, whose checkpoints are gone)
        raise _refuse(path, f"the input has {len(steps)} steps, fewer than the store's {len(stored)}")
    complete = is_complete(read_root(path))  # then every block is done: its flags are not read
    if not complete:  # an interrupted append may have left step labels past its done blocks unwritten
        stored = stored[: _whole_steps(path, len(stored))]
    n = len(stored)
    if n and not np.array_equal(steps[:n], stored):
        have = set(stored.tolist())
        early = [s for s in steps.tolist() if s not in have and s < stored[-1]]
        if early:
            raise _refuse(
                path,
                f"the input has step {early[0]}, before the store's last step {stored[-1]}: a store grows only"
                " at its end; recompute with overwrite=True (--overwrite)",
            )
        given = set(steps.tolist())
        lacking = [s for s in stored.tolist() if s not in given]
        what = f"lacks step {lacking[0]}, which the store holds" if lacking else "orders the stored steps differently"
        raise _refuse(path, f"the input {what} (the input has {len(steps)} steps, the store {n})")
    new = steps[n:]
    if n and len(new):
        last = stored[-1]
        bad = [int(s) for s, prev in zip(new, [last, *new[:-1]], strict=True) if s <= prev]
        if bad:
            raise _refuse(
                path,
                f"the input has step {bad[0]} after step {int(steps[list(steps).index(bad[0]) - 1])}: new steps must"
                f" increase past the store's last step {last}; a store grows only at its end",
            )
    if gone is not None and n:
        chunk = int(_distances(path).chunks[0])
        partial = np.flatnonzero(gone[(n // chunk) * chunk :]) if n % chunk and len(steps) > n else []
        if len(partial):
            raise _refuse(
                path,
                f"the input of stored step {stored[(n // chunk) * chunk + partial[0]]} is gone, and the store's"
                f" last chunk ({chunk} steps) holds it with steps to be added: it cannot be recomputed whole",
            )
    _check_stored_input(ds, path, n, gone, seen)
    return n


def _whole_steps(path: StorePath, n: int) -> int:
    # how many leading steps of a store lie in step-blocks whose every block is done
    rows = store_progress(path)[0].all(axis=(1, 2))
    return min(n, (int(np.argmin(rows)) if not rows.all() else len(rows)) * int(_distances(path).chunks[0]))


def _check_stored_input(
    ds: xr.Dataset, path: StorePath, n: int, gone: np.ndarray | None = None, seen: Stored | None = None
) -> None:
    # the stored distances were computed from some input: re-read the stored steps' input
    # (cheap next to their distances) and compare with the checksums recorded next to them;
    # a step whose input file is the very version recorded (io/paths.py version_of: same path,
    # size, mtime, ctime, inode; or ETag) was checked when it was recorded and is not re-read, so an
    # append of one checkpoint reads that checkpoint, not the run's history
    where = path / BOOKKEEPING / INPUT_CHECKSUM
    if INPUT_CHECKSUM not in ds.coords or not (where / "zarr.json").exists() or n == 0:
        return
    root = read_root(path)
    doc = ((root or {}).get("consolidated_metadata") or {}).get("metadata", {}).get(f"{BOOKKEEPING}/{INPUT_CHECKSUM}")
    complete = is_complete(root)
    if complete and isinstance(doc, dict):  # (a complete store's metadata is its arrays')
        chunk = int(doc["chunk_grid"]["configuration"]["chunk_shape"][0])
    else:
        chunk = int(zarr_array(where).chunks[0])
    if complete:
        rows = np.arange(n)  # every block done (the flags, one file per block, are not read)
    else:
        done = store_progress(path)[0].any(axis=(1, 2))
        rows = np.flatnonzero(done[np.arange(n) // chunk]) if len(done) else np.array([], int)
    if gone is not None:
        rows = rows[~gone[rows]]  # their input is gone: nothing to re-read
    versions = path / BOOKKEEPING / INPUT_VERSION
    if len(rows) and INPUT_VERSION in ds.coords and (versions / "zarr.json").exists():
        now, old = ds[INPUT_VERSION].values[:n], _recorded_versions(path, n)
        if seen is not None:
            seen.versions = old
        if old is None:
            old = np.zeros(n, dtype=np.uint64)
        rows = rows[(now[rows] == 0) | (now[rows] != old[rows])]
    if not len(rows):
        return
    # one small task per step to check: the synchronous scheduler spends less per task than threads
    (now,) = dask.compute(ds[INPUT_CHECKSUM].data[rows], scheduler="sync")
    recorded = np.asarray(zarr_array(where).get_orthogonal_selection((rows,)))
    changed = rows[np.asarray(now) != recorded]
    if len(changed):
        first = int(changed[0])
        raise _refuse(
            path,
            f"the input changed since the store was written: step {ds['step'].values[first]} (index {first}) of"
            f" {ds.attrs.get('source', 'the input')} differs from the data its distances were computed from"
            f" ({len(changed)} {'steps differ' if len(changed) != 1 else 'step differs'});"
            " recompute with overwrite=True (--overwrite)",
        )


def grow(ds: xr.Dataset, path: StorePath, fingerprint: dict[str, Any], seen: Stored | None = None) -> None:
    """Mark the store incomplete, resize its per-step arrays to ``ds``'s steps, write the new
    step labels, and clear the done flags of a last step-block the store held only partly.

    Idempotent: run again after a kill (by ``--append`` or ``--resume``) it finishes the
    same growth. The write graph then computes every block not marked done. ``seen``: what
    the checks of this append read of the store (a complete store's labels and versions are
    then not read again)."""
    attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, (str, int, float))}
    total = int(ds.sizes["step"])
    chunk = int(ds.chunksizes["step"][0])
    nblocks = -(-total // chunk)
    root = read_root(path) or {}
    # a complete store's consolidated metadata is its arrays' own (the completion vouches for
    # both): the usual append grows from it, one write per array; finishing an interrupted
    # growth (arrays possibly resized, or to shrink back) goes through zarr
    known = (root.get("consolidated_metadata") or {}).get("metadata") if is_complete(root) else None
    first = _distance_name(path)
    stored = int(known[first]["shape"][0]) if known and first in known else int(zarr_array(path / first).shape[0])
    held_attrs = root.get("attributes") or {}
    # the packed digests hold no step-block from the one recomputed (a partly filled last one) on
    held = {PACKED_ATTR: min(int(held_attrs[PACKED_ATTR]), stored // chunk)} if PACKED_ATTR in held_attrs else {}
    write_root_attrs(
        path,
        **attrs,
        **held,
        **{COMPLETE_ATTR: False, FINGERPRINT_ATTR: json.dumps(fingerprint, sort_keys=True)},
    )
    if stored % chunk and stored < total:  # the partly filled last block: recomputed whole
        zarr_array(done_path(path), "r+")[stored // chunk] = 0
    per_step = [str(v) for v in ds.data_vars] + ["embedding_rms", f"{BOOKKEEPING}/{INPUT_CHECKSUM}"]
    versions = INPUT_VERSION in ds.coords and (path / BOOKKEEPING / INPUT_VERSION / "zarr.json").exists()
    if versions:
        per_step.append(f"{BOOKKEEPING}/{INPUT_VERSION}")
    per_block = [done_path(path), path / BOOKKEEPING / DIGEST, path / BOOKKEEPING / PACKED]
    sizes = {name: total for name in [*per_step, "step"] if known is None or name in known}
    sizes.update({str(w)[len(str(path)) + 1 :]: nblocks for w in per_block})
    if known is not None and stored <= total:
        docs = resize_in_metadata(path, {k: v for k, v in sizes.items() if k in known})
    else:
        docs = {}
        for name, size in sizes.items():
            if (path / name / "zarr.json").exists():
                _resize(path, name, size)
    # the arrays written next, as the grown metadata describes them (no read to open them)
    described = {
        name: described_array(path, name, docs[name], int(held_attrs.get(STORE_ID_ATTR, 0)))
        for name in ("step", f"{BOOKKEEPING}/{INPUT_VERSION}")
        if name in docs
    }
    # a complete store's recorded labels and versions, as the checks read them: what the
    # resized arrays hold (the new steps' positions read as the fill value, 0)
    grown = known is not None and seen is not None
    labels = seen.labels_read() if grown else None  # type: ignore[union-attr]
    old = seen.versions if grown else None  # type: ignore[union-attr]
    if versions:
        # the versions now vouched for: the stored steps' (checked above) and the new ones'
        name = f"{BOOKKEEPING}/{INPUT_VERSION}"
        array = (
            described[name][0]
            if name in described
            else zarr_array(path / name, "r+").with_config({"write_empty_chunks": True})
        )
        if old is not None and len(old) == stored <= total:
            old = np.concatenate([old, np.zeros(total - stored, dtype=old.dtype)])
        else:
            old = None
        _write_changed(array, ds[INPUT_VERSION].values, old)
    store_id = int(held_attrs.get(STORE_ID_ATTR, 0))
    array, written = described["step"] if "step" in described else recording_array(path, "step", store_id)
    if array.shape[0] != total:
        array.resize((total,))
    # a complete store's labels were all compared with the input's (check_append); after a kill,
    # labels past the written steps may be missing, or written with their digests not yet
    # recorded (killed before add_to_manifest): every label is written again, and recorded
    _write_steps(array, ds["step"].values, stored if known is not None else 0, labels, again=known is None)
    if written:
        add_to_manifest(path, written)  # the digests of the step chunks rewritten
    if docs:  # the consolidated metadata holds every array's shape
        consolidate_changed(path, docs, (BOOKKEEPING,) if written else ())
    else:
        consolidate(path)


def _distance_name(path: StorePath) -> str:
    # one distance array of the store (every metric's has the same shape and chunks)
    return (sorted(stored_fingerprint(path).get("variables") or {}) or ["euclidean"])[0]


def _distances(path: StorePath) -> Any:
    return zarr_array(path / _distance_name(path))


def _write_steps(
    array: Any, steps: np.ndarray, stored: int, labels: np.ndarray | None = None, again: bool = False
) -> None:
    # from the chunk of the first label that differs (the old end, or after a kill between
    # the resize and this write, the first unwritten one): earlier chunks are never rewritten
    # (nor read: the labels of the stored steps were compared with the input's by check_append).
    # ``labels``: the store's ``stored`` labels as read before it grew (not read again).
    # ``again``: finishing an interrupted growth: every chunk is written (a few bytes a step)
    if again:
        array[:] = steps
        return
    size = array.chunks[0]
    start = min(stored, len(steps)) // size * size
    if labels is not None and len(labels) == stored <= len(steps):
        held = np.zeros(len(steps) - start, dtype=labels.dtype)  # grown positions: the fill value
        held[: stored - start] = labels[start:stored]
    else:
        held = np.asarray(array[start:])
    differ = start + np.flatnonzero(held != steps[start:])
    if len(differ):
        start = (int(differ[0]) // array.chunks[0]) * array.chunks[0]
        array[start:] = steps[start:]


def _recorded_versions(path: StorePath, n: int) -> np.ndarray | None:
    # the recorded input versions of the first n steps; None (none vouched for: every step is
    # re-read) if the record cannot be read: it only saves reading, the checksums decide
    try:
        return stored_values(path, f"{BOOKKEEPING}/{INPUT_VERSION}")[:n]
    except Exception:
        return None


def _write_changed(array: Any, values: np.ndarray, old: np.ndarray | None = None) -> None:
    # only the chunks holding a value that differs (an append: the last one, usually); a
    # damaged record is written whole. ``old``: what the array holds, if known (not read)
    try:
        old = np.asarray(array[...]) if old is None else old
    except Exception:
        array[...] = values
        return
    size = array.chunks[0]
    for c in np.unique(np.flatnonzero(old != values) // size):
        array[c * size : (c + 1) * size] = values[c * size : (c + 1) * size]


def _resize(path: StorePath, name: str, total: int) -> None:
    # to the job's steps: more, or (an interrupted append whose unwritten steps' checkpoints
    # are gone) fewer, dropping only steps never written
    arr = zarr_array(path / name, "r+")
    if arr.shape[0] != total:
        arr.resize((total, *arr.shape[1:]))
