"""What a folder given where a file or store was expected holds: the hint its error carries
(the glob of checkpoints it probably meant, or the dask_pdist stores inside it)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from dask_pdist.conventions import MARKER_ATTR
from dask_pdist.io.checkpoints import INDEX_SUFFIX

__all__ = ["directory_hint", "stores_hint"]


def directory_hint(folder: Path) -> str:
    """The error for a folder given where a file or zarr store is expected: the glob it
    probably meant.

    Examples
    --------
    >>> directory_hint(Path("ckpt"))  # doctest: +SKIP
    "ckpt: a directory, not a zarr store: did you mean 'ckpt/*.safetensors'? (quote the glob)"
    """
    if any(folder.glob("*.safetensors")):
        pattern = str(folder / "*.safetensors")
    elif any(folder.glob("*/*.safetensors")) or any(folder.glob("*/*" + INDEX_SUFFIX)):
        pattern = str(folder / "*")  # Hugging Face style checkpoint folders
    else:
        return f"{folder}: a directory that is not a zarr store and holds no .safetensors checkpoints" + stores_hint(
            folder
        )
    return f"{folder}: a directory, not a zarr store: did you mean '{pattern}'? (quote the glob)"


def stores_hint(where: Path | str) -> str:
    """For a local folder (or a glob) that holds dask_pdist stores, one per run as ``compute
    'runs/*' -o out/`` writes them: a sentence naming them and saying to give one; else ""."""
    spec = str(where)
    pattern = spec if any(c in spec for c in "*?[") else os.path.join(spec, "*")
    found = []
    for name in sorted(glob.glob(pattern)):
        try:
            text = Path(name, "zarr.json").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if MARKER_ATTR in text:
            found.append(os.path.basename(name))
    if not found:
        return ""
    listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    example = os.path.join(spec if pattern != spec else os.path.dirname(spec), found[0])
    what = "the pattern matches" if pattern == spec else "it holds"
    return f"; {what} {len(found)} dask_pdist stores ({listed}), one per run: give one of them, e.g. {example}"
