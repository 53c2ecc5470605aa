"""Small read-only reports on a distance Dataset (the notebook's summary block)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .locations import Location, any_url, locate, zarr_group

__all__ = ["step_summary", "format_summary", "format_step", "summarize", "bf16_spacing", "STATS", "describe"]


def step_summary(ds: xr.Dataset, index: int) -> dict[str, tuple[float, float, float]]:
    """Min, max and mean of the off-diagonal distances at one step position.

    Parameters
    ----------
    ds : xarray.Dataset
        Distance Dataset (lazy is fine: only that step is read).
    index : int
        Position along ``step`` (``-1`` for the last).

    Returns
    -------
    dict of metric name to (min, max, mean), computed in float64.

    Examples
    --------
    >>> step_summary(open_distances("d.zarr"), -1)["euclidean"]  # doctest: +SKIP
    (0.0, 1.39, 0.654)
    """
    out = {}
    order = ("euclidean", "chebyshev")  # the notebook's order; any other variable after
    for name in sorted(ds.data_vars, key=lambda n: (order.index(n) if n in order else len(order), n)):
        var = ds[name]
        m = np.asarray(var.isel(step=index).values, dtype=np.float64)
        off = m[~np.eye(m.shape[0], dtype=bool)] if m.shape[0] > 1 else np.zeros(0)
        out[name] = (float(off.min()), float(off.max()), float(off.mean())) if off.size else (0.0, 0.0, 0.0)
    return out


def format_summary(ds: xr.Dataset) -> str:
    """The notebook's summary block: shape, pairs per snapshot, first and last step."""
    n_steps, n_tok = ds.sizes["step"], ds.sizes["token_i"]
    steps = ds["step"].values
    lines = [
        f"Snapshots: {n_steps:,}",
        f"Tokens: {n_tok:,}",
        f"Distance pairs per snapshot: {n_tok * (n_tok - 1) // 2:,} (excluding diagonal)",
    ]
    for label, index in (("Initial", 0), ("Final", n_steps - 1)):
        lines.append(f"{label} distances (step {steps[index]}):")
        for name, (lo, hi, mean) in step_summary(ds, index).items():
            lines.append(f"  {name.capitalize()}: min={lo:.6f}, max={hi:.6f}, mean={mean:.6f}")
    return "\n".join(lines)


def format_step(ds: xr.Dataset, step: int, summary: xr.Dataset | None = None) -> str:
    """The summary block of one step (by label): min/max/mean per metric, and its
    quantization neighbours when a :func:`summarize` result is given.

    Examples
    --------
    >>> print(format_step(open_distances("d.zarr"), 1000))  # doctest: +SKIP
    Step 1000:
      Euclidean: min=0.000000, max=0.812217, mean=0.401003
      Chebyshev: min=0.000000, max=0.318359, mean=0.131405
    """
    steps = ds["step"].values
    where = np.flatnonzero(steps == step)
    if not where.size:
        raise ValueError(f"no step {step}; steps run {steps[0]}..{steps[-1]} ({len(steps)} steps)")
    lines = [f"Step {step}:"]
    for name, (lo, hi, mean) in step_summary(ds, int(where[0])).items():
        lines.append(f"  {name.capitalize()}: min={lo:.6f}, max={hi:.6f}, mean={mean:.6f}")
    if summary is not None and "quantization_neighbours" in summary:
        count = int(summary["quantization_neighbours"].values[where[0]])
        lines.append(f"  Quantization neighbours: {count:,} pairs")
    return "\n".join(lines)


#: Statistics :func:`summarize` gives per step and metric.
STATS: tuple[str, ...] = ("min", "mean", "max")


def bf16_spacing(magnitude: xr.DataArray | np.ndarray | float) -> xr.DataArray | np.ndarray:
    """Distance between adjacent bfloat16 values at ``magnitude`` (8 significant bits).

    Examples
    --------
    >>> float(bf16_spacing(1.0)), float(bf16_spacing(0.05))
    (0.0078125, 0.000244140625)
    """
    exponent = np.floor(np.log2(np.maximum(np.abs(magnitude), np.finfo(np.float32).tiny)))
    return 2.0 ** (exponent - 7)


