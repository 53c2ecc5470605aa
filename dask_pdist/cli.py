"""The ``dask-pdist`` command line. Calls only the public API; heavy imports happen inside
the subcommands so ``dask-pdist --help`` stays fast."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._version import __version__

__all__ = ["main"]

EXIT_BAD_INPUT = 2
_METRICS = ("euclidean", "chebyshev")  # mirrors kernels.METRICS without importing numba
_TOKEN_IDS_HELP = (
    "only these tokens: comma list of indices and half-open ranges a:b (e.g. 0:1000,5000,7000:7100),"
    " or @FILE with one index per line; the original indices are kept as coordinates (default: all tokens)"
)


class _Exit(Exception):
    """Stop with this exit code; the message is already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _metrics_arg(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in metrics if m not in _METRICS]
    if bad or not metrics:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {bad or text!r}; choose from {','.join(_METRICS)}")
    return metrics


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _threshold_arg(text: str) -> float | str:
    if text == "bf16":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0, bf16 or a distance >= 0") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give 0, bf16 or a finite distance >= 0")
    return value


_DEBUG_HELP = "show the traceback on errors (default: one line on stderr)"
_NO_PROGRESS_HELP = "no progress bar (default: a bar on stderr)"
_KEY_HELP = (
    "tensor/array holding the history (default: the only 3-D one); for per-checkpoint files, the"
    " (token, dim) matrix in each, e.g. model.embed_tokens.weight (default: the only 2-D one)"
)
_ALLOW_INCOMPLETE_HELP = (
    "read a store whose job was interrupted, its missing blocks as NaN (default: refuse an incomplete store)"
)


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: give a JSON object, e.g. '{{\"anon\": true}}'")
    return value


def _add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="for s3://, gs://, ... URLs: fsspec backend options, e.g. '{\"anon\": true}' (default: none;"
        " credentials and endpoint come from the backend's usual settings, e.g. AWS_*)",
    )


def _opts(args: argparse.Namespace, path: object) -> dict | None:
    """``--storage-options`` for ``path`` if it is (or holds) a URL: one option set serves a
    command's URLs (input, store, export), never its local paths."""
    from dask_pdist.locations import any_url

    options = getattr(args, "storage_options", None)
    return options if options and any_url(path) else None  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (exit 2) like every other bad input,
    instead of the usage block and the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_scheduler(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        default=os.environ.get("DASK_SCHEDULER_ADDRESS"),
        help="dask.distributed scheduler address (default: $DASK_SCHEDULER_ADDRESS, else local threads)",
    )


