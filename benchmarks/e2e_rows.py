"""The end-to-end rows: dask-pdist against the notebook loop, torch.cdist and scipy on whole
processes (methods alternate, medians reported), the kernel alone, the targets and the plot."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import parts  # benchmarks/parts.py: each part against its floor
from harness import METHODS_PY, Run, _log, _median, _remove, _run_child

PLOT_PNG = "wall_time_vs_steps.png"


# The notebook's loop runs in one of two allocator modes (docs/measurements.md): a slow one where
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


#: the kernel-alone shapes (steps, vocab, dim): the notebook's, and the wide case of issue 25.3
KERNEL_SHAPES = ((5001, 128, 64), (200, 1024, 256))
KERNEL_SHAPES_QUICK = ((64, 128, 64), (4, 256, 64))


def _bench_kernel(env: dict[str, str], args: argparse.Namespace, work: Path) -> list[dict]:
    out = []
    for i, (steps, vocab, dim) in enumerate(KERNEL_SHAPES_QUICK if args.quick else KERNEL_SHAPES):
        cmd = [sys.executable, str(METHODS_PY), "kernel", "--steps", str(steps), "--vocab", str(vocab)]
        cmd += ["--dim", str(dim), "--repeats", str(args.repeats)]
        if i == 0:  # once per run, in the first shape's process
            cmd += ["--bandwidth", "--bandwidth-mib", "16" if args.quick else "128"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        out.append(json.loads(run.stdout))
    return out


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


def _fmt_kernel(kernels: list[dict]) -> list[str]:
    bw = next((k["bandwidth"] for k in kernels if k.get("bandwidth")), None)
    fill = {t: statistics.median(v) for t, v in bw["fill"].items()} if bw else {}
    lines = [
        "### Kernel alone: `pairwise_block` against the compute and the memory-bandwidth limits",
        "",
        "Work: S x V(V-1)/2 x D pair-dims (each: subtract, multiply-add, abs, max); the kernel computes each row "
        "from the diagonal on and copies the triangle below. Output allocated per call as in the pipeline, chunks "
        "of snapshots as `open_history` makes them. 2 threads = concurrent.futures over the chunks (the kernel "
        "releases the GIL). *Stored*: the results' bytes (2 x S x V x V float32) per second; the input read is "
        "D/(2V) of that.",
        "",
        "| S x V x D | threads | median s | G pair-dims/s | compute bound G pair-dims/s | fraction of compute bound "
        "| stored GB/s | fraction of write bandwidth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    of_bound, of_memory = [], []
    for k in kernels:
        pd = k["pair_dims"]
        for threads in ("1", "2"):
            t = statistics.median(k["times"][threads])
            peak_rate = k["peak_pair_dims_per_thread"] * int(threads) / statistics.median(k["peak_times"][threads])
            stored = k["out_bytes"] / t / 1e9
            of_bound.append(pd / t / peak_rate)
            memory = f"{stored / fill[threads]:.2f}" if fill else "not measured"
            if fill:
                of_memory.append(stored / fill[threads])
            lines.append(
                f"| {k['steps']} x {k['vocab']} x {k['dim']} | {threads} | {t:.3f} | {pd / t / 1e9:.2f} "
                f"| {peak_rate / 1e9:.2f} | {of_bound[-1]:.2f} | {stored:.2f} | {memory} |"
            )
    shapes = ", ".join(dict.fromkeys(f"{k['peak_block'][0]} x {k['peak_block'][1]}" for k in kernels))
    lines += [
        "",
        "Compute bound: the kernel's own row routine (dims unrolled by 4) on L1-resident 32 KiB float32 blocks "
        "(dims x tokens 128 x 64, 64 x 128 or 32 x 256, whichever runs fastest; here "
        f"{shapes}) with full-length rows, no transposes, no output stores, measured in each shape's process on "
        "the same threads: the most this CPU does with this instruction mix.",
    ]
    if bw:
        copy = {t: statistics.median(v) for t, v in bw["copy"].items()}
        verdict = "memory is not what limits it" if max(of_memory) < 0.5 else "it comes near the memory limit"
        lines[-1] += (
            f" Write bandwidth (`methods.py kernel --bandwidth`, in the first shape's process, median of "
            f"{len(bw['fill']['1'])} alternating rounds): writing {fill['1']:.1f} GB/s on 1 thread, {fill['2']:.1f} "
            f"on 2; copying (read + write) {copy['1']:.1f} and {copy['2']:.1f} GB/s. The kernel stores its results "
            f"at {min(of_memory):.2f}-{max(of_memory):.2f} of the write bandwidth and computes at "
            f"{min(of_bound):.2f}-{max(of_bound):.2f} of the compute bound: {verdict}."
        )
    first = kernels[0]
    lines += [
        f"Numba outside the timed regions: importing dask_pdist.kernels.distances {first['import_s']:.2f} s; first "
        f"call (loads the cached machine code) {first['first_call_s']:.2f} s; "
        f"compiling the bound loop {first['peak_compile_s']:.2f} s.",
        "",
    ]
    return lines


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
