"""The CUDA engine's kernels (numba-cuda): the same results as the CPU kernels, on a GPU.

:mod:`.device` (the one-task-per-GPU lock, the device memory budget, the rounding-exact
arithmetic, bf16/f16 widening on the device), :mod:`.distances` (both metrics in one pass over
shared-memory tiles), :mod:`.knn` (exact k nearest neighbours), :mod:`.clusters` (the pairs
within a threshold, joined on the host); :mod:`.ptx` compiles them to PTX to check that no
multiply-add is fused. Imported only when a graph runs on the GPU
(:func:`dask_pdist.kernels.engine.resolve_engine`); this package imports none of them.
"""
