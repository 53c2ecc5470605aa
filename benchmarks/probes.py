"""Probes that ``benchmarks/run.py`` runs as child processes to time one part of the pipeline.

    python benchmarks/probes.py startup STAMPS.json [--hide=scipy,distributed] -- compute IN -o OUT.zarr
    python benchmarks/probes.py write-floor DIR NBYTES FILES [--threads N]
    python benchmarks/probes.py read-step STORE --repeats 200
    python benchmarks/probes.py summarize STORE --repeats 3
    python benchmarks/probes.py iter-steps STORE --repeats 3
    python benchmarks/probes.py vm-costs DIR [--mib 512] [--pause 3] [--repeats 3]

``startup`` runs ``dask-pdist`` (its ``main``) in this process and records wall-clock times
(``time.time()``, comparable with the parent's clock) when the first kernel call starts and
returns, and when the kernel was ready (the return less the same block's time in a second,
warm call: what numba spends loading the kernels on their first call counts as start-up); the
kernel module is wrapped when it is imported, so nothing is imported earlier than in a plain
``dask-pdist`` run. The other probes print one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import threading
import time


class _WrapKernels(importlib.abc.MetaPathFinder):
    """On import of dask_pdist.kernels.distances, wrap pairwise_block/cross_block to stamp the first call."""

    def __init__(self, stamps: dict[str, float]) -> None:
        self.stamps = stamps

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name != "dask_pdist.kernels.distances":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = spec.loader
        exec_module = loader.exec_module
        stamps = self.stamps

        first_return = threading.Lock()

        def exec_and_wrap(module):  # noqa: ANN001, ANN202
            exec_module(module)
            stamps["kernels_imported"] = time.time()
            for fname in ("pairwise_block", "cross_block"):
                inner = getattr(module, fname)

                def wrapped(*a, _inner=inner, **k):  # noqa: ANN002, ANN003, ANN202
                    if "first_kernel_call" not in stamps:
                        stamps["first_kernel_call"] = time.time()
                        stamps["loaded_at_first_call"] = sorted(  # type: ignore[assignment]
                            m for m in ("distributed", "scipy", "xarray", "pandas", "zarr", "tqdm") if m in sys.modules
                        )
                    out = _inner(*a, **k)
                    now = time.time()
                    with first_return:  # (dask's threads: only the first to return stamps)
                        first = "first_kernel_return" not in stamps
                        if first:
                            stamps["first_kernel_return"] = now
                    if first:
                        # the same block again, warm: its own kernel time. The first call also
                        # loaded the compiled kernels (numba's dispatch, its cache, its imports),
                        # which is start-up: "kernel ready" = first return - this block's time
                        t = time.perf_counter()
                        _inner(*a, **k)
                        stamps["kernel_ready"] = now - (time.perf_counter() - t)
                    return out

                setattr(module, fname, wrapped)

        loader.exec_module = exec_and_wrap
        return spec


class _Hide(importlib.abc.MetaPathFinder):
    """Make optional packages look absent (as in a plain ``pip install dask_pdist``)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by probes.py)", name=name)
        return None


def startup(stamps_path: str, argv: list[str], hide: str = "") -> int:
    stamps: dict[str, float] = {"probe_start": time.time()}
    if hide:
        sys.meta_path.insert(0, _Hide(set(hide.split(","))))
    sys.meta_path.insert(0, _WrapKernels(stamps))
    from dask_pdist.cli.main import main

    sys.argv = ["dask-pdist", *argv]  # as the installed command runs: main() reads sys.argv
    try:
        return main()
    finally:
        stamps["end"] = time.time()
        with open(stamps_path, "w") as f:
            json.dump(stamps, f)


