"""clusters, cluster_events, `dask-pdist clusters`, and the planted groups of synth.

Oracles: scipy's Chebyshev / Euclidean matrices in float64 with scipy's connected
components (for the groups), and a set-based transcription of the issue's event rules."""

from __future__ import annotations

import dask
import dask.array as da
import ml_dtypes
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

import dask_pdist as dp
from conftest import history_array, raise_if_dask_computes, random_history
from dask_pdist.analyses import events
from dask_pdist.analyses.events import step_events
from dask_pdist.cli.main import main
from dask_pdist.graphs import clusters as cluster_graph
from dask_pdist.kernels import cluster_rows as cluster_blocks
from dask_pdist.kernels import cluster_tiles
from dask_pdist.kernels.spacing import bf16_spacing


def _oracle_labels(x: np.ndarray, thr: np.ndarray, metric: str) -> np.ndarray:
    """Smallest member of each token's component of "distance <= thr", scipy float64."""
    out = np.empty(x.shape[:2], dtype=np.int64)
    for s, snap in enumerate(np.asarray(x, dtype=np.float64)):
        d = cdist(snap, snap, metric)
        _, comp = connected_components(d <= thr[s], directed=False)
        first = {c: i for i, c in reversed(list(enumerate(comp)))}
        out[s] = [first[c] for c in comp]
    return out