def _add_store_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dask_pdist store at --output (default: refuse an existing path)",
    )


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
        help="history: .safetensors, .npy or zarr store; or per-checkpoint safetensors files,"
        " as a quoted glob ('ckpt/step_*.safetensors') or a list",
    )
    c.add_argument("--key", help=_KEY_HELP)
    c.add_argument("--output", "-o", required=True, help="zarr store to create, e.g. distances.zarr")
    c.add_argument(
        "--metrics",
        type=_metrics_arg,
        default=_METRICS,
        help="comma-separated, from euclidean,chebyshev (default: euclidean,chebyshev)",
    )
    c.add_argument(
        "--dtype", choices=("float32", "float16", "float64"), default="float32", help="stored dtype (default: float32)"
    )
    c.add_argument(
        "--chunk-steps", type=_positive, help="snapshots per task and store chunk (default: auto, ~16 MiB per task)"
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
        help="store compression (default: auto, chosen per variable: see README)",
    )
    c.add_argument(
        "--nonfinite",
        choices=("raise", "propagate"),
        default="raise",
        help="NaN/Inf in the history: stop with an error, or give NaN distances (default: raise)",
    )
    _add_scheduler(c)
    _add_store_overwrite(c)
    c.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted job: compute only the blocks missing from --output (default: start anew)",
    )
    c.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(c)
    c.add_argument(
        "--safetensors",
        metavar="OUT.safetensors",
        help="also export the store to this safetensors file (or URL: s3://..., with --storage-options), as the"
        " notebook saves it (default: no export)",
    )
    c.set_defaults(func=_cmd_compute)

    e = sub.add_parser("export", help="export a distance store to one safetensors file (as the notebook saves it)")
    e.add_argument("store", help="zarr store written by 'dask-pdist compute'")
    e.add_argument(
        "output",
        help="safetensors file to create, e.g. pairwise_distances.safetensors, or a URL (s3://bucket/d.safetensors)",
    )
    e.add_argument("--dtype", choices=("float32", "float16"), default=None, help="stored dtype (default: the store's)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing file at OUTPUT (default: refuse)")
    _add_scheduler(e)
    e.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    e.add_argument("--allow-incomplete", action="store_true", help=_ALLOW_INCOMPLETE_HELP)
    _add_storage_options(e)
    e.set_defaults(func=_cmd_export)

    s = sub.add_parser("synth", help="write a synthetic bf16 history (safetensors)")
    s.add_argument("output", help="file to write, e.g. history.safetensors")
    s.add_argument("--steps", type=_positive, default=5001, help="snapshots (default: 5001)")
    s.add_argument("--vocab", type=_positive, default=128, help="tokens per snapshot (default: 128)")
    s.add_argument("--dim", type=_positive, default=64, help="embedding dims (default: 64)")
    s.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes (default: 42)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file at OUTPUT (default: refuse)")
    s.set_defaults(func=_cmd_synth)

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
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser("summary", help="per-step statistics of a store; optional plot")
    m.add_argument(
        "store",
        nargs="+",
        help="zarr store written by compute; several stores (or a quoted glob, 'out/*.zarr') are runs",
    )
    m.add_argument(
        "--plot",
        metavar="FILE.png",
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
    k.add_argument("--metric", choices=_METRICS, default="chebyshev", help="distance (default: chebyshev)")
    k.add_argument("--key", help=_KEY_HELP)
    k.add_argument(
        "--token-ids",
        metavar="SPEC",
        help=_TOKEN_IDS_HELP + " (history inputs only; cluster ids are then positions within the subset)",
    )
    k.add_argument(
        "--output", "-o", metavar="OUT.zarr", help="write the clusters Dataset as a zarr store (default: none)"
    )
    k.add_argument("--events", metavar="EVENTS.csv", help="write the events as CSV (step,kind,tokens) (default: none)")
    k.add_argument(
        "--plot", metavar="FILE.png", help="draw groups over steps with the events, needs matplotlib (default: no plot)"
    )
    k.add_argument(
        "--overwrite", action="store_true", help="replace existing --output / --events files (default: refuse)"
    )
    k.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(k)
    k.set_defaults(func=_cmd_clusters)

    n = sub.add_parser("neighbours", help="exact k nearest tokens of every token at every step, into a zarr store")
    n.add_argument("input", nargs="+", help="history, as for compute")
    n.add_argument("-k", type=_positive, required=True, help="neighbours per token (at most tokens - 1)")
    n.add_argument("--metric", choices=_METRICS, default="euclidean", help="distance (default: euclidean)")
    n.add_argument("--output", "-o", required=True, help="zarr store to create, e.g. neighbours.zarr")
    n.add_argument("--token-ids", metavar="SPEC", help=_TOKEN_IDS_HELP)
    n.add_argument("--key", help=_KEY_HELP)
    n.add_argument("--tokens", help="text file with one token label per line (default: token ids 0..V-1)")
    n.add_argument("--chunk-steps", type=_positive, help="snapshots per read of the history (default: auto)")
    n.add_argument(
        "--nonfinite",
        choices=("raise", "propagate"),
        default="raise",
        help="NaN/Inf in the history: stop with an error, or give NaN distances, ranked last (default: raise)",
    )
    _add_scheduler(n)
    _add_store_overwrite(n)
    n.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)
    _add_storage_options(n)
    n.set_defaults(func=_cmd_neighbours)

    # --debug also after the subcommand; SUPPRESS keeps the main parser's value when absent
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return p


