"""``dask-pdist summary``, ``verify``, ``info``, ``clusters``, ``neighbours`` and ``report``: they call the
public API on a store or a history and print. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import os
import sys
import time

from dask_pdist.cli.common import _opts, _progress, _run, _write_output, check_grow_flags
from dask_pdist.conventions import counted
from dask_pdist.store.job import local_scheduler  # (light: imports dask only when called)


def _cmd_neighbours(args: argparse.Namespace) -> None:
    check_grow_flags(args)
    source = args.input[0] if len(args.input) == 1 else args.input
    if args.follow:
        from dask_pdist.cli.follow import follow

        follow(args, source, args.output, _neighbours_once)
        return
    _neighbours_once(args, source, args.output, args.overwrite, append=args.append)


def _steps_in(output: str, opener) -> tuple[int, object]:  # noqa: ANN001
    # steps an output written whole holds now and its last step (0, None: none yet); for the
    # line an append prints
    try:
        steps = opener(output)["step"].values
    except (OSError, ValueError):
        return 0, None
    return len(steps), (steps[-1] if len(steps) else None)


def _neighbours_once(
    args: argparse.Namespace,
    source: str | list[str],
    output: str,
    overwrite: bool,
    resume: bool = False,
    append: bool = False,
    brief: bool = False,
) -> bool:
    """Write (or grow) the neighbours store; returns whether it gained steps. ``brief``
    (--follow): one line per append."""
    import dask_pdist as dp
    from dask_pdist.cli.compute import _make_parent, _open

    t0 = time.perf_counter()
    history = _open(args, source, None)  # the options compute takes, read the same way
    before = _steps_in(output, dp.open_neighbours)[0] if append else 0
    nbrs = dp.neighbours(history, k=args.k, metric=args.metric, engine=args.engine)
    _make_parent(args, output)
    delayed = dp.neighbours_to_zarr(nbrs, output, overwrite=overwrite, compute=False, append=append)
    if not brief:
        print(
            f"{history.attrs['source']} [{history.name}]: {history.sizes['step']:,} steps"
            f" x {history.sizes['token']:,} tokens x {history.sizes['dim']:,} dims ({history.attrs['input_dtype']})"
            f" -> {args.k} nearest ({args.metric}) -> {output}",
            file=sys.stderr,
        )
    _write_output(delayed, output, args)
    return _said_written(output, before, _steps_in(output, dp.open_neighbours), time.perf_counter() - t0, append, brief)


def _said_written(output: str, before: int, now: tuple[int, object], seconds: float, append: bool, brief: bool) -> bool:
    after, last = now
    if append and after == before:
        if not brief:
            print(f"{output}: nothing new to append (it holds the input's {counted(after, 'step')})")
        return False
    if brief:
        print(
            f"{output}: appended {after - before:,} steps, up to step {last} ({after:,} in all) in {seconds:.1f} s",
            flush=True,
        )
    else:
        grown = f" (appended {after - before:,} steps)" if append and before else ""
        print(f"\nWrote {output}{grown} in {seconds:.1f} s")
    return True


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
    import dask_pdist as dp
    from dask_pdist.analyses.movement_store import comparison_kind
    from dask_pdist.analyses.neighbours_store import is_neighbours_store

    if len(args.store) == 1 and comparison_kind(args.store[0]):
        if args.plot or args.threshold is not None or args.step is not None:
            raise ValueError(
                f"{args.store[0]}: a {comparison_kind(args.store[0])} store; --plot, --threshold and --step apply"
                " to distance stores"
            )
        from dask_pdist.cli.movement import print_comparison

        print_comparison(dp.open_comparison(args.store[0]), args.rows)
        return None
    if len(args.store) == 1 and is_neighbours_store(args.store[0]):
        args.store = args.store[0]
        if args.plot or args.threshold is not None or args.step is not None:
            raise ValueError(
                f"{args.store}: a neighbours store; --plot, --threshold and --step apply to distance stores"
            )
        return _neighbours_summary(args)
    return _summary_of(args)  # (read again when a writer changes the store: cli/common.py read_again)


def _summary_of(args: argparse.Namespace) -> None:
    import numpy as np

    import dask_pdist as dp
    from dask_pdist.analyses.summary import format_summary, summarize

    stores = args.store[0] if len(args.store) == 1 else args.store
    ds = dp.open_distances(stores, allow_incomplete=args.allow_incomplete, storage_options=_opts(args, stores))
    if "run" in ds.dims:
        _summary_runs(args, ds)
        return
    args.store = args.store[0]
    if "being_written" in ds.attrs:  # a store a job is writing (--follow): what is whole so far
        print(f"dask-pdist: note: {args.store}: {ds.attrs['being_written']}", file=sys.stderr)
    if args.step is not None and args.step not in ds["step"].values:
        steps = ds["step"].values
        raise ValueError(f"{args.store}: no step {args.step}; steps run {steps[0]}..{steps[-1]} ({len(steps)} steps)")
    if args.plot:
        from dask_pdist.analyses.plotting import require_matplotlib
        from dask_pdist.io.paths import local_path

        local_path(args.plot, "plot")
        require_matplotlib()  # fail before the long pass over the store
    with _progress("summarizing", args):
        summary = summarize(ds, threshold=args.threshold).compute(**local_scheduler())
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
        from dask_pdist.analyses.summary import format_step

        print()
        print(format_step(ds, args.step, summary))
    if args.plot:
        from dask_pdist.analyses.plotting import plot_summary

        step = args.step if args.step is not None else int(ds["step"].values[-1])
        plot_summary(summary, ds, step, args.plot)
        print(f"\nWrote {args.plot}")


def _summary_runs(args: argparse.Namespace, ds) -> None:
    from dask_pdist.analyses.summary import format_summary, summarize
    from dask_pdist.errors import InputError

    if args.plot or args.step is not None:
        raise InputError("--plot and --step take one store; give one run's store")
    with _progress("summarizing", args):
        summary = summarize(ds, threshold=args.threshold).compute(**local_scheduler())
    first = next(c for c in summary.data_vars if c.endswith("_mean"))
    for name in ds["run"].values:
        has = summary[first].sel(run=name).notnull().values  # steps this run has (aligned runs: NaN elsewhere)
        run = ds.sel(run=name).isel(step=has)
        print(f"Run {name}:")
        print("  " + format_summary(run).replace("\n", "\n  "))
    print(f"\n{ds.sizes['run']} runs, {ds.sizes['step']:,} distinct steps")


def _cmd_verify(args: argparse.Namespace) -> int:
    from dask_pdist.store.verification import verify_store

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
    from dask_pdist.analyses.info import describe

    # several paths: per-checkpoint files the shell expanded from an unquoted glob
    print(
        describe(
            args.path[0] if len(args.path) == 1 else args.path,
            key=args.key,
            storage_options=_opts(args, args.path[0] if len(args.path) == 1 else args.path),
        )
    )


def _is_store(path: str, storage_options: dict | None = None) -> bool:
    from dask_pdist.io.paths import locate
    from dask_pdist.store.layout import is_store

    return is_store(locate(path, storage_options))


def clusters_report(
    args: argparse.Namespace,
    input_path: str | list[str],
    threshold: float | str,
    metric: str,
    key: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    token_ids: str | None = None,
    append: bool = False,
    brief: bool = False,
) -> tuple:
    """Clusters of a history or a distance store, optionally written (or grown: ``append``),
    printed with their events (``brief``: only one line per append, for --follow); shared by
    ``clusters`` and ``demo``. Returns (clusters Dataset, events DataFrame)."""
    import dask_pdist as dp
    from dask_pdist.analyses.events import format_clusters
    from dask_pdist.io.paths import is_url

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
        source = dp.open_history(
            input_path,
            key=key,
            token_ids=token_ids,
            storage_options=options,
            follow_symlinks=getattr(args, "follow_symlinks", False),
        )
        what = f"{source.attrs['source']} [{source.name}]"
    if output:  # before any output: a clusters store is local (one error line)
        from dask_pdist.io.paths import local_path

        local_path(output, "clusters store")
    ds = dp.clusters(source, threshold, metric=metric, engine=getattr(args, "engine", "cpu"))
    target = f" -> {output}" if output else ""
    if not brief:
        print(f"{what}: clusters at {metric} distance <= {threshold}{target}", file=sys.stderr)
    if output:
        from dask_pdist.cli.compute import _make_parent

        t0 = time.perf_counter()
        before = _steps_in(output, dp.open_clusters)[0] if append else 0
        _make_parent(args, output)
        job = dp.write_clusters(ds, output, overwrite=overwrite, compute=False, append=append)
        _write_output(job, output, args, "clustering")
        ds = dp.open_clusters(output)
        now = (ds.sizes["step"], ds["step"].values[-1])
        grew = _said_written(output, before, now, time.perf_counter() - t0, append, True) if brief else True
    else:
        ds = _run(ds, None, not args.no_progress, desc="clustering")
    events = dp.cluster_events(ds)
    if not brief:
        print(format_clusters(ds, events))
    return (ds, events, grew) if brief else (ds, events)


def _cmd_clusters(args: argparse.Namespace) -> None:
    from dask_pdist.analyses.events import write_events_csv
    from dask_pdist.errors import InputError
    from dask_pdist.io.paths import local_path

    # refuse before the work, not after it
    for target, role in ((args.events, "file of events"), (args.plot, "plot")):
        if target:
            local_path(target, role)
        if target and os.path.isdir(target):
            raise InputError(f"{target}: is a directory; give a file name")
        parent = os.path.dirname(target or "") or "."
        if target and not os.path.isdir(parent):
            raise FileNotFoundError(f"{target}: parent directory {parent} does not exist")
    # with --append the events (and plot) of the grown store replace those of the store it was
    if args.events and os.path.exists(args.events) and not (args.overwrite or args.append):
        raise FileExistsError(f"{args.events}: already exists; pass --overwrite to replace it")
    if args.plot:
        from dask_pdist.analyses.plotting import require_matplotlib

        require_matplotlib()
    check_grow_flags(args)
    if (args.append or args.follow) and not args.output:
        raise InputError("--append/--follow grow a clusters store: give it with --output")
    source = args.input[0] if len(args.input) == 1 else args.input
    if args.follow:
        if args.events or args.plot:
            raise InputError("--events and --plot describe a finished store: run clusters on it after following")
        from dask_pdist.cli.follow import follow

        follow(args, source, args.output, _clusters_once)
        return
    import dask_pdist as dp

    before = _steps_in(args.output, dp.open_clusters)[0] if args.append and args.output else 0
    ds, events = clusters_report(
        args, source, args.threshold, args.metric, args.key, args.output, args.overwrite, args.token_ids, args.append
    )
    if args.output and args.append and before == ds.sizes["step"]:
        print(f"\n{args.output}: nothing new to append (it holds the input's {counted(before, 'step')})")
    elif args.output:
        print(f"\nWrote {args.output}")
    if args.events:
        write_events_csv(events, args.events, overwrite=args.overwrite or args.append)
        print(f"Wrote {args.events} ({len(events):,} events)")
    if args.plot:
        from dask_pdist.analyses.plotting import plot_clusters

        plot_clusters(ds, events, args.plot)
        print(f"Wrote {args.plot}")


def _clusters_once(
    args: argparse.Namespace,
    source: str | list[str],
    output: str,
    overwrite: bool,
    resume: bool = False,
    append: bool = False,
    brief: bool = False,
) -> bool:
    # one append of --follow: returns whether the store gained steps
    return clusters_report(
        args, source, args.threshold, args.metric, args.key, output, overwrite, args.token_ids, append, brief
    )[-1]


def _cmd_report(args: argparse.Namespace) -> None:
    import dask_pdist as dp

    t0 = time.perf_counter()
    with _progress("reading", args):
        out = dp.report(
            args.store,
            args.output,
            clusters=args.clusters,
            neighbours=args.neighbours,
            allow_incomplete=args.allow_incomplete,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
            storage_options=_opts(args, args.store),
        )
    size = os.path.getsize(out)
    print(f"Wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
