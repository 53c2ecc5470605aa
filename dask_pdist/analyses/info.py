"""``dask-pdist info``: a short text description of a store (distances or neighbours) or of a
history input, from metadata and headers only (no distance is read).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dask_pdist.conventions import human_size
from dask_pdist.io.paths import Location, any_url, disk_usage, is_remote, locate, zarr_group

__all__ = ["describe"]


def _disk_size(path: Path | Location) -> int:
    return disk_usage(path)


def describe(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    key: str | None = None,
    *,
    storage_options: dict | None = None,
) -> str:
    """A short text description of a distance store or of a history input.

    Stores: shape, dtype, chunking, step range, completeness (chunks on disk), size on
    disk. Inputs: every tensor/array with shape and dtype. Per-checkpoint inputs (a glob
    or a list, as :func:`open_history` takes them, ``key`` as there): the files, the
    stacked history's shape and steps, and the first checkpoint's tensors. One input may be
    a URL (``s3://...``, with ``storage_options`` for its fsspec backend).

    Examples
    --------
    >>> print(describe("pairwise_distances.zarr"))  # doctest: +SKIP
    """
    import zarr

    from dask_pdist.analyses.neighbours_store import is_neighbours_store
    from dask_pdist.conventions import ALL_METRICS
    from dask_pdist.errors import InputError, StoreError
    from dask_pdist.io.folder_hints import directory_hint
    from dask_pdist.io.history import is_checkpoint_spec
    from dask_pdist.io.safetensors_format import read_header
    from dask_pdist.io.sources import read_npy_header
    from dask_pdist.store.integrity import _live_lock
    from dask_pdist.store.layout import check_metadata, has_bookkeeping, is_store, store_progress

    if is_checkpoint_spec(path, storage_options):
        if any_url(path):  # type: ignore[arg-type]
            raise InputError(f"{path}: info takes one file on object storage; name one checkpoint")
        return _describe_checkpoints(path, key)  # type: ignore[arg-type]
    located = locate(path, storage_options)  # type: ignore[arg-type]
    if is_remote(located) and not (
        located.is_dir() and (is_store(located) or has_bookkeeping(located))
    ):  # an input on object storage: stores there are described below, as on disk
        return _describe_url(located)
    path = located
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    lines = [f"{path}"]
    if path.is_dir() and not is_remote(path) and is_neighbours_store(path):
        group = zarr.open_group(str(path), mode="r")
        steps, nbr = np.asarray(group["step"][:]), group["neighbour"]
        lines.append(f"  dask_pdist neighbours store, version {group.attrs.get('dask_pdist_version', '?')}")
        lines.append(f"  source: {group.attrs.get('source', '?')} [{group.attrs.get('source_key', '?')}]")
        lines.append(f"  {group.attrs.get('k', '?')} nearest per token ({group.attrs.get('metric', '?')})")
        lines.append(f"  steps: {len(steps)} ({steps[0]}..{steps[-1]})" if len(steps) else "  steps: 0")
        lines.append(f"  neighbour: shape {list(nbr.shape)} {nbr.dtype}, chunks {list(nbr.chunks)}")
        lines.append(f"  size on disk: {human_size(_disk_size(path))}")
        return "\n".join(lines)
    if path.is_dir() and not is_remote(path):
        from dask_pdist.analyses.movement_store import comparison_kind, describe_comparison

        if comparison_kind(path) is not None:  # before is_store: its provenance carries the version marker
            return describe_comparison(path)
    if path.is_dir() and not (path / "zarr.json").exists() and has_bookkeeping(path):
        lines.append(
            "  DAMAGED dask_pdist store: its root zarr.json is missing (a write was interrupted);"
            " replace it with `dask-pdist compute ... --overwrite`"
        )
        return "\n".join(lines)
    if path.is_dir() and is_store(path):
        try:
            check_metadata(path)
        except StoreError as exc:
            lines.append(f"  DAMAGED dask_pdist store: {str(exc).split(': ', 1)[1]}")
            return "\n".join(lines)
        group = zarr_group(path, "r", use_consolidated=False)
        steps = np.asarray(group["step"][:])
        lines.append(f"  dask_pdist store, version {group.attrs.get('dask_pdist_version', '?')}")
        lines.append(
            f"  source: {group.attrs.get('source', '?')} [{group.attrs.get('source_key', '?')}],"
            f" {group.attrs.get('input_dtype', '?')}"
        )
        lines.append(f"  steps: {len(steps)} ({steps[0]}..{steps[-1]})" if len(steps) else "  steps: 0")
        for name in ALL_METRICS:
            if name in group:
                arr = group[name]
                lines.append(f"  {name}: shape {list(arr.shape)} {arr.dtype}, chunks {list(arr.chunks)}")
        done, complete = store_progress(path)
        stopped = group.attrs.get("stopped")
        state = (
            "complete"
            if complete
            else f"INCOMPLETE: {int((done == 0).sum())} blocks missing; the job was {stopped}"
            if stopped
            else f"INCOMPLETE: {int((done == 0).sum())} blocks missing; a job is writing it now (its lock is live)"
            if _live_lock(path)
            else f"INCOMPLETE: {int((done == 0).sum())} blocks missing; the job was interrupted: finish it with"
            " the same command and --resume (an interrupted append: the same --append or --follow command)"
            if (done == 0).any()
            else "INCOMPLETE: every block written, not yet marked complete (the job was interrupted at its"
            " end): the same command with --resume (or --append / --follow) finishes it"
        )
        lines.append(f"  blocks written: {int(done.sum())}/{done.size} ({state})")
        lines.append(f"  size on disk: {human_size(_disk_size(path))}")
        return "\n".join(lines)
    if path.is_dir():
        if not any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup")):
            raise InputError(directory_hint(path))
        node = zarr.open(str(path), mode="r")
        arrays = dict(node.arrays()) if isinstance(node, zarr.Group) else {path.name: node}
        lines.append("  zarr input")
        for name, arr in sorted(arrays.items()):
            lines.append(f"  {name}: shape {list(arr.shape)} {arr.dtype}")
    elif path.suffix == ".npy":
        shape, _, dtype, _ = read_npy_header(path)
        lines.append(f"  .npy: shape {list(shape)} {dtype}")
    else:
        tensors, metadata = read_header(path)
        lines.append(f"  safetensors, {len(tensors)} tensors")
        for name, info in sorted(tensors.items()):
            lines.append(f"  {name}: shape {list(info.shape)} {info.dtype}")
        for key, value in sorted(metadata.items()):
            lines.append(f"  metadata {key}: {value[:80]}")
    lines.append(f"  size on disk: {human_size(_disk_size(path))}")
    return "\n".join(lines)


def _describe_checkpoints(spec: str | Sequence[str | os.PathLike[str]], key: str | None) -> str:
    from dask_pdist.io.checkpoints import checkpoint_paths, tensor_file
    from dask_pdist.io.history import open_history
    from dask_pdist.io.safetensors_format import read_header

    history = open_history(spec, key=key)
    paths = checkpoint_paths(spec)
    steps = history["step"].values
    lines = [
        f"{history.attrs['source']}",
        f"  {len(paths)} checkpoints: {paths[0]} .. {paths[-1]}",
        f"  history: {history.name} stacked to shape {list(history.shape)} {history.attrs['input_dtype']},"
        f" steps {steps[0]}..{steps[-1]}",
    ]
    first = tensor_file(paths[0], history.name)
    tensors, _ = read_header(first)
    lines.append(f"  {first}: {len(tensors)} tensors")
    for name, info in sorted(tensors.items()):
        lines.append(f"  {name}: shape {list(info.shape)} {info.dtype}")
    return "\n".join(lines)


def _describe_url(loc: Location) -> str:
    # an input on object storage: its tensors or arrays
    import zarr

    from dask_pdist.io.safetensors_format import read_header
    from dask_pdist.io.sources import read_npy_header

    lines = [str(loc)]
    if loc.is_dir():
        node = zarr.open(loc.url, mode="r", storage_options=dict(loc.storage_options))
        arrays = dict(node.arrays()) if isinstance(node, zarr.Group) else {loc.name: node}
        lines.append("  zarr input")
        lines += [f"  {name}: shape {list(arr.shape)} {arr.dtype}" for name, arr in sorted(arrays.items())]
        return "\n".join(lines)
    if loc.suffix == ".npy":
        shape, _, dtype, _ = read_npy_header(loc)
        lines.append(f"  .npy: shape {list(shape)} {dtype}")
    else:
        tensors, metadata = read_header(loc)
        lines.append(f"  safetensors, {len(tensors)} tensors")
        lines += [f"  {name}: shape {list(info.shape)} {info.dtype}" for name, info in sorted(tensors.items())]
        lines += [f"  metadata {key}: {value[:80]}" for key, value in sorted(metadata.items())]
    lines.append(f"  size: {human_size(loc.size())}")
    return "\n".join(lines)
