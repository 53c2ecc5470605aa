"""Exception types: builtin subclasses so callers can catch ``ValueError`` etc."""

from __future__ import annotations

__all__ = ["InputError", "StoreError", "StoreChangedError", "RepairWarning", "EngineError", "SkippedCheckpointWarning"]


class InputError(ValueError):
    """An input file (history, token list) is malformed or does not fit the request."""


class StoreError(ValueError):
    """An output store is missing, incomplete, or must not be written over."""


class StoreChangedError(StoreError):
    """A read failed because a writer changed the store since it was opened (not damage):
    opening it again reads it as it is now."""


class RepairWarning(UserWarning):
    """``--resume`` found written chunks that fail their checks and recomputes them."""


class EngineError(ValueError):
    """The requested compute engine cannot run here (no GPU, or its optional extra is missing)."""


class SkippedCheckpointWarning(UserWarning):
    """A checkpoint being saved (incomplete) was left out of a run folder's history."""
