"""Events of clusters over training: fission, evaporation, emission, merger, formation, capture.

Computed from the per-step labels of :func:`dask_pdist.clusters`, streamed over step
chunks (only one chunk of the ``cluster`` array is in memory at a time). A **group** is a
set of two or more tokens sharing a label at one step. Comparing step ``t - 1`` with
step ``t``:

- for each group G of the previous step, with C the groups of the current step holding
  members of G: ``fission`` if ``|C| >= 2`` (tokens G); ``evaporation`` if ``|C| == 0``
  (tokens G); and, when ``|C| >= 1``, one ``emission`` per member of G that is now a
  singleton (tokens: that token);
- for each group H of the current step, with P the groups of the previous step that held
  members of H: ``merger`` if ``|P| >= 2`` (tokens H); ``formation`` if ``|P| == 0``
  (tokens H); and, when ``|P| >= 1``, one ``capture`` listing the members of H that were
  singletons before, if any.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["EVENT_KINDS", "EVENT_COLUMNS", "step_events", "cluster_events", "write_events_csv", "format_clusters"]

#: Event kinds, in the order rows of one step are listed.
EVENT_KINDS: tuple[str, ...] = ("fission", "evaporation", "emission", "merger", "formation", "capture")
#: Columns of :func:`cluster_events`.
EVENT_COLUMNS: tuple[str, ...] = ("step", "kind", "tokens")
_CHUNK_BYTES = 16 * 2**20  # labels loaded at a time when the Dataset is not chunked


def _groups(labels: np.ndarray) -> dict[int, np.ndarray]:
    # label -> sorted member positions, for labels held by two or more tokens
    order = np.argsort(labels, kind="stable")  # stable: members stay in increasing order
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return {int(labels[m[0]]): m for m in np.split(order, cuts) if len(m) >= 2}


def step_events(prev: np.ndarray, cur: np.ndarray) -> list[tuple[str, list[int]]]:
    """Events between two consecutive steps, from their labels (numpy in, list out).

    Parameters
    ----------
    prev, cur : ndarray, shape (token,), int
        Labels of the previous and of the current step (tokens sharing a label form a
        group when they are two or more).

    Returns
    -------
    list of (kind, tokens)
        ``tokens`` sorted token positions; rows ordered by :data:`EVENT_KINDS`, then by
        their first token.

    Examples
    --------
    >>> step_events(np.array([0, 0, 0, 3, 4]), np.array([0, 0, 2, 3, 3]))
    [('emission', [2]), ('formation', [3, 4])]
    >>> step_events(np.array([0, 0, 0, 0, 4]), np.array([0, 0, 2, 2, 2]))
    [('fission', [0, 1, 2, 3]), ('capture', [4])]
    """
    prev = np.asarray(prev)
    cur = np.asarray(cur)
    if prev.shape != cur.shape or prev.ndim != 1:
        raise ValueError(f"prev and cur must be 1-D label arrays of one length, got {prev.shape} and {cur.shape}")
    before, after = _groups(prev), _groups(cur)
    n = len(prev)
    in_before = np.zeros(n, dtype=bool)
    in_after = np.zeros(n, dtype=bool)
    for members in before.values():
        in_before[members] = True
    for members in after.values():
        in_after[members] = True
    both = in_before & in_after
    links = np.unique(np.stack([prev[both], cur[both]], axis=1), axis=0) if both.any() else np.zeros((0, 2), int)
    n_after = np.bincount(links[:, 0], minlength=n) if n else np.zeros(0, int)  # |C| per previous group
    n_before = np.bincount(links[:, 1], minlength=n) if n else np.zeros(0, int)  # |P| per current group
    rows: list[tuple[str, list[int]]] = []
    for g, members in before.items():
        if n_after[g] >= 2:
            rows.append(("fission", members.tolist()))
        elif n_after[g] == 0:
            rows.append(("evaporation", members.tolist()))
        if n_after[g] >= 1:
            rows.extend(("emission", [int(t)]) for t in members[~in_after[members]])
    for h, members in after.items():
        if n_before[h] >= 2:
            rows.append(("merger", members.tolist()))
        elif n_before[h] == 0:
            rows.append(("formation", members.tolist()))
        if n_before[h] >= 1:
            caught = members[~in_before[members]]
            if caught.size:
                rows.append(("capture", caught.tolist()))
    rows.sort(key=lambda r: (EVENT_KINDS.index(r[0]), r[1]))
    return rows


def _step_ranges(labels: xr.DataArray) -> list[tuple[int, int]]:
    n_steps = labels.sizes["step"]
    if labels.chunks is not None:
        bounds = np.cumsum((0,) + tuple(labels.chunks[labels.get_axis_num("step")]))
    else:
        per = max(1, _CHUNK_BYTES // max(1, labels.sizes.get("token", 1) * labels.dtype.itemsize))
        bounds = np.append(np.arange(0, n_steps, per), n_steps)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def cluster_events(clusters: xr.Dataset) -> pd.DataFrame:
    """Events of clusters between consecutive steps: one row per event.

    Parameters
    ----------
    clusters : xarray.Dataset
        From :func:`dask_pdist.clusters` (lazy or loaded) or a store written by
        :func:`dask_pdist.analyses.clusters.write_clusters`; only ``cluster`` is read, one step chunk
        at a time (a lazy Dataset is computed chunk by chunk).

    Returns
    -------
    pandas.DataFrame
        Columns ``step`` (the step coordinate of the later snapshot, not its index),
        ``kind`` (one of :data:`EVENT_KINDS`) and ``tokens`` (sorted list of token
        positions). Ordered by step, then kind as in :data:`EVENT_KINDS`, then first token.
        The rules are those of this module's docstring.

    Examples
    --------
    >>> c = xr.Dataset({"cluster": (("step", "token"), [[0, 0, 2], [0, 1, 2], [0, 1, 1]])},
    ...                coords={"step": [10, 20, 30]})
    >>> cluster_events(c)
       step         kind  tokens
    0    20  evaporation  [0, 1]
    1    30    formation  [1, 2]
    """
    if "cluster" not in clusters.data_vars:
        raise ValueError(f"no 'cluster' variable (found {sorted(clusters.data_vars)}); pass the result of clusters()")
    if "run" in clusters["cluster"].dims:
        raise ValueError(
            f"clusters of {clusters.sizes['run']} runs: events are per run; select one,"
            " e.g. cluster_events(c.sel(run=NAME))"
        )
    labels = clusters["cluster"].transpose("step", ...)
    steps = labels["step"].values if "step" in labels.coords else np.arange(labels.sizes["step"])
    out_step: list = []
    out_kind: list[str] = []
    out_tokens: list[list[int]] = []
    prev = None
    for lo, hi in _step_ranges(labels):
        block = np.asarray(labels.isel(step=slice(lo, hi)).values)
        index = np.arange(lo, hi)
        present = (block >= 0).all(axis=1)  # a run aligned with others has -1 rows at steps it lacks
        block, index = block[present], index[present]
        if prev is not None:
            block = np.concatenate([prev[0][None], block])
            index = np.concatenate([[prev[1]], index])
        # the labels are canonical, so a changed partition is a changed row: skip the rest
        for k in np.flatnonzero((block[1:] != block[:-1]).any(axis=1)):
            for kind, tokens in step_events(block[k], block[k + 1]):
                out_step.append(steps[index[k + 1]])
                out_kind.append(kind)
                out_tokens.append(tokens)
        if len(block):
            prev = (block[-1], index[-1])
    return pd.DataFrame(
        {
            "step": np.asarray(out_step, dtype=steps.dtype),
            "kind": pd.Series(out_kind, dtype=object),
            "tokens": pd.Series(out_tokens, dtype=object),
        }
    )


def write_events_csv(events: pd.DataFrame, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write events as CSV with the header ``step,kind,tokens`` (tokens space-separated).

    Examples
    --------
    >>> write_events_csv(cluster_events(c), "events.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    from dask_pdist.io.publish import building

    table = events.assign(tokens=[" ".join(str(t) for t in tokens) for tokens in events["tokens"]])
    with building(path, replace=overwrite) as tmp:  # whole or absent, as every output
        table.to_csv(tmp, index=False, columns=list(EVENT_COLUMNS))
    return path


def _fmt_set(tokens, limit: int = 8) -> str:
    tokens = [int(t) for t in tokens]
    if len(tokens) <= limit:
        return "{" + " ".join(map(str, tokens)) + "}"
    return "{" + " ".join(map(str, tokens[: limit - 2])) + f" ... {tokens[-1]}}} ({len(tokens)} tokens)"


def _fmt_groups(labels: np.ndarray, among: np.ndarray, limit: int = 4) -> str:
    # the groups (2+) of `labels` holding tokens of `among`, and how many of them are alone
    groups = _groups(labels)
    held = sorted({int(labels[t]) for t in among if int(labels[t]) in groups})
    alone = [int(t) for t in among if int(labels[t]) not in groups]
    parts = [_fmt_set(groups[g]) for g in held[:limit]]
    if len(held) > limit:
        parts.append(f"... ({len(held)} groups)")
    if alone:
        parts.append(" ".join(map(str, alone)) if len(alone) <= 4 else f"{len(alone)} singletons")
    return " + ".join(parts) if parts else "-"


def _describe(kind: str, tokens: list[int], prev: np.ndarray, cur: np.ndarray) -> str:
    tokens_arr = np.asarray(tokens)
    if kind in ("fission", "evaporation"):
        return f"{_fmt_set(tokens)} -> {_fmt_groups(cur, tokens_arr)}"
    if kind == "emission":
        return f"{_fmt_groups(prev, tokens_arr)} -> {tokens[0]} alone"
    members = np.flatnonzero(cur == cur[tokens[0]])  # merger, formation, capture: the group H
    return f"{_fmt_groups(prev, members)} -> {_fmt_set(members)}"


def format_clusters(clusters: xr.Dataset, events: pd.DataFrame, *, per_kind: int = 3) -> str:
    """A short text summary: groups at the first and last step, the largest population, and
    the events of each kind (the first ``per_kind`` steps of each, as ``step, kind, before ->
    after``).

    Examples
    --------
    >>> print(format_clusters(c, cluster_events(c)))  # doctest: +SKIP
    """
    steps = clusters["step"].values
    n_clusters = np.asarray(clusters["n_clusters"].values)
    n_clustered = np.asarray(clusters["n_clustered"].values)
    largest = np.asarray(clusters["largest"].values)
    threshold = clusters.attrs.get("threshold", "?")
    metric = clusters.attrs.get("metric", "?")
    meaning = {
        "0.0": " (equal embeddings)",
        "bf16": " (one bf16 spacing at the step's RMS coordinate)",
    }
    shape = f"{len(steps):,} steps x {clusters.sizes['token']:,} tokens"
    lines = [f"Clusters: {metric} distance <= {threshold}{meaning.get(threshold, '')}; {shape}"]
    if len(steps):
        for index in sorted({0, len(steps) - 1}):
            lines.append(
                f"  step {steps[index]}: groups {n_clusters[index]}, tokens in groups {n_clustered[index]},"
                f" largest {largest[index]}"
            )
        top = int(np.argmax(largest))
        lines.append(f"  largest population: {largest[top]} (step {steps[top]}); most groups: {n_clusters.max()}")
    counts = events["kind"].value_counts()
    lines.append(
        f"Events: {len(events):,}"
        + (" (" + ", ".join(f"{k} {int(counts[k])}" for k in EVENT_KINDS if k in counts) + ")" if len(events) else "")
    )
    if not len(events):
        return "\n".join(lines)
    chosen = []
    for kind in EVENT_KINDS:
        rows = events[events["kind"] == kind]
        for step in pd.unique(rows["step"])[:per_kind]:
            at = rows[rows["step"] == step]
            chosen.append((step, EVENT_KINDS.index(kind), kind, at["tokens"].iloc[0], len(at) - 1))
    chosen.sort(key=lambda r: (r[0], r[1]))
    index_of = {s: i for i, s in enumerate(steps.tolist())}
    lines.append(f"  step, kind, before -> after (first {per_kind} steps of each kind)")
    cache: dict[int, np.ndarray] = {}

    def labels_at(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = np.asarray(clusters["cluster"].isel(step=i).values)
        return cache[i]

    for step, _, kind, tokens, more in chosen:
        i = index_of[step.item() if hasattr(step, "item") else step]
        text = _describe(kind, list(tokens), labels_at(i - 1), labels_at(i))
        extra = f" (and {more} more {kind} events at this step)" if more else ""
        lines.append(f"  {step}, {kind}, {text}{extra}")
    return "\n".join(lines)