def _bf16_threshold(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt((np.asarray(x, dtype=np.float64) ** 2).mean(axis=(1, 2)))
    return 2.0 ** (np.floor(np.log2(rms)) - 7)


def _oracle_events(prev: np.ndarray, cur: np.ndarray) -> list[tuple[str, list[int]]]:
    """The issue's rules, transcribed literally with Python sets."""

    def groups(labels):
        by: dict[int, set[int]] = {}
        for t, lab in enumerate(labels.tolist()):
            by.setdefault(lab, set()).add(t)
        return [g for g in by.values() if len(g) >= 2]

    before, after = groups(prev), groups(cur)
    singles_after = set(range(len(cur))) - set().union(*after)
    singles_before = set(range(len(prev))) - set().union(*before)
    rows = []
    for g in before:
        c = [h for h in after if h & g]
        if len(c) >= 2:
            rows.append(("fission", sorted(g)))
        if len(c) == 0:
            rows.append(("evaporation", sorted(g)))
        if len(c) >= 1:
            rows += [("emission", [t]) for t in sorted(g & singles_after)]
    for h in after:
        p = [g for g in before if g & h]
        if len(p) >= 2:
            rows.append(("merger", sorted(h)))
        if len(p) == 0:
            rows.append(("formation", sorted(h)))
        if len(p) >= 1 and h & singles_before:
            rows.append(("capture", sorted(h & singles_before)))
    return sorted(rows, key=lambda r: (events.EVENT_KINDS.index(r[0]), r[1]))


# ---------------------------------------------------------------- block functions


def test_threshold_zero_imports_no_numba():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, xarray as xr, dask.array as da, dask_pdist as dp\n"
        "h = xr.DataArray(da.zeros((3, 4, 2), chunks=2), dims=('step', 'token', 'dim'))\n"
        "assert (dp.clusters(h).cluster.values == 0).all()\n"
        "print(sorted({'numba', 'zarr'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_clusters_of_a_store_from_the_command_line_imports_no_distributed(tmp_path):
    # dask's rechunk looks for a cluster (importing dask.distributed, ~0.1 s) unless told its
    # method; the store's per-step arrays and the threshold are small cuts: tasks
    import subprocess
    import sys

    from dask_pdist import open_history, pairwise_distances, to_zarr
    from dask_pdist.io.synthetic import write_synthetic_history

    write_synthetic_history(tmp_path / "h.safetensors", steps=300, vocab=20, dim=6)
    # step chunks of 7: the reader reads a per-step array many chunks at a time, then cuts it
    to_zarr(pairwise_distances(open_history(tmp_path / "h.safetensors", chunks=7)), tmp_path / "d.zarr")
    code = (
        "import sys\n"
        "from dask_pdist.cli.main import main\n"
        f"for t in ('0', 'bf16'):\n"
        f"    assert main(['clusters', {str(tmp_path / 'd.zarr')!r}, '--threshold', t, '--no-progress']) == 0\n"
        "print('distributed' in sys.modules, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_equal_rows_signed_zero_nan_and_inf():
    x = np.array([[[0.0, 1.0], [-0.0, 1.0], [np.nan, 1.0], [np.nan, 1.0], [np.inf, 1.0], [np.inf, 1.0], [0.0, 1.0]]])
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(cluster_blocks.equal_row_labels(x.astype(dtype)), [[0, 0, 2, 3, 4, 5, 0]])
    # the distance path agrees: -0.0 is at distance 0 of +0.0, NaN and Inf rows join nothing
    h = history_array(x.astype(np.float32), 1)
    from_store = dp.clusters(dp.pairwise_distances(h)).cluster.values
    np.testing.assert_array_equal(from_store, [[0, 0, 2, 3, 4, 5, 0]])
    np.testing.assert_array_equal(dp.clusters(h, 1e30).cluster.values, [[0, 0, 2, 3, 4, 5, 0]])


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_bf16_threshold_ignores_nonfinite_coordinates(bad, tmp_path):
    # an Inf coordinate made the step's RMS (and so its threshold) inf: every token grouped,
    # the Inf row too; a NaN made it NaN: even exact duplicates stayed apart
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    x[:, 2] = x[:, 1]
    x[1, 4, 0] = bad
    history = xr.DataArray(x, dims=("step", "token", "dim"))
    finite = np.isfinite(x)
    rms = np.sqrt((np.where(finite, x.astype(np.float64), 0) ** 2).sum(axis=(1, 2)) / finite.sum(axis=(1, 2)))
    want = [0, 1, 1, 3, 4, 5]
    from_history = dp.clusters(history, "bf16").compute()
    np.testing.assert_allclose(from_history["threshold"].values, bf16_spacing(rms))
    np.testing.assert_array_equal(from_history["cluster"].values, [want, want])
    store = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(history), store, progress=False)
    from_store = dp.clusters(dp.open_distances(store), "bf16").compute()
    xr.testing.assert_equal(
        from_store["cluster"].reset_coords(drop=True), from_history["cluster"].reset_coords(drop=True)
    )


def test_merge_labels_is_the_union_of_partitions():
    rng = np.random.default_rng(3)
    zero = np.zeros(2)
    for _ in range(50):
        a = rng.integers(0, 9, size=(2, 9))
        b = rng.integers(0, 9, size=(2, 9))
        adj = (a[:, :, None] == a[:, None, :]) | (b[:, :, None] == b[:, None, :])
        want = [[np.flatnonzero(_reach(adj[s], i)).min() for i in range(9)] for s in range(2)]
        da_ = np.where(a[:, :, None] == a[:, None, :], 0.0, 1.0)
        la = cluster_tiles.tile_labels(da_, zero, 0, 0, 9)
        lb = cluster_tiles.tile_labels(np.where(b[:, :, None] == b[:, None, :], 0.0, 1.0), zero, 0, 0, 9)
        np.testing.assert_array_equal(cluster_tiles.merge_labels(la, lb), want)
        # the same edges seen through two row tiles (offsets), merged
        top = cluster_tiles.tile_labels(da_[:, :4], zero, 0, 0, 9)
        bottom = cluster_tiles.tile_labels(da_[:, 4:], zero, 4, 0, 9)
        np.testing.assert_array_equal(cluster_tiles.merge_labels(top, bottom), la)


def _reach(adj: np.ndarray, i: int) -> np.ndarray:
    seen = np.zeros(len(adj), bool)
    seen[i] = True
    while True:
        new = seen | adj[seen].any(axis=0)
        if (new == seen).all():
            return seen
        seen = new


# ---------------------------------------------------------------- hypothesis against scipy


@st.composite
def _structures(draw):
    """bf16-exact histories: tokens copied from a few prototypes, some one bf16 ulp away."""
    s = draw(st.integers(1, 4))
    v = draw(st.integers(2, 11))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_proto = draw(st.integers(1, 4))
    protos = rng.uniform(0.25, 2.0, size=(s, n_proto, d)) * rng.choice([-1, 1], size=(s, n_proto, d))
    protos = protos.astype(ml_dtypes.bfloat16).astype(np.float32)
    which = rng.integers(0, n_proto, size=v)
    x = protos[:, which].copy()
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    near = rng.random(v) < 0.3  # one bf16 ulp away in one dim, at every step
    dims = rng.integers(0, d, size=v)
    for t in np.flatnonzero(near):
        bits[:, t, dims[t]] += 1
    fresh = rng.random(v) < 0.2  # unrelated tokens
    bits[:, fresh] = (rng.uniform(0.25, 2.0, size=(s, int(fresh.sum()), d))).astype(ml_dtypes.bfloat16).view(np.uint16)
    x = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    chunks = draw(st.integers(1, s))
    token_chunk = draw(st.integers(1, v))
    return x, chunks, token_chunk


def _midpoint_threshold(x: np.ndarray, metric: str, pick: float) -> float:
    # a float threshold half way between two distinct distances, so float32 and float64
    # arithmetic agree on which side every pair falls
    ds = np.unique(np.concatenate([cdist(s, s, metric).ravel() for s in x.astype(np.float64)]))
    if len(ds) < 2:
        return 0.5
    k = min(int(pick * (len(ds) - 1)), len(ds) - 2)
    return float((ds[k] + ds[k + 1]) / 2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _structures(),
    st.sampled_from(["zero", "bf16", "float"]),
    st.sampled_from(["chebyshev", "euclidean"]),
    st.floats(0, 1),
)
def test_clusters_match_scipy_from_history_and_distances(case, kind, metric, pick):
    x, chunks, token_chunk = case
    if kind == "bf16" and metric == "euclidean":
        metric = "chebyshev"  # Euclidean in float32 is not exact next to a power-of-two threshold
    threshold = {"zero": 0.0, "bf16": "bf16", "float": _midpoint_threshold(x, metric, pick)}[kind]
    thr = {"zero": np.zeros(len(x)), "bf16": _bf16_threshold(x), "float": np.full(len(x), threshold)}[kind]
    want = _oracle_labels(x, thr, metric)
    h = history_array(x, chunks)
    results = [
        dp.clusters(h, threshold, metric=metric, token_chunk=token_chunk),
        dp.clusters(h, threshold, metric=metric),
        dp.clusters(dp.pairwise_distances(h, token_chunk=token_chunk), threshold, metric=metric),
    ]
    for ds in results:
        got = ds.compute()
        np.testing.assert_array_equal(got.cluster.values, want)
        np.testing.assert_array_equal(got.threshold.values, thr)
        counts = [np.bincount(w, minlength=x.shape[1]) for w in want]
        np.testing.assert_array_equal(got.cluster_size.values, [c[w] for c, w in zip(counts, want, strict=True)])
        np.testing.assert_array_equal(got.n_clusters.values, [(c >= 2).sum() for c in counts])
        np.testing.assert_array_equal(got.n_clustered.values, [c[c >= 2].sum() for c in counts])
        np.testing.assert_array_equal(got.largest.values, [c.max() for c in counts])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_step_events_follow_the_rules(v, seed):
    rng = np.random.default_rng(seed)
    prev = rng.integers(0, max(1, v // 2 + 1), size=v)
    cur = np.where(rng.random(v) < 0.5, prev, rng.integers(0, v, size=v))
    assert step_events(prev, cur) == _oracle_events(prev, cur)


# ---------------------------------------------------------------- events on hand-built labels


def test_every_event_kind_on_hand_built_labels():
    labels = np.array(
        [
            [0, 0, 0, 0, 4, 5, 6, 7, 8],  # {0 1 2 3}
            [0, 0, 2, 2, 4, 5, 6, 7, 8],  # fission {0 1 2 3} -> {0 1} {2 3}
            [0, 0, 2, 2, 4, 4, 6, 7, 8],  # formation {4 5}
            [0, 0, 2, 2, 2, 2, 2, 7, 8],  # merger {2 3 4 5 6}, capture 6
            [0, 1, 2, 2, 2, 2, 6, 7, 8],  # evaporation {0 1}, emission 6
            [0, 1, 2, 3, 4, 5, 6, 7, 8],  # evaporation {2 3 4 5}
            [0, 0, 0, 3, 3, 5, 6, 7, 8],  # formation {0 1 2}, formation {3 4}
        ]
    )
    c = xr.Dataset({"cluster": (("step", "token"), labels)}, coords={"step": [100, 200, 300, 400, 500, 600, 700]})
    want = [
        (200, "fission", [0, 1, 2, 3]),
        (300, "formation", [4, 5]),
        (400, "merger", [2, 3, 4, 5, 6]),
        (400, "capture", [6]),
        (500, "evaporation", [0, 1]),
        (500, "emission", [6]),
        (600, "evaporation", [2, 3, 4, 5]),
        (700, "formation", [0, 1, 2]),
        (700, "formation", [3, 4]),
    ]
    for chunks in (None, 1, 2, 3):  # loaded, and dask-chunked with events across chunk borders
        got = dp.cluster_events(c if chunks is None else c.chunk(step=chunks))
        assert list(got.columns) == ["step", "kind", "tokens"]
        assert [(int(s), k, t) for s, k, t in got.itertuples(index=False)] == want
    # emission only when the group goes on, capture only into an existing group
    assert step_events(np.array([0, 0, 0]), np.array([0, 0, 2])) == [("emission", [2])]
    assert step_events(np.array([0, 0, 2]), np.array([0, 0, 0])) == [("capture", [2])]
    assert step_events(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 3])) == [
        ("evaporation", [0, 1]),
        ("evaporation", [2, 3]),
    ]
    empty = dp.cluster_events(c.isel(step=[0]))
    assert len(empty) == 0 and list(empty.columns) == ["step", "kind", "tokens"]


# ---------------------------------------------------------------- planted groups of synth


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    path = tmp / "h.safetensors"
    dp.write_synthetic_history(path, steps=61, vocab=40, dim=16, seed=5)
    store = tmp / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=13)), store)
    return path, store


