"""The package's layout is its design (docs/architecture.md): each layer imports only from the
layers below it, kernels know nothing of dask or xarray, no module imports itself back through
another, and reading a store never loads the compiler."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dask_pdist"

#: Bottom up; a module may import from its own layer and the ones below it.
LAYERS = {
    "conventions": 0,
    "errors": 0,
    "_version": 0,
    "_program": 0,
    "planning": 0,
    "io": 1,
    "kernels": 2,
    "graphs": 3,
    "store": 4,
    "analyses": 5,
    "cli": 6,
    "training": 6,
    "__init__": 7,
    "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    here = _module_name(path)
    wrong = [
        f"line {line}: {here} (layer {_layer(here)}) imports {module} (layer {_layer(module)})"
        for line, module in _imports(path)
        if module.startswith("dask_pdist.") and _layer(module) > _layer(here)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("kernels/**/*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_kernels_are_numpy_in_numpy_out(path):
    heavy = [m for _, m in _imports(path) if m.split(".")[0] in ("dask", "xarray", "zarr", "pandas", "fsspec")]
    assert not heavy, f"{path.name} imports {heavy}"


def test_conventions_and_planning_need_only_the_standard_library():
    for name in ("conventions.py", "planning.py", "errors.py"):
        outside = [
            m
            for _, m in _imports(PACKAGE / name, top_level_only=True)
            if m.split(".")[0] not in ("__future__", "collections", "typing", "math", "dask_pdist")
        ]
        assert not outside, f"{name} imports {outside} at import time"


def test_no_import_cycles():
    # module-level imports only: an import inside a function runs when it is called
    graph = {_module_name(p): set() for p in MODULES}
    for path in MODULES:
        for _, module in _imports(path, top_level_only=True):
            if module in graph:
                graph[_module_name(path)].add(module)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_owns_and_stays_small(path):
    text = path.read_text()
    if path.name != "__main__.py":
        assert ast.get_docstring(ast.parse(text)), f"{path.name}: no module docstring"
    assert text.count("\n") <= 500, f"{path.name}: {text.count(chr(10))} lines (split it by what each part owns)"


def test_reading_a_store_never_imports_numba(tmp_path):
    import dask_pdist as dp

    path = tmp_path / "h.safetensors"
    dp.write_synthetic_history(path, steps=7, vocab=6, dim=3)
    dp.to_zarr(dp.pairwise_distances(dp.open_history(path, chunks=3)), tmp_path / "d.zarr", progress=False)
    code = (
        "import sys, dask_pdist as dp\n"
        "from dask_pdist.analyses.info import describe\n"
        f"store = {str(tmp_path / 'd.zarr')!r}\n"
        "ds = dp.open_distances(store)\n"
        "ds.euclidean.sel(step=2).values\n"
        "dp.open_distances(store, chunks=None).chebyshev.isel(step=-1).values\n"
        "[s for s, _ in dp.iter_steps(ds)]\n"
        "dp.summarize(ds).compute()\n"
        "assert not dp.verify_store(store)\n"
        "describe(store)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("engine", ["cpu", "auto without the extra"])
def test_the_cpu_engine_never_imports_the_cuda_modules(tmp_path, engine):
    # every computation on the CPU: distances, neighbours, clusters at a positive threshold
    path = tmp_path / "h.safetensors"
    code = (
        "import sys\n"
        + ("sys.modules['numba_cuda'] = None\n" if engine != "cpu" else "")  # as if not installed
        + "import dask_pdist as dp\n"
        f"path = {str(path)!r}\n"
        "dp.write_synthetic_history(path, steps=5, vocab=7, dim=3)\n"
        "h = dp.open_history(path, chunks=2)\n"
        f"engine = {engine.split()[0]!r}\n"
        "dp.pairwise_distances(h, engine=engine).compute()\n"
        "dp.neighbours(h, k=2, engine=engine).compute()\n"
        "dp.clusters(h, 0.5, engine=engine).compute()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda.', 'dask_pdist.kernels.cuda'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_import_cycles_in_benchmarks():
    # every import, also inside functions: the benchmark scripts import each other by name
    folder = PACKAGE.parent / "benchmarks"
    names = {p.stem for p in folder.glob("*.py")}
    graph = {
        p.stem: {m.split(".")[0] for _, m in _imports(p) if m.split(".")[0] in names and m.split(".")[0] != p.stem}
        for p in folder.glob("*.py")
    }
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        for nxt in sorted(graph[node]):
            assert nxt not in stack, "import cycle: " + " -> ".join((*stack, nxt))
            if nxt not in done:
                visit(nxt, (*stack, nxt))
        done.add(node)

    for module in sorted(graph):
        visit(module, (module,))
