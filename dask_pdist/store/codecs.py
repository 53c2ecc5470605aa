"""Store codecs: what each ``compressor`` choice writes for each variable (Blosc + crc32c).

The choices are measured (docs/compute.md, "Store compression"); ``"auto"`` picks per variable,
because the two metrics compress differently. Pure configuration: the zarr codec objects
are built only when a store is created.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "Compressor",
    "COMPRESSORS",
    "DEFAULT_COMPRESSOR",
    "AUTO_CODECS",
    "codec_choice",
    "codec_name",
    "codecs",
    "checked_codecs",
]

Compressor = Literal["auto", "none", "lz4", "zstd"]
#: Compressor choices: "auto" picks per variable (:data:`AUTO_CODECS`); the others apply to
#: every variable. See docs/compute.md for the measurements behind them.
COMPRESSORS: tuple[str, ...] = ("auto", "none", "lz4", "zstd")
DEFAULT_COMPRESSOR: Compressor = "auto"
#: What ``compressor="auto"`` writes per variable: (Blosc cname, clevel, shuffle), or None for
#: no compression. Measured on the synthetic history's store, 128-step chunks, one thread
#: (docs/compute.md, "Store compression"): Euclidean keeps 0.69 of its bytes with lz4 + bit shuffle
#: (0.79 with byte shuffle) for ~2.9x the CPU of writing it raw; Chebyshev keeps 0.38 for ~3x:
#: per byte saved, compressing Chebyshev costs half as much, and Euclidean stays fast to read.
AUTO_CODECS: dict[str, tuple[str, int, str] | None] = {
    "euclidean": None,
    "chebyshev": ("lz4", 5, "bitshuffle"),
}
_OVERRIDES: dict[str, tuple[str, int, str] | None] = {
    "none": None,
    # byte shuffle groups the exponent bytes of neighbouring floats, which is what compresses
    "lz4": ("lz4", 5, "shuffle"),
    "zstd": ("zstd", 1, "shuffle"),
}


def codec_choice(compressor: str, variable: str) -> tuple[str, int, str] | None:
    """The Blosc (cname, clevel, shuffle) that ``compressor`` writes for ``variable``, or None.

    Examples
    --------
    >>> codec_choice("auto", "chebyshev")
    ('lz4', 5, 'bitshuffle')
    >>> codec_choice("none", "euclidean") is None
    True
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor={compressor!r}: choose one of {list(COMPRESSORS)}")
    if compressor == "auto":
        return AUTO_CODECS.get(variable, _OVERRIDES["lz4"])
    return _OVERRIDES[compressor]


def codec_name(choice: tuple[str, int, str] | None) -> str:
    """A short label of a codec choice, as recorded in the store's fingerprint."""
    return "none" if choice is None else f"{choice[0]}-{choice[1]}+{choice[2]}"


def codecs(compressor: str, itemsize: int, variable: str = "") -> list[Any]:
    """The zarr codecs (after the array-to-bytes codec) for ``variable`` under ``compressor``."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    choice = codec_choice(compressor, variable)
    codecs: list[Any] = []
    if choice is not None:
        cname, clevel, shuffle = choice
        codecs.append(BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle, typesize=itemsize))
    codecs.append(Crc32cCodec())  # every chunk carries a checksum: verify finds flipped bytes
    return codecs


def checked_codecs() -> list[Any]:
    """zstd level 1 followed by a crc32c checksum: the codecs of the arrays of movement,
    divergence, neighbours and clusters stores, whose chunks are bound to their position by
    that checksum (:mod:`dask_pdist.store.digests`).

    Level 1, not zarr's default (level 0, which zstd reads as its default 3): on movement's
    per-token rows (float32 distances, uint16 ulp counts, uint8 dim counts) it encodes 3.3x
    faster for 0.7 % more bytes (2.1 -> 0.63 ms per step at V=10,000, 98.4 -> 99.1 kB)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=1), Crc32cCodec()]
