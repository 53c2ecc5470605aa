"""Locations: where an input or output lives, a local path or a URL that fsspec understands.

One path type, :data:`Where`, is what every reader and writer takes: the :mod:`pathlib` API.
A local path (or a ``file://`` URL) is a :class:`pathlib.Path`; any other URL (``s3://``,
``gs://``, ``az://``, ``memory://``, ...) is a :class:`Location`, which implements the pieces of
that API the store and reader code use (``/``, ``name``, ``parent``, ``exists``, ``is_file``,
``is_dir``, ``read_bytes``, ``write_bytes``, ``unlink`` ...) with the same semantics. A new
place to read or write is a scheme fsspec serves plus ``storage_options``, not a new branch.
:func:`locate` makes one from a string, path or URL.

What an object store genuinely lacks (folders, an atomic rename, positioned reads, O_EXCL) is
decided once, by the functions at the end of this module that take either kind:
:func:`replace_bytes`, :func:`create_exclusive`, :func:`files_under`, :func:`remove_tree`,
:func:`read_range`, :func:`open_reader`, :func:`missing_bucket`, :func:`disk_usage`,
:func:`key_path`, :func:`storage_options_of`, :func:`is_remote` (callers ask "is there a
folder to make" by this, never by the class), and :func:`zarr_array` / :func:`zarr_group` /
:func:`zarr_store`.

Why a wrapper of our own over fsspec (:mod:`dask_pdist.io.location`) rather than
universal-pathlib: see that module.

A Location holds only the URL and its ``storage_options``, so it pickles into a dask graph
and every task opens its own connection (fsspec caches one filesystem per process). Reads are
ranged (``cat_file(start=, end=)``): one request per task. Listings and existence checks never
come from fsspec's directory cache. Every I/O error names the URL in one line. Credentials
and the endpoint come from the backend's usual configuration (for S3 the ``AWS_*``
environment variables, including ``AWS_ENDPOINT_URL``) plus ``storage_options``.

fsspec is imported only when a URL is used.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from dask_pdist.errors import InputError
from dask_pdist.io.location import _SCHEME, Location, UnreachableError

__all__ = [
    "Location",
    "UnreachableError",
    "Where",
    "is_remote",
    "storage_options_of",
    "key_path",
    "files_under",
    "remove_tree",
    "replace_bytes",
    "create_exclusive",
    "missing_bucket",
    "disk_usage",
    "read_range",
    "open_reader",
    "is_url",
    "any_url",
    "locate",
    "local_path",
    "glob_locations",
    "identity",
    "settled",
    "options_for",
    "zarr_array",
    "zarr_group",
    "zarr_store",
]


def is_url(path: object) -> bool:
    """True for a string with a URL scheme (``s3://...``), False for local paths.

    Examples
    --------
    >>> is_url("s3://bucket/h.safetensors"), is_url("data/h.safetensors")
    (True, False)
    """
    return isinstance(path, str) and _SCHEME.match(path) is not None


#: The one path type readers and writers take: the pathlib API, local or at a URL.
Where = Path | Location

#: Schemes whose first path component is a bucket (container): never a store or file itself.
BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")


def locate(
    path: str | os.PathLike[str] | Location, storage_options: Mapping[str, Any] | None = None
) -> Path | Location:
    """Open a location: a :class:`Location` for a URL, a :class:`~pathlib.Path` otherwise.

    ``file://`` URLs become local paths (the positioned-read fast path).

    Parameters
    ----------
    path : path-like, URL string or Location
    storage_options : mapping, optional
        Passed to the fsspec backend (``{"anon": True}``, ``{"endpoint_url": ...}``, ...).

    Examples
    --------
    >>> locate("s3://bucket/h.safetensors", {"anon": True})
    Location(url='s3://bucket/h.safetensors', storage_options={'anon': True})
    >>> locate("file:///data/h.safetensors")
    PosixPath('/data/h.safetensors')
    """
    if isinstance(path, Location):
        return path
    if is_url(path):
        scheme, rest = str(path).split("://", 1)
        # schemes are case-insensitive (S3:// is s3://); "a//b" would be a key with an empty
        # segment that "a/b" never finds again
        text = f"{scheme.lower()}://{re.sub('/{2,}', '/', rest)}"
        if text.startswith("file://"):
            return Path(text[len("file://") :])
        return Location(text, dict(storage_options or {}))
    if storage_options:
        raise InputError(f"{path}: storage_options apply to URLs (s3://...), but this is a local path")
    return Path(path)


def local_path(path: str | os.PathLike[str], role: str) -> Path:
    """``path`` as a local :class:`~pathlib.Path`; a URL (other than ``file://``) is refused, for
    writers that work on local or shared filesystems only.

    Examples
    --------
    >>> local_path("s3://b/d.zarr", "store")
    Traceback (most recent call last):
    dask_pdist.errors.InputError: s3://b/d.zarr: a store on object storage is not supported yet; give a local path
    """
    found = locate(path)
    if isinstance(found, Location):
        raise InputError(f"{path}: a {role} on object storage is not supported yet; give a local path")
    return found


def glob_locations(
    pattern: str, storage_options: Mapping[str, Any] | None = None, kind: str = "file"
) -> list[Location]:
    """The objects a URL glob matches (``s3://bucket/ckpt/step_*.safetensors``), unsorted;
    ``kind="directory"``: the prefixes it matches (stores, ``s3://bucket/out/run_*.zarr``).

    Raises
    ------
    FileNotFoundError
        Nothing matches (or the bucket does not exist); the message names the pattern.

    Examples
    --------
    >>> glob_locations("memory://nothing-here/*.safetensors")
    Traceback (most recent call last):
    FileNotFoundError: memory://nothing-here/*.safetensors: no file matches this pattern
    """
    base = locate(pattern, storage_options)
    if not isinstance(base, Location):
        raise InputError(f"{pattern}: not a URL pattern")
    base.fs.invalidate_cache()
    found = base._call("bucket or folder", base.fs.glob, base.path, detail=True)
    files = sorted(name for name, info in found.items() if info.get("type") == kind)
    if not files:
        raise FileNotFoundError(f"{pattern}: no {'file' if kind == 'file' else 'store'} matches this pattern")
    return [Location(base.fs.unstrip_protocol(name), base.storage_options) for name in files]


def identity(path: str | os.PathLike[str] | Location) -> tuple[str, str | int]:
    """What names a file's current version in a graph key: (path, mtime) or (URL, ETag)."""
    if isinstance(path, Location):
        return path.url, path.token()
    return str(Path(path).resolve()), os.stat(path).st_mtime_ns


#: A local file modified less than this long ago is not vouched for by its identity (its
#: modification time may not yet tell a rewrite apart: the "racily clean" case of git's index).
_SETTLED_NS = 2_000_000_000


def settled(st: os.stat_result) -> bool:
    """True if a local file (or folder) was last modified, or its metadata changed, at least
    two seconds ago: its ``stat`` data can then vouch for its content (see :func:`version_of`)."""
    import time

    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= _SETTLED_NS


def version_of(path: str | os.PathLike[str] | Location, st: os.stat_result | None = None) -> int:
    """A 64-bit hash of a file's current version (local: path, size, mtime, ctime, inode and
    device; URL: its ETag), never 0; 0 for a local file modified (or its metadata changed) in
    the last two seconds, whose identity cannot yet vouch for its content. Equal versions mean
    the file was not rewritten (what git's index and rsync's quick check rely on); a store
    records them so that an append re-reads only the stored steps whose file changed.
    ``st``: the local file's ``os.stat`` result, when the caller has just taken it."""
    import hashlib

    if isinstance(path, Location):
        what = f"{path.url}\0{path.token()}"
    else:
        st = st or os.stat(path)
        # ctime too: no user call can set it back, so a file rewritten in place whose mtime was
        # restored (os.utime) still reads as another version
        if not settled(st):
            return 0
        what = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}"
    return int.from_bytes(hashlib.blake2b(what.encode(), digest_size=8).digest(), "little") | 1


def options_for(path: object, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``storage_options`` if ``path`` is a URL (they configure its backend), else None: one
    set of options given for a job applies to its URLs, not to its local paths."""
    return dict(storage_options) if storage_options and (isinstance(path, Location) or is_url(path)) else None


def any_url(spec: str | os.PathLike[str] | Sequence[Any]) -> bool:
    """True if ``spec`` (one location or a list) names a URL other than ``file://``."""
    items = [spec] if isinstance(spec, (str, os.PathLike, Location)) else list(spec)
    return any(isinstance(p, Location) or (is_url(p) and not str(p).lower().startswith("file://")) for p in items)


def zarr_array(where: Path | Location, mode: str = "r") -> Any:
    """``zarr.open_array`` of a local folder or a URL (through zarr's fsspec store, with the
    location's storage options). Format 3, what every output of dask_pdist is: zarr then
    reads the one ``zarr.json``, not also the format 2 ``.zarray`` and ``.zattrs``."""
    import zarr

    if isinstance(where, Location):
        return zarr.open_array(where.url, mode=mode, zarr_format=3, storage_options=dict(where.storage_options))  # type: ignore[arg-type]
    return zarr.open_array(str(where), mode=mode, zarr_format=3)  # type: ignore[arg-type]


def zarr_group(where: Path | Location, mode: str = "r", **kwargs: Any) -> Any:
    """``zarr.open_group`` of a local folder or a URL (format 3, as :func:`zarr_array`)."""
    import zarr

    kwargs.setdefault("zarr_format", 3)
    if isinstance(where, Location):
        return zarr.open_group(where.url, mode=mode, storage_options=dict(where.storage_options), **kwargs)  # type: ignore[arg-type]
    return zarr.open_group(str(where), mode=mode, **kwargs)  # type: ignore[arg-type]


def zarr_store(where: Path | Location, read_only: bool = True) -> Any:
    """A zarr store object for ``where``: what xarray and ``zarr.consolidate_metadata`` take."""
    if isinstance(where, Location):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(where.url, storage_options=dict(where.storage_options), read_only=read_only)
    return str(where)


# -- the few real differences between a local path and a URL, one function each -------------
# Everything else is the pathlib API, which Location implements for URLs: callers take either
# and call ``exists()``, ``is_dir()``, ``/``, ``read_bytes()``, ``unlink()`` ... without asking
# which it is. What an object store genuinely lacks (folders, an atomic rename, positioned
# reads, O_EXCL) is decided here, once.


def is_remote(path: object) -> bool:
    """True for a location on an object store (``s3://``...): key prefixes instead of folders,
    no rename, a PUT replaces an object whole. False for a local path (or ``file://``)."""
    if isinstance(path, Path):  # the common case first: a local path (called per checkpoint)
        return False
    return isinstance(path, Location) or (is_url(path) and not str(path).lower().startswith("file://"))


def storage_options_of(path: Path | Location) -> dict[str, Any]:
    """The ``storage_options`` a location carries ({} for a local path)."""
    return dict(path.storage_options) if isinstance(path, Location) else {}


def key_path(path: str | os.PathLike[str] | Location) -> PurePosixPath:
    """The path without its scheme (``bucket/runs/h.safetensors``), or a local path made
    absolute: what step numbers and run names are read from."""
    if isinstance(path, Location):
        return PurePosixPath(path.url.split("://", 1)[1])
    return PurePosixPath(os.path.abspath(path))


def files_under(path: Path | Location) -> list[str]:
    """Every file (object) below a folder (key prefix), as ``/``-separated relative paths."""
    if isinstance(path, Location):
        return path.files()
    found: list[str] = []
    stack = [(os.fspath(path), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            # is_file() follows a symlink: a broken one is not a file (reading it would give
            # zarr's fill value, not an error); the file type comes from the listing otherwise
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{prefix}{entry.name}/"))
            elif entry.is_file():
                found.append(prefix + entry.name)
    return sorted(found)


def remove_tree(path: Path | Location) -> None:
    """Delete a folder (every object under a key prefix), exactly it: see Location.remove_tree."""
    if isinstance(path, Location):
        path.remove_tree()
    else:
        import shutil

        shutil.rmtree(path)


def replace_bytes(path: Path | Location, data: bytes) -> None:
    """Replace a file so that no reader ever sees it half-written: a local temporary file and
    an atomic rename; on an object store one PUT (whole or not at all)."""
    if isinstance(path, Location):
        path.write_bytes(data)
        return
    import uuid

    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def create_exclusive(path: Path | Location, data: bytes) -> bool:
    """Create a file only if none has this name (False otherwise): ``O_EXCL`` locally, a
    conditional PUT (``If-None-Match: *``) on an object store, which S3 and most S3-compatible
    stores honour."""
    if isinstance(path, Location):
        try:
            path.write_bytes(data, exclusive=True)
        except FileExistsError:
            return False
        return True
    # the content first, under a temporary name, then a hard link to the name (atomic, and it
    # fails if the name exists): nobody ever sees the file empty or half-written, and a full
    # disk leaves no file at all (O_EXCL then write would leave an empty one)
    import uuid

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:  # a file system without hard links: O_EXCL, then the content
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return _create_then_write(path, data)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_then_write(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def missing_bucket(path: Path | Location) -> str | None:
    """The bucket (container) of a URL if it does not exist or is not visible; None if it does,
    and for a local path (which has no bucket)."""
    if isinstance(path, Location) and not path.bucket_exists():
        return path.url.split("://", 1)[1].split("/", 1)[0]
    return None


def disk_usage(path: Path | Location) -> int:
    """Bytes in a file, or in every file below a folder (key prefix)."""
    if isinstance(path, Location):
        return int(path._call("location", path.fs.du, path.path))
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_range(path: str | os.PathLike[str] | Location, offset: int, nbytes: int) -> bytearray:
    """Exactly ``nbytes`` from ``offset``: positioned reads of a local file (``os.preadv``; no
    mmap, so no SIGBUS), one ranged GET of an object. Writable, as numpy views want it.

    Raises
    ------
    InputError
        The file is now shorter than expected (truncated or replaced after it was opened).
    """
    if isinstance(path, Location):
        return path.read(offset, nbytes)
    buf = bytearray(nbytes)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < nbytes:
            k = os.preadv(fd, [view[got:]], offset + got)
            if k == 0:
                raise InputError(
                    f"{path}: file ended at byte {offset + got} while reading bytes"
                    f" {offset}..{offset + nbytes}; it was truncated or replaced after it was opened"
                )
            got += k
    finally:
        os.close(fd)
    return buf


def open_reader(path: str | os.PathLike[str] | Location, size: int | None = None) -> Any:
    """A sequential binary reader (``read(n)``, ``tell()``, a context manager) for headers: a
    local file, or ranged requests of ``size`` bytes at most (the first 64 KiB in one)."""
    if isinstance(path, Location):
        return path.open(size)
    return open(path, "rb")