def write_floor(directory: str, nbytes: int, files: int, threads: int = 0) -> dict:
    """Write ``nbytes`` of incompressible bytes into ``files`` new files (no fsync), as a store
    write does, from ``threads`` threads (default: one per CPU, as ``compute``'s thread pool
    writes its blocks; a file write releases the GIL). One thread was the floor before
    2026-12-05: on a disk where two writers go faster than one, it stood above ``compute``'s
    own writes of the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    threads = threads or os.cpu_count() or 1
    per = max(1, nbytes // files)
    block = np.random.default_rng(0).integers(0, 256, size=per, dtype=np.uint8).tobytes()
    os.makedirs(directory, exist_ok=True)

    def write(first: int) -> None:
        for k in range(first, files, threads):
            with open(os.path.join(directory, str(k)), "wb") as f:
                f.write(block)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(threads)))
    return {"seconds": time.perf_counter() - t0, "bytes": per * files, "files": files, "threads": threads}


def _timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def read_step(store: str, repeats: int) -> dict:
    import numpy as np
    import zarr

    import dask_pdist as dp

    t0 = time.perf_counter()
    ds = dp.open_distances(store)
    open_s = time.perf_counter() - t0
    n = ds.sizes["step"]
    labels = ds["step"].values
    rng = np.random.default_rng(1)
    picks = [int(labels[i]) for i in rng.integers(0, n, size=repeats)]
    it = iter(picks)
    xr_times = _timed(lambda: ds.euclidean.sel(step=next(it)).values, repeats)
    it = iter(picks)
    light = dp.open_distances(store, chunks=None)  # no dask: straight through zarr
    light_times = _timed(lambda: light.euclidean.sel(step=next(it)).values, repeats)
    arr = zarr.open_array(os.path.join(store, "euclidean"), mode="r")
    it = iter(rng.integers(0, n, size=repeats))
    zarr_times = _timed(lambda: arr[int(next(it))], repeats)
    # Chebyshev is compressed by default: one step decodes its whole chunk
    it = iter(picks)
    cheb_xr = _timed(lambda: ds.chebyshev.sel(step=next(it)).values, repeats)
    it = iter(picks)
    cheb_light = _timed(lambda: light.chebyshev.sel(step=next(it)).values, repeats)
    carr = zarr.open_array(os.path.join(store, "chebyshev"), mode="r")
    it = iter(rng.integers(0, n, size=repeats))
    cheb_zarr = _timed(lambda: carr[int(next(it))], repeats)
    return {
        "open_s": open_s,
        "open_distances_sel_ms": statistics.median(xr_times) * 1e3,
        "read_step_ms": statistics.median(light_times) * 1e3,
        "zarr_ms": statistics.median(zarr_times) * 1e3,
        "chebyshev": {
            "open_distances_sel_ms": statistics.median(cheb_xr) * 1e3,
            "read_step_ms": statistics.median(cheb_light) * 1e3,
            "zarr_ms": statistics.median(cheb_zarr) * 1e3,
        },
        "repeats": repeats,
    }


def _uncompressed_bytes(ds) -> int:  # noqa: ANN001
    return sum(v.size * v.dtype.itemsize for v in ds.data_vars.values())


def summarize(store: str, repeats: int) -> dict:
    import numpy as np
    import zarr

    import dask_pdist as dp

    ds = dp.open_distances(store)
    nbytes = _uncompressed_bytes(ds)
    times = _timed(lambda: dp.summarize(ds).compute(), repeats)
    group = zarr.open_group(store, mode="r")

    def decode_all() -> None:  # the floor: zarr decoding every chunk, the same threads
        from concurrent.futures import ThreadPoolExecutor

        jobs = []
        for name in ds.data_vars:
            a = group[name]
            cs = a.chunks[0]
            jobs += [(a, s) for s in range(0, a.shape[0], cs)]
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            list(pool.map(lambda job: np.asarray(job[0][job[1] : job[1] + job[0].chunks[0]]).sum(), jobs))

    floor = _timed(decode_all, repeats)
    return {"seconds": statistics.median(times), "floor_s": statistics.median(floor), "bytes": nbytes}


def iter_steps(store: str, repeats: int) -> dict:
    import numpy as np

    import dask_pdist as dp

    ds = dp.open_distances(store)
    nbytes = _uncompressed_bytes(ds)

    def walk() -> None:
        for _, step in dp.iter_steps(ds):
            np.add.reduce(step["euclidean"], axis=None)

    times = _timed(walk, repeats)
    return {"seconds": statistics.median(times), "bytes": nbytes, "steps": int(ds.sizes["step"])}


def vm_costs(directory: str, mib: int = 512, pause: float = 3.0, repeats: int = 3) -> dict:
    """What this machine charges for the file-system operations a store write makes (per call,
    mean of 300 and the median, in microseconds: the mean is what adds up; a few calls take
    milliseconds), and for writing ``mib`` MiB into new files right after
    the same amount of files was deleted (the freed pages reused at once) against ``pause``
    seconds later (seconds per GB, median of ``repeats`` alternating). On the VMs of
    docs/measurements.md ("Freed memory turns cold") the second costs several times the first:
    memory freed is handed back to the host within a second or two, and touching it again
    faults on the host."""
    import shutil

    import numpy as np

    root = os.path.join(directory, "vm-costs")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)

    def per_call(fn, n: int = 300) -> dict:  # noqa: ANN001
        times = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
        return {"mean": statistics.fmean(times) * 1e6, "median": statistics.median(times) * 1e6}

    def create(i: int) -> None:
        os.close(os.open(os.path.join(root, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))

    ops = {
        "create a new file": per_call(create),
        "open an existing file (O_CREAT | O_TRUNC)": per_call(create),
        "mkdir": per_call(lambda i: os.mkdir(os.path.join(root, f"d{i}"))),
        "rename": per_call(lambda i: os.rename(os.path.join(root, f"f{i}"), os.path.join(root, f"g{i}"))),
        "stat": per_call(lambda i: os.stat(os.path.join(root, f"g{i}"))),
    }
    shutil.rmtree(root)
    block = np.random.default_rng(0).integers(0, 256, size=8 * 2**20, dtype=np.uint8)
    files = max(1, mib // 8)

    def fill() -> float:
        os.makedirs(root, exist_ok=True)
        t = time.perf_counter()
        for i in range(files):
            with open(os.path.join(root, str(i)), "wb") as f:
                f.write(block)
        return (time.perf_counter() - t) / (files * block.nbytes / 1e9)

    def touch() -> float:  # first touch of new memory (numpy maps it; freeing it unmaps it)
        t = time.perf_counter()
        a = np.empty(files * block.nbytes, np.uint8)
        a[::4096] = 1
        return (time.perf_counter() - t) / (a.nbytes / 1e9)

    fill()  # pages to free
    warm, cold, touch_warm, touch_cold = [], [], [], []
    for _ in range(repeats):
        for out, wait in ((warm, 0.0), (cold, pause)):
            shutil.rmtree(root)
            time.sleep(wait)
            out.append(fill())
        for out, wait in ((touch_warm, 0.0), (touch_cold, pause)):
            np.ones(files * block.nbytes, np.uint8)  # touched and freed at once
            time.sleep(wait)
            out.append(touch())
    shutil.rmtree(root)
    return {
        "seconds per GB of new memory first touched": {
            "right after freeing as much": statistics.median(touch_warm),
            f"{pause:g} s after freeing it": statistics.median(touch_cold),
        },
        "microseconds per call": ops,
        "seconds per GB written into new files": {
            "right after freeing as much": statistics.median(warm),
            f"{pause:g} s after freeing it": statistics.median(cold),
        },
        "mib": files * 8,
    }


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return n


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "startup":
        sep = sys.argv.index("--")
        hide = sys.argv[3].removeprefix("--hide=") if sep > 3 else ""
        return startup(sys.argv[2], sys.argv[sep + 1 :], hide)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="probe", required=True)
    w = sub.add_parser("write-floor")
    w.add_argument("directory")
    w.add_argument("nbytes", type=int)
    w.add_argument("files", type=int)
    w.add_argument("--threads", type=int, default=0, help="writer threads (default: one per CPU)")
    v = sub.add_parser("vm-costs")
    v.add_argument("directory")
    v.add_argument("--mib", type=_positive, default=512)
    v.add_argument("--pause", type=float, default=3.0)
    v.add_argument("--repeats", type=_positive, default=3)
    for name in ("read-step", "summarize", "iter-steps"):
        s = sub.add_parser(name)
        s.add_argument("store")
        s.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.probe == "write-floor":
        result = write_floor(args.directory, args.nbytes, args.files, args.threads)
    elif args.probe == "vm-costs":
        result = vm_costs(args.directory, args.mib, args.pause, args.repeats)
    else:
        fn = {"read-step": read_step, "summarize": summarize, "iter-steps": iter_steps}[args.probe]
        result = fn(args.store, args.repeats)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
