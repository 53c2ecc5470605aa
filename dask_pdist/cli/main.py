"""The ``dask-pdist`` command line. Calls only the public API; heavy imports happen inside
the subcommands so ``dask-pdist --help`` stays fast."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Sequence

from dask_pdist._program import one_malloc_arena
from dask_pdist._version import __version__
from dask_pdist.cli.analyses import _cmd_clusters, _cmd_info, _cmd_neighbours, _cmd_report, _cmd_summary, _cmd_verify
from dask_pdist.cli.common import (
    _ALLOW_INCOMPLETE_HELP,
    _DEBUG_HELP,
    _KEY_HELP,
    _NO_PROGRESS_HELP,
    _TOKEN_IDS_HELP,
    EXIT_BAD_INPUT,
    PROGRAM,
    READS_STORES,
    _add_engine,
    _add_grow,
    _add_scheduler,
    _add_storage_options,
    _add_store_overwrite,
    _debug_traceback,
    _Exit,
    _metrics_arg,
    _output,
    _Parser,
    _positive,
    _positive_seconds,
    _steps_per_chunk,
    _threshold_arg,
    error_line,
    failure_cause,
    quiet_lost_connections,
    read_again,
)
from dask_pdist.cli.compute import _cmd_compute, _cmd_demo, _cmd_export, _cmd_synth
from dask_pdist.cli.imports import import_dask_array
from dask_pdist.cli.movement import add_parsers as _add_movement_parsers
from dask_pdist.cli.signals import catch_interrupts, deliver_lost_interrupts, interrupt_once
from dask_pdist.conventions import ALL_METRICS, METRICS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dask-pdist",
        description="Pairwise token distances (Euclidean, Chebyshev) for every snapshot of an embedding history.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compute", help="compute distances of a history into a zarr store")
    c.add_argument(
        "input",
        nargs="+",
        help="history: .safetensors, .npy or zarr store; a Hugging Face Trainer output folder (checkpoint-N/,"
        " local or s3://); or per-checkpoint safetensors files, as a quoted glob ('ckpt/step_*.safetensors')"
        " or a list; several runs: a quoted glob of run folders (one store each in --output)",
    )
    c.add_argument("--key", help=_KEY_HELP)
    c.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read the shards of a sharded checkpoint, and the file of a checkpoint folder, when they are symbolic"
        " links leaving their folder (default: refused; files you name or glob yourself are read)",
    )
    c.add_argument("--output", "-o", required=True, type=_output, help="zarr store to create, e.g. distances.zarr")
    c.add_argument(
        "--metrics",
        type=_metrics_arg,
        default=METRICS,
        help="comma-separated, from euclidean,chebyshev,manhattan,chebyshev_ulp (the last: in representable"
        " values of a bf16/f16/f32 history) (default: euclidean,chebyshev)",
    )
    c.add_argument(
        "--dtype", choices=("float32", "float16", "float64"), default="float32", help="stored dtype (default: float32)"
    )
    c.add_argument(
        "--chunk-steps",
        type=_steps_per_chunk,
        help="snapshots per task and store chunk (default: auto, ~16 MiB per task)",
    )
    c.add_argument(
        "--token-chunk",
        type=_positive,
        help="tile edge along token_i/token_j (default: auto, tiles only large vocabularies)",
    )
    c.add_argument("--tokens", help="text file with one token label per line (default: token ids 0..V-1)")
    c.add_argument("--token-ids", metavar="SPEC", help=_TOKEN_IDS_HELP)
    c.add_argument(
        "--steps",
        metavar="FILE|RANGE",
        help="step labels: a file with one integer per line, or START:STOP:STEP as Python's range, STOP"
        " excluded (default: a 'steps' tensor, else the number in each checkpoint's path, else 0..S-1)",
    )
    c.add_argument(
        "--compressor",
        choices=("auto", "none", "lz4", "zstd"),
        default=None,
        help="store compression (default: auto, chosen per variable: see docs/compute.md)",
    )
    c.add_argument(
        "--nonfinite",
        choices=("raise", "propagate"),
        default="raise",
        help="NaN/Inf in the history: stop with an error, or compute anyway: a NaN gives NaN distances, an infinity"
        " infinite ones (NaN where it meets the same infinity) (default: raise)",
    )
    _add_scheduler(c)
    _add_engine(c)
    _add_store_overwrite(c)
    c.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted job: compute only the blocks missing from --output (default: start anew)",
    )
    c.add_argument(
        "--append",
        action="store_true",
        help="grow --output with the input's steps past its last one (the stored steps' input must be unchanged);"
        " creates --output if absent (default: refuse an existing store)",
    )
    c.add_argument(
        "--follow",
        action="store_true",
        help="then watch the run folder (or glob) and append each new complete checkpoint, until Ctrl-C/SIGTERM"
        " or --idle-exit (exit 0); a new store gets one step per chunk (default: compute once)",
    )
    c.add_argument(
        "--idle-exit",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --follow: end after this many seconds without a new checkpoint (default: follow until stopped)",
    )
    c.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(c)
    c.add_argument(
        "--safetensors",
        metavar="OUT.safetensors",
        type=_output,
        help="also export the store to this safetensors file (or URL: s3://..., with --storage-options), as the"
        " notebook saves it (default: no export)",
    )
    c.set_defaults(func=_cmd_compute, one_arena=True)  # (as the program: _program.one_malloc_arena)

    e = sub.add_parser("export", help="export a distance store to one safetensors file (as the notebook saves it)")
    e.add_argument("store", help="zarr store written by 'dask-pdist compute'")
    e.add_argument(
        "output",
        type=_output,
        help="safetensors file to create, e.g. pairwise_distances.safetensors, or a URL (s3://bucket/d.safetensors)",
    )
    e.add_argument(
        "--dtype", choices=("float32", "float16", "float64"), default=None, help="stored dtype (default: the store's)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing file at OUTPUT (default: refuse)")
    _add_scheduler(e)
    e.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    e.add_argument("--allow-incomplete", action="store_true", help=_ALLOW_INCOMPLETE_HELP)
    _add_storage_options(e)
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser("synth", help="write a synthetic bf16 history (safetensors)")
    s.add_argument("output", type=_output, help="file to write, e.g. history.safetensors")
    s.add_argument("--steps", type=_positive, default=5001, help="snapshots (default: 5001)")
    s.add_argument("--vocab", type=_positive, default=128, help="tokens per snapshot (default: 128)")
    s.add_argument("--dim", type=_positive, default=64, help="embedding dims (default: 64)")
    s.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes (default: 42)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file at OUTPUT (default: refuse)")
    s.set_defaults(func=_cmd_synth, imports_dask=False)  # (the others import dask.array lean, as the program)

    d = sub.add_parser("demo", help="synth at the notebook's size (5001x128x64), then compute")
    d.add_argument(
        "--output-dir", default="dask_pdist_demo", help="folder for the demo files (default: ./dask_pdist_demo)"
    )
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files there that an earlier demo did not make (default: refuse)",
    )
    d.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    d.set_defaults(func=_cmd_demo, one_arena=True)

    m = sub.add_parser("summary", help="per-step statistics of a store; optional plot")
    m.add_argument(
        "store",
        nargs="+",
        help="zarr store written by compute; several stores (or a quoted glob, 'out/run_*.zarr') are runs",
    )
    m.add_argument(
        "--plot",
        metavar="FILE.png",
        type=_output,
        help="draw min/mean/max over steps and a heatmap, needs matplotlib (default: no plot)",
    )
    m.add_argument(
        "--step",
        type=int,
        default=None,
        help="print this step's summary (a step label) and draw its heatmap with --plot"
        " (default: no step block; the heatmap shows the last step)",
    )
    m.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="Chebyshev threshold for quantization neighbours"
        " (default: one bf16 spacing at the embedding's RMS magnitude)",
    )
    m.add_argument("--rows", type=_positive, default=10, help="rows in the printed series (default: 10)")
    m.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    m.add_argument("--allow-incomplete", action="store_true", help=_ALLOW_INCOMPLETE_HELP)
    _add_storage_options(m)
    m.set_defaults(func=_cmd_summary)

    v = sub.add_parser("verify", help="read every chunk of a store; report missing or corrupt ones")
    v.add_argument("store", help="zarr store written by compute")
    v.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(v)
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("info", help="describe a store or an input file")
    i.add_argument(
        "path",
        nargs="+",
        help="zarr store, .safetensors, .npy or zarr input; or per-checkpoint safetensors files,"
        " as a quoted glob ('ckpt/step_*.safetensors') or a list, as compute takes them",
    )
    i.add_argument("--key", help=_KEY_HELP)
    i.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read the shards of a sharded checkpoint, and the file of a checkpoint folder, when they are symbolic"
        " links leaving their folder (default: refused; files you name or glob yourself are read)",
    )
    _add_storage_options(i)
    i.set_defaults(func=_cmd_info)

    k = sub.add_parser("clusters", help="groups of identical (or close) tokens at every step, and their events")
    k.add_argument("input", nargs="+", help="a distance store (from compute) or a history (any input compute takes)")
    k.add_argument(
        "--threshold",
        type=_threshold_arg,
        default=0.0,
        help="tokens join when their distance is <= this: 0 (default: equal embeddings), bf16 (one bf16"
        " spacing at the step's RMS coordinate) or a number",
    )
    k.add_argument("--metric", choices=METRICS, default="chebyshev", help="distance (default: chebyshev)")
    k.add_argument("--key", help=_KEY_HELP)
    k.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read the shards of a sharded checkpoint, and the file of a checkpoint folder, when they are symbolic"
        " links leaving their folder (default: refused; files you name or glob yourself are read)",
    )
    k.add_argument(
        "--token-ids",
        metavar="SPEC",
        help=_TOKEN_IDS_HELP + " (history inputs only; cluster ids are then positions within the subset)",
    )
    k.add_argument(
        "--output",
        "-o",
        metavar="OUT.zarr",
        type=_output,
        help="write the clusters Dataset as a zarr store (default: none)",
    )
    k.add_argument(
        "--events",
        metavar="EVENTS.csv",
        type=_output,
        help="write the events as CSV (step,kind,tokens); with --append, those of the grown store, replacing"
        " the file (default: none)",
    )
    k.add_argument(
        "--plot",
        metavar="FILE.png",
        type=_output,
        help="draw groups over steps with the events, needs matplotlib (default: no plot)",
    )
    k.add_argument(
        "--overwrite", action="store_true", help="replace existing --output / --events files (default: refuse)"
    )
    _add_grow(k, "events")
    k.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(k)
    _add_engine(k)
    k.set_defaults(func=_cmd_clusters)

    n = sub.add_parser("neighbours", help="exact k nearest tokens of every token at every step, into a zarr store")
    n.add_argument("input", nargs="+", help="history, as for compute")
    n.add_argument("-k", type=_positive, required=True, help="neighbours per token (at most tokens - 1)")
    n.add_argument("--metric", choices=ALL_METRICS, default="euclidean", help="distance (default: euclidean)")
    n.add_argument("--output", "-o", required=True, type=_output, help="zarr store to create, e.g. neighbours.zarr")
    n.add_argument("--token-ids", metavar="SPEC", help=_TOKEN_IDS_HELP)
    n.add_argument("--key", help=_KEY_HELP)
    n.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read the shards of a sharded checkpoint, and the file of a checkpoint folder, when they are symbolic"
        " links leaving their folder (default: refused; files you name or glob yourself are read)",
    )
    n.add_argument("--tokens", help="text file with one token label per line (default: token ids 0..V-1)")
    n.add_argument("--chunk-steps", type=_steps_per_chunk, help="snapshots per read of the history (default: auto)")
    n.add_argument(
        "--nonfinite",
        choices=("raise", "propagate"),
        default="raise",
        help="NaN/Inf in the history: stop with an error, or give NaN distances, ranked last (default: raise)",
    )
    _add_scheduler(n)
    _add_engine(n)
    _add_store_overwrite(n)
    _add_grow(n, "churn")
    n.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(n)
    n.set_defaults(func=_cmd_neighbours)

    r = sub.add_parser(
        "report", help="one self-contained HTML page of a store: heatmaps with a step slider, statistics"
    )
    r.add_argument("store", help="zarr store written by compute")
    r.add_argument("--output", "-o", required=True, type=_output, help="HTML file to write, e.g. report.html")
    r.add_argument(
        "--clusters", metavar="CLUSTERS.zarr", help="also show these clusters and their events (default: none)"
    )
    r.add_argument(
        "--neighbours", metavar="NEIGHBOURS.zarr", help="also show this store's neighbour churn (default: none)"
    )
    r.add_argument(
        "--max-frames",
        type=_positive,
        default=300,
        help="at most this many steps on the slider, chosen evenly; fewer when their float32 V x V values"
        " would pass 9 MiB (default: 300)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace an existing file at --output (default: refuse)")
    r.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    r.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="report a store still being written or interrupted: its written steps, and which they are"
        " (default: refuse an incomplete store)",
    )
    _add_storage_options(r)
    r.set_defaults(func=_cmd_report)

    _add_movement_parsers(sub)

    # --debug also after the subcommand; SUPPRESS keeps the main parser's value when absent
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    p.commands = sub.choices  # type: ignore[attr-defined]
    return p


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a tool killed by it reports


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with one line on stderr)."""
    try:
        try:
            code = _run_cli(argv)
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught below
        if code != 0 and argv is None and "aiobotocore" in sys.modules:
            # interrupted or failed as the program with an S3 client alive: its event loop's
            # pending tasks would print "Task was destroyed" lines and tracebacks (a dead
            # endpoint's ContextVar reset) at interpreter exit, burying the one error line and
            # its resume hint. Every write is whole or absent and the lock is released: end here.
            sys.stderr.flush()
            os._exit(code)
        if argv is None:  # the interpreter's exit need not walk every object once more
            gc.freeze()
        return code
    except BrokenPipeError:
        # the reader went away (`dask-pdist ... | head`): stop quietly; point stdout at devnull
        # so the interpreter's own flush at exit has nowhere to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


