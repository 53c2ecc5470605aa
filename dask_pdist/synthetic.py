"""A realistic synthetic embedding history, streamed to a safetensors file.

Shaped like the notebook's data: every token starts at one shared vector (all distances 0 at
step 0), then tokens drift apart by random walks whose step size decays over training, each
token at its own speed, so final Euclidean distances spread over roughly 0.3-1.6. A few
tokens are exact duplicates of others and a few sit one bf16 ulp from another in one dim,
the cases where Euclidean and Chebyshev must give exactly 0 or the smallest step.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np

from .safetensors_io import pwrite_all, write_header

__all__ = ["write_synthetic_history"]

_BLOCK_STEPS = 256
_MEAN_FINAL_DISTANCE = 0.67  # the notebook's mean final Euclidean distance


def _special_tokens(n_tokens: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    # (copy, original) pairs: exact duplicates and one-ulp neighbours, at the vocabulary's end
    k = max(0, min(3, n_tokens // 8))
    dups = [(n_tokens - 1 - m, m) for m in range(k)]
    ulps = [(n_tokens - 1 - k - m, k + m) for m in range(k)]
    return dups, ulps


def write_synthetic_history(
    path: str | os.PathLike[str],
    steps: int = 5001,
    vocab: int = 128,
    dim: int = 64,
    seed: int = 42,
    key: str = "embedding_history",
) -> Path:
    """Write a deterministic synthetic bf16 history of shape (steps, vocab, dim).

    Streams in blocks of 256 snapshots, so memory does not grow with ``steps``. The file
    also holds ``steps`` (int64, 0..steps-1), as dask_pdist reads it.

    Parameters
    ----------
    path : path-like
        Output ``.safetensors`` file (overwritten).
    steps, vocab, dim : int
        Shape; all positive.
    seed : int
        Same seed and shape give the same bytes.
    key : str
        Tensor name of the history.

    Returns
    -------
    pathlib.Path

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

    offsets = write_header(
        path,
        [(key, "BF16", (steps, vocab, dim)), ("steps", "I64", (steps,))],
        metadata={"generator": "dask_pdist.synthetic", "seed": str(seed)},
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
