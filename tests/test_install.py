"""Where numba's kernel cache lands: never inside the installed package (issue 9, item 1).

A cache inside site-packages/dask_pdist/__pycache__ survives `pip install -e` replacing the
package and then imports as an empty namespace package; site-packages may also be read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dask_pdist

PACKAGE_DIR = Path(dask_pdist.__file__).parent

_PROBE = """
import json, sys
if {numba_first}:
    import numba  # a process that imported numba before dask_pdist
import numpy as np
from dask_pdist.kernels import distances as kernels
if {call}:
    kernels.pairwise_block(np.zeros((1, 3, 5), np.float32))
print(json.dumps(kernels._transpose._cache._cache_path))
"""


def _probe(tmp_path: Path, env_extra: dict[str, str], *, numba_first: bool = False, call: bool = False) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "XDG_CACHE_HOME"}
    env.update(HOME=str(tmp_path / "home"), **env_extra)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(numba_first=numba_first, call=call)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return Path(json.loads(out.stdout.strip().splitlines()[-1]))


def _package_cache_files() -> set[Path]:
    return set(PACKAGE_DIR.rglob("*.nbi")) | set(PACKAGE_DIR.rglob("*.nbc"))


def test_kernel_cache_goes_to_the_user_cache_dir_even_if_numba_was_imported_first(tmp_path):
    before = _package_cache_files()
    where = _probe(tmp_path, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, numba_first=True, call=True)
    assert where.is_relative_to(tmp_path / "xdg" / "dask_pdist" / "numba")
    assert list(where.glob("*.nbi")) and list(where.glob("*.nbc"))  # the compiled kernel landed there
    assert _package_cache_files() - before == set()  # and nothing new inside the package


def test_kernel_cache_defaults_to_home_cache(tmp_path):
    where = _probe(tmp_path, {})
    assert where.is_relative_to(tmp_path / "home" / ".cache" / "dask_pdist" / "numba")


def test_kernel_cache_honours_numba_cache_dir(tmp_path):
    where = _probe(tmp_path, {"NUMBA_CACHE_DIR": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert where.is_relative_to(tmp_path / "mine")


def test_kernel_cache_falls_back_to_temp_without_a_writable_cache_home(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    (tmp_path / "tmp").mkdir()
    where = _probe(tmp_path, {"XDG_CACHE_HOME": str(blocker), "TMPDIR": str(tmp_path / "tmp")})
    assert where.is_relative_to(tmp_path / "tmp") and where.parts[len((tmp_path / "tmp").parts)].startswith(
        "dask_pdist-numba-"
    )
