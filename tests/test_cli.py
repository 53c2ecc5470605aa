"""The dask-pdist command line: compute, synth, demo, and one-line errors with exit code 2."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import oracle, random_history
from dask_pdist import open_distances, open_history
from dask_pdist.cli.main import main


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("command", "expected"),
    # synth (imports_dask=False in the parser) never imports dask; the others import it lean:
    # dask.array without scipy's sparse and FFT modules (~0.1 s), and no dask.distributed
    # (~0.1-0.2 s) where no scheduler was asked for
    [("synth", "[]"), ("info", "['dask.array']"), ("summary", "['dask.array']")],
)
def test_the_program_imports_only_what_a_command_uses(tmp_path, command, expected):
    history, store = tmp_path / "h.safetensors", tmp_path / "d.zarr"
    sizes = ["--steps", "3", "--vocab", "5", "--dim", "4"]
    if command != "synth":
        assert main(["synth", str(history), *sizes]) == 0
        assert main(["compute", str(history), "-o", str(store), "--no-progress"]) == 0
    argv = {"synth": [str(history), *sizes], "info": [str(history)], "summary": [str(store)]}[command]
    code = (
        "import sys\n"
        f"sys.argv = {['dask-pdist', command, *argv]!r}\n"
        "from dask_pdist.cli.main import main\n"
        "code = main()\n"
        "print(code, sorted(m for m in ('dask.array', 'scipy.sparse', 'scipy.fft', 'distributed') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"0 {expected}", run.stdout


def test_synth_is_deterministic_and_realistic(tmp_path):
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    assert main(["synth", str(a), "--steps", "301", "--vocab", "40", "--dim", "24"]) == 0
    assert main(["synth", str(b), "--steps", "301", "--vocab", "40", "--dim", "24"]) == 0
    assert main(["synth", str(c), "--steps", "301", "--vocab", "40", "--dim", "24", "--seed", "7"]) == 0
    assert _sha(a) == _sha(b) != _sha(c)
    h = open_history(a)
    assert h.sizes == {"step": 301, "token": 40, "dim": 24} and h.attrs["input_dtype"] == "BF16"
    x = h.values
    e0, _ = oracle(x[:1])
    e, c_ = oracle(x[-1:])
    off = ~np.eye(40, dtype=bool)
    assert (e0 == 0).all()  # every token identical at step 0
    assert (e[0][off] == 0).sum() >= 2  # exact duplicates (counted both ways)
    smallest = c_[0][off][c_[0][off] > 0].min()
    assert smallest < 1e-3  # one-ulp neighbours
    assert 0.2 < np.median(e[0][off]) < 1.2 and e[0].max() < 2.5


def test_compute_end_to_end(tmp_path, capsys):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "53", "--vocab", "19", "--dim", "10"])
    out = tmp_path / "d.zarr"
    code = main(["compute", str(src), "--output", str(out), "--chunk-steps", "7", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Distance pairs per snapshot: 171" in text and "Final distances (step 52)" in text
    ds = open_distances(out)
    x = open_history(src).values
    e, c = oracle(x)
    assert ds.euclidean.chunks[0][0] == 7
    mask = e > 0
    assert (np.abs(ds.euclidean.values - e)[mask] / e[mask]).max() <= 1e-6
    np.testing.assert_array_equal(ds.chebyshev.values, np.abs(x[:, :, None] - x[:, None]).max(-1))


def test_the_heap_is_frozen_only_when_the_cli_is_the_program(tmp_path):
    # as the program, the modules and the planned graph are moved out of the collector's reach
    # (gc.freeze: its full collections and the exit no longer walk them); called from Python
    # (a test, a notebook) the caller's collector is left as it is
    import gc

    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "9", "--vocab", "7", "--dim", "3"])
    frozen = gc.get_freeze_count()
    assert main(["compute", str(src), "-o", str(tmp_path / "a.zarr"), "--no-progress"]) == 0
    assert gc.get_freeze_count() == frozen
    probe = (
        "import gc, sys; from dask_pdist.cli.main import main;"
        f" sys.argv = ['dask-pdist', 'compute', {str(src)!r}, '-o', {str(tmp_path / 'b.zarr')!r}, '--no-progress'];"
        " code = main(); print(code, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["0", "True"]


def test_one_malloc_arena_only_as_the_program_computing_and_not_over_the_users_setting(tmp_path, monkeypatch):
    # compute and demo, as the program, ask glibc for one malloc arena (lower, steadier peak
    # RSS); other commands and a caller's process (main(argv)) are left as they are, and an
    # arena limit the user set wins. The real call runs in subprocesses only: it would change
    # this test process's allocator.
    import importlib

    cli = importlib.import_module("dask_pdist.cli.main")  # (the package's `main` is the function)
    calls = []
    monkeypatch.setattr(cli, "one_malloc_arena", lambda: calls.append(1))
    src = tmp_path / "h.safetensors"
    assert main(["synth", str(src), "--steps", "3", "--vocab", "4", "--dim", "2"]) == 0
    assert main(["compute", str(src), "-o", str(tmp_path / "a.zarr"), "--no-progress"]) == 0
    assert calls == []

    def as_program(*argv: str, env: dict | None = None) -> str:
        probe = (
            "import importlib, sys; cli = importlib.import_module('dask_pdist.cli.main');"
            " from dask_pdist._program import one_malloc_arena; calls = [];"
            " cli.one_malloc_arena = lambda: calls.append(one_malloc_arena());"
            f" sys.argv = ['dask-pdist', *{list(argv)!r}]; code = cli.main(); print(code, calls)"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")} | (env or {})
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()[-1]

    try:
        glibc = sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        glibc = False
    compute = ["compute", str(src), "-o", str(tmp_path / "b.zarr"), "--no-progress"]
    assert as_program(*compute) == f"0 [{glibc}]"
    assert as_program("info", str(src)) == "0 []"
    assert as_program(*compute, "--overwrite", env={"MALLOC_ARENA_MAX": "4"}) == "0 [False]"
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    assert as_program(*compute, "--overwrite", env=tunables) == "0 [False]"


def test_chunk_steps_auto_is_the_default_spelled_out(tmp_path):
    # the help and docs/follow.md name "auto" as --chunk-steps' default: it is accepted
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "29", "--vocab", "11", "--dim", "6"])
    auto, default = tmp_path / "a.zarr", tmp_path / "d.zarr"
    assert main(["compute", str(src), "-o", str(auto), "--chunk-steps", "auto", "--no-progress"]) == 0
    assert main(["compute", str(src), "-o", str(default), "--no-progress"]) == 0
    assert open_distances(auto).euclidean.chunks == open_distances(default).euclidean.chunks
    with pytest.raises(SystemExit):
        main(["compute", str(src), "-o", str(tmp_path / "x.zarr"), "--chunk-steps", "autox"])


def test_compute_options(tmp_path):
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "9", "--vocab", "6", "--dim", "4"])
    (tmp_path / "tok.txt").write_text("\n".join("abcdef") + "\n")
    out = tmp_path / "d.zarr"
    args = [
        "compute",
        str(src),
        "-o",
        str(out),
        "--metrics",
        "chebyshev",
        "--dtype",
        "float16",
        "--tokens",
        str(tmp_path / "tok.txt"),
        "--compressor",
        "none",
        "--token-chunk",
        "4",
        "--no-progress",
    ]
    assert main(args) == 0
    ds = open_distances(out)
    assert list(ds.data_vars) == ["chebyshev"] and ds.chebyshev.dtype == np.float16
    assert list(ds.token_i.values) == list("abcdef")


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dask-pdist: error: "), err
    return err[0]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    assert "bad.safetensors: not a safetensors file" in _error(
        capsys, ["compute", str(bad), "-o", str(tmp_path / "o.zarr")]
    )
    assert "history file not found" in _error(
        capsys, ["compute", str(tmp_path / "nope"), "-o", str(tmp_path / "o.zarr")]
    )
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "5", "--vocab", "4", "--dim", "3"])
    capsys.readouterr()
    assert "no tensor 'x'; available: embedding_history" in _error(
        capsys, ["compute", str(src), "--key", "x", "-o", str(tmp_path / "o.zarr")]
    )


@pytest.fixture
def small_store(tmp_path, capsys):
    """(history, store) paths: a tiny synthetic history already computed by the CLI."""
    src = tmp_path / "h.safetensors"
    main(["synth", str(src), "--steps", "9", "--vocab", "5", "--dim", "3"])
    out = str(tmp_path / "d.zarr")
    assert main(["compute", str(src), "-o", out, "--no-progress"]) == 0
    capsys.readouterr()
    return src, out


def test_refuses_existing_store_unless_overwrite(small_store, capsys):
    src, out = small_store
    assert "already exists; pass --overwrite to replace it" in _error(capsys, ["compute", str(src), "-o", out])
    assert main(["compute", str(src), "-o", out, "--overwrite", "--no-progress"]) == 0


def test_debug_shows_traceback_and_keeps_the_exit_code(tmp_path, capsys):
    assert main(["--debug", "compute", str(tmp_path / "nope"), "-o", str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith("dask-pdist: error: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compute", "x", "-o", "y", "--metrics", "cosine"], "choose from euclidean,chebyshev"),
        (["compute", "x", "-o", "y", "--chunk-steps", "0"], "--chunk-steps"),
        (["compute", "x", "-o", "y", "--dtype", "int8"], "invalid choice: 'int8'"),
        (["synth", "h.safetensors", "--steps", "0"], "--steps"),
        (["compute", "x"], "required: --output"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    # argparse printed its usage block before the error: bad input is one line, as elsewhere
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert err.startswith("dask-pdist ") and "--help" in err


@pytest.mark.slow
def test_console_script_and_module_and_demo(tmp_path):
    help_ = subprocess.run([sys.executable, "-m", "dask_pdist", "--help"], capture_output=True, text=True, check=True)
    assert "compute" in help_.stdout and "demo" in help_.stdout
    script = shutil.which("dask-pdist") or str(Path(sys.executable).parent / "dask-pdist")
    run = subprocess.run(
        [script, "demo", "--output-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "Snapshots: 5,001" in run.stdout and "Final distances (step 5000)" in run.stdout
    assert "computing" in run.stderr  # the progress bar
    # the planted cluster events of synth (see synthetic_events)
    assert "1000, emission, {6 7 8 9 10} -> 10 alone" in run.stdout and "3500, evaporation" in run.stdout
    ds = open_distances(tmp_path / "demo" / "pairwise_distances.zarr")
    assert ds.sizes == {"step": 5001, "token_i": 128, "token_j": 128}
    x = open_history(tmp_path / "demo" / "embedding_evolution.safetensors").isel(step=[0, 2500, 5000]).values
    e, c = oracle(x)
    got = ds.sel(step=[0, 2500, 5000])
    mask = e > 0
    assert (np.abs(got.euclidean.values - e)[mask] / e[mask]).max() <= 1e-6
    np.testing.assert_array_equal(got.chebyshev.values, c.astype(np.float32))


def test_compute_from_per_checkpoint_files(tmp_path, write_safetensors):
    x = random_history((7, 6, 5), seed=11)
    for k, step in enumerate([10, 20, 30, 40, 50, 60, 70]):
        write_safetensors(
            f"ckpt_{step}.safetensors", {"model.embed_tokens.weight": x[k], "bias": np.zeros(6, np.float32)}
        )
    files = sorted(str(p) for p in tmp_path.glob("ckpt_*.safetensors"))
    for n, inputs in enumerate([[str(tmp_path / "ckpt_*.safetensors")], files]):  # quoted glob, shell-expanded list
        out = tmp_path / f"d{n}.zarr"
        args = ["compute", *inputs, "-o", str(out), "--key", "model.embed_tokens.weight", "--no-progress"]
        assert main(args) == 0
        ds = open_distances(out)
        np.testing.assert_array_equal(ds["step"].values, [10, 20, 30, 40, 50, 60, 70])
        np.testing.assert_array_equal(ds.chebyshev.values, np.abs(x[:, :, None] - x[:, None]).max(-1))


def test_help_imports_no_heavy_library():
    # dask-pdist --help and `import dask_pdist` must not pay for dask, xarray, numba (~1 s)
    code = "import sys, dask_pdist, dask_pdist.cli.main; print(sorted({'dask', 'xarray', 'numba', 'zarr'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import dask_pdist

    assert callable(dask_pdist.open_history) and "to_safetensors" in dir(dask_pdist)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dask_pdist.nope  # noqa: B018


_AFTER_MAIN = (
    "import dask.array, dask.utils, numba.np.arraymath\n"
    "from dask_pdist.cli.imports import _own_doc\n"
    "print(code, sorted({'scipy.sparse', 'scipy.fftpack', 'scipy.linalg'} & set(sys.modules)),"
    " 'copied from numpy' in (dask.array.allclose.__doc__ or ''), dask.utils.derived_from is _own_doc,"
    " numba.np.arraymath._HAVE_BLAS)\n"
)


@pytest.mark.parametrize("as_program", [True, False])
def test_the_program_imports_dask_array_and_numba_without_scipy(tmp_path, as_program):
    # as the program (main() reads sys.argv), the command imports dask.array without scipy's
    # sparse and FFT modules and without its derived docstrings (cli/imports.py: ~0.15 s of
    # start-up), and numba's kernels load without scipy.linalg (kernels/_jit.py: ~0.1 s);
    # a Python caller's process (main(argv)) is left as dask and numba make it
    pytest.importorskip("scipy")
    hist = tmp_path / "h.npy"
    np.save(hist, random_history((3, 7, 5), seed=1))
    out = tmp_path / "d.zarr"
    argv = ["compute", str(hist), "-o", str(out), "--no-progress"]
    call = f"sys.argv = ['dask-pdist', *{argv!r}]\ncode = main()\n" if as_program else f"code = main({argv!r})\n"
    code = "import sys\nfrom dask_pdist.cli.main import main\n" + call + _AFTER_MAIN
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if as_program:
        assert proc.stdout.splitlines()[-1] == "0 [] False False False"
    else:
        assert proc.stdout.splitlines()[-1] == "0 ['scipy.fftpack', 'scipy.linalg', 'scipy.sparse'] True False True"
    ds = open_distances(out)  # the lean import computes the same distances
    euclidean, chebyshev = oracle(np.load(hist))
    np.testing.assert_allclose(ds.euclidean.values, euclidean, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(ds.chebyshev.values, chebyshev.astype(np.float32))


def test_a_stop_during_the_lean_import_ends_in_one_line(tmp_path):
    # Ctrl-C while the program imports dask.array (its first ~0.7 s) is the command's own stop:
    # "interrupted", exit 130, no traceback
    hist = tmp_path / "h.npy"
    np.save(hist, random_history((2, 5, 3), seed=2))
    argv = ["compute", str(hist), "-o", str(tmp_path / "d.zarr"), "--no-progress"]
    code = (
        "import importlib, sys\n"
        "cli = importlib.import_module('dask_pdist.cli.main')  # (dask_pdist.cli.main is also the function)\n"
        "def stop():\n"
        "    raise KeyboardInterrupt\n"
        "cli.import_dask_array = stop\n"
        f"sys.argv = ['dask-pdist', *{argv!r}]\n"
        "print(cli.main())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "130", "dask-pdist: interrupted")


def test_a_hidden_module_imports_again_after_the_lean_import():
    # the modules are hidden only while dask.array is imported: a later import works, dask works
    pytest.importorskip("scipy")
    code = (
        "import sys\n"
        "from dask_pdist.cli.imports import import_dask_array\n"
        "first = import_dask_array()\n"
        "hidden = sorted({'scipy.sparse', 'scipy.fftpack'} & set(sys.modules))\n"
        "import scipy.sparse, scipy.fftpack, dask.array as da\n"
        "print(first, hidden, scipy.sparse.eye(2).nnz, int(da.ones(5, chunks=2).sum().compute()),"
        " import_dask_array())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True [] 2 5 False"


def test_scipy_blas_imports_again_after_the_programs_numba_import():
    # as the program, scipy's BLAS is hidden only while numba's arraymath is imported: later,
    # scipy.linalg imports and a compiled np.dot (numba's BLAS) works
    pytest.importorskip("scipy")
    code = (
        "import sys\n"
        "from dask_pdist._program import PROGRAM\n"
        "PROGRAM['lean'] = True\n"
        "from dask_pdist.kernels._jit import numba\n"
        "import numpy as np\n"
        "hidden = 'scipy.linalg' in sys.modules\n"
        "import scipy.linalg\n"
        "dot = numba.njit(lambda a, b: np.dot(a, b))\n"
        "a = np.arange(6.0).reshape(2, 3)\n"
        "print(hidden, numba.np.arraymath._HAVE_BLAS, dot(a, a.T).tolist(), scipy.linalg.norm([3.0, 4.0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False [[5.0, 14.0], [14.0, 50.0]] 5.0"


def test_every_public_name_resolves():
    import dask_pdist

    assert set(dask_pdist.__all__) == {"__version__", *dask_pdist._WHERE}
    for name in dask_pdist.__all__:
        assert getattr(dask_pdist, name) is not None


def test_resume_of_a_complete_store_says_so(small_store, capsys):
    src, out = small_store
    assert main(["compute", str(src), "-o", out, "--no-progress", "--resume"]) == 0
    assert "resuming, complete: nothing to compute" in capsys.readouterr().err