def _progress_bar(desc: str, **tqdm_kwargs):  # noqa: ANN003, ANN202
    from tqdm.dask import TqdmCallback

    class _Bar(TqdmCallback):
        # a failed run clears its bar, so that the error is the one line left on stderr
        def _finish(self, dsk, state, failed):
            if failed:
                self.pbar.leave = False
            self.pbar.close()

    return _Bar(desc=desc, unit="task", file=sys.stderr, **tqdm_kwargs)


def _run(delayed, scheduler: str | None, progress: bool) -> None:
    if scheduler:
        from distributed import Client
        from distributed import progress as dist_progress

        with Client(scheduler) as client:
            future = client.compute(delayed)
            if progress:
                dist_progress(future)
                print(file=sys.stderr)
            future.result()
        return
    import dask
    from dask.threaded import get as threads

    # the local scheduler passed as a function: a name ("threads") or none makes dask look
    # for a distributed client, which imports dask.distributed (~0.2 s) whenever it is installed
    if progress:
        with _progress_bar("computing"):
            dask.compute(delayed, scheduler=threads)
    else:
        dask.compute(delayed, scheduler=threads)


def _progress(desc: str, args: argparse.Namespace):  # noqa: ANN202
    """A dask progress bar on stderr that shows only after 1 s, and never off a terminal."""
    import contextlib

    if getattr(args, "no_progress", False):
        return contextlib.nullcontext()
    # disable=None: tqdm turns itself off when stderr is not a terminal
    return _progress_bar(desc, delay=1.0, disable=None)


def _resume_command(argv: Sequence[str]) -> str:
    import shlex

    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    return "dask-pdist " + " ".join(shlex.quote(a) for a in kept) + " --resume"


def _compute(
    args: argparse.Namespace, input_path: str | list[str], output: str, overwrite: bool, resume: bool = False
) -> None:
    import dask_pdist as dp
    from dask_pdist.report import format_summary
    from dask_pdist.store import DEFAULT_COMPRESSOR

    t0 = time.perf_counter()
    history = dp.open_history(
        input_path,
        key=getattr(args, "key", None),
        chunks=getattr(args, "chunk_steps", None) or "auto",
        tokens=getattr(args, "tokens", None),
        nonfinite=getattr(args, "nonfinite", "raise"),
        token_ids=getattr(args, "token_ids", None),
        steps=getattr(args, "steps", None),
        storage_options=_opts(args, input_path),
    )
    ds = dp.pairwise_distances(
        history,
        metrics=getattr(args, "metrics", _METRICS),
        dtype=getattr(args, "dtype", "float32"),
        token_chunk=getattr(args, "token_chunk", None) or "auto",
    )
    from dask_pdist.bookkeeping import store_path

    store = store_path(output, _opts(args, output))
    existed = resume and store.is_dir()
    delayed = dp.to_zarr(
        ds,
        store,
        compressor=getattr(args, "compressor", None) or DEFAULT_COMPRESSOR,
        overwrite=overwrite,
        resume=resume,
        compute=False,
    )
    if existed:  # to_zarr has cleared the flags of blocks whose chunk files are gone
        from dask_pdist.store import store_progress

        done, complete = store_progress(store)
        state = (
            "complete: nothing to compute (`dask-pdist verify` also checks every chunk's checksum)"
            if complete
            else f"{int((done == 0).sum())} of {done.size} blocks to compute"
        )
        print(f"{output}: resuming, {state}", file=sys.stderr)
    print(
        f"{history.attrs['source']} [{history.name}]: {history.sizes['step']:,} steps"
        f" x {history.sizes['token']:,} tokens"
        f" x {history.sizes['dim']:,} dims ({history.attrs['input_dtype']}) -> {output}",
        flush=True,  # stdout: an error found by the compute is then the one line on stderr
    )
    from dask_pdist.store import stop_job

    try:
        _run(delayed, getattr(args, "scheduler", None), not args.no_progress)
    except (dp.InputError, OverflowError) as exc:  # stopped by its input: no resume can finish it
        if args.debug:
            raise
        print(f"dask-pdist: error: {exc}; {stop_job(store, exc)}", file=sys.stderr)
        raise _Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt as exc:
        from dask_pdist.store import store_progress

        stop_job(store, exc)
        done, _ = store_progress(store)
        print(
            f"dask-pdist: interrupted; {int(done.sum())} of {done.size} blocks are written and kept."
            f" Resume with:\n  {_resume_command(args.argv)}",
            file=sys.stderr,
        )
        raise _Exit(130) from None
    except OSError as exc:  # disk full, file too large, lost mount: the written blocks stay valid
        stop_job(store, exc)
        print(
            f"dask-pdist: error: writing {output} failed: {exc}. The blocks written so far are kept;"
            f" fix the cause, then resume with: {_resume_command(args.argv)}",
            file=sys.stderr,
        )
        raise _Exit(1) from None
    elapsed = time.perf_counter() - t0
    print(f"\nWrote {output} in {elapsed:.1f} s\n")
    # chunks=None: two steps read straight through zarr, no dask graph (nor its look-up of a
    # distributed client, ~0.2 s of dask.distributed import when it is installed)
    print(format_summary(dp.open_distances(store, chunks=None)))


