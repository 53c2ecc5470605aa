"""Publishing an output: write it under a hidden name next to the target, then make it visible.

Every output of dask_pdist (a distance store's creation, a safetensors export, a clusters store,
a neighbours store, one store per run) goes through this module, with one guarantee:

    **the previous output stays readable until the new one is complete, then the new one
    replaces it; a kill at any moment leaves the old one or the new one, whole.**

How, per kind of target (docs/publishing.md says the same for users):

- **Local file** (an export): written as a hidden file, then ``os.replace`` (atomic).
- **Local folder** (a zarr store): built as a hidden folder, then swapped in. Where the
  platform has it (Linux >= 3.15 with ext4, xfs, btrfs, tmpfs, ...), the swap is one atomic
  ``renameat2(RENAME_EXCHANGE)``: the new folder takes the name and the hidden name holds the
  old one, which is then deleted. Elsewhere it is two renames (old aside to a hidden
  ``.replaced`` name, new into place); a kill between them leaves the old output under the
  hidden name, and the next :func:`clean_stale` for that target (every writer calls it before
  it starts) puts it back.
- **Object storage**: a file is one PUT or a multipart upload that the store publishes only
  when it completes (:mod:`dask_pdist.io.upload`); a zarr store is a key prefix that has no
  rename: its objects are uploaded first and the root ``zarr.json``, which makes the prefix a
  store, last. Replacing a store there first deletes the old root ``zarr.json``, so between
  that moment and the new root's upload the target is *not a store* (readers say so); it is
  never a mix of old and new.

Hidden names carry the writer's host and pid (``.NAME.HOST-PID.UUID.partial``), so a later
writer removes a killed writer's leftovers and never a live concurrent writer's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from dask_pdist.errors import StoreError
from dask_pdist.io.paths import Location, is_remote, missing_bucket, remove_tree

__all__ = [
    "building",
    "check_parent",
    "hidden_name",
    "hidden_key",
    "clean_stale",
    "publish",
    "discard",
    "settle_zarr_writes",
    "file_write",
    "abandon",
    "named",
    "pid_alive",
    "process_start",
]

_KINDS = ("partial", "replaced")


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux: field 22 of
    ``/proc/PID/stat``); None where that is unknown (no such process, no ``/proc``).

    With the pid it names one process: a pid reused after a kill belongs to a later one."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        # the command name (field 2) is in parentheses and may hold spaces or ")": fields
        # 3 onwards follow its last ")"
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host; with ``started`` (its :func:`process_start`
    when recorded), whether that very process does, not a later one given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is None:  # recorded by a version before start times, or unknown here: the pid decides
        return True
    now = process_start(pid)
    return now is None or now == started


def check_parent(target: Path | Location) -> None:
    """Refuse a target whose folder does not exist or is not writable (on object storage:
    whose bucket does not exist). The one place these messages are written."""
    if is_remote(target):  # no folders to create or check: the bucket must exist
        bucket = missing_bucket(target)
        if bucket is not None:
            raise StoreError(f"{target}: bucket {bucket} does not exist (or is not visible with these credentials)")
        return
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"{target}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"{target}: parent directory {parent} is not writable")


def hidden_name(target: Path, kind: str = "partial") -> Path:
    """A fresh hidden name next to ``target`` that names this writer (host, pid).

    >>> hidden_name(Path("out/d.zarr")).name.startswith(".d.zarr.")
    True
    """
    parent = target.parent if str(target.parent) else Path(".")
    return parent / f".{target.name}.{socket.gethostname()}-{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}"


def hidden_key(key: str) -> str:
    """:func:`hidden_name` for an object key or URL path (``bucket/out/x.safetensors``).

    >>> hidden_key("bucket/out/x.safetensors").startswith("bucket/out/.x.safetensors.")
    True
    """
    folder, _, name = key.rpartition("/")
    hidden = hidden_name(Path(name)).name
    return f"{folder}/{hidden}" if folder else hidden


def _leftovers(target: Path) -> list[tuple[Path, str, bool]]:
    # (path, kind, owner dead): hidden names of target; names without host-pid (older
    # versions) count as dead
    parent = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.(?:(?P<host>.+)-(?P<pid>\d+)\.)?[0-9a-f]{{8}}\.(?P<kind>{'|'.join(_KINDS)})"
    )
    found = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or p.is_symlink():
            continue
        dead = m["pid"] is None or (m["host"] == socket.gethostname() and not pid_alive(int(m["pid"])))
        found.append((p, m["kind"], dead))
    return found


def clean_stale(target: Path | Location) -> list[Path]:
    """Tidy what killed writers left next to ``target``: restore an old output that was moved
    aside (``.replaced``) when the target itself is gone, delete every other leftover whose
    writer is dead on this host. Live writers' hidden outputs are never touched. Returns the
    paths deleted."""
    if is_remote(target):
        return []
    removed = []
    for path, kind, dead in sorted(_leftovers(target), key=lambda e: e[1] != "replaced"):
        if not dead:
            continue
        if kind == "replaced" and not os.path.lexists(target):
            os.rename(path, target)  # the old output goes back where it was
            continue
        discard(path)
        removed.append(path)
    return removed


def abandon(target: Path | Location, exc: BaseException | None = None) -> str:
    """After a failed job of this process that was building ``target`` (compute=False work
    run by the caller): remove this process's hidden output and release its lock on
    ``target``. Returns what to tell the user (for :class:`~dask_pdist.store.job.Job`'s
    ``on_stop``)."""
    from dask_pdist.io.locks import release_lock

    try:
        if not is_remote(target):
            me = f"{socket.gethostname()}-{os.getpid()}"
            for path, _kind, _dead in _leftovers(Path(target)):
                if f".{me}." in path.name:
                    discard(path)
    finally:
        release_lock(target)
    return "nothing was kept"


def named(exc: BaseException, target: object) -> BaseException:
    """An OSError (disk full, quota, lost mount) that names ``target`` and says nothing was
    kept; other exceptions unchanged. For ``raise named(exc, path) from exc``."""
    if isinstance(exc, OSError) and exc.errno is not None and str(target) not in str(exc):
        return type(exc)(exc.errno, f"{target}: writing failed: {exc.strerror}; nothing was kept")
    return exc


def discard(hidden: Path | str) -> None:
    """Remove a hidden output (file or folder); nothing if it is gone. Zarr writes still
    running in this process are waited for first (:func:`settle_zarr_writes`)."""
    hidden = Path(hidden)
    settle_zarr_writes()
    if hidden.is_dir() and not hidden.is_symlink():
        shutil.rmtree(hidden, ignore_errors=True)
    else:
        hidden.unlink(missing_ok=True)


#: Chunk files being written by this process's threads outside zarr (store/chunk_files.py).
_FILE_WRITES = threading.Condition()
_IN_FLIGHT = [0]


@contextlib.contextmanager
def file_write() -> Iterator[None]:
    """Around a write of a file into an output outside zarr: :func:`discard` waits for it."""
    with _FILE_WRITES:
        _IN_FLIGHT[0] += 1
    try:
        yield
    finally:
        with _FILE_WRITES:
            _IN_FLIGHT[0] -= 1
            _FILE_WRITES.notify_all()


def settle_zarr_writes(timeout: float = 60.0) -> None:
    """Wait until the zarr operations this process has in flight have ended, and its writes of
    chunk files outside zarr (:func:`file_write`), at most ``timeout`` seconds each; nothing
    if there are none.

    Why: zarr writes a node's documents with ``asyncio.gather`` (an array's ``zarr.json`` and
    its parents' at once), each write in a thread. When one fails (a full disk), the caller
    gets the error at once while the others go on, and a local write first recreates its
    parent folders: a hidden output removed right after the failure would come back (a
    folder holding one ``zarr.json``). zarr offers no way to wait for them; the writes are
    the tasks pending on its event loop."""
    import asyncio
    import sys

    with _FILE_WRITES:  # (the dask threads of a failed job may still be writing)
        _FILE_WRITES.wait_for(lambda: _IN_FLIGHT[0] == 0, timeout)
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    try:
        if asyncio.get_running_loop() is loop:
            return  # called from zarr's own loop: waiting here would deadlock
    except RuntimeError:
        pass

    async def pending() -> None:
        # zarr's own operations only (an object store's client may keep tasks of its own there)
        others = [t for t in asyncio.all_tasks() - {asyncio.current_task()} if _from_zarr(t)]
        if others:
            await asyncio.wait(others, timeout=timeout)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(pending(), loop).result(timeout + 5)


def _from_zarr(task: object) -> bool:
    code = getattr(getattr(task, "get_coro", lambda: None)(), "cr_code", None)
    return code is not None and f"{os.sep}zarr{os.sep}" in code.co_filename


def publish(hidden: Path | str, target: Path | str, *, replace: bool) -> None:
    """Make the complete output at ``hidden`` visible as ``target``, with the module's guarantee.

    ``replace=False`` refuses (StoreError, ``hidden`` discarded) a target that appeared
    meanwhile; ``replace=True`` swaps it out and deletes it once the new one has the name.
    """
    hidden, target = Path(hidden), Path(target)
    if not os.path.lexists(target):
        if _rename2(hidden, target, _NOREPLACE) is False:
            if os.path.lexists(target):
                raise FileExistsError(target)
            os.rename(hidden, target)
        return
    if not replace:
        discard(hidden)
        raise StoreError(f"{target}: appeared while writing; pass overwrite=True (--overwrite) to replace it")
    if hidden.is_file():
        os.replace(hidden, target)  # atomic for files
        return
    if _rename2(hidden, target, _EXCHANGE) is not False:
        discard(hidden)  # now the old output
        return
    aside = hidden_name(target, "replaced")
    os.rename(target, aside)  # a kill from here ...
    os.rename(hidden, target)  # ... to here leaves the old one at `aside`: clean_stale restores it
    discard(aside)


@contextlib.contextmanager
def building(target: Path | Location, *, replace: bool = True, last: str = "zarr.json") -> Iterator[Path]:
    """Build a folder output in a hidden local folder, then publish it at ``target``, holding
    the output's writer lock (:mod:`dask_pdist.io.locks`) throughout.

    On an exception inside the block the hidden folder is removed and ``target`` is left as it
    was. A URL target is built in a local temporary folder and uploaded object by object,
    ``last`` (the file that makes the prefix an output, a zarr store's root ``zarr.json``) last.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with building(Path(d) / "out") as tmp:
    ...         tmp.mkdir(); _ = (tmp / "zarr.json").write_text("{}")
    ...     sorted(p.name for p in Path(d).iterdir())
    ['out']
    """
    from dask_pdist.io.locks import holding_lock  # (it imports pid_alive from here)

    with holding_lock(target):  # one writer per output, the same lock for every kind
        if is_remote(target):
            with tempfile.TemporaryDirectory(prefix="dask_pdist-") as scratch:
                tmp = Path(scratch) / "out"
                yield tmp
                _upload_tree(tmp, target, replace=replace, last=last)
            return
        clean_stale(target)
        tmp = hidden_name(target)
        try:
            yield tmp
        except OSError as exc:  # a full disk, a lost mount: named, and what was kept
            discard(tmp)
            raise named(exc, target) from exc
        except BaseException:
            discard(tmp)
            raise
        publish(tmp, target, replace=replace)


def _upload_tree(local: Path, target: Location, *, replace: bool, last: str) -> None:
    # an object store has no rename: every object goes up, `last` (what makes the prefix an
    # output) at the end; replacing first deletes the old `last` (the old output stops being
    # one: never a mix of old and new), then its other objects
    if target.exists():
        if not replace:
            raise StoreError(f"{target}: appeared while writing; pass overwrite=True (--overwrite) to replace it")
        (target / last).unlink(missing_ok=True)
        remove_tree(target)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.relative_to(local).as_posix() != last)
    for file in files:
        (target / file.relative_to(local).as_posix()).upload(file)
    (target / last).upload(local / last)


_NOREPLACE, _EXCHANGE = 1, 2
_AT_FDCWD = -100


def _rename2(src: Path, dst: Path, flags: int) -> bool | None:
    """renameat2(2) with ``flags``; False where the platform or file system lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


_RENAMEAT2: list = []


def _renameat2():  # type: ignore[no-untyped-def]
    if not _RENAMEAT2:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
            fn.restype = ctypes.c_int
        except (AttributeError, OSError):  # not glibc >= 2.28 (macOS, Windows, musl < 1.2.?)
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]
