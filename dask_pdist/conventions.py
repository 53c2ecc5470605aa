"""The package's conventions, one copy of each: dimension names, metric names and output
dtypes with their validation, attribute names the stores carry, and the chunk-size targets.

Standard library only: every layer imports this, and reading a store must not pay for dask,
xarray or numba to learn a dimension name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = [
    "METRICS",
    "ALL_METRICS",
    "Metric",
    "check_metrics",
    "OUTPUT_DTYPES",
    "OutputDtype",
    "check_dtype",
    "HISTORY_DIMS",
    "DISTANCE_DIMS",
    "CLUSTER_DIMS",
    "NEIGHBOUR_DIMS",
    "check_choice",
    "ENGINES",
    "Engine",
    "check_engine",
    "counted",
    "one_block",
]

# -- metrics ---------------------------------------------------------------------------------
#: The default metrics (the notebook's), in the order of the kernels' output axis.
METRICS: tuple[str, ...] = ("euclidean", "chebyshev")
#: Every metric: the defaults, Manhattan (L1, from the same pass, kernel output 2) and
#: Chebyshev in units of the number format (``chebyshev_ulp``: representable values between,
#: for bf16/f16/f32 inputs, stored as the smallest unsigned integer dtype that holds it).
ALL_METRICS: tuple[str, ...] = ("euclidean", "chebyshev", "manhattan", "chebyshev_ulp")
Metric = Literal["euclidean", "chebyshev", "manhattan", "chebyshev_ulp"]

# -- dtypes ----------------------------------------------------------------------------------
#: Stored dtypes of distances. Arithmetic is float32 (float64 for float64 input) whatever is chosen.
OUTPUT_DTYPES: tuple[str, ...] = ("float32", "float16", "float64")
OutputDtype = Literal["float32", "float16", "float64"]

# -- dimension names (the xarray layer; the array layer speaks axes) -------------------------
HISTORY_DIMS = ("step", "token", "dim")
DISTANCE_DIMS = ("step", "token_i", "token_j")
CLUSTER_DIMS = ("step", "token")
NEIGHBOUR_DIMS = ("step", "token", "rank")

# -- attribute names in the root zarr.json of our stores --------------------------------------
#: Version that made a distance store (its presence marks a store as ours).
MARKER_ATTR = "dask_pdist_version"
#: JSON of what must match for ``--resume`` to continue the same computation.
FINGERPRINT_ATTR = "dask_pdist_fingerprint"
#: The completion record: True only after every block is written (the last write).
COMPLETE_ATTR = "complete"
#: Why a job stopped before completing (its input stopped it), else absent/None.
STOPPED_ATTR = "stopped"
#: Version that made a clusters store.
CLUSTERS_MARKER_ATTR = "dask_pdist_clusters"
#: Kind of a store other than distances (``"neighbours"``).
KIND_ATTR = "dask_pdist_kind"
NEIGHBOURS_KIND = "neighbours"
#: The sub-group holding a distance store's bookkeeping, and its arrays.
BOOKKEEPING = "_dask_pdist"
DONE = "chunk_done"
INPUT_CHECKSUM = "input_checksum"
#: Per step: a 64-bit hash of the identity of the file the step was read from (0: none vouched
#: for), so that an append re-reads only the stored steps whose file changed (store/append.py).
INPUT_VERSION = "input_version"

# -- chunk-size targets (bytes or counts one task may hold or produce) ------------------------
#: Output of one distance task (every metric) before steps go one per task and token_i x
#: token_j are tiled; also what ``chunks="auto"`` aims at when reading a history. Below
#: glibc's 32 MiB mmap threshold, so freed blocks are reused instead of page-faulted in
#: afresh: measured ~30% faster kernel tasks and peak RSS 390 MB instead of 530 MB at 5001 x 128.
TASK_OUTPUT_BYTES = 16 * 2**20
#: Distance tile a cluster task at a positive threshold holds at a time.
CLUSTER_TILE_BYTES = 4 * 2**20
#: Neighbour tasks: pair-dims one block-pair task computes, input bytes it holds, and the
#: cache-sized candidate tile of its inner loop.
KNN_TASK_PAIR_DIMS = 2 * 10**9
KNN_TASK_INPUT_BYTES = 64 * 2**20
KNN_TILE_BYTES = 2**20
#: Euclidean neighbour tasks (the BLAS method): one block pair's matrix product; larger
#: blocks mean fewer candidates to recompute and a more efficient product.
KNN_PRODUCT_BYTES = 64 * 2**20
#: Store chunk of a movement or divergence store's per-token variables (the widest of them):
#: one task writes whole chunks of every variable, however many kernel tasks fill them, so a
#: 5001-step store is ~50 chunk writes per variable instead of one per kernel task (each write
#: costs ~1 ms beyond compressing: zarr's event loop, a temp file and a rename; measured).
COMPARISON_CHUNK_BYTES = 4 * 2**20
#: Labels one event pass loads at a time when the clusters Dataset is not chunked.
EVENTS_CHUNK_BYTES = 16 * 2**20
#: Bytes a streamed upload computes ahead of what it has sent.
UPLOAD_WINDOW_BYTES = 2**28


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise a ValueError listing them.

    Examples
    --------
    >>> check_choice("nonfinite", "raise", ("raise", "propagate"))
    'raise'
    >>> check_choice("nonfinite", "skip", ("raise", "propagate"))
    Traceback (most recent call last):
    ValueError: nonfinite='skip': choose one of ['raise', 'propagate']
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {list(choices)}")
    return value


def check_metrics(metrics: Sequence[str] | str) -> tuple[str, ...]:
    """Validate a metric list against :data:`ALL_METRICS`; returns it as a tuple.

    Examples
    --------
    >>> check_metrics("chebyshev")
    ('chebyshev',)
    >>> check_metrics(["l1"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: metrics=['l1']: choose one or more of ['euclidean', 'chebyshev', 'manhattan', ...], each once
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics={list(metrics)}: choose one or more of {list(ALL_METRICS)}, each once")
    return metrics


def check_metric(metric: str, allowed: Sequence[str] = METRICS) -> int:
    """One metric's position in the kernels' output (euclidean 0, chebyshev 1, manhattan 2;
    ``chebyshev_ulp`` is Chebyshev on bit positions: 1), or a ValueError if not ``allowed``.

    >>> check_metric("chebyshev")
    1
    """
    if metric not in allowed:
        raise ValueError(f"metric={metric!r}: choose one of {list(allowed)}")
    return {"euclidean": 0, "chebyshev": 1, "manhattan": 2, "chebyshev_ulp": 1}[metric]


def check_dtype(dtype: object) -> str:
    """Validate an output dtype (a name, a numpy dtype or type) against :data:`OUTPUT_DTYPES`.

    >>> check_dtype("float16")
    'float16'
    """
    if isinstance(dtype, str):
        name = dtype
    else:  # a numpy dtype or scalar type (numpy is loaded wherever one exists)
        import numpy as np

        name = np.dtype(dtype).name
    if name not in OUTPUT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(OUTPUT_DTYPES)}")
    return name


# -- engines ---------------------------------------------------------------------------------
#: Where the kernels run: "cpu" (numba on the host), "cuda" (numba-cuda on a GPU, the
#: ``dask_pdist[cuda]`` extra), "auto" (CUDA where a GPU and the extra are present, else CPU).
ENGINES: tuple[str, ...] = ("cpu", "cuda", "auto")
Engine = Literal["cpu", "cuda", "auto"]


def check_engine(engine: object) -> str:
    """Validate an engine name against :data:`ENGINES` (which one is available is decided later).

    >>> check_engine("auto")
    'auto'
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {list(ENGINES)}")
    return engine


def human_size(nbytes: float) -> str:
    """A byte count as people read it (no "0.0 MB" for a small store).

    >>> human_size(3_900_000), human_size(4_321), human_size(12)
    ('3.9 MB', '4.3 kB', '12 bytes')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{int(nbytes)} bytes"


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1 (regular English plurals only).

    >>> counted(1, "step"), counted(1_200, "step")
    ('1 step', '1,200 steps')
    """
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def one_block(nested: object) -> object:
    """The block a ``dask.array.blockwise(..., concatenate=False)`` task gets for an argument
    whose contracted axes the graph made whole: one list level per such axis, one element each,
    unwrapped as it is (``concatenate=True``, which ``map_blocks(drop_axis=)`` uses too, would
    copy the block even when it is the only one).

    >>> one_block([[7]]), one_block(7)
    (7, 7)
    """
    while isinstance(nested, list):
        (nested,) = nested
    return nested
