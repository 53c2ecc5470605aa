"""Graph builders (dask; axes and chunks, no labels): one per analysis, each over its own
block kernels: :mod:`.distances` (one ``blockwise`` for every metric), :mod:`.knn`,
:mod:`.clusters`, :mod:`.stats`; and :mod:`.dataset`, the xarray layer that labels the
distances as a Dataset (dims ``step``, ``token_i``, ``token_j``).
"""