def _cmd_compute(args: argparse.Namespace) -> None:
    from dask_pdist.runs import find_runs

    # several paths: per-checkpoint files the shell expanded from an unquoted glob, or runs
    source = args.input[0] if len(args.input) == 1 else args.input
    runs = find_runs(source, args.key, storage_options=args.storage_options)
    if runs is not None:
        _compute_runs(args, runs)
        return
    if args.safetensors:
        _check_export_target(args.safetensors, args.overwrite, _opts(args, args.safetensors))
    _compute(args, source, args.output, args.overwrite, args.resume)
    if args.safetensors:
        _export(args, args.output, args.safetensors, None, args.overwrite)


def _compute_runs(args: argparse.Namespace, runs: dict) -> None:
    from dask_pdist.errors import InputError
    from dask_pdist.report import step_summary
    from dask_pdist.runs import compute_runs

    if args.safetensors:
        raise InputError(
            f"--safetensors exports one store, but the input matches {len(runs)} runs;"
            " export each store afterwards: dask-pdist export DIR/<run>.zarr OUT.safetensors"
        )
    t0 = time.perf_counter()
    batch = compute_runs(
        runs,
        args.output,
        key=args.key,
        chunks=args.chunk_steps or "auto",
        tokens=args.tokens,
        nonfinite=args.nonfinite,
        token_ids=args.token_ids,
        metrics=args.metrics,
        dtype=args.dtype,
        token_chunk=args.token_chunk or "auto",
        compressor=args.compressor,
        overwrite=args.overwrite,
        resume=args.resume,
        storage_options=args.storage_options,
        compute=False,
    )
    for run in batch.runs:
        if run.state == "complete":
            print(f"{run.name}: {run.store} is complete: skipped (--overwrite recomputes it)", file=sys.stderr)
        else:
            what = "resuming, " if run.state == "resume" else ""
            blocks = f"{run.blocks} block{'s' if run.blocks != 1 else ''}"
            print(f"{run.name}: {run.source} -> {run.store} ({what}{blocks})", flush=True)
    if batch.delayed is not None:
        try:
            _run(batch.delayed, args.scheduler, not args.no_progress)
        except KeyboardInterrupt:
            print(f"dask-pdist: interrupted. Resume with:\n  {_resume_command(args.argv)}", file=sys.stderr)
            raise _Exit(130) from None
    print(f"\n{len(batch.runs)} runs in {time.perf_counter() - t0:.1f} s:")
    for run in batch.runs:
        import dask_pdist as dp

        ds = dp.open_distances(run.store)
        final = ", ".join(f"{name} mean {mean:.6f}" for name, (_, _, mean) in step_summary(ds, -1).items())
        skipped = " (skipped: complete)" if run.state == "complete" else ""
        print(
            f"  {run.name}: {ds.sizes['step']:,} steps x {ds.sizes['token_i']:,} tokens -> {run.store}{skipped};"
            f" step {ds['step'].values[-1]}: {final}"
        )


