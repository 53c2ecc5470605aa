"""Many training runs at once: several 3-D histories in one dask graph, one store per run, and
the stores read back as one Dataset with a leading ``run`` dimension.

Built on the public API only (:func:`~dask_pdist.io.history.open_history`,
:func:`~dask_pdist.graphs.dataset.pairwise_distances`, :func:`~dask_pdist.store.writer.to_zarr`,
:func:`~dask_pdist.store.reader.open_distances`): a run is a history like any other.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dask_pdist.errors import InputError, StoreError
from dask_pdist.io.checkpoints import is_checkpoint_folder, is_run_folder, run_folders
from dask_pdist.io.paths import (
    Location,
    any_url,
    glob_locations,
    is_remote,
    is_url,
    key_path,
    locate,
    missing_bucket,
    options_for,
)
from dask_pdist.io.safetensors_format import read_header

__all__ = ["Run", "RunBatch", "find_runs", "run_names", "compute_runs", "open_distances"]

_GLOB_CHARS = "*?["


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _parts(path: Path | Location) -> list[str]:
    return [p for p in key_path(path).parts if p != "/"]


def run_names(paths: Sequence[str | os.PathLike[str] | Location]) -> list[str]:
    """One name per run: the path components that differ between the runs' paths (a folder or
    a file name without its extension), joined with ``-`` when several differ.

    Raises
    ------
    InputError
        Two runs would get the same name.

    Examples
    --------
    >>> run_names(["data/run_007/embedding_evolution.safetensors", "data/run_012/embedding_evolution.safetensors"])
    ['run_007', 'run_012']
    >>> run_names(["h/seed1.safetensors", "h/seed2.safetensors"])
    ['seed1', 'seed2']
    """
    parts = [_parts(locate(p)) for p in paths]
    if len(parts) == 1:
        return [_strip_suffix(parts[0][-1])]
    depth = max(len(p) for p in parts)
    padded = [p + [""] * (depth - len(p)) for p in parts]
    differ = [i for i in range(depth) if len({p[i] for p in padded}) > 1]
    names = ["-".join(_strip_suffix(p[i]) for i in differ if p[i]) for p in padded]
    seen: dict[str, str] = {}
    for name, path in zip(names, paths, strict=True):
        if not name or name in seen:
            raise InputError(
                f"{path}: its run name {name!r} (from the path components that differ between runs) is also"
                f" that of {seen.get(name, 'another run')}; give runs distinct folder or file names"
            )
        seen[name] = str(path)
    return names


def _strip_suffix(name: str) -> str:
    for suffix in (".safetensors", ".npy", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expand(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], storage_options: dict | None) -> list:
    # a glob (local or URL) or a list -> located paths in natural order; a plain path -> [it]
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if any_url(text) and any(c in text.split("://", 1)[1] for c in _GLOB_CHARS):
            found: list = glob_locations(text, storage_options)
        elif not is_url(text) and any(c in text for c in _GLOB_CHARS) and not os.path.exists(text):
            found = [Path(p) for p in glob.glob(text)]
        else:
            return [locate(text, options_for(text, storage_options))]
        return sorted(found, key=lambda p: _natural_key(str(p)))
    return [locate(p, options_for(p, storage_options)) for p in spec]


def _by_run_folder(paths: list) -> list:
    # 'run*/checkpoint-*': checkpoint folders of two or more Trainer runs are those runs
    if len(paths) < 2 or not all(isinstance(p, Path) and is_checkpoint_folder(p) for p in paths):
        return paths
    parents = list(dict.fromkeys(p.parent for p in paths))
    if len(parents) < 2:
        return paths
    left_out = sorted(str(p) for run in parents for p in run_folders(run) if p not in set(paths))
    if left_out:  # a run is its whole folder: a subset would be stored as if it were the run
        raise InputError(
            f"the pattern picks some checkpoints of {len(parents)} runs but leaves out {', '.join(left_out[:3])}"
            f"{' ...' if len(left_out) > 3 else ''}; give the run folders (e.g. 'runs/*') for several runs,"
            " or the checkpoints of one run"
        )
    return parents


def _is_3d_history(path: Path | Location, key: str | None) -> bool:
    """True if the file holds a 3-D history (a run), False for a per-checkpoint 2-D matrix."""
    if isinstance(path, Path) and is_run_folder(path):
        return True  # a Hugging Face Trainer output folder: its checkpoints are one run
    if isinstance(path, Path) and path.is_dir():
        return any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup"))  # a zarr history
    if path.suffix == ".npy":
        return True  # .npy inputs are 3-D or refused by open_history
    try:
        tensors, _ = read_header(path)
    except InputError:
        return False  # let open_history give its own message
    if key is not None:
        return key in tensors and len(tensors[key].shape) == 3
    return sum(len(t.shape) == 3 for t in tensors.values()) == 1


def find_runs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    key: str | None = None,
    *,
    storage_options: dict | None = None,
) -> dict[str, Path | Location] | None:
    """The runs among ``inputs``, by name, or None when ``inputs`` is one history.

    ``inputs`` (a glob, local or URL, or a list) names runs when it matches two or more
    files (or zarr stores) that each hold a 3-D history, or two or more Hugging Face Trainer
    output folders (``runs/*``, or their checkpoints: ``'run*/checkpoint-*'``); anything else (2-D matrices:
    per-checkpoint files of one history, see :func:`~dask_pdist.io.history.open_history`) is
    left to ``open_history``.

    Examples
    --------
    >>> find_runs("data/run_*/embedding_evolution.safetensors")  # doctest: +SKIP
    {'run_007': PosixPath('data/run_007/embedding_evolution.safetensors'), ...}
    """
    paths = _by_run_folder(_expand(inputs, storage_options))
    if len(paths) < 2 or not all(_is_3d_history(p, key) for p in paths):
        return None
    return dict(zip(run_names(paths), paths, strict=True))


@dataclass
class Run:
    """One run of a batch: its name, history, store, and what the batch does with it."""

    name: str
    source: Path | Location
    store: Path | Location
    state: str  # "compute", "resume" or "complete" (skipped)
    blocks: int = 0  # blocks to compute


@dataclass
class RunBatch:
    """The runs of :func:`compute_runs` and the one graph that computes them all."""

    runs: list[Run]
    delayed: Any = field(default=None, repr=False)  # dask.delayed, None when nothing to do

    def compute(self, *, scheduler: str | None = None, progress: bool | None = False) -> RunBatch:
        """Run the graph (:class:`~dask_pdist.store.job.Job`: ``scheduler`` is a
        dask.distributed address, default this process); returns self. A failure releases
        every run's writer lock and records a stop caused by the input in its store."""
        if self.delayed is not None:
            from dask_pdist.store.job import Job

            Job(self.delayed, desc="computing runs", on_stop=self._stop).execute(scheduler=scheduler, progress=progress)
            self.delayed = None
        return self

    def _stop(self, exc: BaseException) -> str:
        from dask_pdist.store.guards import stop_job

        notes = [stop_job(run.store, exc) for run in self.runs if run.state != "complete"]
        return "; ".join(note for note in notes if note)


