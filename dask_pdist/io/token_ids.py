"""Token subsets of a history (``token_ids=``, ``--token-ids``): parsing the spec, and the
runs of rows a task reads for them. Split from history.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dask_pdist.errors import InputError

__all__ = ["parse_token_ids", "token_runs"]

#: A token subset's rows are read in runs; gaps up to this many bytes per step are read
#: through (one read beats two for small gaps), and at most _MAX_RUNS runs per step chunk.
_RUN_GAP_BYTES = 256 * 2**10
_MAX_RUNS = 64


def parse_token_ids(spec: str | Sequence[int] | np.ndarray, n_tokens: int) -> np.ndarray:
    """Token indices of a subset, sorted, validated against ``n_tokens``.

    Parameters
    ----------
    spec : str or sequence of int
        A comma list of indices and Python-style half-open ranges ``a:b`` (``a`` included,
        ``b`` excluded), e.g. ``"0:1000,5000,7000:7100"``; or ``"@FILE"``: a text file with
        one index per line (blank lines ignored); or a sequence of ints.
    n_tokens : int
        Tokens in the history; every index must be in ``0 .. n_tokens - 1``.

    Returns
    -------
    ndarray of int64, ascending (the order of the spec does not matter).

    Raises
    ------
    InputError
        Unparseable item, index out of range, empty or reversed range, a token listed twice,
        or an empty subset; the message names the spec and the item.

    Examples
    --------
    >>> parse_token_ids("7:10,2,0:2", 50).tolist()
    [0, 1, 2, 7, 8, 9]
    """
    where = f"token_ids {spec!r}" if isinstance(spec, str) else "token_ids"
    if isinstance(spec, str):
        parts: list[np.ndarray] = []
        if spec.startswith("@"):
            fpath = Path(spec[1:])
            try:
                lines = fpath.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise FileNotFoundError(f"{fpath}: token id file not found ({where})") from None
            except (UnicodeDecodeError, IsADirectoryError):
                raise InputError(f"{fpath}: not a text file of token indices, one per line ({where})") from None
            items = [(f"{fpath} line {n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        else:
            items = [(f"{where} item {n}", item.strip()) for n, item in enumerate(spec.split(","), 1)]
        for label, item in items:
            lo_text, colon, hi_text = item.partition(":")
            try:
                lo = int(lo_text)
                hi = int(hi_text) if colon else lo + 1
            except ValueError:
                raise InputError(
                    f"{label}: {item!r} is not an index or a range a:b; write e.g. '0:1000,5000' or '@ids.txt'"
                ) from None
            if lo < 0 or hi > n_tokens or lo >= hi:
                raise InputError(
                    f"{label}: {item!r} is outside 0..{n_tokens - 1} or an empty range (ranges are half-open:"
                    f" a:b means a..b-1, a < b); the history has {n_tokens} tokens"
                )
            parts.append(np.arange(lo, hi, dtype=np.int64))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    else:
        arr = np.asarray(spec)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InputError(f"{where}: expected a 1-D sequence of integers, got shape {arr.shape} {arr.dtype}")
        ids = arr.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= n_tokens)]
        if bad.size:
            raise InputError(f"{where}: index {bad[0]} is outside 0..{n_tokens - 1}; the history has {n_tokens} tokens")
    if ids.size == 0:
        raise InputError(f"{where}: selects no token; give at least one index")
    ids = np.sort(ids)
    dup = ids[1:][ids[1:] == ids[:-1]]
    if dup.size:
        raise InputError(f"{where}: token {dup[0]} is listed twice (overlapping ranges?); list each token once")
    return ids


def token_runs(ids: np.ndarray, n_tokens: int, row_nbytes: int) -> tuple[int, ...]:
    """Token chunks covering ``0..n_tokens`` whose subset-holding chunks are read whole.

    Pure arithmetic: sorted ``ids`` are grouped into runs, merging gaps up to 256 KiB of rows
    (more if needed to keep at most 64 runs); the gaps between runs are separate chunks that
    nothing reads.

    Examples
    --------
    >>> token_runs(np.array([0, 1, 2, 700, 701]), 1000, 1024)
    (3, 697, 2, 298)
    >>> token_runs(np.array([0, 5, 9]), 20, 1024)
    (10, 10)
    """
    gap = max(1, _RUN_GAP_BYTES // max(1, row_nbytes))
    while True:
        breaks = np.flatnonzero(np.diff(ids) > gap)
        if len(breaks) < _MAX_RUNS:
            break
        gap *= 2
    starts = np.concatenate([[ids[0]], ids[breaks + 1]])
    stops = np.concatenate([ids[breaks] + 1, [ids[-1] + 1]])
    edges = sorted({0, n_tokens, *starts.tolist(), *stops.tolist()})
    return tuple(int(b - a) for a, b in zip(edges[:-1], edges[1:], strict=True))
