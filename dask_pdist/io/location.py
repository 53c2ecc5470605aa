"""The URL half of the path type: :class:`Location`, a file or key prefix at a URL that fsspec
understands, with the pieces of the :mod:`pathlib` API the store and reader code use.

It holds only the URL and its ``storage_options`` (so it pickles into a dask graph; the
filesystem is made on first use in each process), never answers an existence check or a
listing from fsspec's directory cache (other processes write under the same prefix), takes
``[ ] * ?`` in names literally, and turns every I/O error into one line naming the URL: not
found; access denied, with a credentials hint; an unreachable endpoint; rejected storage
options. Local paths stay :class:`pathlib.Path`; :mod:`dask_pdist.io.paths` makes either.

Why not universal-pathlib's ``UPath`` (0.3.10, tried against moto's S3 server): it refuses
``S3://`` and keeps ``//`` in keys; ``file://`` becomes an fsspec path, not a pathlib one; its
``glob`` and recursive ``rm`` expand ``[ ] * ?`` in the path itself (removing
``s3://b/lr=[ab]/d.zarr`` deleted ``lr=a/d.zarr``'s objects); ``iterdir`` answered from a
stale listing after another writer added a prefix; errors arrive raw (botocore's
``EndpointConnectionError``); and local ``UPath`` operations import fsspec. Each would need
the wrapper this module already is.

fsspec is imported only when a Location does I/O.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from dask_pdist.errors import InputError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: Packages that serve common schemes, for the install hint of a missing one.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


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

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

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
        fs = self._fresh()
        if self._call("bucket", fs.exists, top):
            return True
        # fsspec's exists() says False for a bucket these credentials may not see: ask once
        # more in a way that raises, so that access denied is told apart from not found
        try:
            self._call("bucket", fs.info, top)
        except FileNotFoundError:
            return False
        return True


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