def compute_runs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | dict[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    key: str | None = None,
    chunks: Any = "auto",
    tokens: Any = None,
    nonfinite: str = "raise",
    token_ids: Any = None,
    metrics: Sequence[str] = ("euclidean", "chebyshev"),
    dtype: str = "float32",
    token_chunk: int | str = "auto",
    compressor: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    storage_options: dict | None = None,
    compute: bool = True,
) -> RunBatch:
    """Distances of several runs in one dask graph, into ``output_dir/<run>.zarr`` each.

    Parameters
    ----------
    inputs : glob, list, or dict of run name to path
        The runs' 3-D histories (see :func:`find_runs` and :func:`run_names`).
    output_dir : path-like
        Folder for the stores (created if missing; its parent must exist).
    key, chunks, tokens, nonfinite, token_ids, storage_options
        As :func:`~dask_pdist.io.history.open_history`, for every run. A store resumed (or
        appended to) with ``chunks="auto"`` keeps its own chunks along ``step``.
    metrics, dtype, token_chunk
        As :func:`~dask_pdist.graphs.dataset.pairwise_distances`.
    compressor, overwrite, resume, append
        As :func:`~dask_pdist.store.writer.to_zarr`. A complete store is skipped unless
        ``overwrite``, or ``append`` (its run's new steps are appended); a complete store whose
        run's input changed since (new checkpoints, a longer history) is refused without
        ``append``, not skipped as if current. An incomplete one needs ``resume`` (or
        ``overwrite``, or ``append``).
    compute : bool
        Run the graph now; with False, call ``.compute()`` on the result (or compute its
        ``delayed`` under your own scheduler).

    Returns
    -------
    RunBatch
        ``runs``: each run's name, history, store and state (``"compute"``, ``"resume"``,
        ``"complete"``: skipped).

    Examples
    --------
    >>> batch = compute_runs("data/run_*/embedding_evolution.safetensors", "out")  # doctest: +SKIP
    >>> [(r.name, r.state) for r in batch.runs]  # doctest: +SKIP
    [('run_007', 'compute'), ('run_012', 'compute')]
    """
    import dask

    from dask_pdist.graphs.dataset import pairwise_distances
    from dask_pdist.io.history import open_history
    from dask_pdist.store.codecs import DEFAULT_COMPRESSOR
    from dask_pdist.store.layout import is_store, store_progress
    from dask_pdist.store.writer import to_zarr

    if isinstance(inputs, dict):
        found = {name: locate(p, options_for(p, storage_options)) for name, p in inputs.items()}
    else:
        paths = _expand(inputs, storage_options)
        found = dict(zip(run_names(paths), paths, strict=True))
    if not found:
        raise InputError(f"{inputs}: no run to compute")
    out = locate(output_dir, options_for(output_dir, storage_options))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --output must be a folder for several runs (one store per run), but it is a file")
    if is_remote(out):  # a key prefix: nothing to create; the bucket must exist
        if missing_bucket(out) is not None:
            raise FileNotFoundError(f"{out}: bucket not found (or not visible with these credentials)")
    elif not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: folder not found; create it first (the stores go to {out}/<run>.zarr)")
    else:
        out.mkdir(exist_ok=True)
    runs, graphs = [], []
    for name, source in found.items():
        store = out / f"{name}.zarr"
        state = "compute"
        complete = False
        if store.exists() and is_store(store) and not overwrite:
            done, complete = store_progress(store)
            if append:
                state = "append"
            elif resume and not complete:
                state = "resume"
        history = open_history(
            str(source),  # a URL string or a local path
            key,
            _stored_step_chunk(store) if state == "resume" and chunks == "auto" else chunks,
            tokens=tokens,
            nonfinite=nonfinite,  # type: ignore[arg-type]
            token_ids=token_ids,
            storage_options=options_for(source, storage_options),
        )
        ds = pairwise_distances(history, metrics=metrics, dtype=dtype, token_chunk=token_chunk)  # type: ignore[arg-type]
        if complete and state != "append":
            _check_current(store, name, ds)
            runs.append(Run(name, source, store, "complete"))
            continue
        graphs.append(
            to_zarr(
                ds,
                store,
                compressor=compressor or DEFAULT_COMPRESSOR,  # type: ignore[arg-type]
                overwrite=overwrite,
                resume=state == "resume",
                append=state == "append",
                compute=False,
            )
        )
        blocks = int(np.prod([len(c) for c in next(iter(ds.data_vars.values())).chunks]))
        if state in ("resume", "append"):
            done, _ = store_progress(store)
            blocks = int((done == 0).sum())
        runs.append(Run(name, source, store, state, blocks))
    batch = RunBatch(runs, dask.delayed(graphs) if graphs else None)
    return batch.compute() if compute else batch


