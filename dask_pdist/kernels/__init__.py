"""Block kernels: numpy in, numpy out, no dask, no labels.

:mod:`.distances` (both metrics in one pass, exact) and :mod:`.knn` (exact k nearest
neighbours) are numba-compiled, as is :mod:`.cluster_tiles` (union-find over distance tiles);
:mod:`.cluster_rows` (equal rows by their bytes), :mod:`.stats` (per-step statistics of
tiles) and :mod:`.spacing` (the bf16 spacing) are plain numpy, so the paths that use only
them (reading a store, clusters at threshold 0) never load the compiler. Submodules are
imported one by one: this package imports none of them.
"""
