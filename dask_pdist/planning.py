"""Chunk planning: how many steps and tokens one task takes. Pure integer arithmetic, no I/O,
no dask (as rechunker plans), so every layer can plan without importing a heavy dependency.

Each plan aims at a byte or work target of :mod:`dask_pdist.conventions`.
"""

from __future__ import annotations

import math

from dask_pdist.conventions import (
    COMPARISON_CHUNK_BYTES,
    KNN_PRODUCT_BYTES,
    KNN_TASK_INPUT_BYTES,
    KNN_TASK_PAIR_DIMS,
    TASK_OUTPUT_BYTES,
)

__all__ = [
    "auto_step_chunk",
    "plan_token_chunk",
    "plan_neighbour_chunks",
    "plan_product_blocks",
    "plan_product_steps",
    "plan_store_steps",
    "plan_block_rounds",
]


def auto_step_chunk(n_tokens: int, n_steps: int, n_metrics: int = 2, itemsize: int = 4) -> int:
    """Snapshots per task so that one task's output stays near 16 MiB.

    Pure arithmetic, no I/O. 128 tokens -> 128 steps; 1024 tokens -> 2 steps.

    Examples
    --------
    >>> auto_step_chunk(128, 5001)
    128
    """
    per_step = max(1, n_metrics * n_tokens * n_tokens * itemsize)
    return int(min(max(1, n_steps), max(1, TASK_OUTPUT_BYTES // per_step)))


def plan_store_steps(task_steps: int, n_steps: int, step_bytes: int, budget: int = COMPARISON_CHUNK_BYTES) -> int:
    """Steps per store chunk: a whole number of tasks of ``task_steps`` steps, near ``budget``
    bytes at ``step_bytes`` per step (at least one task, at most every step).

    >>> plan_store_steps(6, 5000, 10_000 * 4)  # 4 MiB / 40 kB -> 104 steps -> 17 tasks of 6
    102
    >>> plan_store_steps(6, 20, 10_000 * 4)
    20
    """
    tasks = max(1, budget // max(1, task_steps * step_bytes))
    return int(min(max(1, n_steps), tasks * max(1, task_steps)))


def plan_token_chunk(n_tokens: int, n_metrics: int, itemsize: int, budget: int = TASK_OUTPUT_BYTES) -> int:
    """Token tile edge so one snapshot's tile of every metric fits ``budget`` bytes.

    Pure arithmetic. Returns ``n_tokens`` (no tiling) when a whole matrix fits.

    Examples
    --------
    >>> plan_token_chunk(128, 2, 4)
    128
    >>> plan_token_chunk(16384, 2, 4)
    1448
    """
    if n_metrics * n_tokens * n_tokens * itemsize <= budget:
        return n_tokens
    edge = math.isqrt(budget // (n_metrics * itemsize))
    return max(1, min(n_tokens, edge))


def plan_neighbour_chunks(
    n_steps: int, n_tokens: int, n_dims: int, itemsize: int = 4, pair_dims: int = KNN_TASK_PAIR_DIMS
) -> tuple[int, int]:
    """(steps, token block) per task: ~``pair_dims`` of arithmetic per block pair, bounded input.

    Pure arithmetic. Large vocabularies go one step per task and cut the tokens into equal
    blocks.

    Examples
    --------
    >>> plan_neighbour_chunks(154, 50304, 512)
    (1, 1935)
    >>> plan_neighbour_chunks(4, 16384, 64)
    (4, 2731)
    """
    per_step = max(1, n_tokens * n_dims * itemsize)
    steps = int(max(1, min(n_steps, KNN_TASK_INPUT_BYTES // per_step)))
    block = max(1, min(n_tokens, math.isqrt(pair_dims // max(1, steps * n_dims))))
    n_blocks = math.ceil(max(1, n_tokens) / block)
    return steps, max(1, math.ceil(n_tokens / n_blocks))


def plan_product_blocks(n_tokens: int, itemsize: int = 4, budget: int = KNN_PRODUCT_BYTES) -> int:
    """Token block of the Euclidean neighbours' BLAS method: a block pair's product fits ``budget``.

    Pure arithmetic. At least 4 equal blocks above 1,024 tokens (2 above 512), so the block
    pairs keep two threads busy; fewer, larger blocks otherwise (each block pair yields about
    k candidates per token to recompute exactly, so fewer blocks mean less exact work).

    Examples
    --------
    >>> plan_product_blocks(50304)
    3870
    >>> plan_product_blocks(16384), plan_product_blocks(1000)
    (4096, 500)
    """
    edge = max(1, math.isqrt(budget // max(1, itemsize)))
    n_blocks = max(math.ceil(max(1, n_tokens) / edge), 4 if n_tokens > 1024 else 2 if n_tokens > 512 else 1)
    return max(1, math.ceil(n_tokens / n_blocks))


def plan_product_steps(n_steps: int, n_tokens: int, n_dims: int, block: int, itemsize: int = 4) -> int:
    """Steps per task of the Euclidean neighbours' BLAS method, whose token block is ``block``.

    Pure arithmetic. Each step is its own matrix products, so more steps in a task only save
    task overhead: as many as bring a block pair's task to ~``KNN_TASK_PAIR_DIMS``, within
    ``KNN_TASK_INPUT_BYTES`` of input, and one where a single step's block pair already does.
    Separate steps also run side by side: two steps of 16,384 tokens as one task left one of
    the two threads idle while the other finished its round (the rounds' tasks differ in cost).

    Examples
    --------
    >>> plan_product_steps(2, 16384, 512, 4096), plan_product_steps(5001, 128, 64, 128)
    (1, 1907)
    """
    by_input = max(1, KNN_TASK_INPUT_BYTES // max(1, n_tokens * n_dims * itemsize))
    by_work = max(1, KNN_TASK_PAIR_DIMS // max(1, block * block * n_dims))
    return int(max(1, min(n_steps, by_input, by_work)))


def plan_block_rounds(n_blocks: int) -> list[list[tuple[int, int]]]:
    """Every block pair once, in rounds where no block appears twice: the diagonal, then a round robin.

    Pure arithmetic. Round 0 holds each block with itself; each later round pairs the blocks
    up (the circle method: with an odd count one block rests), so that the tasks of a round
    run side by side and each block's running neighbour lists pass from round to round.
    Within a pair the smaller block comes first.

    Examples
    --------
    >>> plan_block_rounds(3)
    [[(0, 0), (1, 1), (2, 2)], [(1, 2)], [(0, 2)], [(0, 1)]]
    >>> [len(r) for r in plan_block_rounds(4)]
    [4, 2, 2, 2]
    """
    rounds = [[(b, b) for b in range(n_blocks)]]
    ring = list(range(n_blocks)) + ([-1] if n_blocks % 2 else [])  # -1: the resting slot
    m = len(ring)
    for _ in range(m - 1):
        pairs = [(ring[i], ring[m - 1 - i]) for i in range(m // 2)]
        rounds.append([(min(p), max(p)) for p in pairs if -1 not in p])
        ring = [ring[0], ring[-1], *ring[1:-1]]  # keep the first, rotate the rest
    return [r for r in rounds if r]
