"""A zarr ``zarr.json`` document encoded as zarr encodes it, faster.

zarr writes its metadata documents with ``json.dumps(doc, indent=2)``; an append rewrites the
root document (its consolidated metadata: every array's document) three times and each grown
array's once. With ``indent`` the standard library's encoder is its pure-Python one (the C
encoder runs only without indentation), about 0.4 ms for a store's root document here: a
sizeable part of an append's fixed cost. :func:`encode` writes the same bytes from JSON's
own leaf encoders in one recursive pass (~3x faster), and hands anything it does not know
(a non-string key, a non-JSON type) to ``json.dumps``.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = ["encode"]

_INF = float("inf")


def encode(doc: Any) -> bytes:
    """``json.dumps(doc, indent=2).encode()``, byte for byte.

    >>> encode({"shape": [3, 4], "fill_value": "NaN", "a": {}, "b": None}) == json.dumps(
    ...     {"shape": [3, 4], "fill_value": "NaN", "a": {}, "b": None}, indent=2
    ... ).encode()
    True
    """
    out: list[str] = []
    try:
        _encode(doc, "\n", out)
    except TypeError:
        return json.dumps(doc, indent=2).encode()
    return "".join(out).encode()


def _encode(o: Any, newline: str, out: list[str]) -> None:
    # newline: a line break and the indentation of the value's own line
    if isinstance(o, str):
        out.append(encode_basestring_ascii(o))
    elif isinstance(o, (dict, list)):
        if not o:
            out.append("{}" if isinstance(o, dict) else "[]")
            return
        inner = newline + "  "
        sep = "," + inner
        out.append("{" if isinstance(o, dict) else "[")
        first = True
        if isinstance(o, dict):
            for key, value in o.items():
                if not isinstance(key, str):
                    raise TypeError("a non-string key: json.dumps converts it")
                out.append(inner if first else sep)
                first = False
                out.append(encode_basestring_ascii(key))
                out.append(": ")
                _encode(value, inner, out)
        else:
            for value in o:
                out.append(inner if first else sep)
                first = False
                _encode(value, inner, out)
        out.append(newline + ("}" if isinstance(o, dict) else "]"))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif type(o) is int:
        out.append(int.__repr__(o))
    elif type(o) is float:
        # as json.dumps with allow_nan=True (its default)
        out.append("NaN" if o != o else "Infinity" if o == _INF else "-Infinity" if o == -_INF else float.__repr__(o))
    else:
        raise TypeError(f"{type(o).__name__}: json.dumps decides")
