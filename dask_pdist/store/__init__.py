"""The distance store (zarr format 3) and its exports: layout and bookkeeping
(:mod:`.layout`), codecs (:mod:`.codecs`), integrity checks and ``verify``
(:mod:`.integrity`), what a write job may write over (:mod:`.guards`), the job runner that
owns the scheduler, the progress bar and stopping (:mod:`.job`), the writer (:mod:`.writer`,
``to_zarr``) and reader (:mod:`.reader`, ``open_distances``), per-step iteration
(:mod:`.reading`), many runs (:mod:`.runs`) and the safetensors export (:mod:`.export`).

Nothing here imports numba: the kernels load when a graph built by :mod:`dask_pdist.graphs`
runs, so reading a store never pays for the compiler.
"""
