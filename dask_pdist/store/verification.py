"""``verify``: read every chunk of every array of a store, and report what is missing or damaged.

A distance store's chunks are checked against their crc32c and their recorded digests
(:mod:`.digests`), its done flags and completion record read; a neighbours or clusters store
(written whole) against its manifest. Problems are named by variable, step labels and token
ranges, one :class:`ChunkProblem` each.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_pdist.conventions import CLUSTERS_MARKER_ATTR, FINGERPRINT_ATTR, MARKER_ATTR
from dask_pdist.errors import StoreError
from dask_pdist.io.paths import Location, files_under
from dask_pdist.store.digests import PACKED, Digests, checked_store, expected_digests
from dask_pdist.store.integrity import (
    _absent,
    _checked_array,
    _chunk_key,
    _live_lock,
    _problem,
    _relative,
    present_chunks,
)
from dask_pdist.store.layout import (
    StorePath,
    check_metadata,
    done_path,
    is_complete,
    is_store,
    lock_path,
    not_a_store,
    parse_root,
    root_bytes,
    store_path,
    store_progress,
)

__all__ = ["ChunkProblem", "verify_store"]


@dataclass(frozen=True)
class ChunkProblem:
    """A store chunk (or a whole array) that is missing or fails its checksum."""

    variable: str
    steps: tuple[int, int] | None  # step labels, first and last (None: not along step)
    tokens_i: tuple[int, int] | None
    tokens_j: tuple[int, int] | None
    problem: str
    chunk: tuple[int, ...] | None = None

    def __str__(self) -> str:
        where = self.variable
        if self.steps is not None:
            where += f" steps {self.steps[0]}..{self.steps[1]}"
        elif self.chunk is not None:
            where += f" chunk {self.chunk}"
        if self.tokens_i is not None and self.tokens_j is not None:
            if self.tokens_i != self.tokens_j or self.tokens_i[0] != 0:
                where += (
                    f", token_i {self.tokens_i[0]}..{self.tokens_i[1]}, token_j {self.tokens_j[0]}..{self.tokens_j[1]}"
                )
        return f"{where}: {self.problem}"


def _expected_arrays(path: StorePath, meta: dict[str, Any]) -> list[str]:
    # every array the store's own metadata names: the consolidated metadata, the fingerprint's
    # variables, the coordinates and the done flags
    names = {"step", "token_i", "token_j"}
    consolidated = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    names |= {k for k, v in consolidated.items() if isinstance(v, dict) and v.get("node_type") == "array"}
    try:
        names |= set(json.loads(meta.get("attributes", {}).get(FINGERPRINT_ATTR, "{}")).get("variables", {}))
    except (ValueError, AttributeError):
        pass
    names.add(_relative(path, done_path(path)))
    first = ("euclidean", "chebyshev")  # the distances first, in the notebook's order
    return sorted(names, key=lambda n: (first.index(n) if n in first else len(first), n))


def _verify_output(path: StorePath, progress: Callable[[int, int], None] | None) -> list[ChunkProblem]:
    import zarr

    problems: list[ChunkProblem] = []
    try:
        check_metadata(path, every_file=True)
    except StoreError as exc:
        return [ChunkProblem("metadata", None, None, None, str(exc).split(": ", 1)[1])]
    try:
        expected = expected_digests(path)
    except StoreError as exc:
        return [ChunkProblem("digests", None, None, None, str(exc).split(": ", 1)[1])]
    group = zarr.open_group(store=checked_store(path, expected), mode="r")
    listed = set(files_under(path))
    arrays = [(name, arr) for name, arr in group.arrays()]
    checked, total = 0, sum(int(np.prod(a.cdata_shape)) for _, a in arrays)
    for name, arr in arrays:
        for idx in itertools.product(*(range(n) for n in arr.cdata_shape)):
            if _chunk_key(name, idx) not in listed:
                problems.append(ChunkProblem(name, None, None, None, f"missing ({_absent(path)})", idx))
            else:
                try:
                    arr.get_block_selection(idx)
                except Exception as exc:
                    problems.append(ChunkProblem(name, None, None, None, _problem(exc), idx))
            checked += 1
            if progress is not None:
                progress(checked, total)
    return problems


def _not_done(idx: tuple, dims: tuple, chunk: int, step_chunk: int | None, done: np.ndarray, distance: bool) -> bool:
    # whether chunk `idx` belongs to blocks a running job has not marked done yet
    if idx and idx[0] >= done.shape[0]:
        return True  # past the done flags (a store being grown)
    if distance or dims[:1] == ("step_block",):
        return not done[tuple(idx[:3])]
    if dims[:1] == ("step",) and step_chunk and chunk == step_chunk and len(dims) == 1:
        return not done[idx[0]].any()  # embedding_rms, input_checksum: written with their step-block
    return False


def _done_flags(path: StorePath) -> np.ndarray | None:
    # the done flags of an incomplete store, or None if they cannot be read (reported below)
    try:
        return store_progress(path)[0].astype(bool)
    except Exception:
        return None


def verify_store(
    path: str | os.PathLike[str] | Location,
    *,
    progress: Callable[[int, int], None] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ChunkProblem]:
    """Read every chunk of every array of a store; report missing and corrupt ones.

    Every array the store's metadata names (distances, coordinates, ``embedding_rms``,
    done flags, input checksums) must be present with every chunk; a chunk is missing when
    its file is absent (or not a file) or, for distances, its block is not marked done, and
    corrupt when it fails its crc32c checksum or cannot be decoded. A store without its
    completion record is reported too. ``progress(checked, total)``, if given, is called
    after each chunk (the CLI draws a progress bar with it). A store at a URL (with its
    ``storage_options``) is listed once, then every chunk is read.

    Examples
    --------
    >>> for problem in verify_store("pairwise_distances.zarr"): print(problem)  # doctest: +SKIP
    """
    path = store_path(path, storage_options)
    if not path.exists():
        raise FileNotFoundError(f"{path}: store not found")
    raw = root_bytes(path)
    meta = parse_root(raw)
    attrs = meta.get("attributes", {}) if meta is not None else {}
    if MARKER_ATTR not in attrs and CLUSTERS_MARKER_ATTR not in attrs:
        raise not_a_store(path)
    if not is_store(path):  # a neighbours or clusters store: every chunk against its digest
        return _verify_output(path, progress)
    problems = _verify_distances(path, meta, progress)
    if problems and root_bytes(path) != raw:
        # a writer rewrote the store meanwhile (an append, --resume, --overwrite): what was
        # found may be its work half-seen, not damage
        raise StoreError(
            f"{path}: changed by a writer while it was verified (an append, --resume or --overwrite ran);"
            " verify it again once no job is writing it"
        )
    return problems


def _verify_distances(
    path: StorePath, meta: dict[str, Any] | None, progress: Callable[[int, int], None] | None
) -> list[ChunkProblem]:
    problems: list[ChunkProblem] = []
    try:
        check_metadata(path, every_file=True)
    except StoreError as exc:
        problems.append(ChunkProblem("metadata", None, None, None, str(exc).split(": ", 1)[1]))
    names = _expected_arrays(path, meta)
    try:
        # an incomplete store: the digests of the blocks marked done (the others are not written)
        flags = None if is_complete(meta) else _done_flags(path)
        expected = expected_digests(path, flags)
    except StoreError as exc:
        problems.append(ChunkProblem("digests", None, None, None, str(exc).split(": ", 1)[1]))
        expected = Digests()
    arrays = {}
    for name in names:
        try:
            arrays[name] = _checked_array(path, name, expected)
        except PermissionError:
            raise
        except Exception as exc:
            problems.append(ChunkProblem(name, None, None, None, f"missing (array absent or unreadable: {exc})"))
    try:
        if "step" in arrays and present_chunks(path, "step") != set(
            itertools.product(*(range(n) for n in arrays["step"].cdata_shape))
        ):
            raise LookupError("a chunk of the step coordinate is missing")
        steps = np.asarray(arrays["step"][...])
    except Exception:  # no step labels to trust: problems are named by chunk index instead
        steps = None
    done_name = _relative(path, done_path(path))
    # one listing instead of a stat (a HEAD request) per chunk
    listed = set(files_under(path))
    try:
        done = np.asarray(arrays[done_name][...]) if done_name in arrays else None
    except Exception:
        done = None
    step_chunk = next((a.chunks[0] for n, a in arrays.items() if n in ("euclidean", "chebyshev")), None)
    checked, total = 0, sum(int(np.prod(a.cdata_shape)) for a in arrays.values())
    # a store a live job is writing: the chunks of blocks not done yet are not checked (they
    # are being written), and the packed digests are written only when a job completes it
    live = not is_complete(meta) and done is not None and _live_lock(path)
    unwritten = 0
    for name, arr in arrays.items():
        dims = tuple(getattr(arr.metadata, "dimension_names", None) or ())
        is_distance = dims == ("step", "token_i", "token_j")
        if name.endswith(PACKED) and not is_complete(meta):
            checked += int(np.prod(arr.cdata_shape))
            continue
        for idx in itertools.product(*(range(n) for n in arr.cdata_shape)):
            if live and _not_done(idx, dims, arr.chunks[0], step_chunk, done, is_distance):
                unwritten += 1
                checked += 1
                continue
            rows = None
            if dims[:1] == ("step",):
                rows = (idx[0] * arr.chunks[0], min((idx[0] + 1) * arr.chunks[0], arr.shape[0]))
            elif dims[:1] == ("step_block",) and step_chunk is not None and steps is not None:
                span = arr.chunks[0] * step_chunk  # the packed digests hold many step-blocks per chunk
                rows = (idx[0] * span, min((idx[0] + 1) * span, len(steps)))
            problem = None
            key = _chunk_key(name, idx)
            if key not in listed:
                problem = f"missing ({_absent(path)})"
            elif is_distance and done is not None and not done[idx]:
                problem = "missing (block not marked done)"
            else:
                try:
                    arr.get_block_selection(idx)
                except Exception as exc:  # zarr raises ValueError for checksums, others for decoding
                    problem = _problem(exc)
            if problem:
                # (an append killed mid-growth: arrays resized past the step labels: named by index)
                labelled = rows and steps is not None and rows[1] <= len(steps)
                label = (int(steps[rows[0]]), int(steps[rows[1] - 1])) if labelled else None
                ti = tj = None
                if is_distance:
                    ci, cj = arr.chunks[1], arr.chunks[2]
                    ti = (idx[1] * ci, min((idx[1] + 1) * ci, arr.shape[1]) - 1)
                    tj = (idx[2] * cj, min((idx[2] + 1) * cj, arr.shape[2]) - 1)
                problems.append(ChunkProblem(name, label, ti, tj, problem, None if label else idx))
            checked += 1
            if progress is not None:
                progress(checked, total)
    if not is_complete(meta):
        problems.append(
            ChunkProblem(
                "store",
                None,
                None,
                None,
                (
                    f"not marked complete: a job holds its writer lock {lock_path(path)} (it may still be"
                    " running; if it is not, `dask-pdist compute ... --resume` takes the lock over on"
                    " the same host and finishes the store)"
                    + (f"; {unwritten} chunks of blocks not written yet were not checked" if unwritten else "")
                    if _live_lock(path)
                    else "not marked complete (the job was interrupted or stopped; `dask-pdist info` says which);"
                    " reads refuse it until `dask-pdist compute ... --resume` finishes it"
                ),
            )
        )
    return problems
