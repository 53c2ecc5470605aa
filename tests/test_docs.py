"""The documentation stays true to the code: every ``dask-pdist`` option the pages and the
README show exists on that command, every relative link between them points at a file, the
README keeps the two set-up commands CI runs verbatim, the command-line reference page
points at the parser the command uses, every ``dp.NAME(keyword=...)`` the pages call exists
with that keyword, and the tutorial's code is the example files it links,
whose reading script runs on a store of the tutorial's shape. (The site itself is built with
warnings as errors by .ci/run.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from dask_pdist.cli.main import _parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"


def _commands() -> dict[str, set[str]]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = {s for a in parser._actions for s in a.option_strings}
    return {name: top | {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def _blocks(text: str, languages=("bash", "text", "")):
    """The fenced code blocks of a Markdown page in one of ``languages``, as lists of lines."""
    block, language = None, None
    for line in text.splitlines():
        fence = re.match(r"\s*```(\S*)", line)
        if fence and block is None:
            block, language = [], fence.group(1)
        elif fence:
            if languages is None or language in languages:
                yield block
            block = None
        elif block is not None:
            block.append(line)


def _command_lines(text: str):
    """(command, line) for each `dask-pdist COMMAND ...` line of a shell or text block, with
    the indented continuation lines of a synopsis joined to it; comments dropped."""
    for block in _blocks(text):
        command = None
        for line in block:
            code = line.split(" #")[0]
            found = re.match(r"\s*(?:\$ )?(?:\S+=\S+ )?dask-pdist (?:--debug )?([a-zA-Z]+)\b", code)
            if found:
                command = found.group(1)
            elif not (command and re.match(r"\s+\[", code)):
                command = None
                continue
            yield command, code


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_option_shown_exists_on_its_command(page):
    commands = _commands()
    shown = list(_command_lines(page.read_text()))
    wrong = []
    for command, line in shown:
        if command == "COMMAND":
            continue
        assert command in commands, f"{page.name}: unknown command {command!r} in {line!r}"
        wrong += [
            (command, o) for o in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-k|-o)\b", line) if o not in commands[command]
        ]
    assert not wrong, f"{page.name}: options not on their command: {wrong}"


def test_the_pages_show_the_commands_they_describe():
    shown = {c for page in [README, *PAGES] for c, _ in _command_lines(page.read_text())}
    assert set(_commands()) <= shown


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_point_at_files(page):
    text = page.read_text()
    for block in _blocks(text, languages=None):
        text = text.replace("\n".join(block), "")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files {missing}"


def test_readme_keeps_the_two_commands_ci_runs_verbatim_on_its_first_screen():
    readme = README.read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    demo = "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/dask-pdist demo"
    tests = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    assert demo in readme[:40] and tests in readme[:40]
    assert readme.index(demo) < readme.index(tests)
    assert demo in ci and tests in ci and ci.index(demo) < ci.index(tests)
    assert len(readme) <= 200


def test_cli_reference_is_generated_from_the_commands_parser():
    page = (ROOT / "docs" / "cli.md").read_text()
    module = re.search(r":module: (\S+)", page).group(1)
    func = re.search(r":func: (\S+)", page).group(1)
    assert (module, func) == ("dask_pdist.cli.main", "_parser")
    assert _parser().prog == "dask-pdist"


def _python_blocks(page: Path) -> list[str]:
    return ["\n".join(b) for b in _blocks(page.read_text(), languages=("python",))]


def test_the_tutorials_code_is_the_example_files_it_links():
    blocks = [b.strip() for b in _python_blocks(ROOT / "docs" / "tutorial-trainer.md")]
    for name in ("train_tiny_gpt2.py", "read_store.py"):
        assert (ROOT / "docs" / "examples" / name).read_text().strip() in blocks, name


def test_the_tutorials_reading_example_runs_and_finds_the_nearest_token(tmp_path, monkeypatch, capsys):
    import runpy

    import numpy as np

    from conftest import history_array, oracle, random_history
    from dask_pdist import pairwise_distances, to_zarr

    x = random_history((4, 256, 32))
    to_zarr(pairwise_distances(history_array(x, 1, steps=np.array([3, 6, 9, 12]))), tmp_path / "d.zarr", progress=False)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "docs" / "examples" / "read_store.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    euclidean = oracle(x[-1:])[0][0]
    row = np.delete(euclidean[5], 5)
    nearest = int(np.delete(np.arange(256), 5)[np.argmin(row)])
    assert out[0].endswith("[ 3  6  9 12]")
    assert out[2] == f"nearest token to 5 at step 12: {nearest}"
    assert out[4] == "(4, 256, 256)"


def _calls(code: str):
    """(name, keyword names) of each ``dp.NAME(...)`` call in a code block."""
    for found in re.finditer(r"\bdp\.([A-Za-z_]+)\(", code):
        depth, end = 1, found.end()
        while depth and end < len(code):
            depth += {"(": 1, ")": -1}.get(code[end], 0)
            end += 1
        args = code[found.end() : end - 1]
        top = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}|\"[^\"]*\"", "", args)  # nested calls, literals
        yield found.group(1), re.findall(r"(?<![=\w])([a-z_]+)=(?!=)", top)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_function_and_keyword_shown_exists(page):
    import inspect

    import dask_pdist as dp

    wrong = []
    for code in _python_blocks(page):
        for name, keywords in _calls(code):
            if name not in dp.__all__:
                wrong.append(name)
                continue
            parameters = inspect.signature(getattr(dp, name)).parameters
            wrong += [f"{name}({k}=)" for k in keywords if k not in parameters]
    assert not wrong, f"{page.name}: not in the API: {wrong}"