def test_planted_events_from_history_and_store_any_chunking(planted):
    path, store = planted
    want = dp.synthetic_events(61, 40)
    kinds = set(want["kind"])
    assert kinds == set(events.EVENT_KINDS)  # every kind planted
    planted_steps = want[want["step"] > 1]
    assert list(planted_steps["step"]) == [12, 18, 24, 30, 36, 42]  # 20 % .. 70 % of the run
    results = [dp.clusters(dp.open_history(path, chunks=c)) for c in (1, 7, 61)]
    results.append(dp.clusters(dp.open_distances(store)))
    results.append(dp.clusters(dp.open_history(path, chunks=9), 1e-9))  # the distance path, below any gap
    first = results[0].compute()
    for ds in results:
        got = dp.cluster_events(ds)
        pd.testing.assert_frame_equal(got, want)
        # (from a history, the input checksums come along: a coordinate the store path lacks)
        names = ["cluster", "cluster_size", "n_clusters"]
        xr.testing.assert_equal(
            ds.compute()[names].drop_vars("input_checksum", errors="ignore"),
            first[names].drop_vars("input_checksum", errors="ignore"),
        )
    # bf16: history and store agree (thresholds from the same embedding_rms)
    a = dp.clusters(dp.open_history(path, chunks=5), "bf16").compute()
    b = dp.clusters(dp.open_distances(store), "bf16").compute()
    xr.testing.assert_equal(a.drop_attrs().drop_vars("input_checksum"), b.drop_attrs())
    np.testing.assert_array_equal(a.threshold.values, dp.summarize(dp.open_distances(store)).threshold.values)


