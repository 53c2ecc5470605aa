"""Export to object storage: peak memory and wall time against the local export of the same store.

Writes a synthetic history and its store under a temporary folder, starts moto's S3 server on
127.0.0.1 (this process), then exports the store in child processes, alternating: to a local
file, and to ``s3://`` (streamed in file order, multipart upload). Each child reports the
growth of its RSS during the export (sampled every 10 ms from /proc/self/statm, against the
RSS after imports and a first request) and its wall time. Not ``ru_maxrss``: a child inherits
its parent's high-water mark through fork and exec, which hides the growth. The moto server
holds the uploaded object in this process's memory, not the child's. Linux only.

    python benchmarks/export_url.py [--steps 2400] [--vocab 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import dask
    import dask_pdist as dp
    dask.config.set(num_workers=4)  # memory is a few blocks per thread: fix the thread count
    store, target = sys.argv[1], sys.argv[2]
    ds = dp.open_distances(store)
    if target.startswith("s3://"):
        import fsspec
        fsspec.filesystem("s3").ls(target.split("/")[2])  # import s3fs, open the connection pool
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak, done = [0], threading.Event()
    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss())
    before = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    dp.to_safetensors(ds, target, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(json.dumps({"increase_bytes": max(peak[0], rss()) - before, "wall_s": wall}))
    """
)


def _child(store: Path, target: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(store), target], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, store = work / "h.safetensors", work / "d.zarr"
        # in children too: this process stays small (its RSS is no part of the measurement)
        for cmd in (
            ["synth", str(src), "--steps", str(args.steps), "--vocab", str(args.vocab), "--dim", "16"],
            ["compute", str(src), "-o", str(store), "--chunk-steps", "16", "--no-progress"],
        ):
            subprocess.run([sys.executable, "-m", "dask_pdist", *cmd], check=True, capture_output=True)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench")
        env.update(AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        fsspec.filesystem("s3").mkdir("bench")
        results: dict[str, list[dict]] = {"local": [], "s3": []}
        try:
            for _ in range(args.repeats):  # alternating, so both see the same machine load
                results["local"].append(_child(store, str(work / "d.safetensors"), env))
                results["s3"].append(_child(store, "s3://bench/d.safetensors", env))
        finally:
            server.stop()
        size = (work / "d.safetensors").stat().st_size
    print(f"result: {size / 1e6:.0f} MB ({args.steps} steps x {args.vocab} tokens, 2 metrics, float32)")
    for name, runs in results.items():
        inc = statistics.median(r["increase_bytes"] for r in runs) / 1e6
        wall = statistics.median(r["wall_s"] for r in runs)
        print(f"{name:>5}: peak RSS +{inc:.0f} MB ({100 * inc * 1e6 / size:.1f} % of the result), {wall:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
