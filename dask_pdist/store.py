"""Writers and readers of the zarr store (zarr format 3, NaN fill, chunks aligned with dask).

The store tells the truth about what it holds. Each dask task writes one block of every
variable, then sets its own element of the ``chunk_done`` array (one zarr chunk per block,
so concurrent writers never share a file; zarr attributes are not safe for concurrent
updates). A ``complete`` attribute is written last, by one task that depends on all others.
Chunk writes are atomic on local disk (zarr >= 3.1.3: temp file + rename) and carry a
crc32c checksum, so a killed job leaves only whole chunks, which ``--resume`` completes.

The store is plain xarray-on-zarr: ``xarray.open_zarr(path)`` opens it without dask_pdist.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import Delayed

from ._version import __version__
from .compression import (  # noqa: F401  (COMPRESSORS, DEFAULT_COMPRESSOR, AUTO_CODECS: re-exported)
    AUTO_CODECS,
    COMPRESSORS,
    DEFAULT_COMPRESSOR,
    Compressor,
    codec_choice,
    codec_name,
    codecs,
)
from .dataset import DISTANCE_DIMS
from .errors import StoreError
from .locations import local_path

__all__ = [
    "AUTO_CODECS",
    "codec_choice",
    "COMPRESSORS",
    "DEFAULT_COMPRESSOR",
    "to_zarr",
    "open_distances",
    "store_progress",
    "verify_store",
    "ChunkProblem",
]

DONE = "chunk_done"
_DONE_DIMS = ("step_block", "token_i_block", "token_j_block")
_MARKER_ATTR = "dask_pdist_version"
_FINGERPRINT_ATTR = "dask_pdist_fingerprint"
_COMPLETE_ATTR = "complete"


def _regular_chunks(ds: xr.Dataset) -> xr.Dataset:
    # zarr chunks are regular: make every dask chunk but the last one equal, so each dask
    # task writes whole store chunks and no two tasks share one
    chunks = {}
    for dim in DISTANCE_DIMS:
        sizes = ds.chunksizes.get(dim)
        if sizes and (len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0])):
            chunks[dim] = max(sizes)
    return ds.chunk(chunks) if chunks else ds


def _read_attrs(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None


def is_store(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds a zarr group written by dask_pdist."""
    attrs = _read_attrs(Path(path))
    return attrs is not None and _MARKER_ATTR in attrs


def _fingerprint(ds: xr.Dataset, compressor: str) -> dict[str, Any]:
    # what must match for a resumed job to continue the same computation
    return {
        "source_key": ds.attrs.get("source_key", ""),
        "source_fingerprint": ds.attrs.get("source_fingerprint", ""),
        "input_dtype": ds.attrs.get("input_dtype", ""),
        "compute_dtype": ds.attrs.get("compute_dtype", ""),
        "variables": {name: str(var.dtype) for name, var in sorted(ds.data_vars.items())},
        "shape": [int(ds.sizes[d]) for d in DISTANCE_DIMS],
        "chunks": [int(ds.chunksizes[d][0]) for d in DISTANCE_DIMS],
        "compressor": compressor,
        # what the choice meant when the store was made: a resumed job writes the same codecs
        "codecs": {name: codec_name(codec_choice(compressor, name)) for name in sorted(ds.data_vars)},
        "version": __version__,
    }


def _check_output(path: Path, overwrite: bool, resume: bool) -> bool:
    """Validate the output location before any work; returns True to resume into it."""
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: resume continues a store, overwrite replaces it")
    if path.exists():
        if not is_store(path):
            raise StoreError(f"{path}: exists and is not a dask_pdist store; refusing to write into or delete it")
        if resume:
            return True
        if not overwrite:
            raise StoreError(
                f"{path}: already exists; pass overwrite=True (--overwrite) to replace it,"
                " or resume=True (--resume) to finish an interrupted job"
            )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"{path}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"{path}: parent directory {parent} is not writable")
    return False


