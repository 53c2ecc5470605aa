"""``dask-pdist movement`` and ``dask-pdist divergence``: per step and token, how far each token
moves between steps, or how far runs are apart; written to a zarr store, a few summary rows
printed. They call the public API; heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dask_pdist.cli.common import (
    _KEY_HELP,
    _NO_PROGRESS_HELP,
    _TOKEN_IDS_HELP,
    _add_scheduler,
    _add_store_overwrite,
    _opts,
    _output,
    _positive,
    _steps_per_chunk,
    _write_output,
)

_FORMAT_HELP = (
    "number format whose representable steps chebyshev_ulp counts: auto (the input's: bf16, f16, f32; none"
    " for f64), bf16, f16, f32 or none (default: auto)"
)


def _format_arg(text: str) -> str | None:
    if text == "none":
        return None
    if text not in ("auto", "bf16", "f16", "f32"):
        raise argparse.ArgumentTypeError(f"{text!r}: choose auto, bf16, f16, f32 or none")
    return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", required=True, metavar="OUT.zarr", type=_output, help="zarr store to create")
    p.add_argument("--key", help=_KEY_HELP)
    p.add_argument("--token-ids", metavar="SPEC", help=_TOKEN_IDS_HELP)
    p.add_argument("--number-format", type=_format_arg, default="auto", help=_FORMAT_HELP)
    p.add_argument(
        "--dtype", choices=("float32", "float16", "float64"), default="float32", help="stored dtype (default: float32)"
    )
    p.add_argument(
        "--nonfinite",
        choices=("raise", "propagate"),
        default="raise",
        help="NaN/Inf in the history: stop with an error, or compute anyway: a NaN gives NaN distances, an infinity"
        " infinite ones (NaN where it meets the same infinity) (default: raise)",
    )
    p.add_argument("--rows", type=_positive, default=10, help="rows in the printed series (default: 10)")
    _add_scheduler(p)
    _add_store_overwrite(p)
    p.add_argument("--no-progress", action="store_true", help=_NO_PROGRESS_HELP)


def add_parsers(sub: Any) -> None:
    """Add the ``movement`` and ``divergence`` subcommands to the main parser's subparsers."""
    m = sub.add_parser("movement", help="per step and token, how far each token moved since lag steps before")
    m.add_argument("input", nargs="+", help="history, as for compute")
    m.add_argument(
        "--lag", type=_positive, default=1, help="compare each step with the one LAG positions before (default: 1)"
    )
    m.add_argument(
        "--chunk-steps",
        type=_steps_per_chunk,
        help="output steps per task (default: auto); a store chunk holds whole tasks",
    )
    _common(m)
    m.set_defaults(func=_cmd_movement)

    d = sub.add_parser("divergence", help="per step and token, how far apart runs' embeddings of each token are")
    d.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="two or more histories of one shape (any input compute takes; a quoted glob of one run's checkpoints"
        " is one run); named by the path parts that differ",
    )
    group = d.add_mutually_exclusive_group()
    group.add_argument("--reference", metavar="NAME", help="the run the others are compared with (default: the first)")
    group.add_argument(
        "--all-pairs", action="store_true", help="compare every pair of runs (default: each vs reference)"
    )
    d.add_argument(
        "--chunk-steps", type=_steps_per_chunk, help="steps per task (default: auto); a store chunk holds whole tasks"
    )
    _common(d)
    d.set_defaults(func=_cmd_divergence)


def _open(args: argparse.Namespace, source: str | list[str], chunks: int | str = "auto"):  # noqa: ANN202
    import dask_pdist as dp

    return dp.open_history(
        source,
        key=args.key,
        chunks=chunks,
        nonfinite=args.nonfinite,
        token_ids=args.token_ids,
        storage_options=_opts(args, source),
    )


def _write(args: argparse.Namespace, ds: Any, desc: str) -> Any:
    import dask_pdist as dp
    from dask_pdist.io.paths import local_path

    target = local_path(args.output, f"{desc} store")
    delayed = dp.write_comparison(ds, target, overwrite=args.overwrite, compute=False)
    _write_output(delayed, str(target), args, desc)  # a failure: one line, nothing kept, lock released
    return dp.open_comparison(target)


