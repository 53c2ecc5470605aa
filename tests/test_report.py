"""The report (``dask-pdist report``, ``dp.report``): the page's numbers against scipy, the
frames it chooses, its size, the companions it refuses, its errors; then the page in a real
browser (headless Chromium through Playwright, skipped where no Chromium is installed)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dask_pdist as dp
from conftest import oracle, random_history
from dask_pdist.analyses.report import even_positions, frame_count
from dask_pdist.cli.main import main
from dask_pdist.errors import InputError, StoreError

S, V, D = 7, 13, 5  # steps x tokens x dims: no power of two
_DTYPES = {"f4": np.float32, "f8": np.float64, "i1": np.int8, "i2": np.int16, "i4": np.int32, "u1": np.uint8}
_DTYPES.update({"u2": np.uint16, "u4": np.uint32, "i8": np.int64})


def _decode(node):
    """The page's figure JSON with plotly's base64 arrays ({dtype, bdata, shape}) as numpy."""
    if isinstance(node, dict):
        if "bdata" in node and "dtype" in node:
            arr = np.frombuffer(base64.b64decode(node["bdata"]), dtype=_DTYPES[node["dtype"]])
            if "shape" in node:
                arr = arr.reshape([int(n) for n in str(node["shape"]).split(",")])
            return arr
        return {k: _decode(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v) for v in node]
    return node


def _figure(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-figure">(.*?)</script>', text, re.S)
    assert found, "no figure data block in the page"
    return _decode(json.loads(found.group(1)))


def _trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def _off_diagonal(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(m.shape[0], dtype=bool)]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 7 x 13 x 5 float32 history (with duplicate tokens), its store in step chunks of 3,
    clusters at a positive threshold from the store, and 3 nearest neighbours."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("report")
    x = random_history((S, V, D), seed=11)
    x[:, 5] = x[:, 4]  # a second group of identical tokens
    history = root / "h.safetensors"
    save_file({"embedding_history": x}, str(history))
    store = root / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(history, chunks=3)), store, progress=False)
    clusters = root / "c.zarr"
    dp.write_clusters(dp.clusters(dp.open_distances(store), 0.9, metric="euclidean"), clusters)
    neighbours = root / "n.zarr"
    dp.neighbours_to_zarr(dp.neighbours(dp.open_history(history), k=3), neighbours)
    page = root / "report.html"
    dp.report(store, page, clusters=clusters, neighbours=neighbours)
    return {
        "x": x,
        "root": root,
        "history": history,
        "store": store,
        "clusters": clusters,
        "neighbours": neighbours,
        "page": page,
    }


# -- what the page holds -------------------------------------------------------------------


def test_page_opens_offline_every_script_inline(made):
    text = made["page"].read_text(encoding="utf-8")
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", text, re.I), "a script is fetched"
    assert not re.search(r"<link\b", text, re.I) and "@import" not in text
    assert "Plotly.newPlot" in text and "Plotly.addFrames" in text
    # plotly.js inline: its own code, not a reference to it
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs()[:2000] in text


def test_heatmaps_of_every_frame_are_the_distances_exactly(made):
    fig = _figure(made["page"])
    euclid, cheb = oracle(made["x"])
    assert [f["name"] for f in fig["frames"]] == [str(s) for s in range(S)]  # 7 steps: all of them
    for k, frame in enumerate(fig["frames"]):
        e, c = frame["data"][0]["z"], frame["data"][1]["z"]
        assert e.dtype == np.float32 and e.shape == (V, V)
        np.testing.assert_allclose(e, euclid[k], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(c, cheb[k].astype(np.float32))  # Chebyshev: exact in float32
        assert f"step {k}" in frame["data"][0]["hovertemplate"]
    # before the slider moves: the last step, and the store's token labels on the axes
    np.testing.assert_array_equal(fig["data"][0]["z"], fig["frames"][-1]["data"][0]["z"])
    assert fig["data"][0]["x"] == [str(t) for t in range(V)] == fig["data"][0]["y"]
    assert fig["layout"]["sliders"][0]["active"] == S - 1


def test_histograms_count_the_pairs_of_each_step(made):
    fig = _figure(made["page"])
    for c, dist in enumerate(oracle(made["x"])):
        top = max(_off_diagonal(m).max() for m in dist)
        bar = fig["data"][2 + c]
        width = bar["width"]
        edges = np.append(bar["x"] - width / 2, bar["x"][-1] + width / 2)
        np.testing.assert_allclose(edges[[0, -1]], [0, top], rtol=1e-6, atol=1e-12)
        assert len(bar["x"]) == 50
        for k, frame in enumerate(fig["frames"]):
            pairs = dist[k][np.triu_indices(V, k=1)]
            pairs = np.where(np.isclose(pairs, edges[-1], rtol=1e-6), edges[-1], pairs)  # the largest: last bin
            want, _ = np.histogram(pairs, bins=edges)
            np.testing.assert_array_equal(frame["data"][2 + c]["y"], want)
            assert frame["data"][2 + c]["y"].sum() == V * (V - 1) // 2


def test_min_mean_max_lines_cover_every_step(made):
    fig = _figure(made["page"])
    for metric, dist in zip(("euclidean", "chebyshev"), oracle(made["x"]), strict=True):
        off = np.stack([_off_diagonal(m) for m in dist])
        for stat, want in (("min", off.min(1)), ("mean", off.mean(1)), ("max", off.max(1))):
            line = _trace(fig, f"{metric} {stat}")
            np.testing.assert_array_equal(line["x"], np.arange(S))
            np.testing.assert_allclose(line["y"], want, rtol=1e-6, atol=1e-12)


def test_clusters_events_and_churn_are_those_of_their_stores(made):
    fig = _figure(made["page"])
    c = dp.open_clusters(made["clusters"]).compute()
    # groups recomputed here: components of "euclidean distance <= 0.9", by breadth-first search
    euclid, _ = oracle(made["x"])
    for s in range(S):
        seen, groups = set(), 0
        for t in range(V):
            if t in seen:
                continue
            todo, members = [t], {t}
            while todo:
                u = todo.pop()
                for w in np.flatnonzero(euclid[s][u] <= 0.9):
                    if int(w) not in members:
                        members.add(int(w))
                        todo.append(int(w))
            seen |= members
            groups += len(members) >= 2
        assert c.n_clusters.values[s] == groups
    np.testing.assert_array_equal(_trace(fig, "groups (2+ tokens)")["y"], c.n_clusters.values)
    np.testing.assert_array_equal(_trace(fig, "largest group (right axis)")["y"], c.largest.values)
    events = dp.cluster_events(c)
    shown = [t for t in fig["data"] if t.get("mode") == "markers" and t.get("name") in set(events["kind"])]
    assert sum(int(text.split()[0]) for t in shown for text in t["text"]) == len(events)
    nb = dp.open_neighbours(made["neighbours"]).neighbour.values
    want = [np.nan] + [np.mean([len(set(nb[s - 1, t]) - set(nb[s, t])) / 3 for t in range(V)]) for s in range(1, S)]
    line = next(t for t in fig["data"] if str(t.get("name", "")).startswith("mean churn"))
    np.testing.assert_allclose(line["y"], want, rtol=1e-6)


def test_frames_of_a_long_history_are_chosen_evenly(write_safetensors, tmp_path):
    x = random_history((61, 6, 3), seed=2)
    history = write_safetensors("long.safetensors", {"embedding_history": x})
    store = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(history, steps="100:710:10", chunks=8)), store, progress=False)
    page = dp.report(store, tmp_path / "r.html", max_frames=7)
    fig = _figure(page)
    labels = 100 + 10 * np.arange(61)
    chosen = [int(f["name"]) for f in fig["frames"]]
    assert chosen == [int(labels[round(i * 60 / 6)]) for i in range(7)] and len(set(np.diff(chosen))) == 1
    euclid, _ = oracle(x)
    for frame, step in zip(fig["frames"], chosen, strict=True):
        np.testing.assert_allclose(frame["data"][0]["z"], euclid[(step - 100) // 10], rtol=1e-6, atol=0)
    assert "7 of 61 steps, chosen evenly" in page.read_text()
    # a byte budget: as many frames as their float32 values fit in
    fig = _figure(dp.report(store, tmp_path / "r.html", max_bytes=2 * 36 * 4 * 5 + 7, overwrite=True))
    assert len(fig["frames"]) == 5
    # a budget below one frame: the error names the store it is about
    with pytest.raises(InputError, match=r"d.zarr: 6 tokens: one step's 2 V x V matrices"):
        dp.report(store, tmp_path / "r.html", max_bytes=100, overwrite=True)


def test_one_metric_a_float64_store_and_a_store_without_either_metric(made, tmp_path):
    h = dp.open_history(made["history"], chunks=4)
    euclid, cheb = oracle(made["x"])
    dp.to_zarr(dp.pairwise_distances(h, metrics=("chebyshev",)), tmp_path / "c.zarr", progress=False)
    fig = _figure(dp.report(tmp_path / "c.zarr", tmp_path / "c.html"))
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 1 and "euclidean mean" not in [t.get("name") for t in fig["data"]]
    np.testing.assert_array_equal(fig["frames"][2]["data"][0]["z"], cheb[2].astype(np.float32))
    assert "the stored float32 values, exactly" in (tmp_path / "c.html").read_text()
    dp.to_zarr(dp.pairwise_distances(h, dtype="float64"), tmp_path / "d64.zarr", progress=False)
    page = dp.report(tmp_path / "d64.zarr", tmp_path / "d64.html")
    np.testing.assert_allclose(_figure(page)["frames"][4]["data"][0]["z"], euclid[4], rtol=1e-6, atol=0)
    assert "the stored float64 values rounded to float32" in page.read_text()
    dp.to_zarr(dp.pairwise_distances(h, metrics=("manhattan",)), tmp_path / "m.zarr", progress=False)
    with pytest.raises(InputError, match=r"m.zarr: holds manhattan; the report shows euclidean and chebyshev"):
        dp.report(tmp_path / "m.zarr", tmp_path / "m.html")


@given(st.integers(1, 400), st.integers(1, 400))
def test_even_positions_are_distinct_evenly_spaced_and_span_the_steps(n_steps, n):
    got = even_positions(np.arange(n_steps), n)
    assert len(got) == min(n, n_steps) and len(set(got.tolist())) == len(got)
    assert got[-1] == n_steps - 1 and (len(got) == 1 or got[0] == 0)
    if len(got) > 2:
        gaps = np.diff(got)
        assert gaps.max() - gaps.min() <= 1


def test_frame_budget_and_a_vocabulary_too_large_for_heatmaps():
    assert frame_count(5001, 128, 2) == 9 * 2**20 // (2 * 128 * 128 * 4)
    assert frame_count(5001, 20, 2) == 300 and frame_count(11, 20, 2) == 11
    with pytest.raises(InputError, match=r"2,048 tokens: .* MiB.*--token-ids"):
        frame_count(10, 2048, 2)


def test_page_size_is_plotly_js_plus_the_frames_in_base64(made):
    from plotly.offline import get_plotlyjs

    text = made["page"].read_text(encoding="utf-8")
    heatmaps = re.findall(r'"dtype":"f4","bdata":"([^"]*)","shape":"13, ?13"', text)
    assert len(heatmaps) == 2 * (S + 1)  # each frame, and the first drawing
    assert all(len(b) == 4 * -(-V * V * 4 // 3) for b in heatmaps)  # plain base64: nothing escaped
    assert len(text) - len(get_plotlyjs()) < sum(map(len, heatmaps)) + 200_000


@pytest.mark.slow
def test_a_notebook_size_store_gives_a_page_under_20_mb(tmp_path):
    history = dp.write_synthetic_history(tmp_path / "h.safetensors", steps=5001, vocab=128, dim=64)
    store = tmp_path / "d.zarr"
    dp.to_zarr(dp.pairwise_distances(dp.open_history(history)), store, progress=False)
    page = dp.report(store, tmp_path / "r.html")
    size = page.stat().st_size
    assert size < 20e6, f"{size / 1e6:.1f} MB"
    assert len(_figure(page)["frames"]) == frame_count(5001, 128, 2)


# -- incomplete stores, publishing, errors ---------------------------------------------------


def _interrupt(store: Path, blocks: list[int]) -> None:
    # as a job killed before these step blocks were marked done
    for b in blocks:
        (store / "_dask_pdist" / "chunk_done" / "c" / str(b) / "0" / "0").unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))


def test_an_incomplete_store_is_reported_on_its_written_steps(made, tmp_path):
    store = tmp_path / "d.zarr"
    shutil.copytree(made["store"], store)
    _interrupt(store, [1])  # steps 3..5
    with pytest.raises(StoreError, match="incomplete"):
        dp.report(store, tmp_path / "r.html")
    page = dp.report(store, tmp_path / "r.html", allow_incomplete=True)
    fig = _figure(page)
    assert [f["name"] for f in fig["frames"]] == ["0", "1", "2", "6"]
    assert "INCOMPLETE: steps written 0..2, 6 (4 of 7)" in page.read_text()
    line = _trace(fig, "euclidean mean")["y"]
    assert np.isnan(line[3:6]).all() and np.isfinite(line[[0, 1, 2, 6]]).all()


def test_the_page_is_published_whole_and_replaced_only_with_overwrite(made, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        dp.report(made["store"], out)
    assert out.read_text() == "old"
    dp.report(made["store"], out, overwrite=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no hidden file, no lock left


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("dask-pdist: error: "), err
    return err


def test_cli_writes_the_page(made, tmp_path, capsys):
    out = tmp_path / "r.html"
    argv = ["report", str(made["store"]), "-o", str(out), "--clusters", str(made["clusters"]), "--no-progress"]
    assert main(argv) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    np.testing.assert_array_equal(_figure(out)["frames"][3]["data"][1]["z"], oracle(made["x"])[1][3].astype(np.float32))


def test_cli_refuses_what_is_not_a_distance_store(made, tmp_path, capsys):
    out = str(tmp_path / "r.html")
    assert "not a dask_pdist store" in _cli_error(capsys, ["report", str(made["clusters"]), "-o", out])
    assert "store not found" in _cli_error(capsys, ["report", str(tmp_path / "nothing.zarr"), "-o", out])
    err = _cli_error(capsys, ["report", str(made["store"]), "-o", out, "--clusters", str(made["store"])])
    assert "not a clusters store" in err
    err = _cli_error(capsys, ["report", str(made["store"]), "-o", out, "--neighbours", str(made["clusters"])])
    assert "not a neighbours store" in err
    assert not os.path.exists(out)


def test_cli_refuses_an_unwritable_output(made, tmp_path, capsys):
    store = str(made["store"])
    err = _cli_error(capsys, ["report", store, "-o", str(tmp_path / "no" / "r.html")])
    assert "parent directory" in err and "does not exist" in err
    (tmp_path / "a.html").mkdir()
    assert "is a directory" in _cli_error(capsys, ["report", store, "-o", str(tmp_path / "a.html")])
    (tmp_path / "b.html").write_text("x")
    assert "--overwrite" in _cli_error(capsys, ["report", store, "-o", str(tmp_path / "b.html")])
    assert "object storage" in _cli_error(capsys, ["report", store, "-o", "s3://bucket/r.html"])


def _other_history(root: Path, *, seed: int, shape=(S, V, D), steps=None) -> Path:
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    history = root / "h.safetensors"  # the same file name: only the values tell them apart
    save_file({"embedding_history": random_history(shape, seed=seed)}, str(history))
    return history


def test_cli_refuses_companions_of_another_history(made, tmp_path, capsys):
    store, out = str(made["store"]), str(tmp_path / "r.html")
    other = _other_history(tmp_path / "other", seed=99)  # same shape, same name, other values
    c_other, n_other = tmp_path / "c.zarr", tmp_path / "n.zarr"
    dp.write_clusters(dp.clusters(dp.open_history(other), 0.9, metric="euclidean"), c_other)
    dp.neighbours_to_zarr(dp.neighbours(dp.open_history(other), k=3), n_other)
    for role, path in (("clusters", c_other), ("neighbours", n_other)):  # their recorded input checksums
        err = _cli_error(capsys, ["report", store, "-o", out, f"--{role}", str(path)])
        assert f"a {role} store of another history: its input at step 0 is not the one" in err
    # without checksums (made from a distance store, or before they were recorded): the values
    c_bare, n_bare = tmp_path / "c_bare.zarr", tmp_path / "n_bare.zarr"
    bare = dp.clusters(dp.open_history(other), 0.9, metric="euclidean").drop_vars("input_checksum")
    dp.write_clusters(bare, c_bare)
    dp.neighbours_to_zarr(dp.neighbours(dp.open_history(other), k=3).drop_vars("input_checksum"), n_bare)
    err = _cli_error(capsys, ["report", store, "-o", out, "--clusters", str(c_bare)])
    assert "another history: at step 6 its groups are not those" in err
    err = _cli_error(capsys, ["report", store, "-o", out, "--neighbours", str(n_bare)])
    assert "another history: at step 6 its euclidean distances are not those" in err
    # other tokens, other steps, another file
    fewer = _other_history(tmp_path / "fewer", seed=1, shape=(S, V - 2, D))
    dp.neighbours_to_zarr(dp.neighbours(dp.open_history(fewer), k=3), tmp_path / "n11.zarr")
    err = _cli_error(capsys, ["report", store, "-o", out, "--neighbours", str(tmp_path / "n11.zarr")])
    assert "another history: tokens 11 (0, 1, 2, 3, ...), but" in err and "has 13" in err
    shifted = dp.open_history(made["history"], steps="1:8:1")
    dp.write_clusters(dp.clusters(shifted, 0.9, metric="euclidean"), tmp_path / "c_shifted.zarr")
    err = _cli_error(capsys, ["report", store, "-o", out, "--clusters", str(tmp_path / "c_shifted.zarr")])
    assert "another history: steps 7 (1, 2, 3, 4, ...)" in err
    renamed = tmp_path / "renamed.safetensors"
    shutil.copy(made["history"], renamed)
    dp.write_clusters(dp.clusters(dp.open_history(renamed), 0.9, metric="euclidean"), tmp_path / "c_renamed.zarr")
    err = _cli_error(capsys, ["report", store, "-o", out, "--clusters", str(tmp_path / "c_renamed.zarr")])
    assert "renamed.safetensors, but" in err and "h.safetensors" in err
    assert not os.path.exists(out)


def test_companions_of_the_same_history_from_its_file_are_accepted(made, tmp_path):
    # clusters from the history (not the store) and neighbours: same values, so the page is made
    c = tmp_path / "c.zarr"
    dp.write_clusters(dp.clusters(dp.open_history(made["history"]), 0.9, metric="euclidean"), c)
    page = dp.report(made["store"], tmp_path / "r.html", clusters=c, neighbours=made["neighbours"])
    assert "Clusters: euclidean distance &lt;= 0.9." in page.read_text()


def test_without_plotly_the_error_says_how_to_install_it(made, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"pip install plotly"):
        dp.report(made["store"], tmp_path / "r.html")
    assert main(["report", str(made["store"]), "-o", str(tmp_path / "r.html")]) == 1
    assert "pip install plotly" in capsys.readouterr().err


# -- in a real browser -------------------------------------------------------------------------

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright, the system's own executable (Playwright's
    browser download is not used); skipped, with the reason, where there is none."""
    executable = next((shutil.which(name) for name in _BROWSERS if shutil.which(name)), None)
    if executable is None:
        pytest.skip(f"no Chromium executable on PATH (looked for {', '.join(_BROWSERS)}); apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        yield chrome
        chrome.close()


@pytest.fixture
def opened(browser, made):
    page = browser.new_page(viewport={"width": 1300, "height": 1300})
    problems, requests = [], []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(made["page"].as_uri())
    page.wait_for_selector(".main-svg .heatmaplayer image", timeout=15_000)
    yield page, problems, requests
    page.close()


_Z = "(t) => Array.from(document.getElementById('report')._fullData[t].z, (row) => Array.from(row))"


def test_browser_draws_the_page_offline_without_errors(opened, made):
    page, problems, requests = opened
    assert page.locator(".main-svg").count() >= 1
    assert page.locator(".heatmaplayer image").count() == 2  # both metrics' heatmaps are drawn
    assert page.locator(".slider-container").count() == 1
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
    # the drawn data is the store's last step
    np.testing.assert_array_equal(
        np.array(page.evaluate(_Z, 1), dtype=np.float32), oracle(made["x"])[1][-1].astype(np.float32)
    )
    assert problems == []


def test_browser_slider_moves_the_heatmap_to_the_chosen_step(opened, made):
    page, problems, _ = opened
    heat = page.locator(".heatmaplayer image").first
    before = heat.screenshot()
    rail = page.locator(".slider-rail-rect").bounding_box()
    page.mouse.click(rail["x"] + 2, rail["y"] + rail["height"] / 2)  # the rail's left end: the first step
    page.wait_for_function("() => document.getElementById('report').layout.sliders[0].active === 0", timeout=5000)
    page.wait_for_timeout(100)
    euclid, cheb = oracle(made["x"])
    np.testing.assert_allclose(np.array(page.evaluate(_Z, 0)), euclid[0], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.array(page.evaluate(_Z, 1), dtype=np.float32), cheb[0].astype(np.float32))
    assert heat.screenshot() != before  # the picture changed, not only the data
    # hover names the tokens and the step
    box = heat.bounding_box()
    page.mouse.move(box["x"] + box["width"] * (3.5 / V), box["y"] + box["height"] * (7.5 / V))
    page.wait_for_selector(".hoverlayer text", timeout=5000)
    text = " ".join(t.text_content() for t in page.locator(".hoverlayer text").all())
    assert "token_i 7" in text and "token_j 3" in text and "step 0" in text
    assert f"{euclid[0][7, 3]:.7g}"[:5] in text
    assert problems == []


def test_a_store_being_written_is_reported_and_exported_as_far_as_it_is_whole(tmp_path):
    # a live writer's lock (this process), two of three step-blocks written
    import dask

    from dask_pdist import open_distances, open_history, pairwise_distances, report, to_safetensors, to_zarr
    from dask_pdist.io.synthetic import write_synthetic_history

    src = tmp_path / "h.safetensors"
    write_synthetic_history(src, steps=9, vocab=11, dim=5, seed=2)
    out = tmp_path / "d.zarr"
    job = to_zarr(pairwise_distances(open_history(src, chunks=3)), out, compute=False)
    graph = dict(job.__dask_graph__())
    blocks = sorted(dask.core.get_dependencies(graph, job.key))
    dask.get(graph, blocks[:2])
    ds = open_distances(out)
    assert ds.attrs["being_written"].startswith("6 of 9 steps whole so far")
    to_safetensors(ds, tmp_path / "x.safetensors")  # the 6 whole steps, and the file says so
    from safetensors import safe_open

    with safe_open(str(tmp_path / "x.safetensors"), "np") as f:
        assert f.metadata()["being_written"].startswith("6 of 9 steps whole so far")
        assert f.get_tensor("euclidean_distances").shape == (6, 11, 11)
        np.testing.assert_array_equal(f.get_tensor("euclidean_distances"), ds.euclidean.values)
    report(out, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    i = page.index("store being written")
    assert page[i : i + 60].startswith("store being written: 6 of 9 steps whole so far"), page[i - 200 : i + 200]
