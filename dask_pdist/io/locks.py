"""The one-writer lock of every output: ``.NAME.lock`` next to it.

Every writer (compute, export, clusters, neighbours, runs, events, plots) takes it before it
touches anything, and holds it until its output is published: a second writer of the same
output is refused with a message naming the holder (pid, host, since when). A lock is taken
over only when its owner is provably gone (its process is dead on this host, or its pid now
belongs to a later process: the lock records the process's start time too); two processes
finding the same stale lock take it over one at a time (see :func:`_take_over`). On an
object store the lock is an object created by a conditional PUT (``If-None-Match: *``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dask_pdist.errors import StoreError
from dask_pdist.io.paths import Location, create_exclusive
from dask_pdist.io.publish import check_parent, pid_alive, process_start

#: errors of the machine (a full disk, a quota, a failing device) rather than of the output
_MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})

__all__ = ["lock_path", "acquire_lock", "release_lock", "holding_lock"]

Out = Path | Location
#: Locks this process holds, by lock path: a nested writer of the same output keeps it.
_HELD: dict[str, str] = {}
#: The thread that took each lock of this process, by token: a lock of this process is taken
#: over only from a thread that ended or by the thread that took it (one job after another),
#: never from another thread still running (a training callback's append beside a notebook's).
_OWNERS: dict[str, threading.Thread] = {}


def lock_path(path: Out) -> Out:
    return path.parent / f".{path.name}.lock"


def _create_exclusive(lock: Out, record: dict[str, Any]) -> bool:
    # False if the lock exists (O_EXCL locally, a conditional PUT on an object store)
    return create_exclusive(lock, json.dumps(record).encode())


def _holder(lock: Out) -> dict[str, Any] | None:
    """The lock's record; None if the lock is gone. Raises ValueError if it is unreadable."""
    if lock.is_symlink():  # never ours: we create regular files
        raise ValueError("it is a symbolic link")
    try:
        holder = json.loads(lock.read_text())
        _valid_pid(holder["pid"]), str(holder["host"]), _started(holder)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return holder


def _stale(holder: dict[str, Any]) -> bool:
    # provably gone: its process is dead on this host, or its pid was given to a later process
    # (a killed writer's pid reused: the start time recorded differs), or it is this process,
    # which runs one job after another; a lock of another host is never taken over
    pid = int(holder["pid"])
    if holder["host"] != socket.gethostname():
        return False
    if pid == os.getpid():
        owner = _OWNERS.get(str(holder.get("token")))
        return owner is None or owner is threading.current_thread() or not owner.is_alive()
    return not pid_alive(pid, _started(holder))


def _started(holder: dict[str, Any]) -> int | None:
    # the holder's process start time (io/publish.py process_start); None in a lock written
    # before start times were recorded, or where they are unknown: the pid alone decides
    started = holder.get("process_start")
    if started is not None and (isinstance(started, bool) or not isinstance(started, int)):
        raise ValueError(f"process_start {started!r} is not a start time")
    return started


def _valid_pid(value: object) -> int:
    # a pid as the kernel gives them: 1 .. 2^22 (Linux's pid_max ceiling), not 0 or -1 (which
    # kill() reads as process groups) nor a number too large for it
    pid = int(value)  # type: ignore[call-overload]
    if not 0 < pid <= 2**22:
        raise ValueError(f"pid {value!r} is not a process id")
    return pid


def _take_over(lock: Out, stale: dict[str, Any]) -> bool:
    """Remove ``lock`` if it still holds the ``stale`` record. Two processes finding the same
    stale lock must not both remove it (the second would delete the first one's new lock):
    the removal happens under a second, short-lived lock ``LOCK.takeover``, created
    exclusively, and only after re-reading the lock inside it. False if another process is
    taking it over (the caller retries and then finds that process's lock)."""
    guard = lock.parent / f"{lock.name}.takeover"
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    mine["process_start"] = process_start(os.getpid())
    if not create_exclusive(guard, json.dumps(mine).encode()):
        try:  # a takeover guard whose process died within those few milliseconds
            other = json.loads(guard.read_text())
            if other["host"] == mine["host"] and not pid_alive(int(other["pid"]), _started(other)):
                guard.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return False
    try:
        current = _holder(lock)
        if current is not None and current.get("token") == stale.get("token") and current["pid"] == stale["pid"]:
            lock.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)