def _create(ds: xr.Dataset, path: Path, compressor: str, fingerprint: dict[str, Any]) -> None:
    import zarr

    encoding = {
        name: {
            "chunks": tuple(c[0] for c in var.chunks),
            "compressors": codecs(compressor, var.dtype.itemsize, str(name)),
            "_FillValue": np.nan,  # an unwritten chunk reads as NaN, never as distance 0
        }
        for name, var in ds.data_vars.items()
    }
    tmp = path.with_name(path.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    # metadata and the (small, eager) coordinates; the distances are written by our own tasks
    ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding, compute=False)
    group = zarr.open_group(str(tmp), mode="r+")
    nblocks = tuple(len(ds.chunksizes[d]) for d in DISTANCE_DIMS)
    done = group.create_array(
        DONE, shape=nblocks, chunks=(1, 1, 1), dtype="uint8", fill_value=0, dimension_names=_DONE_DIMS
    )
    done.attrs["long_name"] = "1 where the block of every variable is written (one element per dask task)"
    group.attrs[_FINGERPRINT_ATTR] = json.dumps(fingerprint, sort_keys=True)
    group.attrs[_COMPLETE_ATTR] = False
    _consolidate(tmp)
    os.rename(tmp, path)  # the store appears whole, with its metadata, or not at all


#: catch_warnings swaps the process-wide filters: two stores finishing at once in one graph
#: (several runs) would restore each other's filters mid-way and let the warning through
_WARNINGS_LOCK = threading.Lock()


def _consolidate(path: Path) -> None:
    import zarr

    with _WARNINGS_LOCK, warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension to format 3; we write it so that
        # plain xarray.open_zarr(path) opens the store without a fallback warning
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


def _clean_partials(path: Path) -> int:
    # temp files of chunk writes killed mid-way (zarr's LocalStore names them *.partial)
    n = 0
    for p in path.rglob("*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _write_block(block: np.ndarray, *, array: Any, block_info: Any = None) -> np.ndarray:
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
    array[region] = block
    return np.ones((1,) * block.ndim, dtype=np.uint8)


def _write_coord(block: np.ndarray, *, array: Any, block_info: Any = None) -> np.ndarray:
    ((start, stop),) = block_info[0]["array-location"]
    array[start:stop] = block
    return np.ones((1,), dtype=np.uint8)


def _mark_done(*written: np.ndarray, done: Any, block_info: Any = None) -> np.ndarray:
    # runs only after every variable's block (and the step coordinate) is on disk
    index = tuple(loc[0] for loc in block_info[None]["array-location"])
    done[index] = 1
    return np.ones((1, 1, 1), dtype=np.uint8)


def _finish(flags: list, path: str) -> int:
    import zarr

    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    group.attrs[_COMPLETE_ATTR] = True
    _consolidate(Path(path))
    return len(flags)


def _write_graph(ds: xr.Dataset, path: Path, todo: np.ndarray) -> Delayed:
    import zarr

    token = dask.base.tokenize(str(path), *(v.data.name for v in ds.data_vars.values()))
    written = []
    # write every chunk, even one equal to the fill value (an all-NaN block under
    # nonfinite="propagate"): skipping it would make it look missing to verify, and the
    # comparison costs ~25% of the write time (measured)
    # (open_array(config=...) is silently ignored in zarr 3.1; with_config is honoured)
    config = {"write_empty_chunks": True}
    for name, var in ds.data_vars.items():
        arr = zarr.open_array(str(path / name), mode="r+").with_config(config)
        written.append(
            var.data.map_blocks(_write_block, array=arr, dtype=np.uint8, chunks=(1, 1, 1), name=f"write-{name}-{token}")
        )
    for name, coord in ds.coords.items():
        if isinstance(coord.data, da.Array):  # lazy per-step coordinates (embedding_rms)
            arr = zarr.open_array(str(path / name), mode="r+").with_config(config)
            flags = coord.data.map_blocks(
                _write_coord, array=arr, dtype=np.uint8, chunks=(1,), name=f"write-{name}-{token}"
            )
            written.append(flags[:, None, None])
    done = da.map_blocks(
        _mark_done,
        *written,
        done=zarr.open_array(str(path / DONE), mode="r+").with_config(config),
        dtype=np.uint8,
        chunks=(1, 1, 1),
        name=f"mark-done-{token}",
    )
    blocks = done.to_delayed(optimize_graph=False)
    tasks = [blocks[tuple(idx)] for idx in np.argwhere(todo)]  # resume: only blocks not done
    return dask.delayed(_finish, pure=False)(tasks, str(path))


def to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    compressor: Compressor = DEFAULT_COMPRESSOR,
    overwrite: bool = False,
    resume: bool = False,
    compute: bool = True,
    progress: bool | None = None,
) -> Any:
    """Write a distance Dataset to a zarr (format 3) store, every metric from one graph.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances`.
    path : path-like
        Store directory to create.
    compressor : {"auto", "none", "lz4", "zstd"}
        ``"auto"``: per variable, as measured (:data:`AUTO_CODECS`: Euclidean uncompressed,
        Chebyshev Blosc lz4 with bit shuffle); ``"lz4"``/``"zstd"``: Blosc with byte shuffle for
        every variable; ``"none"``: no compression (see the README for the measurements).
        The choice and the codecs it meant are recorded in the store (``--resume`` checks
        them). Every chunk also carries a crc32c checksum.
    overwrite : bool
        Replace an existing dask_pdist store at ``path``. Anything else at ``path`` is
        never written into or deleted.
    resume : bool
        Finish an interrupted store: compute only the blocks not marked done. Refused if the
        input or parameters differ from those recorded in the store.
    compute : bool
        If False, create the store (metadata and coordinates) now and return a
        ``dask.delayed`` object that writes the distances when computed (run it under a
        progress bar or a distributed client as you like).
    progress : bool, optional
        Show a progress bar (tqdm, on stderr) while computing. Default: on in a terminal or
        a Jupyter notebook, off otherwise. Under a dask.distributed ``Client`` use
        ``compute=False`` and ``distributed.progress`` instead.

    Returns
    -------
    xarray.Dataset
        The written store, opened lazily (as :func:`open_distances` opens it); or a
        ``dask.delayed.Delayed`` if ``compute=False``.

    Raises
    ------
    StoreError
        ``path`` exists and neither ``overwrite`` nor ``resume`` is given, is not a
        dask_pdist store, or (resume) was made from other input or parameters.

    Examples
    --------
    >>> ds = to_zarr(pairwise_distances(open_history("h.safetensors")), "d.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234)  # doctest: +SKIP
    """
    path = local_path(path, "distance store")
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor={compressor!r}: choose one of {list(COMPRESSORS)}")
    resuming = _check_output(path, overwrite, resume)
    ds = _regular_chunks(ds)
    fingerprint = _fingerprint(ds, compressor)
    if resuming:
        old = json.loads(_read_attrs(path).get(_FINGERPRINT_ATTR, "{}"))
        diff = [f"{k}: store has {old.get(k)!r}, now {v!r}" for k, v in fingerprint.items() if old.get(k) != v]
        if diff:
            raise StoreError(
                f"{path}: cannot resume, the job differs from the one that made the store: " + "; ".join(diff)
            )
        _clean_partials(path)
    else:
        if path.exists():
            shutil.rmtree(path)
        _create(ds, path, compressor, fingerprint)
    todo = (
        store_progress(path)[0] == 0 if resuming else np.ones(tuple(len(ds.chunksizes[d]) for d in DISTANCE_DIMS), bool)
    )
    job = _write_graph(ds, path, todo)
    if not compute:
        return job
    if _interactive() if progress is None else progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="writing", unit="task", file=sys.stderr):
            job.compute()
    else:
        job.compute()
    return open_distances(path)