def _stored_step_chunk(store: Path | Location) -> Any:
    # a resumed store keeps its step chunks: a store grown by appends has those its first job
    # chose, not those a fresh job over the grown input would
    from dask_pdist.store.append import stored_fingerprint

    return (stored_fingerprint(store).get("chunks") or ["auto"])[0] or "auto"


def _check_current(store: Path | Location, name: str, ds: xr.Dataset) -> None:
    # a complete store is skipped only if it was computed from the run's input as it is now
    from dask_pdist.store.append import stored_fingerprint

    old = stored_fingerprint(store)
    stored, now = (old.get("shape") or [0])[0], ds.sizes["step"]
    if old.get("source_fingerprint", ds.attrs.get("source_fingerprint")) != ds.attrs.get("source_fingerprint") or (
        stored != now
    ):
        raise StoreError(
            f"{store}: complete, but run {name}'s input changed since it was computed ({stored} steps stored,"
            f" {now} now): grow it with append=True (--append), or recompute it with overwrite=True (--overwrite)"
        )


def _store_paths(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], storage_options: dict | None
) -> list[Path | Location]:
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if is_url(text):
            urls = glob_locations(text, storage_options, kind="directory")
            return sorted(urls, key=lambda loc: _natural_key(loc.url))
        found = [p for p in glob.glob(text) if os.path.isdir(p)]
        if not found:
            raise FileNotFoundError(f"{text}: no store matches this pattern")
        return [Path(p) for p in sorted(found, key=_natural_key)]
    return [locate(p, options_for(p, storage_options)) for p in spec]


