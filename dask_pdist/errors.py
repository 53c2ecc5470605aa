"""Exception types: builtin subclasses so callers can catch ``ValueError`` etc."""

from __future__ import annotations

__all__ = ["InputError", "StoreError", "RepairWarning", "SkippedCheckpointWarning"]


class InputError(ValueError):
    """An input file (history, token list) is malformed or does not fit the request."""


class StoreError(ValueError):
    """An output store is missing, incomplete, or must not be written over."""


class RepairWarning(UserWarning):
    """``--resume`` found written chunks that fail their checks and recomputes them."""


class SkippedCheckpointWarning(UserWarning):
    """A checkpoint being saved (incomplete) was left out of a run folder's history."""
