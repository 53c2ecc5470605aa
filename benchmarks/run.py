"""Benchmark suite: dask-pdist against the notebook loop, torch.cdist and scipy, with targets.

One command regenerates ``benchmarks/results.md`` (table, targets, machine) and
``benchmarks/wall_time_vs_steps.png``, and prints the same table:

    python benchmarks/run.py                 # full run, about 15 minutes on 2 cores
    python benchmarks/run.py --quick --output-dir /tmp/x   # smoke run of the script itself

Every method is a whole process, timed from start to exit, reading the same bf16 safetensors
history (written by ``dask-pdist synth``) and writing both results to disk. Methods alternate
(A B C A B C ...) within one run; each row reports the median. Peak RSS, CPU time and page
faults of each child come from ``os.wait4``. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import parts  # benchmarks/parts.py: each part against its floor
from spawner import Spawner  # benchmarks/spawner.py: children's peak RSS is their own

HERE = Path(__file__).resolve().parent
METHODS_PY = HERE / "methods.py"
RESULTS_MD = "results.md"
PLOT_PNG = "wall_time_vs_steps.png"

# The notebook's loop runs in one of two allocator modes (MEASUREMENTS.md): a slow one where
# each snapshot's ~4 MB temporaries are returned to the OS and faulted in again (~700 minor
# faults per snapshot at V=128, D=64, seconds of system time) and a fast one (~40 per snapshot).
NOTEBOOK_SLOW_FAULTS_PER_STEP = 300

TARGETS = {
    "small_vs_notebook": 0.10,
    "large_vs_notebook": 0.07,
    "wide_vs_torch": 0.20,
    "rss_growth": 1.10,
    "rss_mb": 512.0,
    "help_s": 0.5,
    "compressor_cost": 0.15,
}
# issue 11: `dask-pdist clusters` against `dask-pdist compute` on the same history
CLUSTER_TARGETS = {"clusters-0-history": 0.5, "clusters-bf16-history": 1.0, "clusters-0-store": 0.5}
CLUSTERS_MD = "clusters_results.md"


@dataclass
class Run:
    wall_s: float
    maxrss_mb: float
    user_s: float
    sys_s: float
    minflt: int


@dataclass
class Method:
    key: str
    label: str
    argv: Callable[[str, str], list[str]]
    suffix: str


@dataclass
class Case:
    role: str  # "small", "large", "wide": what the targets refer to, whatever the sizes
    steps: int
    vocab: int
    dim: int
    methods: list[str]
    baseline: str
    reduced: tuple[str, ...] = ()  # methods run only --slow-repeats times here
    runs: dict[str, list[Run]] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    io_floor: bool = False  # also time the I/O floor in each round (writing the default store's bytes)
    floor_s: list[float] = field(default_factory=list)
    sizes: dict[str, dict] = field(default_factory=dict)  # store bytes per method (first round)

    @property
    def name(self) -> str:
        return f"{self.steps} x {self.vocab} x {self.dim}"


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


def _methods(dask_cmd: list[str], default_compressor: str) -> dict[str, Method]:
    py = [sys.executable, str(METHODS_PY)]
    return {
        "dask-pdist": Method(
            "dask-pdist",
            f"dask-pdist compute (default: {default_compressor})",
            lambda h, o: dask_cmd + ["compute", h, "-o", o, "--no-progress"],
            ".zarr",
        ),
        "dask-pdist-none": Method(
            "dask-pdist-none",
            "dask-pdist compute --compressor none",
            lambda h, o: dask_cmd + ["compute", h, "-o", o, "--no-progress", "--compressor", "none"],
            ".zarr",
        ),
        "notebook": Method(
            "notebook", "notebook torch loop + save_file", lambda h, o: py + ["notebook", h, o], ".safetensors"
        ),
        "torch-cdist": Method(
            "torch-cdist", "torch.cdist batched + save_file", lambda h, o: py + ["torch-cdist", h, o], ".safetensors"
        ),
        "scipy-cdist": Method(
            "scipy-cdist", "scipy cdist loop + save_file", lambda h, o: py + ["scipy-cdist", h, o], ".safetensors"
        ),
    }


def _cases(quick: bool) -> list[Case]:
    all5 = ["dask-pdist", "dask-pdist-none", "notebook", "torch-cdist", "scipy-cdist"]
    # the uncompressed store runs --slow-repeats times at the large sizes (it only checks the
    # compressor's cost), which pays for the per-part rows' time in the full run
    baselines = ("dask-pdist-none", "notebook", "torch-cdist", "scipy-cdist")
    wide = ["dask-pdist", "dask-pdist-none", "torch-cdist"]
    if quick:
        return [
            Case("small", 32, 128, 64, all5, "notebook", io_floor=True),
            Case("large", 64, 128, 64, all5, "notebook", baselines),
            Case("wide", 2, 256, 64, wide, "torch-cdist", ("dask-pdist-none", "torch-cdist")),
        ]
    return [
        Case("small", 5001, 128, 64, all5, "notebook", io_floor=True),
        Case("large", 20004, 128, 64, all5, "notebook", baselines),
        Case("wide", 200, 1024, 256, wide, "torch-cdist", ("dask-pdist-none", "torch-cdist")),
    ]


# ---------------------------------------------------------------- machine description


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


def _machine(env: dict[str, str], workdir: Path) -> list[str]:
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
        f"- work files in {workdir} (removed at the end)",
    ]


# ---------------------------------------------------------------- measurements


def _bench_case(
    case: Case,
    methods: dict[str, Method],
    args: argparse.Namespace,
    env: dict[str, str],
    work: Path,
    warm_all: bool,
) -> None:
    from dask_pdist.io.synthetic import write_synthetic_history

    hist = work / f"history_{case.steps}x{case.vocab}x{case.dim}.safetensors"
    _log(f"[{case.name}] synth")
    # the function behind `dask-pdist synth`, in this process: same bytes, without a start-up
    write_synthetic_history(hist, steps=case.steps, vocab=case.vocab, dim=case.dim, overwrite=True)
    # The numba cache is already filled (see _main) and synth left the history in the page cache.
    # In the first case one untimed run of every method also brings torch's and scipy's
    # libraries into the page cache, so no timed round starts cold.
    for key in case.methods if warm_all else ():
        out = work / f"warm{methods[key].suffix}"
        case.warmup[key] = _run_child(methods[key].argv(str(hist), str(out)), env, work / "warm.log").wall_s
        _remove(out)
    case.runs = {k: [] for k in case.methods}
    for r in range(args.repeats):
        for key in case.methods:
            if key in case.reduced and r >= args.slow_repeats:
                continue
            m = methods[key]
            out = work / f"out{m.suffix}"
            os.sync()  # flush the previous run's dirty pages outside the timed region
            run = _run_child(m.argv(str(hist), str(out)), env, work / f"{key}.log")
            if key.startswith("dask-pdist") and key not in case.sizes:
                case.sizes[key] = parts.store_bytes(out)
            _remove(out)
            case.runs[key].append(run)
            _log(f"[{case.name}] round {r + 1}: {key:<16} {run.wall_s:7.2f} s  {run.maxrss_mb:7.0f} MB")
        if case.io_floor and "dask-pdist" in case.sizes:
            os.sync()
            size = case.sizes["dask-pdist"]
            chunk_bytes = sum(size["variables"].get(v, 0) for v in ("euclidean", "chebyshev"))
            case.floor_s.append(parts.io_floor(work, chunk_bytes, size["chunk_files"], env))
            _log(f"[{case.name}] round {r + 1}: {'I/O floor':<16} {case.floor_s[-1]:7.2f} s")
    _remove(hist)


def _bench_help(dask_cmd: list[str], env: dict[str, str], repeats: int, work: Path) -> dict[str, list[float]]:
    cmds = {"dask-pdist --help": dask_cmd + ["--help"], "python -c pass": [sys.executable, "-c", "pass"]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for k, cmd in cmds.items():
            times[k].append(_run_child(cmd, env, work / "help.log").wall_s)
    return times


def _bench_kernel(env: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    steps = 64 if args.quick else 5001
    cmd = [sys.executable, str(METHODS_PY), "kernel", "--steps", str(steps), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _bench_clusters(dask_cmd: list[str], env: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    """`dask-pdist clusters` (history at threshold 0 and bf16, an existing store) against
    `dask-pdist compute` on the same history: whole processes, alternating, medians."""
    from dask_pdist.io.synthetic import write_synthetic_history

    steps = 32 if args.quick else 5001
    hist = work / f"clusters_history_{steps}x128x64.safetensors"
    store = work / "clusters_store.zarr"
    _log(f"[clusters {steps} x 128 x 64] synth and the store the store rows read")
    write_synthetic_history(hist, steps=steps, overwrite=True)
    _run_child(dask_cmd + ["compute", str(hist), "-o", str(store), "--no-progress"], env, work / "clusters.log")
    out = work / "clusters_out.zarr"
    cmds = {
        "compute": dask_cmd + ["compute", str(hist), "-o", str(out), "--no-progress"],
        "clusters-0-history": dask_cmd + ["clusters", str(hist), "--no-progress"],
        "clusters-bf16-history": dask_cmd + ["clusters", str(hist), "--threshold", "bf16", "--no-progress"],
        "clusters-0-store": dask_cmd + ["clusters", str(store), "--no-progress"],
        "clusters-bf16-store": dask_cmd + ["clusters", str(store), "--threshold", "bf16", "--no-progress"],
    }
    for cmd in cmds.values() if not args.quick else ():  # untimed: page cache, numba cache
        _run_child(cmd, env, work / "clusters.log")
        _remove(out)
    runs: dict[str, list[Run]] = {k: [] for k in cmds}
    for r in range(args.repeats):
        for key, cmd in cmds.items():
            os.sync()
            run = _run_child(cmd, env, work / "clusters.log")
            _remove(out)
            runs[key].append(run)
            _log(f"[clusters] round {r + 1}: {key:<22} {run.wall_s:7.2f} s  {run.maxrss_mb:7.0f} MB")
    _remove(hist)
    _remove(store)
    return {"steps": steps, "runs": runs}


def _cluster_targets(bench: dict) -> list[str]:
    runs = bench["runs"]
    base = statistics.median(r.wall_s for r in runs["compute"])
    lines = []
    for key, target in CLUSTER_TARGETS.items():
        ratio = statistics.median(r.wall_s for r in runs[key]) / base
        lines.append(
            f"{'PASS' if ratio <= target else 'MISS'}  {bench['steps']} x 128 x 64: dask-pdist {key.replace('-', ' ')}"
            f" / compute = {ratio:.3f} (target <= {target})"
        )
    return lines


def _fmt_clusters(bench: dict) -> list[str]:
    runs = bench["runs"]
    base = statistics.median(r.wall_s for r in runs["compute"])
    labels = {
        "compute": "dask-pdist compute (baseline)",
        "clusters-0-history": "dask-pdist clusters HISTORY (threshold 0)",
        "clusters-bf16-history": "dask-pdist clusters HISTORY --threshold bf16",
        "clusters-0-store": "dask-pdist clusters STORE (threshold 0)",
        "clusters-bf16-store": "dask-pdist clusters STORE --threshold bf16",
    }
    lines = [
        f"### Clusters (issue 11): {bench['steps']} x 128 x 64 bf16 (baseline: dask-pdist compute)",
        "",
        "Whole processes, alternating, medians. `clusters` runs without `--output` (in memory) and prints its"
        " summary and events; the STORE rows read a float32 lz4 store made by `compute` before the rounds.",
        "",
        "| method | runs | wall s (median) | min-max s | vs compute | peak RSS MB | user s | sys s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in labels.items():
        walls = [r.wall_s for r in runs[key]]
        med = statistics.median(walls)
        lines.append(
            f"| {label} | {len(walls)} | {med:.2f} | {min(walls):.2f}-{max(walls):.2f} | {med / base:.3f} "
            f"| {_median(runs[key], 'maxrss_mb'):.0f} | {_median(runs[key], 'user_s'):.2f} "
            f"| {_median(runs[key], 'sys_s'):.2f} |"
        )
    return lines + [""]


# ---------------------------------------------------------------- report


def _fmt_case(case: Case, methods: dict[str, Method]) -> list[str]:
    base = statistics.median(r.wall_s for r in case.runs[case.baseline])
    lines = [
        f"### {case.name} bf16 (baseline: {methods[case.baseline].label})",
        "",
        f"| method | runs | wall s (median) | min-max s | vs {case.baseline} "
        "| peak RSS MB | user s | sys s | minor faults |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in case.methods:
        runs = case.runs[key]
        walls = [r.wall_s for r in runs]
        med = statistics.median(walls)
        lines.append(
            f"| {methods[key].label} | {len(runs)} | {med:.2f} | {min(walls):.2f}-{max(walls):.2f} | {med / base:.3f} "
            f"| {_median(runs, 'maxrss_mb'):.0f} | {_median(runs, 'user_s'):.2f} | {_median(runs, 'sys_s'):.2f} "
            f"| {_median(runs, 'minflt'):,.0f} |"
        )
    lines.append("")
    if case.reduced:
        lines.append(f"Fewer runs (`--slow-repeats`) for: {', '.join(case.reduced)}.")
    if "notebook" in case.runs:
        modes = [_notebook_mode(r, case.steps) for r in case.runs["notebook"]]
        lines.append(
            f"Notebook loop mode per run: {', '.join(modes)} (slow = page-fault mode, more than "
            f"{NOTEBOOK_SLOW_FAULTS_PER_STEP} minor faults per snapshot; faults per snapshot: "
            f"{', '.join(f'{r.minflt / case.steps:.0f}' for r in case.runs['notebook'])})."
        )
    if case.warmup:
        warm = ", ".join(f"{k} {v:.2f} s" for k, v in case.warmup.items())
        lines.append(f"Untimed warm-up runs before the first round: {warm}.")
    lines.append("")
    return lines


def _notebook_mode(run: Run, steps: int) -> str:
    return "slow" if run.minflt / steps > NOTEBOOK_SLOW_FAULTS_PER_STEP else "fast"


def _ratio(case: Case, a: str, b: str) -> float:
    return statistics.median(r.wall_s for r in case.runs[a]) / statistics.median(r.wall_s for r in case.runs[b])


def _targets(cases: dict[str, Case], help_times: dict[str, list[float]], default_compressor: str) -> list[str]:
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'MISS'}  {text}")

    for role, key in (("small", "small_vs_notebook"), ("large", "large_vs_notebook")):
        c = cases[role]
        r = _ratio(c, "dask-pdist", "notebook")
        check(
            r <= TARGETS[key], f"{c.name} end to end: dask-pdist / notebook loop = {r:.3f} (target <= {TARGETS[key]})"
        )
        fast = [x.wall_s for x in c.runs["notebook"] if _notebook_mode(x, c.steps) == "fast"]
        if fast:
            rf = statistics.median(r_.wall_s for r_ in c.runs["dask-pdist"]) / statistics.median(fast)
            lines.append(f"      (against the notebook's fast-mode runs only: {rf:.3f}, {len(fast)} runs)")
    c = cases["wide"]
    r = _ratio(c, "dask-pdist", "torch-cdist")
    check(
        r <= TARGETS["wide_vs_torch"],
        f"{c.name} end to end: dask-pdist / torch.cdist = {r:.3f} (target <= {TARGETS['wide_vs_torch']})",
    )
    small, large = (_median(cases[k].runs["dask-pdist"], "maxrss_mb") for k in ("small", "large"))
    check(
        small > 0 and large / small <= TARGETS["rss_growth"],
        f"peak RSS {cases['large'].name} / {cases['small'].name} = {large:.0f} / {small:.0f} MB = {large / small:.2f} "
        f"(target <= {TARGETS['rss_growth']})",
    )
    check(
        large <= TARGETS["rss_mb"],
        f"peak RSS at {cases['large'].name} = {large:.0f} MB (target <= {TARGETS['rss_mb']:.0f} MB)",
    )
    h = statistics.median(help_times["dask-pdist --help"])
    check(h <= TARGETS["help_s"], f"dask-pdist --help = {h:.3f} s (target <= {TARGETS['help_s']} s)")
    for role in ("small", "large", "wide"):
        c = cases[role]
        cost = _ratio(c, "dask-pdist", "dask-pdist-none") - 1
        if default_compressor == "none":
            check(True, f"{c.name}: compression is off by default")
        else:
            check(
                cost <= TARGETS["compressor_cost"],
                f"{c.name}: default compressor ({default_compressor}) costs {cost * 100:+.1f} % end to end over none "
                f"(target <= {TARGETS['compressor_cost'] * 100:.0f} %)",
            )
    return lines


def _fmt_kernel(k: dict) -> list[str]:
    pd = k["pair_dims"]
    peak_pd = k["peak_pair_dims_per_thread"]
    rows = []
    for threads in ("1", "2"):
        t = statistics.median(k["times"][threads])
        tp = statistics.median(k["peak_times"][threads])
        rate = pd / t
        peak_rate = peak_pd * int(threads) / tp
        rows.append(
            f"| {threads} | {t:.3f} | {rate / 1e9:.2f} | {t / pd * int(threads) * 1e9:.3f} "
            f"| {peak_rate / 1e9:.2f} | {rate / peak_rate:.2f} |"
        )
    return [
        f"### Kernel alone: `pairwise_block`, {k['steps']} x {k['vocab']} x {k['dim']} float32, "
        f"chunks of {k['chunk']} snapshots",
        "",
        f"Work: S x V(V-1)/2 x D = {pd:,} pair-dims (each: subtract, multiply-add, abs, max), "
        "output allocated per call as in the pipeline. "
        "2 threads = concurrent.futures over the chunks (the kernel releases the GIL).",
        "",
        "| threads | median s | G pair-dims/s | ns per pair-dim per thread | bound G pair-dims/s | fraction of bound |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Bound: the kernel's inner loop (same operations, dims unrolled by 4) on one L1-resident "
        f"{k['peak_block'][0]} x {k['peak_block'][1]} float32 block with full-length rows, no transposes, no output "
        "stores, measured in the same process on the same threads: the most this CPU does with this instruction mix.",
        f"Numba outside the timed regions: importing dask_pdist.kernels.distances {k['import_s']:.2f} s; first call "
        f"(loads the cached machine code) {k['first_call_s']:.2f} s; "
        f"compiling the bound loop {k['peak_compile_s']:.2f} s.",
        "",
    ]


def _plot(cases: list[Case], methods: dict[str, Method], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    v128 = [c for c in cases if c.role in ("small", "large")]
    for key in v128[0].methods:
        xs = [c.steps for c in v128]
        ys = [statistics.median(r.wall_s for r in c.runs[key]) for c in v128]
        ax.plot(xs, ys, marker="o", label=methods[key].label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([c.steps for c in v128], [str(c.steps) for c in v128])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(f"snapshots S (V={v128[0].vocab}, D={v128[0].dim}, bf16 in)")
    ax.set_ylabel("whole-process wall time, s (median)")
    ax.set_title("Wall time vs S")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    wide = next(c for c in cases if c.role == "wide")
    ys = [statistics.median(r.wall_s for r in wide.runs[k]) for k in wide.methods]
    bx.bar(range(len(ys)), ys, color=[f"C{list(v128[0].methods).index(k)}" for k in wide.methods])
    bx.set_xticks(range(len(ys)), [methods[k].key for k in wide.methods], rotation=20, fontsize=8)
    bx.set_yscale("log")
    bx.set_ylim(min(ys) / 2, max(ys) * 2)
    bx.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    bx.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    for x, y in enumerate(ys):
        bx.annotate(f"{y:.2f} s", (x, y), ha="center", va="bottom", fontsize=8)
    bx.set_title(f"S={wide.steps}, V={wide.vocab}, D={wide.dim}")
    bx.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTIONS = ("startup", "kernel", "e2e", "reads", "clusters", "neighbours")


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in chosen if x not in SECTIONS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad or text!r}; choose from {','.join(SECTIONS)}")
    return chosen


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    _start_spawner()  # first, while this process is small
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--repeats", type=_positive, default=None, help="timed runs per method and size (default 5; --quick: 1)"
    )
    p.add_argument(
        "--slow-repeats",
        type=_positive,
        default=None,
        help="runs of the baselines at the large sizes, ~40 s each for the notebook (default 3; --quick: 1)",
    )
    p.add_argument(
        "--help-repeats",
        type=_positive,
        default=None,
        help="runs of `dask-pdist --help`, `python -c pass` (default 10)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 run each: a smoke test of this script, not a benchmark"
    )
    p.add_argument(
        "--clusters-only",
        action="store_true",
        help=f"only the `dask-pdist clusters` rows (issue 11); writes {CLUSTERS_MD}, never results.md",
    )
    p.add_argument(
        "--neighbours",
        action="store_true",
        help=f"run only the neighbours rows (issue 12) and replace their section of {RESULTS_MD}",
    )
    p.add_argument(
        "--output-dir", type=Path, default=HERE, help=f"where {RESULTS_MD} and {PLOT_PNG} go (default: benchmarks/)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent folder for the temporary histories and outputs (default: system temp)",
    )
    p.add_argument(
        "--sections",
        type=_sections,
        default=SECTIONS,
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all); e2e = the end-to-end tables,"
        " bytes and the I/O floor; with a subset, write to another --output-dir",
    )
    p.add_argument(
        "--startup-repeats", type=_positive, default=None, help="rounds of the start-up probe (default 3; --quick: 1)"
    )
    args = p.parse_args(argv)
    args.startup_repeats = args.startup_repeats or (1 if args.quick else 3)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.slow_repeats = min(args.slow_repeats or (1 if args.quick else 3), args.repeats)
    args.help_repeats = args.help_repeats or (1 if args.quick else 10)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dask_pdist_bench_", dir=args.workdir))
    try:
        return _main_neighbours(args, work) if args.neighbours else _main(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _main(args: argparse.Namespace, work: Path) -> int:
    from dask_pdist.io.synthetic import write_synthetic_history
    from dask_pdist.store.codecs import DEFAULT_COMPRESSOR

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    dask_cmd, dask_name = _dask_pdist_cmd()
    methods = _methods(dask_cmd, DEFAULT_COMPRESSOR)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "numba_cache"))
    machine = _machine(env, work)
    if args.clusters_only:
        return _clusters_only(args, dask_cmd, env, work, machine, started, load_before, t_start)

    # Numba compile, paid once and reported: the first compute runs with an empty cache
    # directory (compile + cache write); every later process loads the cached kernels.
    probe = work / "probe.safetensors"
    write_synthetic_history(probe, steps=16, overwrite=True)
    cold = _run_child(
        dask_cmd + ["compute", str(probe), "-o", str(work / "p1.zarr"), "--no-progress"], env, work / "cold.log"
    )
    cached = _run_child(
        dask_cmd + ["compute", str(probe), "-o", str(work / "p2.zarr"), "--no-progress"], env, work / "cold.log"
    )
    _log(f"numba: first compute with empty cache {cold.wall_s:.2f} s, then cached {cached.wall_s:.2f} s")

    sections = args.sections
    help_times = kernel = start = read = None
    parts_steps = 32 if args.quick else 5001
    parts_hist = work / "history_parts.safetensors"
    if "startup" in sections or "reads" in sections:
        write_synthetic_history(parts_hist, steps=parts_steps)
    if "startup" in sections:
        _log("--help timing")
        help_times = _bench_help(dask_cmd, env, args.help_repeats, work)
        _log("start-up: time to the first kernel call")
        start = parts.startup(["compute"], parts_hist, work, env, args.startup_repeats)
    if "kernel" in sections:
        _log("kernel alone")
        kernel = _bench_kernel(env, args, work)
    cases = _cases(args.quick) if "e2e" in sections else []
    for i, case in enumerate(cases):
        _bench_case(case, methods, args, env, work, warm_all=(i == 0 and not args.quick))
    by_role = {c.role: c for c in cases}
    clusters_bench = None
    if "clusters" in sections:
        _log("clusters")
        clusters_bench = _bench_clusters(dask_cmd, env, args, work)
    if "reads" in sections:
        _log("read paths")
        store = work / "reads.zarr"
        _run_child(dask_cmd + ["compute", str(parts_hist), "-o", str(store), "--no-progress"], env, work / "reads.log")
        read = parts.reads(store, env, 1 if args.quick else 3, 20 if args.quick else 200)
        _remove(store)
    _remove(parts_hist)

    lines = [
        "# dask_pdist benchmark results",
        "",
        f"Generated by `python benchmarks/run.py{' --quick' if args.quick else ''}"
        f"{'' if sections == SECTIONS else ' --sections ' + ','.join(sections)}` on {started}, "
        f"{time.perf_counter() - t_start:.0f} s in all; load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f} (other work on the machine makes every number noisier).",
        "",
    ]
    if args.quick:
        lines += [
            "**Quick smoke run: tiny sizes, 1 run each. These numbers test the script, they are not results.**",
            "",
        ]
    if cases:
        lines += [
            f"Whole processes, alternating methods within each round, {args.repeats} rounds; "
            f"the baselines at the large sizes run {args.slow_repeats} times (`--slow-repeats`). "
            f"Inputs: bf16 safetensors written as by `dask-pdist synth`; outputs: both metrics, float32, written to "
            f"disk. dask-pdist runs as `{dask_name} compute IN -o OUT.zarr --no-progress`.",
            "",
        ]
    targets = _targets(by_role, help_times, DEFAULT_COMPRESSOR) if cases and help_times is not None else []
    targets += _cluster_targets(clusters_bench) if clusters_bench is not None else []
    if targets:
        lines += ["## Targets", "", "```", *targets, "```", ""]
    small = by_role.get("small")
    if small is not None and small.floor_s and start is not None and kernel is not None:
        lines += ["## Each part against its floor", ""]
        lines += parts.fmt_parts(
            small.steps,
            statistics.median(r.wall_s for r in small.runs["dask-pdist"]),
            parts.first_kernel_median(start),
            statistics.median(kernel["times"]["2"]),
            statistics.median(small.floor_s),
            sum(small.sizes["dask-pdist"]["variables"].get(v, 0) for v in ("euclidean", "chebyshev")),
            statistics.median(r.wall_s for r in small.runs["notebook"]),
            TARGETS["small_vs_notebook"],
        )
    if start is not None:
        lines += parts.fmt_startup(start, statistics.median(help_times["dask-pdist --help"]), parts_steps)
    if small is not None:
        sizes = {methods[k].label: v for k, v in small.sizes.items()}
        lines += parts.fmt_bytes(sizes, small.steps)
        if small.floor_s:
            lines += [
                f"I/O floor per round (s): {', '.join(f'{x:.2f}' for x in small.floor_s)}: "
                "`probes.py write-floor` writes the default store's chunk bytes (incompressible) into as many new "
                "files in the work folder, no fsync, as the store write does.",
                "",
            ]
    if read is not None:
        lines += parts.fmt_reads(read, parts_steps)
    if cases:
        lines += ["## End to end", ""]
        for case in cases:
            lines += _fmt_case(case, methods)
    if clusters_bench is not None:
        lines += _fmt_clusters(clusters_bench)
    if kernel is not None:
        lines += _fmt_kernel(kernel)
    if help_times is not None:
        h = {k: statistics.median(v) for k, v in help_times.items()}
        lines += [
            "### Start-up of the command line",
            "",
            f"`dask-pdist --help` {h['dask-pdist --help']:.3f} s vs `python -c pass` {h['python -c pass']:.3f} s "
            f"(medians of {args.help_repeats}, alternating).",
            "",
        ]
    lines += [
        "### Numba compile (paid once, outside every timed row)",
        "",
        f"`dask-pdist compute` on a 16-snapshot history with an empty NUMBA_CACHE_DIR: {cold.wall_s:.2f} s "
        f"(compiles and caches the kernels); the same with the cache filled: {cached.wall_s:.2f} s. "
        "All timed processes share that cache directory.",
        "",
        "## Machine",
        "",
        *machine,
        "",
    ]
    if cases:
        lines += [f"![wall time vs S]({PLOT_PNG})", ""]
    if "neighbours" in sections:
        lines += _neighbour_rows(args, env, work)
    text = "\n".join(lines)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / RESULTS_MD).write_text(text)
    if cases:
        _plot(cases, methods, args.output_dir / PLOT_PNG)
    print(text)
    _log(f"wrote {args.output_dir / RESULTS_MD} and {args.output_dir / PLOT_PNG}")
    return 0


def _clusters_only(
    args: argparse.Namespace,
    dask_cmd: list[str],
    env: dict[str, str],
    work: Path,
    machine: list[str],
    started: str,
    load_before: tuple[float, float, float],
    t_start: float,
) -> int:
    bench = _bench_clusters(dask_cmd, env, args, work)
    lines = [
        "# dask_pdist benchmark: clusters rows only",
        "",
        f"Generated by `python benchmarks/run.py --clusters-only{' --quick' if args.quick else ''}` on {started}, "
        f"{time.perf_counter() - t_start:.0f} s in all, {args.repeats} rounds; load average before "
        f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (other work on the machine makes every number noisier).",
        "",
        "```",
        *_cluster_targets(bench),
        "```",
        "",
        *_fmt_clusters(bench),
        "## Machine",
        "",
        *machine,
        "",
    ]
    text = "\n".join(lines)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / CLUSTERS_MD).write_text(text)
    print(text)
    _log(f"wrote {args.output_dir / CLUSTERS_MD}")
    return 0


def _neighbour_rows(args: argparse.Namespace, env: dict[str, str], work: Path) -> list[str]:
    from neighbours_rows import run_rows

    return run_rows(work, env, args.quick, min(args.repeats, 3))


def _main_neighbours(args: argparse.Namespace, work: Path) -> int:
    from neighbours_rows import replace_section

    env = dict(os.environ, NUMBA_CACHE_DIR=str(work / "numba_cache"))
    lines = _neighbour_rows(args, env, work)
    if args.quick:
        lines.insert(3, "**Quick smoke run: tiny sizes. These numbers test the script, they are not results.**\n")
    path = args.output_dir / RESULTS_MD
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(path.read_text() if path.exists() else "", lines))
    print("\n".join(lines))
    _log(f"updated the neighbours section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