def _print_rows(ds: Any, columns: tuple[str, ...], rows: int, lead: str = "step") -> None:
    import numpy as np

    cols = [c for c in columns if c in ds]
    n = ds.sizes["step"]
    picked = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))
    print(f"{lead:>8} " + " ".join(f"{c:>18}" for c in cols))
    values = {c: ds[c].values for c in cols}
    for r in picked:
        cells = [f"{v:>18.6g}" if isinstance(v, np.floating) else f"{v:>18}" for v in (values[c][r] for c in cols)]
        print(f"{ds['step'].values[r]:>8} " + " ".join(cells))


def print_comparison(ds: Any, rows: int) -> None:
    """The per-step summary table of a movement or divergence Dataset (``summary`` of its store)."""
    from dask_pdist.conventions import KIND_ATTR

    if ds.attrs.get(KIND_ATTR) == "movement":
        lag = ds.attrs.get("lag", "?")
        print(f"Movement between steps {lag} apart ({ds.sizes['step']:,} steps; the first {lag} dropped):")
        _print_rows(
            ds, ("chebyshev_max", "chebyshev_mean", "euclidean_mean", "chebyshev_ulp_max", "moved_tokens"), rows
        )
        return
    for pair in ds["pair"].values:
        print(f"\n{pair}:")
        _print_rows(
            ds.sel(pair=pair),
            ("chebyshev_max", "chebyshev_mean", "euclidean_mean", "chebyshev_ulp_max", "differing_tokens"),
            rows,
        )


def _cmd_movement(args: argparse.Namespace) -> None:
    import dask_pdist as dp

    t0 = time.perf_counter()
    source = args.input[0] if len(args.input) == 1 else args.input
    history = _open(args, source)
    if args.chunk_steps is None:  # read in the chunks movement computes in (open_history plans for V x V)
        from dask_pdist.graphs.movement import movement_step_chunk

        history = _open(args, source, movement_step_chunk(history.sizes["token"], history.sizes["dim"]))
    ds = dp.movement(
        history, lag=args.lag, number_format=args.number_format, dtype=args.dtype, step_chunk=args.chunk_steps or "auto"
    )
    print(
        f"{history.attrs['source']} [{history.name}]: {history.sizes['step']:,} steps"
        f" x {history.sizes['token']:,} tokens x {history.sizes['dim']:,} dims ({history.attrs['input_dtype']})"
        f" -> movement, lag {args.lag} -> {args.output}",
        file=sys.stderr,
    )
    out = _write(args, ds, "movement")
    print_comparison(out, args.rows)
    print(f"\nWrote {args.output} in {time.perf_counter() - t0:.1f} s")


def _cmd_divergence(args: argparse.Namespace) -> None:
    import warnings

    import dask_pdist as dp
    from dask_pdist.graphs.movement import movement_step_chunk
    from dask_pdist.store.runs import run_names

    t0 = time.perf_counter()
    if len(args.runs) < 2:
        raise ValueError(f"divergence needs two or more runs, got {len(args.runs)}: {args.runs[0]}")
    names = run_names(args.runs)
    histories = {name: _open(args, run) for name, run in zip(names, args.runs, strict=True)}
    first = next(iter(histories.values()))
    chunk = args.chunk_steps or movement_step_chunk(first.sizes["token"], first.sizes["dim"])
    histories = {name: _open(args, run, chunk) for name, run in zip(names, args.runs, strict=True)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ds = dp.divergence(
            histories,
            reference=args.reference,
            pairs="all" if args.all_pairs else "reference",
            number_format=args.number_format,
            dtype=args.dtype,
            step_chunk=chunk,
        )
    for w in caught:
        print(f"dask-pdist: warning: {w.message}", file=sys.stderr)
    print(
        f"{len(names)} runs ({', '.join(names)}): {ds.sizes['step']:,} common steps x {ds.sizes['token']:,} tokens"
        f" -> divergence, {ds.attrs['reference'] if args.all_pairs else 'vs ' + ds.attrs['reference']}"
        f" -> {args.output}",
        file=sys.stderr,
    )
    out = _write(args, ds, "divergence")
    print_comparison(out, args.rows)
    print(f"\nWrote {args.output} in {time.perf_counter() - t0:.1f} s")
