"""Step labels the user gives for a history (``--steps``): a range, a file or a sequence of
integers, one per snapshot, all different."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dask_pdist.errors import InputError

__all__ = ["parse_steps"]

_RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::(-?\d+))?$")


def parse_steps(steps: str | os.PathLike[str] | Sequence[int], n_steps: int, source: str) -> np.ndarray:
    """Step labels given by the user: a range ``START:STOP[:STEP]`` (Python's, STOP excluded),
    a text file with one integer per line, or a sequence of integers; ``n_steps`` of them,
    all different.

    Examples
    --------
    >>> parse_steps("500:2001:500", 4, "ckpt/*")
    array([ 500, 1000, 1500, 2000])
    """
    where = "steps"
    match = _RANGE.match(steps) if isinstance(steps, str) else None
    if match:
        start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
        if step == 0:
            raise InputError(f"steps={steps!r}: the range's STEP must not be 0")
        values = list(range(start, stop, step))
        where = f"steps range {steps} (STOP excluded, as in Python)"
    elif isinstance(steps, (str, os.PathLike)):
        path = Path(steps)
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: steps file not found (give a file with one integer per line, or a range START:STOP:STEP)"
            ) from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise InputError(f"{path}: steps file is not text (one integer per line)") from None
        try:
            values = [int(line) for line in lines]
        except ValueError as exc:
            raise InputError(f"{path}: steps file holds a line that is not an integer ({exc})") from None
        where = str(path)
    else:
        try:
            values = [int(v) for v in steps]
        except (TypeError, ValueError) as exc:
            raise InputError(f"steps: expected integers, a range 'START:STOP:STEP' or a file ({exc})") from None
    if len(values) != n_steps:
        shown = f" ({values[0]}..{values[-1]})" if values else ""
        raise InputError(
            f"{where}: gives {len(values)} steps{shown}, but {source} has {n_steps}; give one per snapshot"
        )
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise InputError(f"{where}: step {dup} appears twice; every snapshot needs its own step")
    return np.array(values, dtype=np.int64)
