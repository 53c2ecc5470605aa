"""Shared fixtures: independent writers (the official safetensors library), a scipy oracle,
and a dask scheduler that raises if anything is computed."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
from pathlib import Path

import dask
import ml_dtypes
import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import save_file
from scipy.spatial.distance import cdist

# A test run started in the background of a non-interactive shell (`bash .ci/run &`) inherits
# SIGINT ignored, and so would every CLI process the Ctrl-C tests start (ignored signals stay
# ignored across exec): handle it here so those children get the default disposition again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

NUMPY_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64}


def oracle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scipy cdist in float64, per step: (euclidean, chebyshev), each (S, V, V)."""
    x64 = np.asarray(x, dtype=np.float64)
    e = np.stack([cdist(s, s, "euclidean") for s in x64])
    c = np.stack([cdist(s, s, "chebyshev") for s in x64])
    return e, c


def random_history(shape: tuple[int, int, int], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """float32 history with duplicate tokens (exact zeros) and near-duplicates."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    s, v, d = shape
    if v >= 4:
        x[:, v - 1] = x[:, 0]  # exact duplicate token
        x[:, v - 2] = x[:, 1]
        x[:, v - 2, 0] = np.nextafter(x[:, 1, 0], np.float32(np.inf))  # one ulp away
    return x


@pytest.fixture
def write_safetensors(tmp_path: Path):
    """Write tensors with the official library: write_safetensors(name, {key: array}, dtype)."""

    def _write(name: str, tensors: dict[str, np.ndarray], dtype: str = "F32") -> Path:
        path = tmp_path / name
        out = {}
        for key, arr in tensors.items():
            arr = np.asarray(arr)
            out[key] = arr.astype(NUMPY_DTYPES[dtype]) if arr.dtype.kind == "f" else arr
        save_file(out, str(path))
        return path

    return _write


class _ComputeForbidden(RuntimeError):
    pass


def _raising_scheduler(dsk, keys, **kwargs):
    raise _ComputeForbidden(f"dask computed {keys[:3]} where nothing may be computed")


@contextlib.contextmanager
def raise_if_dask_computes():
    """Any dask compute inside the block raises."""
    with dask.config.set(scheduler=_raising_scheduler):
        yield


@pytest.fixture
def no_compute():
    return raise_if_dask_computes


# --- object storage: a real S3 HTTP API served by moto on 127.0.0.1 ---------------

_BUCKETS = itertools.count(1)
#: Credentials the local S3 server accepts (it checks none unless a test turns auth on).
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of moto's S3 server, started once for the session on a free port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """``s3://NAME``: a new empty bucket for this test; the standard ``AWS_*`` variables point at
    the local server (spawned dask workers inherit them)."""
    import fsspec

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # no user config leaks into the tests
        monkeypatch.setenv(name, os.devnull)
    bucket = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:50] + f"-{next(_BUCKETS)}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=s3_endpoint)
    fs.mkdir(bucket)
    fsspec.filesystem("s3").invalidate_cache()  # listings cached by an earlier test's instance
    return f"s3://{bucket}"


def history_array(x: np.ndarray, chunks, *, steps=None, labelled: bool = True) -> xr.DataArray:
    """A (step, token, dim) DataArray over a dask array of ``x``, as open_history returns one,
    without a file. ``chunks``: steps per chunk (int) or dask's chunks; ``labelled``: step
    coordinates (``steps``, default 0, 10, 20, ...) and token coordinates."""
    import dask.array as da

    data = da.from_array(x, chunks=(chunks, -1, -1) if isinstance(chunks, int) else chunks)
    if not labelled:
        return xr.DataArray(data, dims=("step", "token", "dim"))
    step = np.arange(x.shape[0]) * 10 if steps is None else steps
    return xr.DataArray(data, dims=("step", "token", "dim"), coords={"step": step, "token": np.arange(x.shape[1])})


def s3_upload(local: Path, url: str) -> None:
    """Copy a local file to the test's S3 server (the AWS_* variables of ``s3_bucket``)."""
    import fsspec

    fsspec.filesystem("s3").put_file(str(local), url)


@pytest.fixture
def s3_history(s3_bucket, write_safetensors):
    """A factory: ``s3_history(key, seed=, steps=)`` writes a bf16 history (29 x 11 x 6) with a
    steps tensor locally, uploads it to ``{bucket}/{key}`` and returns (local path, URL)."""

    def make(key: str, *, seed: int, steps: np.ndarray) -> tuple[Path, str]:
        x = random_history((29, 11, 6), seed=seed)
        path = write_safetensors("h.safetensors", {"embedding_history": x, "steps": steps}, "BF16")
        url = f"{s3_bucket}/{key}"
        s3_upload(path, url)
        return path, url

    return make
