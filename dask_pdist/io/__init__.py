"""Inputs and the places outputs go: the one path type (:mod:`.paths`), the lazy, validated
readers of embedding histories (:mod:`.history`, :mod:`.sources`, :mod:`.checkpoints`,
:mod:`.token_ids`, :mod:`.safetensors_format`), the synthetic example (:mod:`.synthetic`),
and publishing an output: write it hidden, then make it visible (:mod:`.upload` streams a
file to object storage).

Imports nothing above it: conventions, errors and the standard library, numpy, dask, xarray.
"""
