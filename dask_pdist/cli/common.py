"""What the ``dask-pdist`` subcommands share: argument types, common options, exit codes, progress
bars and the local run. Light imports only (``dask-pdist --help`` stays fast)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dask_pdist._program import PROGRAM
from dask_pdist.conventions import ALL_METRICS

EXIT_BAD_INPUT = 2

_TOKEN_IDS_HELP = (
    "only these tokens: comma list of indices and half-open ranges a:b (e.g. 0:1000,5000,7000:7100),"
    " or @FILE with one index per line; the original indices are kept as coordinates (default: all tokens)"
)


class _Exit(Exception):
    """Stop with this exit code; the message is already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class CheckpointGone(Exception):
    """An append of ``--follow`` failed because a checkpoint it read was deleted meanwhile
    (Trainer's ``save_total_limit``): the follower retries with the checkpoints kept."""


def deleted_while_read(exc: BaseException) -> str | None:
    """The file a failure could not find that is gone now (deleted while read), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = getattr(exc, "filename", None)
        if isinstance(exc, FileNotFoundError) and name and not os.path.exists(name):
            return str(name)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _metrics_arg(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad or not metrics:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {bad or text!r}; choose from {','.join(ALL_METRICS)}")
    return metrics


def _output(text: str) -> str:
    """An output path: '-' (standard output) is not one, every output here is a file or store
    written whole under a hidden name first, then renamed."""
    if text.strip() == "-":
        raise argparse.ArgumentTypeError(
            "'-' (standard output) is not supported: outputs are written whole, then published under"
            " their name; give a file name"
        )
    return text


#: Commands that read a store: when a writer changes it under their read (an append rewriting
#: a partly filled last block: ``StoreChangedError``), they open it and read it again.
READS_STORES = ("summary", "export", "clusters", "neighbours", "report", "info")
#: Reads of a store tried while a writer changes it under them.
READ_TRIES = 5


def read_again(command: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Run ``command(args)``; when it fails because a writer changed its store since it was
    opened, run it again from the start (at most :data:`READ_TRIES` times). Its standard
    output is printed once, from the run that ended (a dropped try printed nothing)."""
    import contextlib
    import io

    from dask_pdist.errors import StoreChangedError

    given = {k: list(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    for attempt in range(READ_TRIES):
        vars(args).update({k: list(v) if isinstance(v, list) else v for k, v in given.items()})
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                result = command(args)
        except StoreChangedError:
            if attempt + 1 < READ_TRIES:
                continue
            sys.stdout.write(out.getvalue())
            raise
        except BaseException:
            sys.stdout.write(out.getvalue())
            raise
        sys.stdout.write(out.getvalue())
        return result
    return None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _steps_per_chunk(text: str) -> int | None:
    # --chunk-steps: a positive integer, or "auto" (the default: None)
    return None if text.strip().lower() == "auto" else _positive(text)


def _threshold_arg(text: str) -> float | str:
    if text == "bf16" or re.fullmatch(r"\d+ulps?", text.strip()):
        return text.strip()
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give 0, bf16, a count of representable values such as 2ulp, or a distance >= 0"
        ) from None
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
    "read a store whose job was interrupted, its missing blocks as NaN (default: refuse an incomplete store;"
    " one a live job is writing reads as its whole steps so far)"
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
    from dask_pdist.io.paths import any_url

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


def _add_grow(p: argparse.ArgumentParser, what: str) -> None:
    """--append, --follow and --idle-exit of an output written whole (clusters, neighbours)."""
    p.add_argument(
        "--append",
        action="store_true",
        help=f"grow --output with the input's steps past its last one (only those are computed; {what} across the"
        " boundary as a one-shot run gives them); creates --output if absent (default: refuse an existing store)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="then watch the run folder (or glob) and append each new complete checkpoint, until Ctrl-C/SIGTERM"
        " or --idle-exit (exit 0) (default: compute once)",
    )
    p.add_argument(
        "--idle-exit",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --follow: end after this many seconds without a new checkpoint (default: follow until stopped)",
    )


def check_grow_flags(args: argparse.Namespace) -> None:
    """Refuse combinations of --append/--follow/--idle-exit that mean nothing."""
    from dask_pdist.errors import InputError

    if (args.append or args.follow) and args.overwrite:
        raise InputError(
            "--append/--follow grow --output; they do not take --overwrite (delete the store to start anew)"
        )
    if args.idle_exit is not None and not args.follow:
        raise InputError("--idle-exit applies to --follow: add --follow, or leave it out")


def settle_heap() -> None:
    """As the program, once: move every object alive now (the imported modules, the planned
    graph) out of the garbage collector's reach (``gc.freeze``). They live until the process
    exits, yet each full collection walked all of them again: measured, collections took
    0.2-0.4 CPU-s of a 3 s ``compute`` (5001 x 128 x 64), and the interpreter's exit another
    0.25 s. Objects frozen are still freed by their reference counts; only a cycle among them
    waits for the exit. Called from Python (tests, notebooks) it does nothing."""
    import gc

    if PROGRAM["settle"]:
        PROGRAM["settle"] = False
        gc.freeze()


def _lost_connection_noise(record: Any) -> bool:
    # asyncio's "Task exception was never retrieved" (logged when the task is collected) for a
    # request the object store's HTTP client (aiohttp) was still sending when the endpoint went
    # away: the job's own failure names the store in one line, this is its echo, with a traceback
    exc = record.exc_info[1] if record.exc_info else None
    if record.name != "asyncio" or "exception was never retrieved" not in str(record.msg) or exc is None:
        return False
    if isinstance(exc, ConnectionError):  # reset, refused, aborted, broken pipe (not disk full etc.)
        return True
    return any(  # the HTTP clients' own connection errors (aiohttp's, botocore's)
        c.__name__ in ("ClientConnectionError", "ConnectionError")
        and c.__module__.split(".")[0] in ("aiohttp", "botocore")
        for c in type(exc).__mro__
    )


def quiet_lost_connections() -> None:
    """As the program: drop asyncio's echoes of requests an object store's client lost (see
    :func:`_lost_connection_noise`); the error itself is reported once, by the job."""
    import logging

    logging.getLogger("asyncio").addFilter(lambda record: not _lost_connection_noise(record))


def _run(delayed, scheduler: str | None, progress: bool, on_stop=None, desc: str = "computing"):  # noqa: ANN001, ANN202
    from dask_pdist.store.job import Job

    settle_heap()

    return Job(delayed, desc=desc, on_stop=on_stop).execute(scheduler=scheduler, progress=progress)


def _write_output(delayed, output: str, args: argparse.Namespace, desc: str = "computing") -> None:  # noqa: ANN001
    """Run the job that builds a (non-resumable) output: a failure removes the partial output,
    releases the lock and says so in one line naming the output (exit 1)."""
    from pathlib import Path

    from dask_pdist.io.publish import abandon

    try:
        _run(delayed, getattr(args, "scheduler", None), not args.no_progress, lambda exc: abandon(Path(output)), desc)
    except Exception as exc:
        if not isinstance(exc, OSError) and failure_cause(exc) is None:
            raise
        _debug_traceback(args)
        why = failure_cause(exc) or (f"{exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc))
        error_line(f"writing {output} failed: {why}; nothing was kept")
        raise _Exit(1) from None


def _progress(desc: str, args: argparse.Namespace):  # noqa: ANN202
    """The dask progress bar on stderr for reports: shows only after 1 s, and never off a terminal."""
    import contextlib

    if getattr(args, "no_progress", False):
        return contextlib.nullcontext()
    from dask_pdist.store.job import progress_bar

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return progress_bar(desc, delay=1.0, disable=None)


def _resume_command(argv: Sequence[str]) -> str:
    """The same command plus ``--resume``, for the user to copy; a ``--storage-options`` value
    is shown as ``'...'`` (it may hold a secret, and this line lands in job logs). A command
    with ``--append`` (or ``--follow``) resumes as itself: it finishes an interrupted store."""
    import shlex

    if "--append" in argv or "--follow" in argv:
        argv = [a for a in argv if a != "--resume"]
    kept, hidden = [], False
    for i, a in enumerate(argv):
        if a in ("--overwrite", "--resume"):
            continue
        if i and argv[i - 1] == "--storage-options":
            kept.append("'...'")
            hidden = True
        elif a.startswith("--storage-options="):
            kept.append("--storage-options='...'")
            hidden = True
        else:
            kept.append(shlex.quote(a))
    note = "  (with the same --storage-options)" if hidden else ""
    again = "" if "--append" in argv or "--follow" in argv else " --resume"
    return "dask-pdist " + " ".join(kept) + again + note


def failure_cause(exc: BaseException, output: object = None) -> str | None:
    """One line saying what stopped a job that is not the user's input: an object store that
    stopped answering (naming its endpoint), no memory, no threads. None for anything else
    (its own message is already the line)."""
    import re

    from dask_pdist.io.location import _reason, _unreachable

    where = f"{output}: " if output else ""
    if _unreachable(exc) or any(_unreachable(e) for e in _chain(exc)):
        reason = next((_reason(e) for e in (exc, *_chain(exc)) if _unreachable(e)), _reason(exc))
        found = re.search(r"(https?://[^/\"' ]+)", reason)
        endpoint = found.group(1) if found else os.environ.get("AWS_ENDPOINT_URL", "its endpoint")
        return (
            f"{where}the object store at {endpoint} stopped answering ({reason}); check the endpoint"
            " (AWS_ENDPOINT_URL or --storage-options endpoint_url) and the network"
        )
    if isinstance(exc, MemoryError):
        return (
            f"{where}out of memory ({_reason(exc)}); use smaller chunks (--chunk-steps), fewer workers,"
            " or raise the memory limit (ulimit -v, the job's --mem)"
        )
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return (
            f"{where}cannot start threads ({exc}); raise the process or memory limits (ulimit -u, ulimit -v),"
            " or use --scheduler with fewer threads"
        )
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], {id(exc)}
    while True:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        if exc is None or id(exc) in seen:
            return out
        seen.add(id(exc))
        out.append(exc)


def _debug_traceback(args: argparse.Namespace) -> None:
    """With --debug, the traceback of the exception being handled (before its one line)."""
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()


_API_FLAG = re.compile(r"\b[a-z_]+=(?:True|False|'[^']*'|[A-Za-z_\"]*) ?(?:\(|/ )(--[a-z][a-z-]*(?: [\w.]+)?)\)?")


def cli_words(text: str) -> str:
    """A library message as CLI users read it: ``pass overwrite=True (--overwrite)`` becomes
    ``pass --overwrite``, ``give key= / --key`` becomes ``give --key``.

    >>> cli_words("already exists; pass overwrite=True (--overwrite) to replace it")
    'already exists; pass --overwrite to replace it'
    >>> cli_words("name its embedding matrix; give key= / --key")
    'name its embedding matrix; give --key'
    >>> cli_words("(pass follow_symlinks=True / --follow-symlinks if that is intended)")
    '(pass --follow-symlinks if that is intended)'
    >>> cli_words("use dtype='float32' (--dtype float32)")
    'use --dtype float32'
    """
    return _API_FLAG.sub(r"\1", text)


def error_line(text: object) -> None:
    """Print the one error line of the CLI, in CLI words."""
    print(f"dask-pdist: error: {cli_words(str(text))}", file=sys.stderr)


def _add_engine(p: argparse.ArgumentParser) -> None:
    from dask_pdist.conventions import ENGINES

    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="cpu",
        help='where the kernels run: cpu, cuda (a GPU; pip install "dask_pdist[cuda]"), or auto (cuda when a GPU'
        " and the extra are present); the results are identical (default: cpu)",
    )