def _check_export_target(output: str, overwrite: bool, storage_options: dict | None = None) -> None:
    # refuse before the (long) compute, not after it
    from dask_pdist.export import check_target

    check_target(output, overwrite, storage_options)


def _export(args: argparse.Namespace, store: str, output: str, dtype: str | None, overwrite: bool) -> None:
    import contextlib

    import dask_pdist as dp

    t0 = time.perf_counter()
    from dask_pdist.locations import Location, locate

    ds = dp.open_distances(
        store, allow_incomplete=getattr(args, "allow_incomplete", False), storage_options=_opts(args, store)
    )
    options = _opts(args, output)
    _check_export_target(output, overwrite, options)
    print(f"{store} -> {output}", file=sys.stderr)
    scheduler = getattr(args, "scheduler", None)
    remote = isinstance(locate(output, options), Location)
    # to_safetensors computes itself (compute=True) so that it removes its temporary file
    # (aborts its upload) if the run fails; the progress bar and the client apply to that
    # compute. To a URL it computes window after window: its own bar counts the bytes sent.
    with contextlib.ExitStack() as stack:
        if scheduler:
            from distributed import Client

            stack.enter_context(Client(scheduler))
        elif not remote:
            stack.enter_context(_progress("exporting", args))
        show = not scheduler and remote and not args.no_progress
        dp.to_safetensors(
            ds, output, dtype=dtype, overwrite=overwrite, storage_options=options, progress=None if show else False
        )
    size = locate(output, options).size("export") if remote else os.path.getsize(output)
    print(f"Wrote {output} ({size / 1e6:,.1f} MB) in {time.perf_counter() - t0:.1f} s")


def _cmd_export(args: argparse.Namespace) -> None:
    _export(args, args.store, args.output, args.dtype, args.overwrite)


