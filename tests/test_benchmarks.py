"""The benchmark script runs end to end (``--quick``: tiny sizes, one run each) and writes its
report and plot where asked. No timing is asserted: this machine's load is not the code's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.mark.slow
def test_quick_run_writes_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    sys.path.insert(0, str(RUN_PY.parent))
    try:
        from run import KEPT_MARKER
    finally:
        sys.path.remove(str(RUN_PY.parent))
    out.mkdir()
    kept = f"{KEPT_MARKER}\n\n## Notes by hand\n\nkept as they are\n"
    (out / "results.md").write_text(f"# old generated part\n\nMISS  an old row, replaced\n\n{kept}")
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--quick", "--output-dir", str(out), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert report in proc.stdout  # the printed table is the file's text
    for heading in (
        "## Targets",
        "## Each part against its floor",
        "### `compute` against its parts",
        "### Start-up: `dask-pdist compute` to its first kernel, ready",
        "### Bytes written by `compute`",
        "### Read paths",
        "## End to end",
        "### Kernel alone",
        "## Machine",
        "## Neighbours",
    ):
        assert heading in report
    assert report.endswith(kept) and "an old row" not in report  # the notes below the marker stay
    targets = [line for line in report.splitlines() if line.startswith(("PASS  ", "MISS  "))]
    # 9 end to end, 3 clusters, 4 neighbours, 7 parts (compute vs parts at two sizes, first
    # kernel call, 4 read paths)
    assert len(targets) == 23, targets
    assert sum("compute / (start-up + kernel + I/O floor)" in line for line in targets) == 2, targets
    assert "### Clusters: " in report
    assert sum(" clusters " in line for line in targets) == 3, targets
    assert "Notebook loop mode per run:" in report
    assert "| fraction of write bandwidth |" in report and "Write bandwidth (`methods.py kernel" in report
    # the machine's file-system and cold-memory costs, under "Machine" (probes.py vm-costs)
    assert "- file-system calls in the work folder, mean us per call: create a new file " in report
    assert " s per GB 3 s after freeing it; new memory first touched: " in report
    png = (out / "wall_time_vs_steps.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert list(work.iterdir()) == []  # histories and outputs removed


def test_neighbours_section_is_replaced_in_place() -> None:
    sys.path.insert(0, str(RUN_PY.parent))
    try:
        from neighbours_rows import SECTION_BEGIN, SECTION_END, replace_section
    finally:
        sys.path.remove(str(RUN_PY.parent))
    old = f"# results\n\nkept\n\n{SECTION_BEGIN}\nold rows\n{SECTION_END}\n\ntail kept\n"
    new = replace_section(old, [SECTION_BEGIN, "new rows", SECTION_END, ""])
    assert new == f"# results\n\nkept\n\n{SECTION_BEGIN}\nnew rows\n{SECTION_END}\n\ntail kept\n"
    assert replace_section("# results\n", [SECTION_BEGIN, "rows", SECTION_END, ""]).endswith(f"rows\n{SECTION_END}\n")


@pytest.mark.slow
def test_sections_subset_and_bad_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(RUN_PY), "--quick", "--sections", "reads", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert "### Read paths" in report and "## End to end" not in report and "--sections reads" in report
    bad = subprocess.run([sys.executable, str(RUN_PY), "--sections", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "choose from startup,kernel,e2e,reads" in bad.stderr


GPU_PY = RUN_PY.parent / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_quick_runs_its_cpu_fallback(tmp_path: Path) -> None:
    # no GPU needed: without one both sides run on the CPU, and the report says so
    proc = subprocess.run(
        [sys.executable, str(GPU_PY), "--quick", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(rows) == 6, proc.stdout  # end to end, 3 neighbours, 2 clusters
    assert all("PARTITIONS DIFFER" not in row for row in rows), proc.stdout
    assert ("These are not GPU results" in proc.stdout) == ("engine=cuda" not in proc.stdout.splitlines()[0])
    assert list(tmp_path.iterdir()) == []


def test_gpu_benchmark_refuses_an_unknown_section() -> None:
    proc = subprocess.run([sys.executable, str(GPU_PY), "--sections", "e2e,kernels"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--sections e2e,kernels: choose from e2e,knn,clusters" in proc.stderr


def _cost_model():  # noqa: ANN202 - the script as a module
    import importlib.util

    spec = importlib.util.spec_from_file_location("cost_model", RUN_PY.parent / "cost_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cost_model_fit_recovers_a_known_model_and_rereads_its_table(tmp_path: Path, capsys) -> None:
    # points made by a known model (V^2 D and bytes terms, 3 % noise) are fitted back within
    # the noise; the printed table reads back as the same points (--points); no timing involved
    cm = _cost_model()
    rng = np.random.default_rng(3)
    truth = np.array([1.2e-10, 1.3e-9])
    points = []
    for v in (200, 700, 1900):
        for d in (62, 250, 766):
            b = 8.0 * v * v * 0.7
            cpu = (truth[0] * v * v * d + truth[1] * b) * (1 + 0.03 * rng.standard_normal())
            points.append({"op": "compute", "V": v, "D": d, "S": 3, "cpu": cpu, "wall": cpu, "bytes": b})
    coef = cm.fit(points, "compute")
    np.testing.assert_allclose(coef, truth, rtol=0.1)
    assert cm.predict("compute", coef, 1000, 512, 5.6e6) == pytest.approx(
        1.2e-10 * 1000**2 * 512 + 1.3e-9 * 5.6e6, rel=0.1
    )
    check = {"op": "compute", "V": 128, "D": 64, "S": 400, "cpu": 3e-4, "wall": 3e-4, "bytes": 88_000.0}
    table = tmp_path / "run.txt"
    table.write_text(
        "| operation | V | D | S, 2S | CPU ms / step | wall ms / step | bytes / step |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r['op']} | {r['V']:,} | {r['D']} | {r['S']}, {2 * r['S']} | {r['cpu'] * 1e3:.6f} | "
            f"{r['wall'] * 1e3:.6f} | {r['bytes']:,.0f} |"
            for r in [*points, check]
        )
    )
    grid, checks = cm.read_points(table)
    assert [(r["V"], r["D"]) for r in grid] == [(p["V"], p["D"]) for p in points]
    assert [(r["V"], r["D"], r["S"]) for r in checks] == [(128, 64, 400)]
    np.testing.assert_allclose([r["cpu"] for r in grid], [p["cpu"] for p in points], rtol=1e-4)


def _kernel_result(steps: int, bandwidth: dict | None) -> dict:
    # what `methods.py kernel` prints, with round numbers
    return {
        "steps": steps,
        "vocab": 8,
        "dim": 4,
        "pair_dims": 8_000_000_000,
        "times": {"1": [2.0, 1.0, 3.0], "2": [1.0]},
        "peak_block": [32, 256],
        "peak_pair_dims_per_thread": 10_000_000_000,
        "peak_times": {"1": [0.5], "2": [1.0]},
        "in_bytes": 1,
        "out_bytes": 4_000_000_000,
        "import_s": 0.01,
        "first_call_s": 0.2,
        "peak_compile_s": 0.3,
        "bandwidth": bandwidth,
    }


def test_kernel_table_arithmetic() -> None:
    sys.path.insert(0, str(RUN_PY.parent))
    try:
        from e2e_rows import _fmt_kernel
    finally:
        sys.path.remove(str(RUN_PY.parent))
    bandwidth = {"fill": {"1": [10.0, 30.0, 10.0], "2": [20.0]}, "copy": {"1": [15.0], "2": [30.0]}}
    text = "\n".join(_fmt_kernel([_kernel_result(10, bandwidth), _kernel_result(20, None)]))
    rows = [line for line in text.splitlines() if line.startswith("| 10 x ") or line.startswith("| 20 x ")]
    # 1 thread: median 2 s -> 4 G pair-dims/s against 1e10 / 0.5 s = 20 (0.20); 2 GB/s stored of 10 (0.20)
    # 2 threads: 1 s -> 8 against 2e10 / 1 s = 20 (0.40); 4 GB/s stored of 20 (0.20)
    assert rows == [
        "| 10 x 8 x 4 | 1 | 2.000 | 4.00 | 20.00 | 0.20 | 2.00 | 0.20 |",
        "| 10 x 8 x 4 | 2 | 1.000 | 8.00 | 20.00 | 0.40 | 4.00 | 0.20 |",
        "| 20 x 8 x 4 | 1 | 2.000 | 4.00 | 20.00 | 0.20 | 2.00 | 0.20 |",
        "| 20 x 8 x 4 | 2 | 1.000 | 8.00 | 20.00 | 0.40 | 4.00 | 0.20 |",
    ]
    assert "writing 10.0 GB/s on 1 thread, 20.0 on 2; copying (read + write) 15.0 and 30.0 GB/s" in text
    assert "at 0.20-0.20 of the write bandwidth and computes at 0.20-0.40 of the compute bound" in text
    alone = "\n".join(_fmt_kernel([_kernel_result(10, None)]))  # no bandwidth measured in this run
    assert "| 10 x 8 x 4 | 1 | 2.000 | 4.00 | 20.00 | 0.20 | 2.00 | not measured |" in alone
    assert "Write bandwidth" not in alone