def open_distances(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    allow_incomplete: bool = False,
    chunks: str | None = "store",
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open one distance store, or several (a list or a glob) as one Dataset with a leading
    ``run`` dimension.

    Parameters
    ----------
    path : path-like, glob string or sequence of path-like
        One store (see :func:`dask_pdist.store.reader.open_distances`), or several: the ``run``
        coordinate holds the store names without ``.zarr``. The stores must hold the same
        tokens and metrics; their steps may differ and are aligned (outer join): a run
        without a step reads as NaN there.
    allow_incomplete : bool
        As :func:`dask_pdist.store.reader.open_distances`, for every store.
    chunks : {"store", None}
        As :func:`dask_pdist.store.reader.open_distances`; ``None`` (no dask) opens one store only.
    storage_options : dict, optional
        For stores at URLs (``s3://bucket/out/run_*.zarr``): options of the fsspec backend.

    Returns
    -------
    xarray.Dataset
        Lazy; dims ``(run, step, token_i, token_j)`` for several stores. Per-run attributes
        (source, fingerprint) are dropped where the runs differ.

    Raises
    ------
    StoreError
        The stores disagree on tokens or metrics (the message names both).

    Examples
    --------
    >>> ds = open_distances("out/run_*.zarr")  # doctest: +SKIP
    >>> ds.euclidean.sel(run="run_007", step=1000)  # doctest: +SKIP
    """
    from dask_pdist.store.reader import open_distances as open_one

    if isinstance(path, (str, os.PathLike, Location)) and not (
        isinstance(path, str) and any(c in path for c in _GLOB_CHARS) and not _exists(path, storage_options)
    ):
        return open_one(
            path, allow_incomplete=allow_incomplete, chunks=chunks, storage_options=options_for(path, storage_options)
        )
    if chunks is None:
        raise ValueError("chunks=None opens one store without dask; several stores (runs) need chunks='store'")
    paths = _store_paths(path, storage_options)
    if not paths:
        raise InputError("open_distances got an empty list of stores; give at least one")
    names = [_strip_suffix(p.name) for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"two stores share a name in {[str(p) for p in paths]}; runs are labeled by store name")
    datasets = [open_one(p, allow_incomplete=allow_incomplete) for p in paths]
    first = datasets[0]
    for p, ds in zip(paths[1:], datasets[1:], strict=True):
        if set(ds.data_vars) != set(first.data_vars):
            raise StoreError(
                f"{p}: holds {sorted(ds.data_vars)}, but {paths[0]} holds {sorted(first.data_vars)};"
                " runs must have the same metrics"
            )
        if ds.sizes["token_i"] != first.sizes["token_i"] or not np.array_equal(
            ds["token_i"].values, first["token_i"].values
        ):
            raise StoreError(
                f"{p}: its {ds.sizes['token_i']} tokens differ from the {first.sizes['token_i']} of {paths[0]};"
                " runs must have the same tokens"
            )
    # per-step coordinates (embedding_rms) become per run and step; nothing is loaded to compare
    datasets = [_with_run(ds, name) for ds, name in zip(datasets, names, strict=True)]
    return xr.concat(
        datasets, dim="run", join="outer", coords="minimal", compat="override", combine_attrs="drop_conflicts"
    )


def _exists(path: str, storage_options: dict | None) -> bool:
    # a name with [ ] * ? that exists as it is (a store "run[1].zarr") is that store, not a pattern
    if is_url(path):
        return locate(path, options_for(path, storage_options)).is_dir()
    return os.path.exists(path)


def _with_run(ds: xr.Dataset, name: str) -> xr.Dataset:
    ds = ds.expand_dims(run=[name])
    extra = {c: ds[c].expand_dims(run=[name]) for c in ds.coords if c not in ds.dims and "step" in ds[c].dims}
    return ds.assign_coords(extra)
