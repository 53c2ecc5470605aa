"""Inputs and the places outputs go: where an input or output lives (:mod:`.paths`: a local path, or
a URL with its storage options), the lazy, validated
readers of embedding histories (:mod:`.history`, :mod:`.sources`, :mod:`.checkpoints`,
:mod:`.token_ids`, :mod:`.safetensors_format`), the synthetic example (:mod:`.synthetic`),
and publishing an output: the one primitive that writes it hidden, then makes it visible
(:mod:`.publish`), and streaming a file to object storage (:mod:`.upload`).

Imports nothing above it: conventions, errors and the standard library, numpy, dask, xarray.
"""
