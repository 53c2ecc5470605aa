"""What every benchmark section shares: running a child process and measuring it (wall time,
its own peak RSS through the spawner, CPU time, page faults), logging, and the machine's
description."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from spawner import Spawner  # benchmarks/spawner.py: children's peak RSS is their own

HERE = Path(__file__).resolve().parent


METHODS_PY = HERE / "methods.py"


@dataclass
class Run:
    wall_s: float
    maxrss_mb: float
    user_s: float
    sys_s: float
    minflt: int


def _median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


_SPAWNER: Spawner | None = None


def _start_spawner() -> None:
    """Start the process that starts every child (spawner.py: peak RSS of each child is its
    own only if the process it is forked from is small); call before this process grows."""
    global _SPAWNER
    if _SPAWNER is None:
        _SPAWNER = Spawner()


def _run_child(cmd: list[str], env: dict[str, str], log: Path) -> Run:
    _start_spawner()
    assert _SPAWNER is not None
    ru = _SPAWNER.run(cmd, env, str(log))
    code = os.waitstatus_to_exitcode(ru["status"])
    if code != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; end of its output:\n{tail}")
    # ru_maxrss is in KiB on Linux
    return Run(ru["wall"], ru["maxrss_kib"] * 1024 / 1e6, ru["utime"], ru["stime"], ru["minflt"])


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _dask_pdist_cmd() -> tuple[list[str], str]:
    script = Path(sys.executable).parent / "dask-pdist"
    if script.exists():
        return [str(script)], "dask-pdist"
    return [sys.executable, "-m", "dask_pdist"], "python -m dask_pdist"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _blas_info(env: dict[str, str]) -> list[str]:
    code = (
        "import json, numpy, scipy.linalg, torch\n"
        "from threadpoolctl import threadpool_info\n"
        "print(json.dumps(threadpool_info()))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.strip().splitlines() or ["?"])[-1]
        return [f"not available ({last}; `pip install threadpoolctl`, part of the `bench` extra)"]
    lines = []
    for lib in json.loads(out):
        lines.append(
            f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('user_api')}, "
            f"{lib.get('num_threads')} threads, arch {lib.get('architecture', '-')}, "
            f"layer {lib.get('threading_layer', '-')}) from {Path(lib.get('filepath', '?')).name}"
        )
    return lines


def _vm_costs(env: dict[str, str], workdir: Path, mib: int, repeats: int) -> list[str]:
    # what this machine charges for a store write's file-system calls and for memory freed a
    # while ago (probes.py vm-costs): both explain why write-heavy timings here swing between runs
    cmd = [sys.executable, str(HERE / "probes.py"), "vm-costs", str(workdir), "--mib", str(mib)]
    res = json.loads(subprocess.run([*cmd, "--repeats", str(repeats)], env=env, capture_output=True, check=True).stdout)
    calls = ", ".join(f"{k} {v['mean']:.0f}" for k, v in res["microseconds per call"].items())
    (warm_k, warm), (cold_k, cold) = res["seconds per GB written into new files"].items()
    (_, t_warm), (_, t_cold) = res["seconds per GB of new memory first touched"].items()
    return [
        f"- file-system calls in the work folder, mean us per call: {calls}",
        f"- {res['mib']} MiB written into new files: {warm:.2f} s per GB {warm_k}, {cold:.2f} s per GB {cold_k}; "
        f"new memory first touched: {t_warm:.2f} s per GB right after, {t_cold:.2f} s per GB {cold_k}"
        ' (docs/measurements.md, "Freed memory turns cold")',
    ]


def _machine(env: dict[str, str], workdir: Path, vm_mib: int = 512, vm_repeats: int = 3) -> list[str]:
    cpuinfo = _read("/proc/cpuinfo")
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in cpuinfo.splitlines()) if k.strip()
    )
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512vl", "avx512_bf16") if f in flags]
    mem = dict((k, v.strip()) for k, _, v in (line.partition(":") for line in _read("/proc/meminfo").splitlines()))
    caches = []
    if shutil.which("lscpu"):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        caches = [
            " ".join(line.split()) for line in lscpu.splitlines() if line.lstrip().startswith(("L1d", "L2", "L3"))
        ]
    return [
        f"- CPU: {fields.get('model name', platform.processor() or '?')} (family {fields.get('cpu family', '?')}, "
        f"model {fields.get('model', '?')}); {os.cpu_count()} logical CPUs, {len(os.sched_getaffinity(0))} usable; "
        f"vector ISA: {', '.join(isa) or '?'}",
        f"- caches: {'; '.join(caches) or 'unknown'}",
        f"- RAM: {mem.get('MemTotal', '?')}; OS: {platform.platform()}",
        f"- Python {platform.python_version()}; numpy {_version('numpy')}, numba {_version('numba')} "
        f"(llvmlite {_version('llvmlite')}), dask {_version('dask')}, xarray {_version('xarray')}, "
        f"zarr {_version('zarr')}, numcodecs {_version('numcodecs')}, safetensors {_version('safetensors')}, "
        f"torch {_version('torch')}, scipy {_version('scipy')}, dask_pdist {_version('dask_pdist')}",
        "- BLAS / thread pools (threadpoolctl, after importing numpy, scipy, torch):",
        *(f"  - {line}" for line in _blas_info(env)),
        "- BLAS settings in the environment: "
        + (
            ", ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith(_BLAS_ENV))
            or "none (each library picks its kernels for this CPU)"
        ),
        *_vm_costs(env, workdir, vm_mib, vm_repeats),
        f"- work files in {workdir} (removed at the end)",
    ]


#: environment variables that choose a BLAS's kernels or threads (OPENBLAS_CORETYPE=Haswell
#: makes OpenBLAS run its AVX2 kernels on an AVX-512 CPU: 1.7x the float32 product's time here)
_BLAS_ENV = ("OPENBLAS_", "GOTO", "MKL_", "OMP_", "BLIS_")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