def summarize(ds: xr.Dataset, threshold: float | None = None) -> xr.Dataset:
    """Per-step statistics of the off-diagonal distances, lazily, in one pass over the store.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`pairwise_distances` or :func:`open_distances`.
    threshold : float, optional
        Chebyshev distance below which two tokens count as **quantization neighbours**
        (indistinguishable at bf16 precision in every dim). Default: one bf16 spacing at the
        embedding's typical magnitude at each step (``bf16_spacing(embedding_rms)``).

    Returns
    -------
    xarray.Dataset
        Dims ``("step",)``: ``{metric}_{min,mean,max}`` (float64) for each metric, and
        ``quantization_neighbours`` (pairs i < j with Chebyshev below the threshold) plus
        the ``threshold`` used, when Chebyshev is present. Lazy: compute or ``.load()`` it.
        Runs (a leading ``run`` dim, from ``open_distances`` of several stores) give dims
        ``("run", "step")``; a run's missing steps give NaN statistics and 0 neighbours.

    Examples
    --------
    >>> s = summarize(open_distances("d.zarr")).compute()  # doctest: +SKIP
    >>> s.euclidean_mean.isel(step=-1).item()  # doctest: +SKIP
    """
    import dask.array as da

    from .step_stats import step_stats

    if "run" in ds.dims:
        runs = [summarize(ds.sel(run=r).drop_vars("run"), threshold) for r in ds["run"].values]
        return xr.concat(runs, dim=ds["run"])
    names = [m for m in ("euclidean", "chebyshev") if m in ds.data_vars]
    if any(not isinstance(ds[name].data, da.Array) for name in names):
        ds = ds.chunk({"step": ds[names[0]].encoding.get("chunks", (-1,))[0]} if names else {})
    out = {}
    thr = None
    if "chebyshev" in ds.data_vars:
        if threshold is None:
            if "embedding_rms" not in ds.coords:
                raise ValueError(
                    "this store has no embedding_rms coordinate for the default threshold; pass threshold="
                )
            thr = bf16_spacing(ds["embedding_rms"])
        else:
            if not threshold > 0:
                raise ValueError(f"threshold={threshold!r}: must be a positive distance")
            thr = xr.full_like(ds["step"], threshold, dtype=np.float64)
        thr = thr.reset_coords(drop=True).astype(np.float64)
    for name in names:
        var = ds[name].transpose("step", "token_i", "token_j")
        threshold_data = None
        if name == "chebyshev":
            threshold_data = thr.data if isinstance(thr.data, da.Array) else da.from_array(thr.values, chunks=-1)
        # one pass over each chunk: min, max, sum, count (off-diagonal, NaN skipped), pairs below
        stats = step_stats(var.data, threshold_data)  # min, mean, max, pairs below threshold
        values = {"min": stats[:, 0], "mean": stats[:, 1], "max": stats[:, 2]}
        for stat in STATS:
            out[f"{name}_{stat}"] = xr.DataArray(
                values[stat], dims=("step",), attrs={"long_name": f"{stat} off-diagonal {name} distance"}
            )
        if name == "chebyshev":
            out["threshold"] = thr.assign_attrs(long_name="quantization-neighbour threshold")
            out["quantization_neighbours"] = xr.DataArray(
                stats[:, 3].astype(np.int64),
                dims=("step",),
                attrs={"long_name": "token pairs i<j with Chebyshev distance below threshold"},
            )
    result = xr.Dataset(out, coords={"step": ds["step"]})
    return result.drop_vars([c for c in result.coords if c != "step"])


