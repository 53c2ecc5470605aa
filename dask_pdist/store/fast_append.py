"""Writing an append's few new blocks without the write graph: the fast path of ``to_zarr(append=True)``.

An append of one step (``--follow``, ``DistancesCallback``, most ``--append`` runs) writes a
handful of chunks, and through the write graph of :mod:`.writer` its fixed costs (building
the graph over the store's steps, dask's scheduler, one trip through zarr's event loop per
chunk, digest, flag and completion) were most of the append. Here the one task of the job:

1. computes the new blocks in memory by the tasks of the distances' own graph (the same
   kernel calls, the same bits), culled to those blocks, in this thread;
2. writes every variable's chunks of those blocks, each through its array's own codecs
   (zarr's ``setitem``, as the graph's tasks do), all in one trip through zarr's event loop,
   recording each chunk's digest (:mod:`.digests`);
3. then the blocks' digests and the packed digest table, in one trip;
4. then their done flags, in one trip;
5. then the completion record (:func:`.layout.write_root_attrs`), and the lock is released.

That is the write graph's order, phase by phase: a block's chunks before its digests, its
digests before its done flag, every flag before the completion. A kill at any moment leaves
what a killed graph can leave, and ``--append``, ``--follow`` or ``--resume`` finish it alike.
The files written are the graph's, byte for byte (tests/test_fast_append.py); large appends
(more than :data:`FAST_BLOCKS` blocks or :data:`FAST_BYTES` bytes) still go through the graph,
whose threads compute blocks in parallel.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Coroutine
from typing import Any

import numpy as np
import xarray as xr
from dask.delayed import Delayed

from dask_pdist.conventions import BOOKKEEPING, COMPLETE_ATTR, STOPPED_ATTR
from dask_pdist.io.locks import release_lock
from dask_pdist.store.digests import (
    DIGEST,
    PACKED,
    PACKED_ATTR,
    STORE_ID_ATTR,
    Digests,
    checked_store,
    names_kind,
)
from dask_pdist.store.layout import StorePath, done_path, is_complete, read_root, write_root_attrs

__all__ = [
    "FAST_BLOCKS",
    "FAST_BYTES",
    "fast_job",
    "described_array",
    "add_to_manifest",
    "stored_labels",
    "stored_values",
]

#: At most this many blocks (step-block x token tiles) go the fast way: they are computed one
#: after the other, in one thread.
FAST_BLOCKS = 8
#: ... and at most this many bytes of new distances.
FAST_BYTES = 64 << 20


def _arrays(ds: xr.Dataset, names: list[str]) -> list[Any]:
    # the dask array each task-written variable's chunks come from
    return [ds[name.split("/")[-1]].data for name in names]


def fast_job(ds: xr.Dataset, path: StorePath, todo: np.ndarray, lock: str, names: list[str]) -> Delayed | None:
    """The job writing the blocks ``todo`` of a grown, complete-before-the-append store in one
    task (see the module's docstring), or None where the write graph must do it: too many
    blocks, a store without chunk digests or consolidated metadata, or digests recorded for
    other variables than ``names`` (the graph's check then says so)."""
    blocks = np.argwhere(todo)
    if not len(blocks) or len(blocks) > FAST_BLOCKS:
        return None
    data = _arrays(ds, names)
    if any(not hasattr(d, "dask") for d in data):
        return None
    per_block = sum(d.dtype.itemsize * int(np.prod([c[0] for c in d.chunks])) for d in data)
    if per_block * len(blocks) > FAST_BYTES:
        return None
    root = read_root(path) or {}
    attrs = root.get("attributes") or {}
    known = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    done_name = str(done_path(path))[len(str(path)) + 1 :]
    wanted = [*names, done_name, f"{BOOKKEEPING}/{DIGEST}"]
    if not int(attrs.get(STORE_ID_ATTR, 0)) or any(n not in known for n in wanted):
        return None
    if (known[f"{BOOKKEEPING}/{DIGEST}"].get("attributes") or {}).get("variables") != names:
        return None
    packed = f"{BOOKKEEPING}/{PACKED}"
    docs = {n: known[n] for n in [*wanted, *([packed] if packed in known else [])]}
    keys, which = [], []
    for k, arr in enumerate(data):
        wrote = set()
        for idx in blocks:
            index = tuple(int(i) for i in idx[: arr.ndim])
            if index not in wrote:  # a per-step array: one block per step-block
                wrote.add(index)
                keys.append((arr.name, *index))
                which.append((k, index))
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.merge(*(d.__dask_graph__() for d in data))
    chunks = [d.chunks for d in data]
    token = f"fast-append-{uuid.uuid4().hex}"
    # (the packed table's held step-blocks: as the growth left them)
    held = int(attrs.get(PACKED_ATTR, 0))
    args = (graph, keys, which, chunks, names, blocks, path, lock, docs, int(attrs[STORE_ID_ATTR]), held)
    # one task; its arguments inside a partial, where dask does not look for keys
    return Delayed(token, {token: (functools.partial(_write_blocks, *args),)})


class _Present:
    # "is this a key of the graph?", asked of the layer named like the key (a Blockwise layer
    # answers from its block counts): HighLevelGraph.cull lists every key of every layer for
    # it, which costs what the store holds, not what the append writes
    def __init__(self, layers: dict[str, Any]) -> None:
        from dask.blockwise import Blockwise

        self.layers, self.blockwise = layers, Blockwise
        self.others = [layer for layer in layers.values() if not isinstance(layer, Blockwise)]

    def __contains__(self, key: object) -> bool:
        name = key[0] if isinstance(key, tuple) and key else key
        layer = self.layers.get(name) if isinstance(name, str) else None
        if isinstance(layer, self.blockwise):
            index = key[1:] if isinstance(key, tuple) else ()
            shape = [layer.dims[i] for i in layer.output_indices]
            return len(index) == len(shape) and all(
                isinstance(i, int) and 0 <= i < n for i, n in zip(index, shape, strict=True)
            )
        try:
            return any(key in other for other in ([layer] if layer is not None else self.others))
        except TypeError:  # not hashable
            return False


def _culled(graph: Any, keys: list[tuple]) -> dict:
    # the tasks that compute `keys`, layer by layer from the last (HighLevelGraph.cull's walk)
    present = _Present(graph.layers)
    wanted, out = set(keys), {}
    for name in reversed(graph._toposort_layers()):
        layer = graph.layers[name]
        if isinstance(layer, present.blockwise):
            mine = {k for k in wanted if isinstance(k, tuple) and k and k[0] == layer.output}
        else:
            mine = {k for k in wanted if k in layer}
        if not mine:
            continue
        culled, deps = layer.cull(mine, present)
        out.update(culled)
        for key, needs in deps.items():
            wanted |= needs
            wanted.discard(key)
    return out


def _sync(coros: list[Coroutine]) -> list[Any]:
    # one trip through zarr's event loop for a whole phase: its writes run concurrently
    from zarr.core.sync import sync

    async def gather() -> list[Any]:
        return await asyncio.gather(*coros)

    return sync(gather())


def _array(store: Any, name: str, doc: dict[str, Any], write_empty: bool) -> Any:
    # the array as the grown store's consolidated metadata describes it, without reading it
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath as ZarrPath

    config = {"write_empty_chunks": True} if write_empty else None
    return AsyncArray(metadata=doc, store_path=ZarrPath(store, name), config=config)


def described_array(path: StorePath, name: str, doc: dict[str, Any], store_id: int = 0) -> tuple[Any, dict[str, int]]:
    """Array ``name`` of the store at ``path`` for writing (every chunk written), as ``doc``
    (its metadata document, e.g. from the consolidated metadata) describes it: no read to
    open it. With the dict that receives ``{chunk key: keyed digest}`` of every chunk written
    (:func:`.digests.recording_array` does the same after reading the array's ``zarr.json``)."""
    import zarr

    store = checked_store(path, Digests({}, store_id), read_only=False)
    return zarr.Array(_array(store, name, doc, True)), store.written


def stored_labels(path: StorePath) -> np.ndarray:
    """The step labels a store holds (:func:`stored_values` of ``step``)."""
    return stored_values(path, "step")


def stored_values(path: StorePath, name: str) -> np.ndarray:
    """The values of the store's (small, 1-D) array ``name``. A complete store's are read as
    its consolidated metadata describes the array (one trip through zarr's event loop, no
    ``zarr.json`` read to open it); another's through zarr. Plain reads: the integrity checks
    are the readers'."""
    root = read_root(path) or {}
    doc = ((root.get("consolidated_metadata") or {}).get("metadata") or {}).get(name)
    if not is_complete(root) or not isinstance(doc, dict):
        from dask_pdist.io.paths import zarr_array

        return np.asarray(zarr_array(path / name)[...])
    array = _array(checked_store(path), name, doc, False)  # (no digests expected: read as zarr reads)
    from zarr.core.sync import sync

    return np.asarray(sync(array.getitem(slice(None))))


def add_to_manifest(path: StorePath, digests: dict[str, int]) -> None:
    """:func:`.digests.manifest_with` (the same file, the same bytes) without opening the
    store as a zarr group: the bookkeeping sub-group's ``zarr.json`` read, its manifest
    extended, written back in one replace."""
    import json

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    from dask_pdist.io.paths import replace_bytes
    from dask_pdist.store.digests import MANIFEST_ATTR, manifest_with

    where = path / BOOKKEEPING / "zarr.json"
    try:
        doc = json.loads(where.read_text())
        meta = GroupMetadata.from_dict(doc)
    except (OSError, ValueError, TypeError, KeyError):
        manifest_with(path, digests)  # missing or damaged: zarr's way
        return
    found = meta.attributes.get(MANIFEST_ATTR)
    meta.attributes[MANIFEST_ATTR] = {**(found if isinstance(found, dict) else {}), **digests}
    replace_bytes(where, meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())


def _where(chunks: tuple[tuple[int, ...], ...], index: tuple[int, ...]) -> tuple[slice, ...]:
    out = []
    for sizes, i in zip(chunks, index, strict=False):
        start = int(sum(sizes[:i]))
        out.append(slice(start, start + int(sizes[i])))
    return tuple(out)


def _write_blocks(
    graph: Any,
    keys: list[tuple],
    which: list[tuple[int, tuple[int, ...]]],
    chunks: list[tuple],
    names: list[str],
    blocks: np.ndarray,
    path: StorePath,
    lock: str,
    docs: dict[str, dict[str, Any]],
    store_id: int,
    held: int,
) -> int:
    from dask.local import get_sync

    # 1. the blocks, by the graph's own tasks (culled to them)
    values = get_sync(_culled(graph, keys), keys)
    store = checked_store(path, Digests({}, store_id), read_only=False)
    # 2. every variable's chunks of the new blocks (digests recorded by the store)
    arrays = {name: _array(store, name, docs[name], True) for name in names}
    _sync(
        [
            arrays[names[k]].setitem(_where(chunks[k], index), value)
            for (k, index), value in zip(which, values, strict=True)
        ]
    )
    written = store.written
    kinds = [names_kind(name) for name in names]
    rows = []
    for idx in blocks:
        s, *rest = (int(i) for i in idx)
        row = [
            written["/".join([name, "c", str(s), *(map(str, rest) if kind == 3 else [])])]
            for name, kind in zip(names, kinds, strict=True)
        ]
        rows.append(np.array(row, dtype=np.uint32))
    # 3. the blocks' digests, and the packed table from the first step-block it lacks
    digest = _array(store, f"{BOOKKEEPING}/{DIGEST}", docs[f"{BOOKKEEPING}/{DIGEST}"], True)
    writes = [digest.setitem(tuple(int(i) for i in idx), row) for idx, row in zip(blocks, rows, strict=True)]
    packed = _packed(store, path, docs, held, blocks, rows)
    if packed is not None:
        writes.append(packed[0])
    _sync(writes)
    # 4. their done flags
    done_name = str(done_path(path))[len(str(path)) + 1 :]
    done = _array(store, done_name, docs[done_name], True)
    _sync([done.setitem(tuple(int(i) for i in idx), 1) for idx in blocks])
    # 5. the completion record, the last write (as writer._finish)
    extra = {PACKED_ATTR: packed[1]} if packed is not None else {}
    write_root_attrs(path, **{COMPLETE_ATTR: True, STOPPED_ATTR: None}, **extra)
    release_lock(path, lock)
    return len(blocks)


def _packed(
    store: Any, path: StorePath, docs: dict[str, Any], held: int, blocks: np.ndarray, rows: list[np.ndarray]
) -> tuple[Coroutine, int] | None:
    # what digests.update_packed writes, as one write of the phase: (its coroutine, the
    # step-blocks the table then holds), or None for a store without the table
    name = f"{BOOKKEEPING}/{PACKED}"
    if name not in docs:
        return None
    packed = _array(store, name, docs[name], False)  # (update_packed opens it with zarr's defaults)
    total = int(packed.shape[0])
    start = min([held, *(int(i[0]) for i in blocks)])
    if start >= total:
        return _nothing(), total
    table = np.zeros((total - start, *packed.shape[1:]), dtype=np.uint32)
    have = np.zeros(table.shape[:-1], bool)
    for index, row in zip(blocks, rows, strict=True):
        if index[0] >= start:
            table[(int(index[0]) - start, *(int(i) for i in index[1:]))] = row
            have[(int(index[0]) - start, *(int(i) for i in index[1:]))] = True
    if not have.all():  # blocks an earlier job wrote: from their own files
        digest = _array(store, f"{BOOKKEEPING}/{DIGEST}", docs[f"{BOOKKEEPING}/{DIGEST}"], True)
        (old,) = _sync([digest.getitem(slice(start, total))])
        table[~have] = np.asarray(old)[~have]
    return packed.setitem(slice(start, total), table), total


async def _nothing() -> None:
    return None
