"""The distance store (zarr format 3) and its exports: layout and bookkeeping
(:mod:`.layout`), codecs (:mod:`.codecs`), integrity checks and ``verify``
(:mod:`.integrity`), what a write job may write over (:mod:`.guards`), the writer
(:mod:`.writer`, :func:`to_zarr`) and reader (:mod:`.reader`, ``open_distances``),
per-step iteration (:mod:`.reading`), many runs (:mod:`.runs`) and the safetensors export
(:mod:`.export`).

Reading never imports numba: only :mod:`.writer` (through the graphs it writes) computes.
"""
