"""``dask-pdist compute`` (one history or several runs), ``export``, ``synth`` and ``demo``: they parse
nothing, call the public API and print. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from dask_pdist.cli.common import (
    EXIT_BAD_INPUT,
    CheckpointGone,
    _debug_traceback,
    _Exit,
    _opts,
    _progress,
    _resume_command,
    _run,
    deleted_while_read,
    error_line,
    failure_cause,
)
from dask_pdist.conventions import METRICS, counted, human_size
from dask_pdist.errors import InputError, StoreError


def _stored_chunks(args: argparse.Namespace, output: str) -> tuple[int | None, int | None, int, int | None]:
    # an append or a resume writes in the store's chunks (unless told otherwise, then refused
    # if they differ; a store grown by appends keeps the chunks its first job chose, not a
    # fresh job's): (step chunk, token chunk, stored steps, unwritten steps of an interrupted
    # store, or None for a complete one); (None, None, 0, None) without a store
    from dask_pdist.io.paths import zarr_array
    from dask_pdist.store.append import stored_fingerprint
    from dask_pdist.store.layout import is_complete, is_store, read_root, store_path, store_progress

    store = store_path(output, _opts(args, output))
    if not (store.is_dir() and is_store(store)):
        return None, None, 0, None
    chunks = stored_fingerprint(store).get("chunks") or [None, None]
    stored = int(zarr_array(store / "step").shape[0])
    unwritten = None
    if chunks[0] and not is_complete(read_root(store)):  # (a complete store's flags, one file per block, unread)
        c = int(chunks[0])
        whole = store_progress(store)[0].all(axis=(1, 2))
        unwritten = stored - sum(max(0, min(stored, (b + 1) * c) - b * c) for b in map(int, whole.nonzero()[0]))
    return chunks[0], chunks[1], stored, unwritten


def _open(args: argparse.Namespace, input_path: str | list[str], step_chunk: int | None):  # noqa: ANN202
    import dask_pdist as dp

    return dp.open_history(
        input_path,
        key=getattr(args, "key", None),
        chunks=getattr(args, "chunk_steps", None)
        or step_chunk
        or getattr(args, "new_store_chunk_steps", None)
        or "auto",
        tokens=getattr(args, "tokens", None),
        nonfinite=getattr(args, "nonfinite", "raise"),
        token_ids=getattr(args, "token_ids", None),
        steps=getattr(args, "steps", None),
        storage_options=_opts(args, input_path),
        follow_symlinks=getattr(args, "follow_symlinks", False),
    )


def _make_parent(args: argparse.Namespace, output: str) -> None:
    # -o run/out/d.zarr creates run/out (an object store has no folders to create)
    from dask_pdist.io.paths import is_remote, locate

    where = locate(output, _opts(args, output))
    if not is_remote(where) and str(where.parent) and not where.parent.exists():
        where.parent.mkdir(parents=True, exist_ok=True)


def _compute(
    args: argparse.Namespace,
    input_path: str | list[str],
    output: str,
    overwrite: bool,
    resume: bool = False,
    append: bool = False,
    brief: bool = False,
) -> bool:
    """Compute (or append to) the store; returns False when an append found nothing new.
    ``brief`` (--follow): one line per append, no summary."""
    import dask_pdist as dp
    from dask_pdist.analyses.summary import format_summary
    from dask_pdist.store.codecs import DEFAULT_COMPRESSOR

    t0 = time.perf_counter()
    step_chunk, token_chunk, stored, unwritten = (
        _stored_chunks(args, output) if append or resume else (None, None, 0, None)
    )
    asked = getattr(args, "chunk_steps", None)
    if step_chunk and asked and int(asked) != int(step_chunk):
        what = "an append writes" if append else "--resume finishes it"
        raise InputError(
            f"--chunk-steps {asked}: {output} holds chunks of {counted(int(step_chunk), 'step')}, and {what}"
            " in the store's chunks: leave out --chunk-steps (to read it in other chunks, rechunk it afterwards:"
            " see the follow page)"
        )
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", dp.SkippedCheckpointWarning)
        history = _open(args, input_path, step_chunk)
    for w in notes:  # checkpoints being saved: left out, said (--follow: waited for in silence)
        if issubclass(w.category, dp.SkippedCheckpointWarning):
            if brief:
                continue
            print(f"dask-pdist: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    _make_parent(args, output)
    ds = dp.pairwise_distances(
        history,
        metrics=getattr(args, "metrics", METRICS),
        dtype=getattr(args, "dtype", "float32"),
        token_chunk=getattr(args, "token_chunk", None) or token_chunk or "auto",
        engine=getattr(args, "engine", "cpu"),
    )
    from dask_pdist.store.layout import store_path

    store = store_path(output, _opts(args, output))
    existed = resume and store.is_dir()
    try:
        with warnings.catch_warnings(record=True) as repairs:
            warnings.simplefilter("always", dp.RepairWarning)
            delayed = dp.to_zarr(
                ds,
                store,
                compressor=getattr(args, "compressor", None) or (None if append else DEFAULT_COMPRESSOR),
                overwrite=overwrite,
                resume=resume,
                append=append,
                compute=False,
            )
        for w in repairs:  # --resume found damaged chunks: say which it recomputes
            if issubclass(w.category, dp.RepairWarning):
                print(f"dask-pdist: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    except KeyboardInterrupt:  # while --resume re-reads the finished blocks' input
        print(
            f"dask-pdist: interrupted; nothing was written. Resume with:\n  {_resume_command(args.argv)}",
            file=sys.stderr,
        )
        raise _Exit(130) from None
    if existed:  # to_zarr has cleared the flags of blocks whose chunk files are gone
        from dask_pdist.store.layout import store_progress

        done, complete = store_progress(store)
        todo = int((done == 0).sum())
        state = (
            f"{todo} of {done.size} blocks to compute"
            if todo
            else "complete: nothing to compute (every written chunk is present and passes its checks)"
        )
        print(f"{output}: resuming, {state}", file=sys.stderr)
    if append and stored:
        from dask_pdist.io.paths import zarr_array
        from dask_pdist.store.layout import store_progress

        labels = history["step"].values
        new = int((labels > int(zarr_array(store / "step")[stored - 1])).sum())
        gone = stored - (len(labels) - new)  # checkpoints deleted since (save_total_limit): their distances kept
        if gone > 0 and not brief:
            print(
                f"{output}: {gone:,} of its {counted(stored, 'step')} {'is' if gone == 1 else 'are'} no longer in"
                f" {history.attrs['source']}"
                " (checkpoints deleted since): their distances are kept",
                file=sys.stderr,
            )
        if new == 0 and store_progress(store)[1]:  # checked unchanged by to_zarr, nothing written
            if not brief:
                print(f"{output}: holds every step of {history.attrs['source']} ({stored:,} in all): nothing to append")
            return False
        if not brief and unwritten is not None:  # an interrupted append: its store already holds the new steps
            more = f"; appending {counted(new, 'step')} after them" if new else ""
            print(
                f"{output}: finishing an interrupted append: {unwritten:,} of its {counted(stored, 'step')}"
                f" not written yet{more}",
                file=sys.stderr,
            )
        elif not brief:
            print(f"{output}: appending {counted(new, 'step')} to its {stored:,}", file=sys.stderr)
    if not (brief and stored):
        print(
            f"{history.attrs['source']} [{history.name}]: {history.sizes['step']:,} steps"
            f" x {history.sizes['token']:,} tokens"
            f" x {history.sizes['dim']:,} dims ({history.attrs['input_dtype']}) -> {output}",
            flush=True,  # stdout: an error found by the compute is then the one line on stderr
        )
    from dask_pdist.store.guards import stop_job

    try:
        _run(delayed, getattr(args, "scheduler", None), not args.no_progress, lambda exc: stop_job(store, exc))
    except (dp.InputError, OverflowError) as exc:  # stopped by its input (the message says what is kept)
        _debug_traceback(args)
        error_line(exc)
        raise _Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        from dask_pdist.store.layout import store_progress

        done, _ = store_progress(store)
        print(
            f"dask-pdist: interrupted; {int(done.sum())} of {done.size} blocks are written and kept."
            f" Resume with:\n  {_resume_command(args.argv)}",
            file=sys.stderr,
        )
        raise _Exit(130) from None
    except Exception as exc:  # disk full, lost mount, object store gone, no memory: written blocks stay valid
        gone = deleted_while_read(exc) if brief else None
        if gone:  # --follow: a checkpoint deleted while read (save_total_limit); retried with those kept
            raise CheckpointGone(gone) from exc
        cause = failure_cause(exc, output)
        if cause is None and not isinstance(exc, OSError):
            raise
        _debug_traceback(args)
        error_line(
            f"writing {output} failed: {cause or exc}. The blocks written so far are kept;"
            f" fix the cause, then resume with: {_resume_command(args.argv)}"
        )
        raise _Exit(1) from None
    elapsed = time.perf_counter() - t0
    if brief:
        last = int(history["step"].values[-1])
        held = stored + new if append and stored else history.sizes["step"]  # the store's, not the input's
        print(f"{output}: {counted(held, 'step')}, up to step {last} ({elapsed:.1f} s)", flush=True)
        return True
    print(f"\nWrote {output} in {elapsed:.1f} s\n")
    # chunks=None: two steps read straight through zarr, no dask graph (nor its look-up of a
    # distributed client, ~0.2 s of dask.distributed import when it is installed)
    print(format_summary(dp.open_distances(store, chunks=None)))
    return True


def _cmd_compute(args: argparse.Namespace) -> None:
    from dask_pdist.store.runs import find_runs

    # several paths: per-checkpoint files the shell expanded from an unquoted glob, or runs
    source = args.input[0] if len(args.input) == 1 else args.input
    runs = find_runs(source, args.key, storage_options=args.storage_options)
    if runs is not None:
        if args.follow:
            raise InputError(
                f"--follow follows one run, but the input matches {len(runs)} runs; follow one run per command"
            )
        _compute_runs(args, runs)
        return
    if args.safetensors:
        try:
            _check_export_target(args.safetensors, args.overwrite, _opts(args, args.safetensors))
        except StoreError as exc:
            if "already exists" not in str(exc):
                raise
            raise StoreError(
                f"{args.safetensors}: already exists; compute --overwrite replaces it and recomputes the store;"
                f" to replace only the file, export the store: dask-pdist export {args.output} {args.safetensors}"
                " --overwrite"
            ) from None
    if (args.append or args.follow) and args.resume:
        raise InputError("--append and --follow already finish an interrupted store: leave out --resume")
    if args.idle_exit is not None and not args.follow:
        raise InputError("--idle-exit applies to --follow: add --follow, or leave it out")
    if args.follow:
        if args.safetensors:
            raise InputError("--safetensors exports a finished store: export it after following (dask-pdist export)")
        from dask_pdist.cli.follow import follow

        follow(args, source, args.output, _compute)
        return
    _compute(args, source, args.output, args.overwrite, args.resume, args.append)
    if args.safetensors:
        try:
            _export(args, args.output, args.safetensors, None, args.overwrite)
        except KeyboardInterrupt:
            print(
                f"dask-pdist: interrupted while exporting; {args.output} is complete and nothing was kept at"
                f" {args.safetensors}. Export it with:\n  dask-pdist export {args.output} {args.safetensors}",
                file=sys.stderr,
            )
            raise _Exit(130) from None


def _compute_runs(args: argparse.Namespace, runs: dict) -> None:
    from dask_pdist.analyses.summary import step_summary
    from dask_pdist.errors import InputError
    from dask_pdist.store.runs import compute_runs

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
        chunks=args.chunk_steps or getattr(args, "new_store_chunk_steps", None) or "auto",
        tokens=args.tokens,
        nonfinite=args.nonfinite,
        token_ids=args.token_ids,
        metrics=args.metrics,
        dtype=args.dtype,
        token_chunk=args.token_chunk or "auto",
        compressor=args.compressor,
        overwrite=args.overwrite,
        resume=args.resume,
        append=args.append,
        storage_options=args.storage_options,
        compute=False,
    )
    for run in batch.runs:
        if run.state == "complete":
            print(f"{run.name}: {run.store} is complete: skipped (--overwrite recomputes it)", file=sys.stderr)
        else:
            what = {"resume": "resuming, ", "append": "appending, "}.get(run.state, "")
            blocks = f"{run.blocks} block{'s' if run.blocks != 1 else ''}"
            print(f"{run.name}: {run.source} -> {run.store} ({what}{blocks})", flush=True)
    if batch.delayed is not None:
        try:
            batch.compute(scheduler=args.scheduler, progress=not args.no_progress)
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
    from dask_pdist.store.export import check_target

    check_target(output, overwrite, storage_options)


def _export(args: argparse.Namespace, store: str, output: str, dtype: str | None, overwrite: bool) -> None:
    import contextlib

    import dask_pdist as dp

    t0 = time.perf_counter()
    from dask_pdist.io.paths import is_remote, locate

    ds = dp.open_distances(
        store, allow_incomplete=getattr(args, "allow_incomplete", False), storage_options=_opts(args, store)
    )
    if "run" in ds.dims:
        raise InputError(
            f"{store}: matches {ds.sizes['run']} run stores; a safetensors file holds one store:"
            " export each, dask-pdist export DIR/<run>.zarr OUT.safetensors"
        )
    options = _opts(args, output)
    _check_export_target(output, overwrite, options)
    print(f"{store} -> {output}", file=sys.stderr)
    if ds.attrs.get("being_written"):  # a store a job is writing (--follow): what is whole so far
        print(f"dask-pdist: note: {store}: {ds.attrs['being_written']}; exporting those steps", file=sys.stderr)
    scheduler = getattr(args, "scheduler", None)
    remote = is_remote(locate(output, options))
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
    print(f"Wrote {output} ({human_size(size)}) in {time.perf_counter() - t0:.1f} s")


def _cmd_export(args: argparse.Namespace) -> None:
    _export(args, args.store, args.output, args.dtype, args.overwrite)


def _cmd_synth(args: argparse.Namespace) -> None:
    from dask_pdist.io.synthetic import write_synthetic_history

    path = write_synthetic_history(
        args.output, steps=args.steps, vocab=args.vocab, dim=args.dim, seed=args.seed, overwrite=args.overwrite
    )
    print(f"Wrote {path}: embedding_history ({args.steps}, {args.vocab}, {args.dim}) bf16, seed {args.seed}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from dask_pdist.io.synthetic import is_synthetic_history, write_synthetic_history
    from dask_pdist.store.layout import is_store

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
    from dask_pdist.cli.analyses import clusters_report  # the planted events of the synthetic history

    clusters_report(args, str(history), threshold=0.0, metric="chebyshev")