#: One BLAS thread per dask thread, as dask.distributed's workers default to: the kernels
#: already run on every core through dask's thread pool, and a multi-threaded BLAS inside
#: each task (neighbours' matrix products) spins for cores that are busy: ~30 % more CPU
#: and slower (docs/measurements.md). A value the user set is kept.
_ONE_BLAS_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _run_cli(argv: Sequence[str] | None) -> int:
    as_program = argv is None
    if as_program and "numpy" not in sys.modules:  # read once, when numpy loads its BLAS
        for name in _ONE_BLAS_THREAD:
            os.environ.setdefault(name, "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # point to the subcommand's --help, not the main one's
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    args.as_program = as_program
    if as_program and getattr(args, "one_arena", False):  # before any other thread allocates
        one_malloc_arena()
    PROGRAM["settle"] = PROGRAM["lean"] = as_program
    if as_program:
        quiet_lost_connections()
        deliver_lost_interrupts()
    previous = catch_interrupts()
    if (
        as_program
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        # also where Ctrl-C is ignored (nohup, a background job): SIGTERM is how those are stopped
        # a batch scheduler's (SLURM, Kubernetes) stop: as Ctrl-C, so the resume hint is printed
        # and an upload to an object store is aborted instead of left behind
        signal.signal(signal.SIGTERM, interrupt_once)
    try:
        return _main(args)
    finally:
        # called from Python: give the caller its handler back. As the program, keep ignoring
        # a second Ctrl-C until the process has exited cleanly.
        if previous is not None and not as_program:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.as_program and getattr(args, "imports_dask", True):
            # here, where a Ctrl-C or a broken install ends in one line like the command's own
            import_dask_array()  # without scipy's sparse and FFT modules, nor derived docstrings (cli/imports.py)
        if args.command in READS_STORES and not getattr(args, "follow", False):  # (--follow prints as it goes)
            return read_again(args.func, args) or 0
        return args.func(args) or 0
    except BrokenPipeError:
        raise
    except _Exit as stop:
        return stop.code
    except KeyboardInterrupt:
        print("dask-pdist: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, OverflowError, TypeError, ImportError) as exc:
        cause = failure_cause(exc)
        code = (
            EXIT_BAD_INPUT
            if isinstance(
                exc,
                (
                    ValueError,
                    FileNotFoundError,
                    FileExistsError,
                    PermissionError,
                    NotADirectoryError,
                    OverflowError,
                    ConnectionError,  # an object store's endpoint that does not answer: configuration
                ),
            )
            else 1
        )
        return _fail(args, cause or str(exc), code)
    except Exception as exc:  # no memory, no threads, an object store gone: one line too
        cause = failure_cause(exc)
        if cause is None:
            raise
        return _fail(args, cause, 1)


def _fail(args: argparse.Namespace, line: str, code: int) -> int:
    # one line on stderr; --debug adds the traceback above it, and keeps the exit code
    _debug_traceback(args)
    error_line(line)
    return code
