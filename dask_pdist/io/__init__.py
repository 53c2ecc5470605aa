"""Inputs and the places outputs go: the one path type (:mod:`.paths`: the pathlib API; a URL is a
:class:`~dask_pdist.io.location.Location`), the lazy, validated
readers of embedding histories (:mod:`.history`, :mod:`.sources`, :mod:`.checkpoints`,
:mod:`.known_files`: what is not read again of files unchanged since,
:mod:`.token_ids`, :mod:`.safetensors_format`), the synthetic example (:mod:`.synthetic`),
and publishing an output: the one primitive that writes it hidden, then makes it visible
(:mod:`.publish`), and streaming a file to object storage (:mod:`.upload`).

Imports nothing above it: conventions, errors and the standard library, numpy, dask, xarray.
"""
