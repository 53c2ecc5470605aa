"""Start benchmark children from a small process, so that each child's peak RSS is its own.

Linux carries the high-water RSS of the process a child was forked from into the child's
``ru_maxrss`` (the forked copy's mark survives the exec; checked: a ``python -c pass`` child
of a process holding 700 MB reports 726 MB, and still does after the parent frees it). The
benchmark process grows (it writes histories, reads stores), so every child it starts after
that reported at least the parent's peak: the 713 MB and 1,041 MB of the clusters and
neighbours rows in an earlier results.md. This process is started first, while the benchmark
is small, and starts every child; the measurements come back as one JSON line each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        with open(req["log"], "wb") as f:
            t0 = time.perf_counter()
            proc = subprocess.Popen(req["cmd"], stdout=f, stderr=subprocess.STDOUT, env=req["env"])
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        out = {"wall": wall, "status": status, "maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime}
        print(json.dumps({**out, "minflt": ru.ru_minflt}), flush=True)


class Spawner:
    """``run(cmd, env, log)``: start ``cmd`` from the small server process, wait, and return its
    wall time and ``os.wait4`` resource usage as a dict."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, cmd: list[str], env: dict[str, str], log: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark's spawner process exited (code {self.proc.poll()})")
        return json.loads(line)


if __name__ == "__main__":
    serve()
