"""The CUDA engine without a GPU: every CUDA kernel under numba's CUDA simulator, checked
element for element against the CPU engine and scipy (tests/cuda_simulated.py, run in
subprocesses that set NUMBA_ENABLE_CUDASIM=1: the simulator is chosen when numba.cuda is first
imported, and this process must not import it); and the choice of engine: what "auto" picks,
and the one-line error where "cuda" cannot run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from dask_pdist.cli.main import main
from dask_pdist.errors import EngineError
from dask_pdist.kernels import engine as engine_module
from dask_pdist.kernels.engine import resolve_engine

HERE = Path(__file__).parent
SCRIPT = HERE / "cuda_simulated.py"
sys.path.insert(0, str(HERE))
from cuda_simulated import CHECKS  # noqa: E402  (numpy only: the checks import the kernels when run)

KERNEL_CHECKS = [name for name in CHECKS if name != "engines_give_identical_datasets"]


def _simulate(names: list[str]) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *names], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _results(proc: subprocess.Popen) -> dict[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def simulated() -> dict[str, str]:
    # the simulator runs on one core: with cores to spare, two processes share the checks
    # (each process pays numba's and the simulator's start-up, ~6 s: one process on 2 cores)
    n = 2 if (os.cpu_count() or 1) >= 4 else 1
    procs = [_simulate(list(CHECKS)[i::n]) for i in range(n)]
    results: dict[str, str] = {}
    for proc in procs:
        results.update(_results(proc))
    return results


@pytest.mark.parametrize("name", KERNEL_CHECKS)
def test_cuda_kernel_under_the_simulator(simulated, name):
    assert simulated[name] == "ok", simulated[name]


def test_cuda_engine_through_the_graphs_under_the_simulator(simulated):
    # pairwise_distances, neighbours and clusters with engine="cuda" equal engine="cpu" (run
    # with the kernel checks, in the same simulator process)
    assert simulated["engines_give_identical_datasets"] == "ok", simulated["engines_give_identical_datasets"]


def test_the_test_process_never_imports_numba_cuda():
    # the simulator is chosen at numba.cuda's first import: were it imported here, a later
    # subprocess would not care, but this process's own kernels would be the real ones
    assert "NUMBA_ENABLE_CUDASIM" not in os.environ
    assert not any(m.startswith("dask_pdist.kernels.cuda") for m in sys.modules)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(engine_module, "cuda_missing", lambda: "no CUDA GPU is visible to numba-cuda (test)")


def test_auto_falls_back_to_the_cpu_and_cuda_says_what_is_missing(no_gpu):
    assert resolve_engine("auto") == "cpu"
    assert resolve_engine("cpu") == "cpu"
    with pytest.raises(EngineError, match=r"engine='cuda' cannot run here: no CUDA GPU is visible .*engine='cpu'"):
        resolve_engine("cuda")
    with pytest.raises(ValueError, match=r"engine='gpu': choose one of \['cpu', 'cuda', 'auto'\]"):
        resolve_engine("gpu")


def test_the_probe_matches_this_machine():
    missing = engine_module.cuda_missing()
    if missing is None:  # a machine with a GPU and the extra
        assert resolve_engine("auto") == resolve_engine("cuda") == "cuda"
    else:
        assert resolve_engine("auto") == "cpu"
        with pytest.raises(EngineError, match=re.escape(f"engine='cuda' cannot run here: {missing};")):
            resolve_engine("cuda")


def test_missing_extra_is_named_with_the_install_command():
    code = (
        "import sys; sys.modules['numba_cuda'] = None\n"  # as if numba-cuda were not installed
        "from dask_pdist.kernels.engine import resolve_engine\n"
        "assert resolve_engine('auto') == 'cpu'\n"
        "try:\n    resolve_engine('cuda')\nexcept ValueError as exc:\n    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda.', 'dask_pdist.kernels.cuda'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "engine='cuda' cannot run here: the CUDA extra (numba-cuda) is not installed:"
        " pip install \"dask_pdist[cuda]\"; use engine='cpu' or 'auto' (--engine cpu)",
        "[]",  # nothing of CUDA was imported
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["compute", "{h}", "-o", "{tmp}/d.zarr"],
        ["neighbours", "{h}", "-k", "2", "-o", "{tmp}/n.zarr"],
        ["clusters", "{h}", "--threshold", "0.5"],
    ],
)
def test_cli_engine_cuda_without_a_gpu_is_one_line_exit_2(command, no_gpu, tmp_path, capsys):
    import dask_pdist as dp

    h = tmp_path / "h.safetensors"
    dp.write_synthetic_history(h, steps=3, vocab=6, dim=4)
    argv = [a.format(h=h, tmp=tmp_path) for a in command] + ["--engine", "cuda", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dask-pdist: error: engine='cuda' cannot run here: no CUDA GPU"), err
    assert not any(p.name.endswith(".zarr") for p in tmp_path.iterdir()), "an output was created before the error"


def test_cli_engine_cpu_and_auto_compute(tmp_path, capsys):
    import dask_pdist as dp

    h = tmp_path / "h.safetensors"
    dp.write_synthetic_history(h, steps=3, vocab=6, dim=4)
    assert main(["compute", str(h), "-o", str(tmp_path / "cpu.zarr"), "--engine", "cpu", "--no-progress"]) == 0
    assert main(["compute", str(h), "-o", str(tmp_path / "auto.zarr"), "--engine", "auto", "--no-progress"]) == 0
    a = dp.open_distances(tmp_path / "cpu.zarr").load()
    b = dp.open_distances(tmp_path / "auto.zarr").load()
    assert (a.euclidean == b.euclidean).all() and (a.chebyshev == b.chebyshev).all()


# The check that no CUDA kernel fuses a multiply-add needs the CUDA compiler libraries (the
# [cuda] extra, ~600 MB): benchmarks/gpu.py runs it (ptx_check) where they are installed.


def test_auto_keeps_neighbours_on_the_cpu_where_a_gpu_is_visible(monkeypatch):
    # the CUDA neighbours kernel was measured slower than the CPU engine (results.md), so "auto"
    # must not build a GPU graph for neighbours even where numba-cuda sees a device
    import dask_pdist.graphs.knn as knn_graph

    monkeypatch.setattr(engine_module, "cuda_missing", lambda: None)  # as if a GPU were visible
    built = []
    monkeypatch.setattr(knn_graph, "_cuda_graph", lambda *a, **kw: built.append(a) or pytest.fail("GPU graph"))
    x = np.random.default_rng(3).standard_normal((2, 13, 5)).astype(np.float32)
    got = knn_graph.neighbour_array(da.from_array(x, chunks=(1, 13, 5)), 3, engine="auto").compute()
    want = knn_graph.neighbour_array(da.from_array(x, chunks=(1, 13, 5)), 3, engine="cpu").compute()
    assert not built and np.array_equal(got, want)
    with pytest.raises(pytest.fail.Exception, match="GPU graph"):
        knn_graph.neighbour_array(da.from_array(x, chunks=(1, 13, 5)), 3, engine="cuda")