def _interactive() -> bool:
    # a person is watching: a terminal, or a Jupyter kernel (whose stderr is not a tty)
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def store_progress(path: str | os.PathLike[str]) -> tuple[np.ndarray, bool]:
    """The ``chunk_done`` flags (one per block) and the ``complete`` marker of a store."""
    import zarr

    path = Path(path)
    attrs = _read_attrs(path) or {}
    done = np.asarray(zarr.open_array(str(path / DONE), mode="r")[...])
    return done, bool(attrs.get(_COMPLETE_ATTR, False))


def open_distances(
    path: str | os.PathLike[str], *, allow_incomplete: bool = False, chunks: Literal["store"] | None = "store"
) -> xr.Dataset:
    """Open a distance store lazily; slicing by step reads only the chunks it needs.

    Parameters
    ----------
    path : path-like
        A store written by :func:`to_zarr` or ``dask-pdist compute``.
    allow_incomplete : bool
        Open a store whose job was interrupted: blocks not marked done read as NaN (even if
        a chunk file of them exists). Without it, an incomplete store is an error.
    chunks : {"store", None}
        ``"store"``: dask-backed, one dask chunk per store chunk (parallel, for whole-store
        analyses). ``None``: no dask; indexing reads exactly the chunks it needs, straight
        through zarr, in the calling thread: the fastest way to read one step (about half the
        time of the dask path, see the README's Performance section). Not with
        ``allow_incomplete``.

    Raises
    ------
    StoreError
        Not a dask_pdist store, or incomplete (the message says how to resume).

    Examples
    --------
    >>> ds = open_distances("pairwise_distances.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(step=1234).values  # reads one chunk  # doctest: +SKIP
    >>> open_distances("pairwise_distances.zarr", chunks=None).euclidean.sel(step=1234).values  # doctest: +SKIP
    """
    if chunks not in ("store", None):
        raise ValueError(f"chunks={chunks!r}: choose 'store' (dask, one chunk per store chunk) or None (no dask)")
    if chunks is None and allow_incomplete:
        raise ValueError(
            "allow_incomplete=True masks missing blocks with dask: use chunks='store' (the default) with it"
        )
    path = local_path(path, "distance store")
    if not path.exists():
        raise FileNotFoundError(f"{path}: store not found")
    if not is_store(path):
        raise StoreError(f"{path}: not a dask_pdist store (no zarr.json with {_MARKER_ATTR!r})")
    done, complete = store_progress(path)
    ds = xr.open_zarr(
        path, zarr_format=3, consolidated=True, chunks={} if chunks == "store" else None, drop_variables=[DONE]
    )
    if complete:
        return ds
    missing = int((done == 0).sum())
    if not allow_incomplete:
        raise StoreError(
            f"{path}: incomplete, {missing} of {done.size} blocks missing (the job was interrupted);"
            " finish it with the same `dask-pdist compute ... --resume` command, or open with"
            " allow_incomplete=True (--allow-incomplete) to read missing blocks as NaN"
        )
    for name in ds.data_vars:
        ds[name] = ds[name].copy(data=ds[name].data.map_blocks(_mask_block, done=done, dtype=ds[name].dtype))
    return ds