def _cmd_synth(args: argparse.Namespace) -> None:
    from dask_pdist.synthetic import write_synthetic_history

    path = write_synthetic_history(
        args.output, steps=args.steps, vocab=args.vocab, dim=args.dim, seed=args.seed, overwrite=args.overwrite
    )
    print(f"Wrote {path}: embedding_history ({args.steps}, {args.vocab}, {args.dim}) bf16, seed {args.seed}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from dask_pdist.store import is_store
    from dask_pdist.synthetic import is_synthetic_history, write_synthetic_history

    out = Path(args.output_dir)
    history = out / "embedding_evolution.safetensors"
    store = out / "pairwise_distances.zarr"
    if store.exists() and not is_store(store):
        from dask_pdist.errors import StoreError

        raise StoreError(f"{store}: exists and is not a dask_pdist store; choose another --output-dir")
    # replace only an earlier demo's files (a synthetic history, marked in its header):
    # anything else there may be real data
    if not args.overwrite and (history.exists() or store.exists()) and not is_synthetic_history(history):
        found = history if history.exists() else store
        raise FileExistsError(
            f"{found}: already exists and is not an earlier demo's output; the demo would replace it:"
            " choose another --output-dir, or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_synthetic_history(history, overwrite=True)
    print(
        f"Wrote synthetic history {history} (5001 x 128 x 64 bf16) in {time.perf_counter() - t0:.1f} s", file=sys.stderr
    )
    _compute(args, str(history), str(store), overwrite=True)
    print()
    _clusters(args, str(history), threshold=0.0, metric="chebyshev")


def _cmd_neighbours(args: argparse.Namespace) -> None:
    import dask_pdist as dp

    t0 = time.perf_counter()
    history = dp.open_history(
        args.input[0] if len(args.input) == 1 else args.input,
        key=args.key,
        chunks=args.chunk_steps or "auto",
        tokens=args.tokens,
        nonfinite=args.nonfinite,
        token_ids=args.token_ids,
        storage_options=args.storage_options,
    )
    nbrs = dp.neighbours(history, k=args.k, metric=args.metric)
    delayed = dp.neighbours_to_zarr(nbrs, args.output, overwrite=args.overwrite, compute=False)
    print(
        f"{history.attrs['source']} [{history.name}]: {history.sizes['step']:,} steps"
        f" x {history.sizes['token']:,} tokens x {history.sizes['dim']:,} dims ({history.attrs['input_dtype']})"
        f" -> {args.k} nearest ({args.metric}) -> {args.output}",
        file=sys.stderr,
    )
    _run(delayed, args.scheduler, not args.no_progress)
    print(f"\nWrote {args.output} in {time.perf_counter() - t0:.1f} s")


def _neighbours_summary(args: argparse.Namespace) -> None:
    import numpy as np

    import dask_pdist as dp

    nbrs = dp.open_neighbours(args.store)
    churn = dp.neighbour_churn(nbrs)["mean_churn"].values
    steps = nbrs["step"].values
    print(
        f"Neighbours store: {nbrs.sizes['step']:,} steps x {nbrs.sizes['token']:,} tokens,"
        f" k = {nbrs.sizes['rank']} ({nbrs.attrs.get('metric', '?')})"
    )
    if len(steps) < 2:
        print("Mean neighbour churn over steps: n/a (one step)")
        return
    print(
        f"Mean neighbour churn over steps: {np.mean(churn[1:]):.6f}"
        " (fraction of a token's k neighbours at the previous step that are gone, mean over tokens and steps)"
    )
    rows = np.unique(np.linspace(1, len(steps) - 1, min(args.rows, len(steps) - 1)).round().astype(int))
    print(f"\n{'step':>8} {'mean_churn':>12}")
    for r in rows:
        print(f"{steps[r]:>8} {churn[r]:>12.6f}")


def _cmd_summary(args: argparse.Namespace) -> None:
    import numpy as np

    import dask_pdist as dp
    from dask_pdist.knn_store import is_neighbours_store
    from dask_pdist.report import format_summary, summarize

    if len(args.store) == 1 and is_neighbours_store(args.store[0]):
        args.store = args.store[0]
        if args.plot or args.threshold is not None or args.step is not None:
            raise ValueError(
                f"{args.store}: a neighbours store; --plot, --threshold and --step apply to distance stores"
            )
        return _neighbours_summary(args)
    stores = args.store[0] if len(args.store) == 1 else args.store
    ds = dp.open_distances(stores, allow_incomplete=args.allow_incomplete, storage_options=_opts(args, stores))
    if "run" in ds.dims:
        _summary_runs(args, ds)
        return
    args.store = args.store[0]
    if args.step is not None and args.step not in ds["step"].values:
        steps = ds["step"].values
        raise ValueError(f"{args.store}: no step {args.step}; steps run {steps[0]}..{steps[-1]} ({len(steps)} steps)")
    if args.plot:
        from dask_pdist.plotting import require_matplotlib

        require_matplotlib()  # fail before the long pass over the store
    with _progress("summarizing", args):
        summary = summarize(ds, threshold=args.threshold).compute()
    print(format_summary(ds))
    rows = np.unique(np.linspace(0, ds.sizes["step"] - 1, min(args.rows, ds.sizes["step"])).round().astype(int))
    cols = [
        c
        for c in ("euclidean_mean", "euclidean_max", "chebyshev_mean", "chebyshev_max", "quantization_neighbours")
        if c in summary
    ]
    print("\nOver training:")
    print(f"{'step':>8} " + " ".join(f"{c:>24}" for c in cols))
    for r in rows:
        values = [summary[c].values[r] for c in cols]
        print(
            f"{summary['step'].values[r]:>8} "
            + " ".join(f"{v:>24.6f}" if isinstance(v, np.floating) else f"{v:>24}" for v in values)
        )
    if args.step is not None:
        from dask_pdist.report import format_step

        print()
        print(format_step(ds, args.step, summary))
    if args.plot:
        from dask_pdist.plotting import plot_summary

        step = args.step if args.step is not None else int(ds["step"].values[-1])
        plot_summary(summary, ds, step, args.plot)
        print(f"\nWrote {args.plot}")


def _summary_runs(args: argparse.Namespace, ds) -> None:
    from dask_pdist.errors import InputError
    from dask_pdist.report import format_summary, summarize

    if args.plot or args.step is not None:
        raise InputError("--plot and --step take one store; give one run's store")
    with _progress("summarizing", args):
        summary = summarize(ds, threshold=args.threshold).compute()
    first = next(c for c in summary.data_vars if c.endswith("_mean"))
    for name in ds["run"].values:
        has = summary[first].sel(run=name).notnull().values  # steps this run has (aligned runs: NaN elsewhere)
        run = ds.sel(run=name).isel(step=has)
        print(f"Run {name}:")
        print("  " + format_summary(run).replace("\n", "\n  "))
    print(f"\n{ds.sizes['run']} runs, {ds.sizes['step']:,} distinct steps")


def _cmd_verify(args: argparse.Namespace) -> int:
    from dask_pdist.store import verify_store

    if args.no_progress:
        problems = verify_store(args.store, storage_options=_opts(args, args.store))
    else:
        from tqdm import tqdm

        # disable=None: off when stderr is not a terminal; delay: only for runs over a second
        with tqdm(desc="verifying", unit="chunk", file=sys.stderr, delay=1.0, disable=None) as bar:

            def advance(checked: int, total: int) -> None:
                bar.total = total
                bar.update(checked - bar.n)

            problems = verify_store(args.store, progress=advance, storage_options=_opts(args, args.store))
    for problem in problems:
        print(f"{args.store}: {problem}")
    if problems:
        return 1
    print(f"{args.store}: every chunk present and its checksum correct")
    return 0


def _cmd_info(args: argparse.Namespace) -> None:
    from dask_pdist.report import describe

    # several paths: per-checkpoint files the shell expanded from an unquoted glob
    print(
        describe(args.path[0] if len(args.path) == 1 else args.path, key=args.key, storage_options=args.storage_options)
    )


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a tool killed by it reports


def _interrupt_once(signum, frame) -> None:
    # The first Ctrl-C stops the run; later ones are ignored: a second quick Ctrl-C used to
    # land in the clean stop (the resume hint, the shutdown of zarr's and dask's threads) and
    # print asyncio tracebacks instead of the hint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _catch_interrupts() -> object:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # ignored (nohup, background job) or handled by the caller: leave it be
    return signal.signal(signal.SIGINT, _interrupt_once)


def _is_store(path: str, storage_options: dict | None = None) -> bool:
    from dask_pdist.locations import locate
    from dask_pdist.store import is_store  # imports the kernels (numba): only for folders

    return is_store(locate(path, storage_options))


def _clusters(
    args: argparse.Namespace,
    input_path: str | list[str],
    threshold: float | str,
    metric: str,
    key: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    token_ids: str | None = None,
) -> tuple:
    import contextlib

    import dask
    import dask.threaded

    import dask_pdist as dp
    from dask_pdist.events import format_clusters
    from dask_pdist.locations import is_url

    options = _opts(args, input_path)
    if (
        isinstance(input_path, str)
        and (os.path.isdir(input_path) or is_url(input_path))
        and _is_store(input_path, options)
    ):
        if key:
            raise ValueError(f"{input_path}: --key names a history tensor, but this is a distance store; drop --key")
        if token_ids:
            raise ValueError(
                f"{input_path}: --token-ids applies to a history, but this is a distance store;"
                " run clusters on the history, or compute a subset store with compute --token-ids"
            )
        source = dp.open_distances(input_path, storage_options=options)
        what = f"{input_path} (distance store)"
    else:
        source = dp.open_history(input_path, key=key, token_ids=token_ids, storage_options=options)
        what = f"{source.attrs['source']} [{source.name}]"
    if output:  # before any output: a clusters store is local (one error line)
        from dask_pdist.locations import local_path

        local_path(output, "clusters store")
    ds = dp.clusters(source, threshold, metric=metric)
    target = f" -> {output}" if output else ""
    print(f"{what}: clusters at {metric} distance <= {threshold}{target}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        # the threaded scheduler itself: dask's lookup (even of scheduler="threads") imports
        # distributed when installed, ~0.5 s, to look for a client this command never has
        stack.enter_context(dask.config.set(scheduler=dask.threaded.get))
        if not args.no_progress:
            from tqdm.dask import TqdmCallback

            stack.enter_context(TqdmCallback(desc="clustering", unit="task", file=sys.stderr))
        if output:
            import xarray as xr

            dp.write_clusters(ds, output, overwrite=overwrite)
            ds = xr.open_zarr(output)
        else:
            ds = ds.compute()
    events = dp.cluster_events(ds)
    print(format_clusters(ds, events))
    return ds, events


def _cmd_clusters(args: argparse.Namespace) -> None:
    from dask_pdist.errors import InputError
    from dask_pdist.events import write_events_csv

    # refuse before the work, not after it
    for target in (args.events, args.plot):
        if target and os.path.isdir(target):
            raise InputError(f"{target}: is a directory; give a file name")
        parent = os.path.dirname(target or "") or "."
        if target and not os.path.isdir(parent):
            raise FileNotFoundError(f"{target}: parent directory {parent} does not exist")
    if args.events and os.path.exists(args.events) and not args.overwrite:
        raise FileExistsError(f"{args.events}: already exists; pass --overwrite to replace it")
    if args.plot:
        from dask_pdist.plotting import require_matplotlib

        require_matplotlib()
    source = args.input[0] if len(args.input) == 1 else args.input
    ds, events = _clusters(
        args, source, args.threshold, args.metric, args.key, args.output, args.overwrite, args.token_ids
    )
    if args.output:
        print(f"\nWrote {args.output}")
    if args.events:
        write_events_csv(events, args.events, overwrite=args.overwrite)
        print(f"Wrote {args.events} ({len(events):,} events)")
    if args.plot:
        from dask_pdist.plotting import plot_clusters

        plot_clusters(ds, events, args.plot)
        print(f"Wrote {args.plot}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with one line on stderr)."""
    try:
        try:
            return _run_cli(argv)
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught below
    except BrokenPipeError:
        # the reader went away (`dask-pdist ... | head`): stop quietly; point stdout at devnull
        # so the interpreter's own flush at exit has nowhere to fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run_cli(argv: Sequence[str] | None) -> int:
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    previous = _catch_interrupts()
    try:
        return _main(args)
    finally:
        # called from Python: give the caller its handler back. As the program, keep ignoring
        # a second Ctrl-C until the process has exited cleanly.
        if previous is not None and not as_program:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        return args.func(args) or 0
    except BrokenPipeError:
        raise
    except _Exit as stop:
        return stop.code
    except KeyboardInterrupt:
        print("dask-pdist: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, OverflowError, TypeError, ImportError) as exc:
        if args.debug:
            raise
        print(f"dask-pdist: error: {exc}", file=sys.stderr)
        return (
            EXIT_BAD_INPUT
            if isinstance(
                exc,
                (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, OverflowError),
            )
            else 1
        )
    return 0