def acquire_lock(path: Out, role: str = "store") -> str:
    """Take the one-writer lock of ``path`` (``.NAME.lock`` next to it); returns its token.

    Every writer of an output (compute, export, clusters, neighbours, runs, events, plots)
    takes it. A lock whose process is provably gone (dead on this host, or its pid now another
    process's, told by the start time the lock records) is taken over; so is
    one of this process taken by this thread or by a thread that ended (a Python caller
    running one job after another). Anything else is refused, naming the holder (another
    thread of this process still running included). On an object store the lock is an object created by a
    conditional PUT."""
    lock = lock_path(path)
    token = uuid.uuid4().hex
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": process_start(os.getpid()),  # with the pid, names this very process
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": token,
        "writes": role,
    }
    for attempt in range(50):
        try:
            created = _create_exclusive(lock, record)
        except OSError as exc:  # a full disk, a read-only folder: say which output, leave nothing
            check_parent(path)  # no folder, not writable, no bucket: its own words
            message = f"{path}: cannot create its lock file {lock}: {exc.strerror or exc}"
            if exc.errno in _MACHINE_ERRNOS:  # the machine's failure, not the output's: an OSError
                raise OSError(message) from None  # (the CLI: exit code 1, not 2 as for bad input)
            raise StoreError(message) from None
        if created:
            _HELD[str(lock)] = token
            _OWNERS[token] = threading.current_thread()
            return token
        try:
            holder = _holder(lock)
        except ValueError:
            raise StoreError(
                f"{path}: lock file {lock} is unreadable; if no dask-pdist job is writing {path}, delete"
                f" the lock file {lock} (not the output) and retry"
            ) from None
        if holder is None:
            continue  # released meanwhile
        if _stale(holder):
            if not _take_over(lock, holder):
                time.sleep(0.01 * (1 + attempt % 5))
            continue
        owner = _OWNERS.get(str(holder.get("token")))
        if owner is not None and int(holder["pid"]) == os.getpid():
            raise StoreError(
                f"{path}: being written by another thread of this process ({owner.name!r}, since"
                f" {holder.get('started', '?')}); one writer at a time: wait for its job to finish"
            )
        raise StoreError(
            f"{path}: being written by pid {holder['pid']} on {holder['host']} since {holder.get('started', '?')}"
            f" (lock {lock}); wait for that job to finish, or, if it is no longer running,"
            f" delete {lock} and retry"
        )
    raise StoreError(f"{path}: could not take the lock {lock}; retry")


@contextlib.contextmanager
def holding_lock(path: Out, role: str = "output") -> Iterator[str]:
    """Hold the writer lock of ``path`` for the duration of the block; a writer that already
    holds it (a store's creation inside its job) keeps it."""
    held = _HELD.get(str(lock_path(path)))
    if held is not None and _token_of(lock_path(path)) == held:
        yield held
        return
    token = acquire_lock(path, role)
    try:
        yield token
    finally:
        release_lock(path, token)


def _token_of(lock: Out) -> str | None:
    try:
        return (_holder(lock) or {}).get("token")
    except ValueError:
        return None


def release_lock(path: Out, token: str | None = None) -> None:
    """Remove the lock of ``path`` if ``token`` holds it (or, without a token, if this
    process holds it on this host)."""
    lock = lock_path(path)
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    mine = (
        holder.get("token") == token
        if token
        else (holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname())
    )
    if mine:
        lock.unlink(missing_ok=True)
        _HELD.pop(str(lock), None)
        _OWNERS.pop(str(holder.get("token")), None)
