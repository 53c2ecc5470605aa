"""A realistic synthetic embedding history, streamed to a safetensors file.

Shaped like the notebook's data: every token starts at one shared vector (all distances 0 at
step 0), then tokens drift apart by random walks whose step size decays over training, each
token at its own speed, so final Euclidean distances spread over roughly 0.3-1.6. A few
tokens are exact duplicates of others and a few sit one bf16 ulp from another in one dim,
the cases where Euclidean and Chebyshev must give exactly 0 or the smallest step.

Planted clusters (vocab >= 4k + 8 with k = min(3, vocab // 8), steps >= 20): eight tokens
after the duplicates' originals move as groups of identical embeddings, so that
``cluster_events(clusters(history))`` at threshold 0 sees one event of every kind at
known steps (20 % .. 70 % of the run); :func:`synthetic_events` lists every event the
history holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pandas as pd

from dask_pdist.io.safetensors_format import pwrite_all, read_header, write_header

__all__ = ["write_synthetic_history", "synthetic_events", "is_synthetic_history"]

#: ``generator`` in the header metadata of every synthetic history.
GENERATOR = "dask_pdist.io.synthetic"

_BLOCK_STEPS = 256
_MEAN_FINAL_DISTANCE = 0.67  # the notebook's mean final Euclidean distance


def _special_tokens(n_tokens: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    # (copy, original) pairs: exact duplicates and one-ulp neighbours, at the vocabulary's end
    k = max(0, min(3, n_tokens // 8))
    dups = [(n_tokens - 1 - m, m) for m in range(k)]
    ulps = [(n_tokens - 1 - k - m, k + m) for m in range(k)]
    return dups, ulps


_PLANT_MIN_STEPS = 20
_N_PLANTED = 8
# Planted moves, by fraction of the run: (fraction, kind, planted members of the event,
# new leaders {member: leader}). A token follows its leader's embedding exactly (a group)
# or walks on its own (leader = itself). Before the first move tokens 0-4 are one group.
_INITIAL_LEADERS = (0, 0, 0, 0, 0, 5, 6, 7)
_MOVES = (
    (0.2, "emission", (4,), {4: 4}),
    (0.3, "formation", (5, 6), {6: 5}),
    (0.4, "fission", (0, 1, 2, 3), {2: 2, 3: 2}),
    (0.5, "capture", (7,), {7: 5}),
    (0.6, "merger", (2, 3, 5, 6, 7), {5: 2, 6: 2, 7: 2}),
    (0.7, "evaporation", (0, 1), {1: 1}),
)


def _planted_tokens(steps: int, vocab: int) -> np.ndarray | None:
    k = len(_special_tokens(vocab)[0])
    if steps < _PLANT_MIN_STEPS or 2 * k + _N_PLANTED > vocab - 2 * k:
        return None
    return np.arange(2 * k, 2 * k + _N_PLANTED)


def _move_steps(steps: int) -> list[int]:
    return [int(np.floor(f * (steps - 1) + 0.5)) for f, *_ in _MOVES]


def _leaders(steps: int) -> np.ndarray:
    # (steps, 8): the planted token each planted token copies at each step
    lead = np.tile(np.array(_INITIAL_LEADERS), (steps, 1))
    for t, (_, _, _, change) in zip(_move_steps(steps), _MOVES, strict=True):
        for member, leader in change.items():
            lead[t:, member] = leader
    return lead


def synthetic_events(steps: int = 5001, vocab: int = 128) -> pd.DataFrame:
    """Every cluster event of a synthetic history at threshold 0, as planted.

    The same table ``cluster_events(clusters(open_history(path)))`` gives for a history
    written by :func:`write_synthetic_history` with these ``steps`` and ``vocab`` (any seed;
    ``dim`` >= 8, so that no two randomly walking tokens ever share a bf16 embedding). Step
    1 holds the break-up of step 0's single group (every token identical) into the
    duplicate pairs, the planted group and singletons; then come the planted moves.

    Examples
    --------
    >>> synthetic_events(5001, 128).iloc[-6:]  # doctest: +NORMALIZE_WHITESPACE
         step         kind                tokens
    118  1000     emission                  [10]
    119  1500    formation              [11, 12]
    120  2000      fission          [6, 7, 8, 9]
    121  2500      capture                  [13]
    122  3000       merger  [8, 9, 11, 12, 13]
    123  3500  evaporation                [6, 7]
    """
    for name, value in (("steps", steps), ("vocab", vocab)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    dups, _ = _special_tokens(vocab)
    planted = _planted_tokens(steps, vocab)
    rows: list[tuple[int, str, list[int]]] = []
    if steps >= 2 and vocab >= 2:
        # step 0: one group of every token; step 1: groups are the duplicate pairs and
        # planted tokens 0-4; every other token is a singleton
        grouped = sorted([t for pair in dups for t in pair] + ([] if planted is None else planted[:5].tolist()))
        n_groups = len(dups) + (planted is not None)
        if n_groups >= 2:
            rows.append((1, "fission", list(range(vocab))))
        elif n_groups == 0:
            rows.append((1, "evaporation", list(range(vocab))))
        if n_groups >= 1:
            rows.extend((1, "emission", [t]) for t in range(vocab) if t not in grouped)
    if planted is not None:
        for t, (_, kind, members, _) in zip(_move_steps(steps), _MOVES, strict=True):
            rows.append((t, kind, sorted(planted[list(members)].tolist())))
    return pd.DataFrame(
        {
            "step": np.array([r[0] for r in rows], dtype=np.int64),
            "kind": pd.Series([r[1] for r in rows], dtype=object),
            "tokens": pd.Series([r[2] for r in rows], dtype=object),
        }
    )


def write_synthetic_history(
    path: str | os.PathLike[str],
    steps: int = 5001,
    vocab: int = 128,
    dim: int = 64,
    seed: int = 42,
    key: str = "embedding_history",
    *,
    overwrite: bool = False,
) -> Path:
    """Write a deterministic synthetic bf16 history of shape (steps, vocab, dim).

    Streams in blocks of 256 snapshots, so memory does not grow with ``steps``. The file
    also holds ``steps`` (int64, 0..steps-1), as dask_pdist reads it. Every token is
    identical at step 0; a few are exact duplicates or one-ulp neighbours of others; eight
    move as planted groups of identical embeddings (when ``vocab`` and ``steps`` allow,
    see the module docstring), whose events :func:`synthetic_events` lists.

    Parameters
    ----------
    path : path-like
        Output ``.safetensors`` file.
    steps, vocab, dim : int
        Shape; all positive.
    seed : int
        Same seed and shape give the same bytes.
    key : str
        Tensor name of the history.
    overwrite : bool
        Replace an existing file at ``path``; without it an existing file is an error
        (it may be real data).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> write_synthetic_history("history.safetensors", steps=100, vocab=16, dim=8)  # doctest: +SKIP
    """
    for name, value in (("steps", steps), ("vocab", vocab), ("dim", dim)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if key == "steps":
        raise ValueError("key='steps' is reserved for the step coordinate; choose another tensor name")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    rng = np.random.default_rng(seed)
    start = rng.normal(0.0, 0.02, size=dim).astype(np.float32)
    speed = np.exp(rng.normal(0.0, 0.3, size=(vocab, 1)))
    speed = (speed / np.sqrt(np.mean(speed**2))).astype(np.float32)
    # step variance sigma_t^2 = s0^2 / (1 + 50 t / S): decays over training; s0 is set so
    # the mean final distance is about the notebook's, whatever the number of steps
    decay = 1.0 + 50.0 * np.arange(steps, dtype=np.float64) / steps
    total_var = _MEAN_FINAL_DISTANCE**2 / (2.0 * dim)
    s0 = np.sqrt(total_var / np.sum(1.0 / decay[1:])) if steps > 1 else 0.0
    sigma = (s0 / np.sqrt(decay)).astype(np.float32)
    sigma[0] = 0.0
    dups, ulps = _special_tokens(vocab)
    planted = _planted_tokens(steps, vocab)
    leaders = _leaders(steps) if planted is not None else None

    offsets = write_header(
        path,
        [(key, "BF16", (steps, vocab, dim)), ("steps", "I64", (steps,))],
        metadata={"generator": GENERATOR, "seed": str(seed)},
    )
    pwrite_all(path, offsets["steps"], np.arange(steps, dtype="<i8"))
    state = np.broadcast_to(start, (vocab, dim)).astype(np.float32)
    row_bytes = vocab * dim * 2
    for s0_ in range(0, steps, _BLOCK_STEPS):
        n = min(_BLOCK_STEPS, steps - s0_)
        noise = rng.standard_normal(size=(n, vocab, dim), dtype=np.float32)
        noise *= sigma[s0_ : s0_ + n, None, None]
        noise *= speed
        block = np.cumsum(noise, axis=0, dtype=np.float32)
        block += state
        if planted is not None:
            # planted tokens walk step by step, each copying its leader's embedding exactly
            pos = state[planted]
            for k in range(n):
                pos = pos + noise[k, planted]
                pos = pos[leaders[s0_ + k]]
                block[k, planted] = pos
        state = block[-1].copy()
        bf = block.astype(ml_dtypes.bfloat16)
        bits = bf.view(np.uint16)
        for copy, orig in dups:
            bits[:, copy] = bits[:, orig]
        first = 1 if s0_ == 0 else 0  # step 0: every token identical
        for copy, orig in ulps:
            bits[:, copy] = bits[:, orig]
            bits[first:, copy, 0] += 1  # next bf16 value away from zero: one ulp apart
        pwrite_all(path, offsets[key] + s0_ * row_bytes, bits.astype("<u2", copy=False))
    return path


def is_synthetic_history(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a safetensors file written by :func:`write_synthetic_history`.

    Reads the header only; any unreadable or foreign file gives False.

    Examples
    --------
    >>> is_synthetic_history("dask_pdist_demo/embedding_evolution.safetensors")  # doctest: +SKIP
    True
    """
    try:
        _, metadata = read_header(path)
    except (OSError, ValueError):
        return False
    return metadata.get("generator") == GENERATOR
