"""Benchmark suite: dask-pdist against the notebook loop, torch.cdist and scipy, with targets.

One command regenerates ``benchmarks/results.md`` (table, targets, machine) and
``benchmarks/wall_time_vs_steps.png``, and prints the same table:

    python benchmarks/run.py                 # full run, about 20 minutes on 2 cores
    python benchmarks/run.py --quick --output-dir /tmp/x   # smoke run of the script itself

Every method is a whole process, timed from start to exit, reading the same bf16 safetensors
history (written by ``dask-pdist synth``) and writing both results to disk. Methods alternate
(A B C A B C ...) within one run; each row reports the median. Peak RSS, CPU time and page
faults of each child come from ``os.wait4``. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compute_parts  # benchmarks/compute_parts.py: compute against its parts at two sizes
import parts  # benchmarks/parts.py: each part against its floor
from clusters_rows import CLUSTERS_MD, _bench_clusters, _cluster_targets, _clusters_only, _fmt_clusters
from e2e_rows import (
    PLOT_PNG,
    _bench_case,
    _bench_help,
    _bench_kernel,
    _cases,
    _fmt_case,
    _fmt_kernel,
    _methods,
    _plot,
    _targets,
)
from harness import HERE, _dask_pdist_cmd, _log, _machine, _remove, _run_child, _start_spawner

RESULTS_MD = "results.md"
#: results.md from this line on is kept by a full run: notes written by hand (dated, per issue)
#: and the sections other scripts replace in place
KEPT_MARKER = "<!-- kept by run.py: everything below (notes by hand, sections other scripts replace) -->"


# ---------------------------------------------------------------- machine description


# ---------------------------------------------------------------- measurements


# ---------------------------------------------------------------- report


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
        help=f"only the `dask-pdist clusters` rows; writes {CLUSTERS_MD}, never results.md",
    )
    p.add_argument(
        "--neighbours",
        action="store_true",
        help=f"run only the neighbours rows and replace their section of {RESULTS_MD}",
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
    machine = _machine(env, work, *((64, 1) if args.quick else (512, 3)))
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
    parts_results = None
    parts_rounds = 1 if args.quick else 3
    if "startup" in sections:
        _log("--help timing")
        help_times = _bench_help(dask_cmd, env, args.help_repeats, work)
        _log("start-up: time to the first kernel call")
        start = parts.startup(["compute"], parts_hist, work, env, args.startup_repeats)
        _log("compute against its parts at two sizes")
        parts_work = work / "parts"
        parts_work.mkdir()
        sizes = (32, 64) if args.quick else (5001, 20004)
        parts_results = [compute_parts.measure(n, parts_rounds, parts_work, env, None) for n in sizes]
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
    if parts_results is not None:
        lines += [
            "## Each part against its floor",
            "",
            "### `compute` against its parts (128 x 64, default compressor)",
            "",
            "Each round, alternating, each in its own process: `compute` (wall from `Popen`, CPU from "
            "`os.wait4`), the start-up probe (to the kernel ready), the kernel alone on 2 threads, "
            "and the I/O floor (the store's chunk bytes, incompressible, into as many new files on the "
            "same disk, from one thread per CPU as `compute` writes; one thread before 2026-12-05 13:00); "
            "`benchmarks/compute_parts.py` measures the same alone.",
            "",
            *compute_parts.fmt(parts_results, parts_rounds),
            "",
        ]
    if start is not None:
        lines += parts.fmt_startup(start, statistics.median(help_times["dask-pdist --help"]), parts_steps)
    if small is not None:
        sizes = {methods[k].label: v for k, v in small.sizes.items()}
        lines += parts.fmt_bytes(sizes, small.steps)
        if small.floor_s:
            lines += [
                f"I/O floor per round (s): {', '.join(f'{x:.2f}' for x in small.floor_s)}: "
                "`probes.py write-floor` writes the default store's chunk bytes (incompressible) into as many new "
                "files in the work folder, no fsync, one writer thread per CPU, as the store write does.",
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
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / RESULTS_MD
    old = path.read_text() if path.exists() else ""
    if KEPT_MARKER in old:  # the notes by hand below it stay
        lines += [old[old.index(KEPT_MARKER) :].rstrip("\n"), ""]
    text = "\n".join(lines)
    path.write_text(text)
    if cases:
        _plot(cases, methods, args.output_dir / PLOT_PNG)
    print(text)
    _log(f"wrote {args.output_dir / RESULTS_MD} and {args.output_dir / PLOT_PNG}")
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