def _mask_block(block: np.ndarray, *, done: np.ndarray, block_info: Any = None) -> np.ndarray:
    if done[tuple(block_info[0]["chunk-location"])]:
        return block
    return np.full_like(block, np.nan)


@dataclass(frozen=True)
class ChunkProblem:
    """A store chunk that is missing or fails its checksum."""

    variable: str
    steps: tuple[int, int]  # step labels, first and last
    tokens_i: tuple[int, int]
    tokens_j: tuple[int, int]
    problem: str

    def __str__(self) -> str:
        where = f"steps {self.steps[0]}..{self.steps[1]}"
        if self.tokens_i != self.tokens_j or self.tokens_i[0] != 0:
            where += f", token_i {self.tokens_i[0]}..{self.tokens_i[1]}, token_j {self.tokens_j[0]}..{self.tokens_j[1]}"
        return f"{self.variable} {where}: {self.problem}"


def verify_store(
    path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None
) -> list[ChunkProblem]:
    """Read every chunk of every variable; report missing and corrupt ones.

    A chunk is missing when its block is not marked done or its file is absent, and corrupt
    when it fails its crc32c checksum or cannot be decoded. ``progress(checked, total)``, if
    given, is called after each chunk (the CLI draws a progress bar with it).

    Examples
    --------
    >>> for problem in verify_store("pairwise_distances.zarr"): print(problem)  # doctest: +SKIP
    """
    import zarr

    path = Path(path)
    if not is_store(path):
        raise StoreError(f"{path}: not a dask_pdist store")
    done, _ = store_progress(path)
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    steps = np.asarray(group["step"][:])
    problems = []
    names = [name for name in ("euclidean", "chebyshev") if name in group]
    checked, total = 0, len(names) * done.size
    for name in names:
        arr = group[name]
        cs, ci, cj = arr.chunks
        for idx in np.ndindex(*done.shape):
            s0, i0, j0 = idx[0] * cs, idx[1] * ci, idx[2] * cj
            s1, i1, j1 = min(s0 + cs, arr.shape[0]), min(i0 + ci, arr.shape[1]), min(j0 + cj, arr.shape[2])
            key = path / name / "c" / str(idx[0]) / str(idx[1]) / str(idx[2])
            problem = None
            if not key.exists():
                problem = "missing (chunk file absent)"
            elif not done[idx]:
                problem = "missing (block not marked done)"
            else:
                try:
                    arr[s0:s1, i0:i1, j0:j1]
                except Exception as exc:  # zarr raises ValueError for checksums, others for decoding
                    problem = f"corrupt ({exc})"
            if problem:
                problems.append(
                    ChunkProblem(name, (int(steps[s0]), int(steps[s1 - 1])), (i0, i1 - 1), (j0, j1 - 1), problem)
                )
            checked += 1
            if progress is not None:
                progress(checked, total)
    return problems
