"""store/zarr_json.py writes zarr.json documents byte for byte as json.dumps(indent=2) (zarr's
own encoding): every document of a real store, and edge values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_history
from dask_pdist import open_history, pairwise_distances, to_zarr
from dask_pdist.store.zarr_json import encode


def test_every_document_of_a_store_as_zarr_wrote_it(write_safetensors, tmp_path):
    path = write_safetensors("h.safetensors", {"embedding_history": random_history((7, 13, 5), seed=3)})
    store = tmp_path / "d.zarr"
    to_zarr(pairwise_distances(open_history(path, chunks=3)), store)
    docs = sorted(store.rglob("zarr.json"))
    assert len(docs) > 10
    for where in docs:
        raw = where.read_bytes()
        doc = json.loads(raw)
        assert encode(doc) == json.dumps(doc, indent=2).encode(), where
        assert encode(doc) == raw, where  # what zarr itself wrote


@pytest.mark.parametrize(
    "doc",
    [
        {},
        [],
        {"a": [], "b": {}, "c": [[]], "d": [{}]},
        {"x": [1, -2, 3.5, -0.0, 1e300, 5e-324, float("nan"), float("inf"), -float("inf")]},
        {"s": 'caf\u00e9 \u2603 \U0001f600 "q" \\ \n\t\x00', "\u00e9": None, "t": True, "f": False},
        [[1, [2, [3, {"k": [4]}]]]],
        {"big": 2**80, "neg": -(2**70)},
        "plain",
        7,
    ],
)
def test_edge_values(doc):
    assert encode(doc) == json.dumps(doc, indent=2).encode()


@pytest.mark.parametrize("doc", [{1: "int key"}, {"n": np.int64(3)}, {"t": (1, 2)}, {True: 1, None: 2}])
def test_what_it_does_not_know_goes_to_json_dumps(doc):
    try:
        expected = json.dumps(doc, indent=2).encode()
    except TypeError:
        with pytest.raises(TypeError):
            encode(doc)
        return
    assert encode(doc) == expected