def test_synthetic_events_small_shapes_have_no_planting():
    assert list(dp.synthetic_events(19, 40)["step"]) == [1] * len(dp.synthetic_events(19, 40))
    assert len(dp.synthetic_events(1, 40)) == 0 and len(dp.synthetic_events(50, 1)) == 0
    ev = dp.synthetic_events(30, 6)  # no duplicates (6 // 8 == 0), no planting: all evaporate at step 1
    assert [(int(s), k, t) for s, k, t in ev.itertuples(index=False)] == [(1, "evaporation", list(range(6)))]
    with pytest.raises(ValueError, match="steps=0: must be a positive integer"):
        dp.synthetic_events(0, 5)


# ---------------------------------------------------------------- laziness


def test_building_reads_nothing_and_history_path_holds_no_vxv(monkeypatch):
    x = np.random.default_rng(0).standard_normal((9, 60, 5)).astype(np.float32)
    x[:, 7] = x[:, 3]
    h = history_array(x, 4)
    with raise_if_dask_computes():
        built = [dp.clusters(h, t) for t in (0.0, "bf16", 2.5)]
        built.append(dp.clusters(dp.pairwise_distances(h), "bf16"))
        lazy_events = [dp.clusters(h), dp.clusters(h, 3.0, metric="euclidean")]
    assert all(isinstance(ds.cluster.data, da.Array) for ds in built + lazy_events)

    sizes: list[int] = []

    class Record(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            sizes.append(getattr(result, "size", 0))

    with Record():
        dp.clusters(h, 2.5, token_chunk=20).compute()
    assert sizes and max(sizes) < 60 * 60  # no task returns a V x V array
    # threshold 0 computes no distance at all
    monkeypatch.setattr(cluster_tiles, "pairwise_block", _forbidden)
    monkeypatch.setattr(cluster_tiles, "cross_block", _forbidden)
    assert (dp.clusters(h).cluster.values[:, 7] == 3).all()


def _forbidden(*args, **kwargs):
    raise AssertionError("a distance was computed at threshold 0")


# ---------------------------------------------------------------- errors


def test_history_graph_has_a_few_tasks_per_step_chunk_whatever_the_tiles():
    # a task per (tile, step) made the graph, and the scheduler's memory with it, grow by ~70
    # tasks per step at V = 10,000 (peak RSS 310 -> 563 MB from 20 to 320 steps); the tiles
    # of a step chunk are now joined by a few tasks, so the graph grows with the chunks only
    from dask_pdist.graphs.clusters import cluster_arrays

    x = random_history((23, 37, 5))
    counts = {}
    for token_chunk in (37, 6, 2):  # 1, 28 and 190 unordered pairs of tiles
        data = da.from_array(x, chunks=(4, -1, -1))  # 6 step chunks
        thr = da.full(23, 0.5, chunks=4)
        labels = cluster_arrays(data, thr, kind="history", metric_index=1, token_chunk=token_chunk)["cluster"]
        counts[token_chunk] = len(dict(labels.__dask_graph__()))
    assert counts[2] == counts[6] <= counts[37] + 6 * 5  # per step chunk: a few groups and their merge
    want = _oracle_labels(x, np.full(23, 0.5), "chebyshev")  # scipy's components
    assert len(np.unique(want)) < want.size  # some tokens do join
    np.testing.assert_array_equal(labels.compute(), want)


@pytest.mark.parametrize("token_chunk", ["auto", 2])
def test_a_history_without_tokens_has_no_clusters_at_a_positive_threshold(token_chunk):
    h = xr.DataArray(da.zeros((4, 0, 3), chunks=(2, 1, 3), dtype=np.float32), dims=("step", "token", "dim"))
    got = dp.clusters(h, threshold=0.5, token_chunk=token_chunk).compute()
    assert got.cluster.shape == (4, 0)
    np.testing.assert_array_equal(got.n_clusters.values, [0, 0, 0, 0])
    np.testing.assert_array_equal(got.n_clustered.values, [0, 0, 0, 0])


def test_bad_arguments_and_sources(tmp_path):
    x = np.zeros((3, 4, 2), np.float32)
    h = history_array(x, 2)
    for bad, err, match in [
        (-1.0, ValueError, "must be a finite distance >= 0"),
        (float("nan"), ValueError, "must be a finite distance >= 0"),
        ("fp8", ValueError, r"give a distance >= 0 or one of \['bf16'\]"),
        (True, TypeError, "give a distance >= 0"),
    ]:
        with pytest.raises(err, match=match):
            dp.clusters(h, bad)
    with pytest.raises(ValueError, match=r"metric='cosine': choose one of \['euclidean', 'chebyshev'\]"):
        dp.clusters(h, metric="cosine")
    with pytest.raises(TypeError, match="source must be a history DataArray"):
        dp.clusters(x)
    with pytest.raises(ValueError, match="token_chunk=0"):
        dp.clusters(h, 1.0, token_chunk=0)
    ds16 = dp.pairwise_distances(h, dtype="float16")
    with pytest.raises(ValueError, match="chebyshev is stored as float16 but was computed in float32"):
        dp.clusters(ds16)
    with pytest.raises(ValueError, match=r"no 'chebyshev' variable \(it holds \['euclidean'\]\)"):
        dp.clusters(dp.pairwise_distances(h, metrics=("euclidean",)))
    with pytest.raises(ValueError, match="no embedding_rms coordinate for threshold='bf16'"):
        dp.clusters(dp.pairwise_distances(h).drop_vars("embedding_rms"), "bf16")
    with pytest.raises(ValueError, match="no 'cluster' variable"):
        dp.cluster_events(xr.Dataset())
    out = tmp_path / "c.zarr"
    dp.write_clusters(dp.clusters(h), out)
    with pytest.raises(dp.StoreError, match="already exists; pass overwrite=True"):
        dp.write_clusters(dp.clusters(h), out)
    dp.write_clusters(dp.clusters(h, 1.0), out, overwrite=True)
    assert xr.open_zarr(out).attrs["threshold"] == "1.0"
    labelled = h.assign_coords(token=np.array(["a", "b", "c", "d"], dtype=object))
    dp.write_clusters(dp.clusters(labelled), tmp_path / "labelled.zarr")
    assert list(xr.open_zarr(tmp_path / "labelled.zarr").token.values) == ["a", "b", "c", "d"]
    (tmp_path / "other").mkdir()
    with pytest.raises(dp.StoreError, match="is not a dask_pdist clusters store"):
        dp.write_clusters(dp.clusters(h), tmp_path / "other", overwrite=True)


# ---------------------------------------------------------------- the command line


def test_clusters_command_prints_planted_events_and_writes_outputs(planted, tmp_path, capsys):
    path, store = planted
    out, csv, png = tmp_path / "c.zarr", tmp_path / "ev.csv", tmp_path / "c.png"
    args = ["clusters", str(path), "-o", str(out), "--events", str(csv), "--plot", str(png), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for line in [
        "  step 0: groups 1, tokens in groups 40, largest 40",
        "Events: 36 (fission 2, evaporation 1, emission 30, merger 1, formation 1, capture 1)",
        "  12, emission, {6 7 8 9 10} -> 10 alone",
        "  18, formation, 11 12 -> {11 12}",
        "  24, fission, {6 7 8 9} -> {6 7} + {8 9}",
        "  30, capture, {11 12} + 13 -> {11 12 13}",
        "  36, merger, {8 9} + {11 12 13} -> {8 9 11 12 13}",
        "  42, evaporation, {6 7} -> 6 7",
    ]:
        assert line in text, text
    table = pd.read_csv(csv, dtype={"tokens": str})
    want = dp.synthetic_events(61, 40)
    assert list(table.columns) == ["step", "kind", "tokens"]
    assert table["tokens"].tolist() == [" ".join(map(str, t)) for t in want["tokens"]]
    assert table["kind"].tolist() == want["kind"].tolist() and table["step"].tolist() == want["step"].tolist()
    written = xr.open_zarr(out)  # plain xarray opens it
    xr.testing.assert_equal(written.load(), dp.clusters(dp.open_history(path)).compute())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # from the store, at bf16: same result as from the history
    assert main(["clusters", str(store), "--threshold", "bf16", "--no-progress", "-o", str(tmp_path / "s.zarr")]) == 0
    assert main(["clusters", str(path), "--threshold", "bf16", "--no-progress", "-o", str(tmp_path / "h.zarr")]) == 0
    from_history = xr.open_zarr(tmp_path / "h.zarr").load()
    assert "input_checksum" in from_history.coords  # what --append checks
    xr.testing.assert_equal(xr.open_zarr(tmp_path / "s.zarr").load(), from_history.drop_vars("input_checksum"))


def test_clusters_command_errors(planted, tmp_path, capsys):
    path, store = planted
    (tmp_path / "ev.csv").write_text("keep me")
    cases = [
        (["clusters", str(path), "--events", str(tmp_path / "ev.csv")], "ev.csv: already exists; pass --overwrite"),
        (["clusters", str(store), "--key", "x"], "--key names a history tensor, but this is a distance store"),
        (["clusters", str(tmp_path / "nope.safetensors")], "nope.safetensors: history file not found"),
        (["clusters", str(store), "--metric", "euclidean", "--threshold", "0.5"], None),
    ]
    for args, message in cases:
        code = main([*args, "--no-progress"])
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, err
            continue
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert (tmp_path / "ev.csv").read_text() == "keep me"
    with pytest.raises(SystemExit) as info:
        main(["clusters", str(path), "--threshold", "-1"])
    assert info.value.code == 2 and "give 0, bf16 or a finite distance >= 0" in capsys.readouterr().err


def test_interrupted_write_leaves_nothing_at_the_target(tmp_path, monkeypatch):
    # an interrupted write used to leave a store at the target that plain xarray.open_zarr
    # opened without complaint, its unwritten chunks reading cluster 0 (every token in one group)
    x = np.zeros((6, 4, 2), np.float32)
    x[:, 3] = 1.0
    out = tmp_path / "c.zarr"
    calls = {"n": 0}
    real = cluster_blocks.equal_row_labels

    def stop_late(block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(block)

    monkeypatch.setattr(cluster_blocks, "equal_row_labels", stop_late)
    monkeypatch.setattr(cluster_graph, "equal_row_labels", stop_late)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        dp.write_clusters(dp.clusters(history_array(x, 1)), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    dp.write_clusters(dp.clusters(history_array(x, 1)), out)
    assert (xr.open_zarr(out).cluster.values == [0, 0, 0, 3]).all()
    # deferred: nothing at the target until the delayed has run
    later = dp.write_clusters(dp.clusters(history_array(x, 2), 0.5), out, overwrite=True, compute=False)
    assert xr.open_zarr(out).attrs["threshold"] == "0.0"
    later.compute()
    assert xr.open_zarr(out).attrs["threshold"] == "0.5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_clusters_command_refuses_bad_events_and_plot_targets_before_the_work(planted, tmp_path, capsys, monkeypatch):
    # these used to fail only after the whole computation, --events with exit 1 and
    # pandas' message ("Cannot save file into a non-existent directory")
    path, _ = planted
    (tmp_path / "adir").mkdir()
    monkeypatch.setattr(dp, "clusters", lambda *a, **k: pytest.fail("computed before refusing"))
    for flag, target, message in [
        ("--events", tmp_path / "no" / "ev.csv", "ev.csv: parent directory"),
        ("--events", tmp_path / "adir", "adir: is a directory"),
        ("--plot", tmp_path / "no" / "c.png", "c.png: parent directory"),
        ("--plot", tmp_path / "adir", "adir: is a directory"),
    ]:
        code = main(["clusters", str(path), flag, str(target), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_store_errors_name_the_store_not_its_history(planted, tmp_path):
    # they named the history the store was computed from (its "source" attribute)
    path, _ = planted
    h = dp.open_history(path, chunks=13)
    for name, kwargs, match in [
        ("e.zarr", {"metrics": ("euclidean",)}, r"e\.zarr: the distance Dataset has no 'chebyshev'"),
        ("f16.zarr", {"dtype": "float16"}, r"f16\.zarr: chebyshev is stored as float16"),
    ]:
        dp.to_zarr(dp.pairwise_distances(h, **kwargs), tmp_path / name)
        with pytest.raises(ValueError, match=match):
            dp.clusters(dp.open_distances(tmp_path / name))


def test_clusters_of_an_incomplete_store_warn(tmp_path):
    import zarr

    from dask_pdist.store.layout import write_root_attrs

    x = random_history((12, 7, 3), seed=2)
    out = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(xr.DataArray(x, dims=("step", "token", "dim")).chunk({"step": 5})), out)
    zarr.open_array(str(out / "_dask_pdist" / "chunk_done"), mode="r+")[1, 0, 0] = 0  # as a killed job leaves it
    write_root_attrs(out, complete=False)
    ds = dp.open_distances(out, allow_incomplete=True)
    with pytest.warns(UserWarning, match="incomplete: its missing blocks read as NaN"):
        dp.clusters(ds)


def _equal_rows_loop(x):
    # the oracle: for each token, the first earlier token with a finite, numerically equal row
    out = np.tile(np.arange(x.shape[1]), (x.shape[0], 1))
    for s in range(x.shape[0]):
        snap = x[s].astype(np.float64)
        for i in range(x.shape[1]):
            if not np.isfinite(snap[i]).all():
                continue
            for j in range(i):
                if np.isfinite(snap[j]).all() and (snap[j] == snap[i]).all():
                    out[s, i] = out[s, j]
                    break
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_equal_row_labels_by_hash_against_a_loop(dtype, monkeypatch):
    from dask_pdist.kernels import cluster_rows

    rng = np.random.default_rng(11)
    for _ in range(20):
        v, d = int(rng.integers(1, 37)), int(rng.integers(0, 7))
        x = rng.integers(-2, 3, size=(3, v, d)).astype(dtype)
        x = np.where(rng.random(x.shape) < 0.3, -x, x)  # -0.0 next to +0.0
        if v > 5 and d:
            x[1, 2, 0] = x[1, 3, 0] = np.nan
            x[2, 4, -1], x[2, 5, -1] = np.inf, -np.inf
            x[0, 1, 0] = np.finfo(dtype).max  # finite, though its row sum may not be
        np.testing.assert_array_equal(cluster_rows.equal_row_labels(x), _equal_rows_loop(x))
    # every row hashing alike (a collision everywhere): the rows' bytes are sorted instead, still exact
    x = rng.integers(0, 3, size=(2, 29, 5)).astype(dtype)
    monkeypatch.setattr(cluster_rows, "_MULTIPLIERS", {n: np.zeros(n, np.uint64) for n in range(1, 64)})
    np.testing.assert_array_equal(cluster_rows.equal_row_labels(x), _equal_rows_loop(x))