def _disk_size(path: Path | Location) -> int:
    if isinstance(path, Location):
        return int(path._call("location", path.fs.du, path.path))
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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

    from .bookkeeping import has_bookkeeping
    from .checkpoints import directory_hint
    from .errors import InputError
    from .history import _is_checkpoint_spec, _read_npy_header
    from .knn_store import is_neighbours_store
    from .safetensors_io import read_header
    from .store import is_store, store_progress

    if _is_checkpoint_spec(path):
        if any_url(path):  # type: ignore[arg-type]
            raise InputError(f"{path}: info takes one file on object storage; name one checkpoint")
        return _describe_checkpoints(path, key)  # type: ignore[arg-type]
    located = locate(path, storage_options)  # type: ignore[arg-type]
    if isinstance(located, Location) and not (
        located.is_dir() and (is_store(located) or has_bookkeeping(located))
    ):  # an input on object storage: stores there are described below, as on disk
        return _describe_url(located)
    path = located
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    lines = [f"{path}"]
    if path.is_dir() and not isinstance(path, Location) and is_neighbours_store(path):
        group = zarr.open_group(str(path), mode="r")
        steps, nbr = np.asarray(group["step"][:]), group["neighbour"]
        lines.append(f"  dask_pdist neighbours store, version {group.attrs.get('dask_pdist_version', '?')}")
        lines.append(f"  source: {group.attrs.get('source', '?')} [{group.attrs.get('source_key', '?')}]")
        lines.append(f"  {group.attrs.get('k', '?')} nearest per token ({group.attrs.get('metric', '?')})")
        lines.append(f"  steps: {len(steps)} ({steps[0]}..{steps[-1]})" if len(steps) else "  steps: 0")
        lines.append(f"  neighbour: shape {list(nbr.shape)} {nbr.dtype}, chunks {list(nbr.chunks)}")
        lines.append(f"  size on disk: {_disk_size(path) / 1e6:.1f} MB")
        return "\n".join(lines)
    if path.is_dir() and not (path / "zarr.json").exists() and has_bookkeeping(path):
        lines.append(
            "  DAMAGED dask_pdist store: its root zarr.json is missing (a write was interrupted);"
            " replace it with `dask-pdist compute ... --overwrite`"
        )
        return "\n".join(lines)
    if path.is_dir() and is_store(path):
        group = zarr_group(path, "r", use_consolidated=False)
        steps = np.asarray(group["step"][:])
        lines.append(f"  dask_pdist store, version {group.attrs.get('dask_pdist_version', '?')}")
        lines.append(
            f"  source: {group.attrs.get('source', '?')} [{group.attrs.get('source_key', '?')}],"
            f" {group.attrs.get('input_dtype', '?')}"
        )
        lines.append(f"  steps: {len(steps)} ({steps[0]}..{steps[-1]})" if len(steps) else "  steps: 0")
        for name in ("euclidean", "chebyshev"):
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
            else f"INCOMPLETE: {int((done == 0).sum())} blocks missing, resume with --resume"
        )
        lines.append(f"  blocks written: {int(done.sum())}/{done.size} ({state})")
        lines.append(f"  size on disk: {_disk_size(path) / 1e6:.1f} MB")
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
        shape, _, dtype, _ = _read_npy_header(path)
        lines.append(f"  .npy: shape {list(shape)} {dtype}")
    else:
        tensors, metadata = read_header(path)
        lines.append(f"  safetensors, {len(tensors)} tensors")
        for name, info in sorted(tensors.items()):
            lines.append(f"  {name}: shape {list(info.shape)} {info.dtype}")
        for key, value in sorted(metadata.items()):
            lines.append(f"  metadata {key}: {value[:80]}")
    lines.append(f"  size on disk: {_disk_size(path) / 1e6:.1f} MB")
    return "\n".join(lines)


def _describe_checkpoints(spec: str | Sequence[str | os.PathLike[str]], key: str | None) -> str:
    from .checkpoints import checkpoint_paths, tensor_file
    from .history import open_history
    from .safetensors_io import read_header

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

    from .history import _read_npy_header
    from .safetensors_io import read_header

    lines = [str(loc)]
    if loc.is_dir():
        node = zarr.open(loc.url, mode="r", storage_options=dict(loc.storage_options))
        arrays = dict(node.arrays()) if isinstance(node, zarr.Group) else {loc.name: node}
        lines.append("  zarr input")
        lines += [f"  {name}: shape {list(arr.shape)} {arr.dtype}" for name, arr in sorted(arrays.items())]
        return "\n".join(lines)
    if loc.suffix == ".npy":
        shape, _, dtype, _ = _read_npy_header(loc)
        lines.append(f"  .npy: shape {list(shape)} {dtype}")
    else:
        tensors, metadata = read_header(loc)
        lines.append(f"  safetensors, {len(tensors)} tensors")
        lines += [f"  {name}: shape {list(info.shape)} {info.dtype}" for name, info in sorted(tensors.items())]
        lines += [f"  metadata {key}: {value[:80]}" for key, value in sorted(metadata.items())]
    lines.append(f"  size: {loc.size() / 1e6:.1f} MB")
    return "\n".join(lines)
