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

A Location holds only the URL and its ``storage_options``, nothing else, so it pickles into a
dask graph and every task opens its own connection (fsspec caches one filesystem per
process). Reads are ranged (``cat_file(start=, end=)``): one request per task. Listings and
existence checks are never answered from fsspec's directory cache: other processes, and
zarr's own filesystem instance, write under the same prefix. Every I/O error names the URL in
one line (not found; access denied, with a credentials hint; an unreachable endpoint;
rejected storage options). Credentials and the endpoint come from the backend's usual
configuration (for S3 the ``AWS_*`` environment variables, including ``AWS_ENDPOINT_URL``)
plus ``storage_options``.

Why not universal-pathlib's ``UPath`` (0.3.10, tried against moto's S3 server): it refuses
``S3://`` and keeps ``//`` in keys; ``file://`` becomes an fsspec path, not a pathlib one; its
``glob`` and recursive ``rm`` expand ``[ ] * ?`` in the path itself (removing
``s3://b/lr=[ab]/d.zarr`` deleted ``lr=a/d.zarr``'s objects); ``iterdir`` answered from a
stale listing after another writer added a prefix; errors arrive raw (botocore's
``EndpointConnectionError``); and local ``UPath`` operations import fsspec. Each would need
the wrapper this module already is.

fsspec is imported only when a URL is used.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dask_pdist.errors import InputError

__all__ = [
    "Location",
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
    "options_for",
    "zarr_array",
    "zarr_group",
    "zarr_store",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Packages that serve common schemes, for the install hint of a missing one.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path: object) -> bool:
    """True for a string with a URL scheme (``s3://...``), False for local paths.

    Examples
    --------
    >>> is_url("s3://bucket/h.safetensors"), is_url("data/h.safetensors")
    (True, False)
    """
    return isinstance(path, str) and _SCHEME.match(path) is not None


@functools.lru_cache(maxsize=64)
def _filesystem(protocol: str, options: str) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(protocol, **json.loads(options))
    except ImportError as exc:
        pkg = _PACKAGES.get(protocol, f"the fsspec backend for {protocol}://")
        extra = " (or pip install 'dask_pdist[s3]')" if pkg == "s3fs" else ""
        raise ImportError(f"{protocol}:// locations need {pkg}: pip install {pkg}{extra}") from exc


@dataclass(frozen=True)
class Location:
    """A file or folder at a URL, with the ``storage_options`` to reach it.

    Holds only the URL and the options (JSON-serialisable), so it pickles; the filesystem is
    made on first use in each process. Errors name the URL.

    Examples
    --------
    >>> loc = Location("memory://demo/h.safetensors")
    >>> loc.name, loc.stem, str(loc / "x")
    ('h.safetensors', 'h', 'memory://demo/h.safetensors/x')
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        match = _SCHEME.match(self.url)
        if match is None:
            raise InputError(f"{self.url}: not a URL (scheme://...); give a URL or a local path")
        try:
            json.dumps(dict(self.storage_options), sort_keys=True)
        except TypeError as exc:
            raise InputError(f"{self.url}: storage_options must be JSON-serialisable ({exc})") from None

    def __str__(self) -> str:
        return self.url

    # -- path-like pieces used for labels and step numbers ------------------------------------
    @property
    def protocol(self) -> str:
        return _SCHEME.match(self.url).group(1).lower()  # type: ignore[union-attr]

    @property
    def path(self) -> str:
        """The path inside the filesystem (``bucket/key`` for S3), as fsspec names it."""
        return self.fs._strip_protocol(self.url)

    @property
    def name(self) -> str:
        return PurePosixPath(self.url.split("://", 1)[1]).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def __truediv__(self, part: str) -> Location:
        base = self.url if self.url.endswith("://") else self.url.rstrip("/") + "/"
        return Location(base + part, self.storage_options)

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (one per process, options and scheme)."""
        try:
            return _filesystem(self.protocol, json.dumps(dict(self.storage_options), sort_keys=True))
        except ValueError as exc:  # fsspec: "Protocol not known"
            raise InputError(
                f"{self.url}: unknown URL scheme {self.protocol!r} ({exc}); give a local path or a URL"
                " fsspec understands (s3://, gs://, az://, memory://, file://)"
            ) from None
        except TypeError as exc:  # a storage option the backend does not take
            raise InputError(f"{self.url}: storage options {dict(self.storage_options)} rejected: {exc}") from None

    # -- I/O, every error naming the URL ------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.url}: {what} not found ({_reason(exc)})") from None
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            # s3fs and others take unknown options at construction and reject them at first use
            raise InputError(f"{self.url}: storage options {dict(self.storage_options)} rejected: {exc}") from None
        except PermissionError as exc:
            raise PermissionError(
                f"{self.url}: access denied ({_reason(exc)}); check the credentials (for S3: AWS_ACCESS_KEY_ID,"
                " AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or storage_options / --storage-options)"
            ) from None
        except Exception as exc:
            if not _unreachable(exc):
                raise
            raise UnreachableError(
                f"{self.url}: cannot reach the object store ({_reason(exc)}); check the endpoint (for S3:"
                " AWS_ENDPOINT_URL or storage_options / --storage-options endpoint_url) and the network"
            ) from None

    def info(self, what: str = "file") -> dict[str, Any]:
        """fsspec's ``info``: ``size``, ``type`` ("file" or "directory"), backend fields."""
        return self._call(what, self.fs.info, self.path)

    def size(self, what: str = "input file") -> int:
        info = self.info(what)
        if info.get("type") != "file":
            raise InputError(f"{self.url}: {what} is a {info.get('type', 'folder')}, not a file; give a file")
        return int(info["size"])

    def read(self, offset: int, nbytes: int) -> bytearray:
        """Exactly ``nbytes`` from ``offset``, in one ranged request."""
        if nbytes == 0:
            return bytearray()
        data = self._call("file", self.fs.cat_file, self.path, start=offset, end=offset + nbytes)
        if len(data) != nbytes:
            raise InputError(
                f"{self.url}: object ended at byte {offset + len(data)} while reading bytes"
                f" {offset}..{offset + nbytes}; it was truncated or replaced after it was opened"
            )
        return bytearray(data)  # writable, as a local read gives

    def open(self, size: int | None = None) -> _RangedReader:
        """A sequential reader for headers: the first 64 KiB in one request, more on demand."""
        return _RangedReader(self, self.size() if size is None else size)

    def token(self) -> str:
        """Changes when the object changes (ETag / mtime, as the backend reports)."""
        return str(self._call("file", self.fs.ukey, self.path))

    # -- the pieces of the pathlib API the store code uses, so one code path serves both ------
    # (an object store has no folders, renames or symlinks: a "folder" is a key prefix, a PUT
    # replaces an object whole, and listings are not cached here because other processes and
    # zarr's own filesystem instance write under the same prefix)
    @property
    def parent(self) -> Location:
        scheme, rest = self.url.split("://", 1)
        rest = rest.rstrip("/")
        return Location(f"{scheme}://{rest.rsplit('/', 1)[0] if '/' in rest else ''}", self.storage_options)

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def resolve(self) -> Location:
        return self

    def is_symlink(self) -> bool:
        return False

    def _fresh(self) -> Any:
        fs = self.fs
        fs.invalidate_cache(self.path)
        return fs

    def is_file(self) -> bool:
        return bool(self._call("location", self._fresh().isfile, self.path))

    def exists(self) -> bool:
        return bool(self._call("location", self._fresh().exists, self.path))

    def is_dir(self) -> bool:
        return bool(self._call("location", self._fresh().isdir, self.path))

    def read_bytes(self) -> bytes:
        return bytes(self._call("object", self.fs.cat_file, self.path))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes, exclusive: bool = False) -> None:
        """One PUT: the object is replaced whole or not at all. ``exclusive``: only if no object
        has this name (a conditional PUT, ``If-None-Match: *``); FileExistsError otherwise."""
        if exclusive:
            self._call("object", self.fs.pipe_file, self.path, bytes(data), mode="create")
        else:
            self._call("object", self.fs.pipe_file, self.path, bytes(data))
        self.fs.invalidate_cache(self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        # an S3 DELETE of a missing key succeeds: ask first, as pathlib would raise
        if not missing_ok and not self.exists():
            raise FileNotFoundError(f"{self.url}: object not found")
        try:
            self._call("object", self.fs.rm_file, self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self.fs.invalidate_cache(self.path)

    def files(self) -> list[str]:
        """Every object under this prefix, as paths relative to it (``a/zarr.json``)."""
        base = self.path.rstrip("/") + "/"
        found = self._call("location", self._fresh().find, self.path)
        return sorted(name[len(base) :] for name in found if name.startswith(base))

    def remove_tree(self) -> None:
        """Delete every object under this prefix, exactly those: fsspec's ``rm`` expands
        ``* ? [`` in a name as a pattern (a store named ``lr=[ab]/d.zarr`` would take
        ``lr=a/d.zarr``'s objects with it), so such names are deleted one by one."""
        fs = self._fresh()
        names = [self.path.rstrip("/") + "/" + rel for rel in self.files()]
        plain = [n for n in names if not _MAGIC.search(n)]
        if plain:  # one bulk request per 1,000 keys on S3
            self._call("location", fs.rm, plain)
        for name in names:
            if _MAGIC.search(name):
                self._call("object", fs.rm_file, name)
        fs.invalidate_cache(self.path)

    def upload(self, local: str | os.PathLike[str]) -> None:
        """Copy a local file here (one PUT, or a multipart upload for a large file)."""
        self._call("object", self.fs.put_file, os.fspath(local), self.path)
        self.fs.invalidate_cache(self.path)

    def bucket_exists(self) -> bool:
        """Whether the bucket (container, or top folder) of this URL exists and is reachable."""
        top = self.path.split("/", 1)[0]
        return bool(self._call("bucket", self._fresh().exists, top))


class _RangedReader:
    """``read(n)`` from the start of an object, by ranged requests (a file object would ask
    for the object's size again and read ahead whole blocks of megabytes)."""

    FIRST = 2**16

    def __init__(self, location: Location, size: int) -> None:
        self.location, self.size, self.pos = location, size, 0
        self.buf = location.read(0, min(size, self.FIRST))

    def read(self, n: int) -> bytes:
        end = min(self.pos + n, self.size)
        if end > len(self.buf):
            self.buf += self.location.read(len(self.buf), end - len(self.buf))
        out = bytes(self.buf[self.pos : end])
        self.pos = end
        return out

    def tell(self) -> int:
        return self.pos

    def __enter__(self) -> _RangedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.buf = bytearray()


#: The one path type readers and writers take: the pathlib API, local or at a URL.
Where = Path | Location

#: Schemes whose first path component is a bucket (container): never a store or file itself.
BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")
#: Characters fsspec expands as a pattern in a path.
_MAGIC = re.compile(r"[*?\[]")


class UnreachableError(ConnectionError):
    """The object store's endpoint does not answer (wrong endpoint URL, service down)."""


def _unreachable(exc: BaseException) -> bool:
    # botocore's EndpointConnectionError / ConnectTimeoutError, aiohttp's ClientConnectorError:
    # none is a builtin ConnectionError, so recognise them by name along the MRO
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, ConnectionError) or bool(
        names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionClosedError"}
    )


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


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
    location's storage options)."""
    import zarr

    if isinstance(where, Location):
        return zarr.open_array(where.url, mode=mode, storage_options=dict(where.storage_options))  # type: ignore[arg-type]
    return zarr.open_array(str(where), mode=mode)  # type: ignore[arg-type]


def zarr_group(where: Path | Location, mode: str = "r", **kwargs: Any) -> Any:
    """``zarr.open_group`` of a local folder or a URL."""
    import zarr

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
    return sorted(
        os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/")
        for root, _, names in os.walk(path)
        for f in names
    )


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
