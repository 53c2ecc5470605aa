"""Hugging Face Trainer output folders on object storage: whether a URL (``s3://bucket/run``)
holds ``checkpoint-N/`` folders, and which of its checkpoints are complete.

The local run folders' rules (:mod:`dask_pdist.io.checkpoints`) hold here too: a checkpoint
folder without ``trainer_state.json`` while others have one is being saved, and skipped.
"""

from __future__ import annotations

from dask_pdist.errors import InputError, SkippedCheckpointWarning
from dask_pdist.io.checkpoints import (
    _TRAINER_FOLDER,
    INDEX_SUFFIX,
    TRAINER_STATE,
    _natural_key,
    bin_only,
    none_complete,
)

__all__ = ["is_url_run_folder", "url_run_checkpoints"]


def is_url_run_folder(url: str, storage_options: dict | None = None) -> bool:
    """True for a URL (no glob) whose prefix holds ``checkpoint-N/`` folders: a Trainer output
    folder on object storage (one listing request)."""
    from dask_pdist.io.paths import glob_locations

    if any(c in url.split("://", 1)[-1] for c in "*?[") or url.endswith((".safetensors", ".npy", ".json", ".zarr")):
        return False
    try:
        found = glob_locations(url.rstrip("/") + "/checkpoint-*", storage_options, kind="directory")
    except (FileNotFoundError, InputError):
        return False
    return any(_TRAINER_FOLDER.fullmatch(f.name) for f in found)


def url_run_checkpoints(url: str, storage_options: dict | None = None) -> list | None:
    """The complete checkpoints of a Hugging Face Trainer output folder on object storage
    (``s3://bucket/run``, holding ``checkpoint-N/`` prefixes), in step order; None when
    ``url`` holds no ``checkpoint-N/``. As for a local run folder, a folder without
    ``trainer_state.json`` while others have one (being uploaded) or without a safetensors
    file yet is skipped with a :class:`SkippedCheckpointWarning` (an object is whole once
    visible: a PUT never shows half an object).

    Raises
    ------
    InputError
        A checkpoint is sharded (not supported on object storage yet), or none is complete.
    """
    import warnings

    from dask_pdist.io.paths import glob_locations

    if any(c in url.split("://", 1)[-1] for c in "*?[") or url.endswith((".safetensors", ".npy", ".json", ".zarr")):
        return None
    try:
        found = glob_locations(url.rstrip("/") + "/checkpoint-*/*", storage_options)
    except FileNotFoundError:
        return None
    folders: dict[str, list] = {}
    for f in found:
        if _TRAINER_FOLDER.fullmatch(f.parent.name):
            folders.setdefault(f.parent.name, []).append(f)
    if not folders:
        return None
    stated = any(f.name == TRAINER_STATE for files in folders.values() for f in files)
    out = []
    for name in sorted(folders, key=_natural_key):
        files = folders[name]
        names = {f.name for f in files}
        weights = [f for f in files if f.name.endswith(".safetensors")]
        if any(n.endswith(INDEX_SUFFIX) for n in names):
            raise InputError(
                f"{files[0].parent}: a sharded checkpoint; sharded checkpoints on object storage are not"
                " supported yet (copy the run folder to a local disk)"
            )
        if stated and TRAINER_STATE not in names:
            why = f"no {TRAINER_STATE} yet (being saved)"
        elif not weights and any(n.endswith(".bin") for n in names):
            raise bin_only(files[0].parent)
        elif not weights:
            why = "no checkpoint file yet"
        elif len(weights) > 1:
            raise InputError(
                f"{files[0].parent}: holds several safetensors files ({', '.join(sorted(f.name for f in weights))});"
                " give the files of the embedding matrix with a glob"
            )
        else:
            out.append(weights[0])
            continue
        warnings.warn(f"{files[0].parent}: skipped, incomplete: {why}", SkippedCheckpointWarning, stacklevel=2)
    if not out:
        raise none_complete(url, len(folders))
    return out
