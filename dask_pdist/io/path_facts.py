"""What a checkpoint's path says, parsed once per path: its natural sort key, its digit runs,
the step of the Trainer folder holding it.

Pure functions of the path's text (and, for an absolute form, the working folder), memoized:
``--follow`` and ``DistancesCallback`` list every checkpoint of the run at every save, and
parsing each path again made an append's cost grow with the checkpoints held.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

__all__ = ["natural_key", "digit_runs", "trainer_folder_step", "as_path"]

_DIGIT_RUNS = re.compile(r"(\d+)")
_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")
_SIZE = 1 << 16

#: ``Path(text)``, one object per text (a path is immutable).
as_path = functools.lru_cache(maxsize=_SIZE)(Path)


@functools.lru_cache(maxsize=_SIZE)
def natural_key(path: str) -> tuple:
    """Sort key: "step_10" after "step_9" (digit runs compare as numbers).

    >>> sorted(["s10", "s9"], key=natural_key)
    ['s9', 's10']
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGIT_RUNS.split(path))


@functools.lru_cache(maxsize=_SIZE)
def digit_runs(path: str, cwd: str) -> list[str]:
    """The absolute form of ``path`` (relative to ``cwd``) split at its digit runs (odd items).

    >>> digit_runs("c-5/m.st", "/r")
    ['/r/c-', '5', '/m.st']
    """
    return _DIGIT_RUNS.split(os.path.normpath(os.path.join(cwd, path)))


@functools.lru_cache(maxsize=_SIZE)
def trainer_folder_step(path: str) -> int | None:
    """The step of the Trainer folder (``checkpoint-N``) holding ``path``, or None.

    >>> trainer_folder_step("run/checkpoint-500/model.safetensors")
    500
    """
    found = _TRAINER_FOLDER.fullmatch(os.path.basename(os.path.dirname(path)))
    return int(found[1]) if found else None
