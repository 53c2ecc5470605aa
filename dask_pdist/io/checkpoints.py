"""Per-checkpoint inputs: which files make the history, which step each one is, and where a
sharded checkpoint keeps the tensor.

Pure path and header logic, no array reading: :mod:`dask_pdist.io.history` stacks the files.
Checkpoints come as files (``ckpt/step_500.safetensors``), as Hugging Face style folders
(``ckpt/checkpoint-500/model.safetensors``, or the folder itself), or sharded
(``model.safetensors.index.json`` naming the shard of every tensor).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dask_pdist.errors import InputError, SkippedCheckpointWarning
from dask_pdist.io.known_files import known_folder, remember_folder
from dask_pdist.io.path_facts import as_path, digit_runs, trainer_folder_step
from dask_pdist.io.path_facts import natural_key as _natural_key
from dask_pdist.io.safetensors_format import require_regular_file
from dask_pdist.io.step_labels import parse_steps  # (re-exported: the readers take it from here)

__all__ = [
    "INDEX_SUFFIX",
    "checkpoint_paths",
    "is_run_folder",
    "is_checkpoint_folder",
    "incomplete_reason",
    "embedding_key",
    "checkpoint_steps",
    "parse_steps",
    "tensor_file",
    "confined",
]

#: Name ending of a sharded checkpoint's index (``model.safetensors.index.json``).
INDEX_SUFFIX = ".safetensors.index.json"
_DIGIT_RUNS = re.compile(r"(\d+)")
#: A Hugging Face Trainer checkpoint folder (``tmp-checkpoint-N`` is one being saved).
_TRAINER_FOLDER = re.compile(r"checkpoint-(\d+)")
#: What Trainer writes into a checkpoint folder after the weights.
TRAINER_STATE = "trainer_state.json"
#: The embedding matrix of common architectures, by config.json ``model_type``.
_EMBEDDING_KEYS = {
    "gpt2": "transformer.wte.weight",
    "gpt_neox": "gpt_neox.embed_in.weight",
    "gptj": "transformer.wte.weight",
    "bloom": "transformer.word_embeddings.weight",
    "opt": "model.decoder.embed_tokens.weight",
}
#: Most decoder-only models (Llama, Qwen, Mistral, Gemma, Phi-3, ...).
_DEFAULT_EMBEDDING_KEY = "model.embed_tokens.weight"


def confined(path: Path, folder: Path, what: str, follow_symlinks: bool = False) -> Path:
    """``path``, named from inside an input (a shard in an index, a file in a checkpoint
    folder), if it stays inside ``folder``; a symbolic link that leaves it is refused unless
    ``follow_symlinks``. The Hugging Face cache layout (``snapshots/REV/FILE`` linking to the
    repository's ``blobs/``) stays inside its repository folder and is followed.

    >>> confined(Path("ckpt/model-00001.safetensors"), Path("ckpt"), "shard")
    PosixPath('ckpt/model-00001.safetensors')
    """
    if follow_symlinks or not os.path.lexists(path):
        return path
    real, base = path.resolve(), folder.resolve()
    allowed = [base]
    for parent in [folder.absolute(), *folder.absolute().parents]:
        if parent.name == "snapshots":  # huggingface_hub: models--ORG--NAME/{snapshots,blobs}
            allowed.append((parent.parent / "blobs").resolve())
            break
    if any(real == a or a in real.parents for a in allowed):
        return path
    raise InputError(
        f"{path}: {what} is a symbolic link to {real}, outside {folder}; refusing to read it"
        " (pass follow_symlinks=True / --follow-symlinks if that is intended)"
    )


def _checkpoint_in(folder: Path, follow_symlinks: bool = False) -> Path | None:
    """The checkpoint a folder holds: its index json, else its only safetensors file."""
    index = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(index) == 1:
        return confined(index[0], folder, "the checkpoint's index", follow_symlinks)
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1 and not index:
        return confined(files[0], folder, "the checkpoint file", follow_symlinks)
    if index or files:
        found = ", ".join(p.name for p in (index or files))
        raise InputError(f"{folder}: holds several checkpoints ({found}); name the files instead of the folder")
    return None


def is_checkpoint_folder(path: str | os.PathLike[str]) -> bool:
    """True for a local Trainer checkpoint folder (``checkpoint-N``, or ``tmp-checkpoint-N``
    being saved).

    >>> is_checkpoint_folder("run/checkpoint-500")
    False
    """
    folder = Path(path)
    return bool(_TRAINER_FOLDER.fullmatch(folder.name.removeprefix("tmp-"))) and folder.is_dir()


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """True for a local folder holding Hugging Face Trainer checkpoints (``checkpoint-N/``,
    or only ``tmp-checkpoint-N/`` while the first is being saved).

    >>> is_run_folder("no/such/folder")
    False
    """
    folder = Path(path)
    if not folder.is_dir() or (folder / "zarr.json").exists():
        return False
    return any(_TRAINER_FOLDER.fullmatch(p.name.removeprefix("tmp-")) and p.is_dir() for p in folder.iterdir())


def incomplete_reason(path: Path) -> str | None:
    """Why the safetensors file (or sharded index) ``path`` is not a whole checkpoint yet, or
    None: shorter than its header says, or a header not yet whole (a file being written)."""
    if path.name.endswith(INDEX_SUFFIX):
        try:
            shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "its index is not whole yet"
        for name in sorted(shards, key=str):
            if not isinstance(name, str) or not name or name in (".", "..") or re.search(r"[/\\\0]", name):
                return None  # not a plain file name: tensor_file refuses it, naming the entry (never read here)
            try:
                confined(path.parent / name, path.parent, "shard")
            except InputError:
                return None  # a link leaving the folder: refused by tensor_file, never read here
            if not (path.parent / name).is_file():
                return f"shard {name} not there yet"
            reason = incomplete_reason(path.parent / name)
            if reason:
                return f"shard {name}: {reason}"
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the header length"
            n = int.from_bytes(head, "little")
            header = json.loads(f.read(n)) if size >= 8 + n else None
    except (OSError, ValueError):
        return "its header is not whole yet"
    if header is None or not isinstance(header, dict):
        return f"{size} bytes, shorter than its header"
    end = max(
        (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)),
        default=0,
    )
    if size < 8 + n + end:
        return f"{size:,} bytes, shorter than its header says ({8 + n + end:,})"
    return None


def _run_checkpoints(folders: list[Path], follow_symlinks: bool) -> list[Path]:
    # Trainer's folders, the incomplete ones skipped with a note: a tmp-checkpoint-N folder
    # (being saved), one without trainer_state.json while others have one, a file shorter
    # than its header says; never read half-written
    import warnings

    known = {f: known_folder(f, follow_symlinks) for f in folders}
    has_state = {f: k[0] if k is not None else (f / TRAINER_STATE).is_file() for f, k in known.items()}
    stated = any(has_state.values())
    out = []
    for folder in folders:
        if folder.name.startswith("tmp-"):
            why = "being saved (a tmp- folder)"
        elif stated and not has_state[folder]:
            why = f"no {TRAINER_STATE} yet (being saved)"
        elif known[folder] is not None:
            out.append(known[folder][1])  # type: ignore[index]
            continue
        else:
            inner = _checkpoint_in(folder, follow_symlinks)
            if inner is None and any(folder.glob("*.bin")):  # save_safetensors=False: never a safetensors file
                raise bin_only(folder)
            why = "no checkpoint file yet" if inner is None else incomplete_reason(inner)
            if why is None and inner is not None:
                out.append(inner)
                if not inner.name.endswith(INDEX_SUFFIX):  # (a sharded one's shards are not recorded)
                    remember_folder(folder, follow_symlinks, has_state[folder], inner)
                continue
        warnings.warn(f"{folder}: skipped, incomplete: {why}", SkippedCheckpointWarning, stacklevel=3)
    if not out:
        raise none_complete(folders[0].parent, len(folders))
    return out


def bin_only(folder: object) -> InputError:
    """The error for a checkpoint folder holding PyTorch ``.bin`` weights and no safetensors."""
    return InputError(
        f"{folder}: holds PyTorch .bin weights only; dask_pdist reads safetensors: train with"
        " save_safetensors=True (Trainer's default), or convert the checkpoints"
    )


def none_complete(run: object, n: int) -> InputError:
    """The error for a run folder (local or a URL) none of whose ``n`` checkpoints is whole yet."""
    return InputError(
        f"{run}: holds no complete checkpoint yet ({n} being saved); retry when one is saved"
        " (or follow the run with --follow)"
    )


def run_folders(run: Path) -> list[Path]:
    """The checkpoint folders of a Trainer output folder, ``tmp-checkpoint-N`` included."""
    return [p for p in run.iterdir() if p.is_dir() and _TRAINER_FOLDER.fullmatch(p.name.removeprefix("tmp-"))]


def checkpoint_paths(
    spec: str | Sequence[str | os.PathLike[str]], follow_symlinks: bool = False, stats: dict | None = None
) -> list[Path]:
    """The checkpoints of a glob string or a list, in natural order (``step_10`` after ``step_9``).

    Each is a safetensors file or a sharded checkpoint's index json; a folder stands for the
    checkpoint inside it (its index json, or its only safetensors file). A glob skips
    folders that hold no checkpoint. ``stats``: receives the ``stat`` of each file of a list
    by its path's string, for a reader to use rather than take another.

    Examples
    --------
    >>> checkpoint_paths("ckpt/checkpoint-*")  # doctest: +SKIP
    [PosixPath('ckpt/checkpoint-500/model.safetensors'), PosixPath('ckpt/checkpoint-1000/model.safetensors')]
    """
    if isinstance(spec, (str, os.PathLike)) and is_run_folder(spec):
        paths = _run_checkpoints(run_folders(Path(spec)), follow_symlinks)
    elif isinstance(spec, str):
        found = glob.glob(spec)
        if not found:
            raise FileNotFoundError(f"{spec}: no file matches this pattern")
        paths = []
        if all(os.path.isdir(p) and _TRAINER_FOLDER.fullmatch(Path(p).name) for p in found):  # 'run/checkpoint-*'
            paths = _run_checkpoints([Path(p) for p in found], follow_symlinks)
        for p in found if not paths else []:
            try:
                st = os.stat(p)  # one stat per file, handed to the reader (as for a list)
            except OSError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                inner = _checkpoint_in(Path(p), follow_symlinks)
            else:
                inner = as_path(p)
                if stats is not None and st is not None:
                    stats[str(inner)] = st
            if inner is not None:
                paths.append(inner)
        if paths and _FOLLOWING.get() and not all(os.path.isdir(p) for p in found):
            paths = _without_newest_incomplete(sorted(paths, key=_path_order), spec)
        if not paths:
            from dask_pdist.io.folder_hints import stores_hint  # (it imports this module)

            stores = stores_hint(spec)  # the stores compute 'runs/*' -o out/ wrote: say to give one
            raise InputError(
                f"{spec}: {stores[2:]}"
                if stores
                else f"{spec}: the pattern matches only directories ({', '.join(sorted(found)[:3])}"
                f"{', ...' if len(found) > 3 else ''}) that hold no safetensors checkpoint;"
                " give a pattern that matches safetensors files"
            )
    else:
        paths = []
        for p in spec:
            path = as_path(p)
            try:
                st = os.stat(p)
            except OSError:
                st = None  # require_regular_file says why
            inner = _checkpoint_in(path, follow_symlinks) if st and stat.S_ISDIR(st.st_mode) else None
            if inner is None and not (st and stat.S_ISREG(st.st_mode)):  # not a folder with a checkpoint: a file
                require_regular_file(path, "checkpoint file")
            if inner is None and stats is not None:
                stats[str(path)] = st
            paths.append(inner or path)
        if not paths:
            raise InputError("open_history got an empty list of checkpoint files; give at least one")
    return sorted(paths, key=_path_order)


#: True while --follow lists its input (:func:`following`).
_FOLLOWING: contextvars.ContextVar[bool] = contextvars.ContextVar("dask_pdist_following", default=False)


@contextlib.contextmanager
def following() -> Iterator[None]:
    """While a run is followed, the newest files a glob matches may still be being written:
    those shorter than their headers say are skipped with a note (and appended once whole)
    instead of refused as truncated, as they are in a one-shot compute."""
    token = _FOLLOWING.set(True)
    try:
        yield
    finally:
        _FOLLOWING.reset(token)


def _without_newest_incomplete(paths: list[Path], spec: str) -> list[Path]:
    # A followed glob's newest files may still be being written (safetensors' save_file writes
    # in place): the last ones in order that are shorter than their headers say are skipped with
    # a note, as an incomplete checkpoint folder is. An incomplete file before a whole one is
    # read, and its reader says what is wrong with it.
    import warnings

    end = len(paths)
    while end and paths[end - 1].name.endswith((".safetensors", INDEX_SUFFIX)):
        why = incomplete_reason(paths[end - 1])
        if why is None:
            break
        warnings.warn(f"{paths[end - 1]}: skipped, incomplete: {why}", SkippedCheckpointWarning, stacklevel=4)
        end -= 1
    if not end:
        raise none_complete(spec, len(paths))
    return paths[:end]


def _path_order(p: Path) -> tuple:
    return _order_of(str(p))


@functools.lru_cache(maxsize=1 << 16)
def _order_of(text: str) -> tuple:
    # cached: following a run sorts the whole run's paths at every save
    return _natural_key(os.path.basename(text)), _natural_key(text)


def _varying_numbers(paths: list[Path]) -> list[int] | None:
    # the number in the part of the path that differs between checkpoints (a glob's match):
    # checkpoint-500/model.safetensors -> 500, even though the file names are all alike
    cwd = os.getcwd()
    parts = [digit_runs(os.fspath(p), cwd) for p in paths]
    if len({len(x) for x in parts}) != 1:
        return None
    between = parts[0][0::2]
    if any(x[0::2] != between for x in parts):
        return None  # the text between the numbers differs too: no common pattern
    varying = [
        i for i in range(1, len(parts[0]), 2) if len({x[i] for x in parts}) > 1 and len({int(x[i]) for x in parts}) > 1
    ]
    return [int(x[varying[-1]]) for x in parts] if varying else None


def _name_numbers(paths: list[Path]) -> list[int] | None:
    # the last number in each file name
    out = []
    for p in paths:
        numbers = re.findall(r"\d+", p.name.removesuffix(INDEX_SUFFIX) if p.name.endswith(INDEX_SUFFIX) else p.stem)
        if not numbers:
            return None
        out.append(int(numbers[-1]))
    return out


def checkpoint_steps(paths: list[Path]) -> np.ndarray | None:
    """Step numbers from the checkpoints' paths, or None when there are none to take.

    With several checkpoints: the number in the part of the path that varies between them;
    failing that (or with one checkpoint), the last number in every file name. Two
    checkpoints with one step are an error.

    Examples
    --------
    >>> checkpoint_steps([Path("c/checkpoint-500/model.safetensors"), Path("c/checkpoint-1000/model.safetensors")])
    array([ 500, 1000])
    """
    numbers, origin = None, "Trainer folder"
    folders = [trainer_folder_step(os.fspath(p)) for p in paths]
    if all(n is not None for n in folders):  # checkpoint-500/model.safetensors -> 500, even for one checkpoint
        numbers = folders
    if numbers is None:
        numbers, origin = (_varying_numbers(paths) if len(paths) > 1 else None), "path"
    if numbers is None:
        numbers, origin = _name_numbers(paths), "file name"
    if numbers is None:
        return None
    steps = np.array(numbers, dtype=np.int64)
    seen: dict[int, Path] = {}
    for step, p in zip(steps.tolist(), paths, strict=True):
        if step in seen:
            raise InputError(
                f"{p}: step {step} from its {origin} is also the step of {seen[step]};"
                " every checkpoint needs its own step number (remove or rename one, or give steps= / --steps)"
            )
        seen[step] = p
    return steps


def tensor_file(path: Path, key: str | None, follow_symlinks: bool = False) -> Path:
    """The safetensors file holding ``key``: ``path`` itself, or for a sharded checkpoint's
    index json, the shard its ``weight_map`` names: a plain file name in the index's folder
    (anything else, an absolute path or ``..``, is an error naming the index and the entry),
    not a symbolic link leaving that folder (see :func:`confined`).

    Examples
    --------
    >>> tensor_file(Path("ckpt/model.safetensors.index.json"), "model.embed_tokens.weight")  # doctest: +SKIP
    PosixPath('ckpt/model-00001-of-00002.safetensors')
    """
    if not path.name.endswith(INDEX_SUFFIX):
        return path
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(type(weight_map).__name__)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a safetensors index ({type(exc).__name__}: {exc}); expected JSON with a"
            " 'weight_map' object of tensor name -> shard file"
        ) from None
    if key is None:  # the architecture's key, when config.json names one the index holds
        try:
            key = embedding_key(path, {n: (0, 0) for n in weight_map})
        except InputError:
            key = None
        key = key if key in weight_map and (path.parent / "config.json").is_file() else None
    if key is None or key not in weight_map:
        embed = [n for n in weight_map if "embed" in n][:3] or list(weight_map)[:3]
        problem = "a sharded checkpoint: name its embedding matrix" if key is None else f"no tensor {key!r} in it"
        raise InputError(
            f"{path}: {problem} ({len(weight_map)} tensors in its weight_map, e.g. {', '.join(embed)});"
            " give key= / --key"
        )
    name = weight_map[key]
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.path.isabs(name)
    ):
        raise InputError(
            f"{path}: weight_map entry {key!r} -> {name!r}: a shard must be a plain file name in the index's"
            f" folder {path.parent}"
        )
    shard = confined(path.parent / name, path.parent, f"the shard holding {key!r} (says {path.name})", follow_symlinks)
    if not shard.is_file():
        raise FileNotFoundError(f"{shard}: the shard holding {key!r} (says {path}) not found")
    return shard


def embedding_key(checkpoint: Path, shapes: dict[str, tuple[int, ...]]) -> str:
    """The embedding matrix of a checkpoint whose key was not given, from the ``config.json``
    next to it: the key of its architecture (GPT-2 ``transformer.wte.weight``, Llama, Qwen,
    Mistral ``model.embed_tokens.weight``, GPT-NeoX ``gpt_neox.embed_in.weight``, ...), else
    the one 2-D tensor with ``vocab_size`` rows whose name says embed or wte; without a
    config, the only 2-D tensor. Otherwise an error listing the 2-D tensors and suggesting one.

    >>> embedding_key(Path("ckpt/model.safetensors"), {"emb": (512, 64), "steps": (3,)})
    'emb'
    """
    two_d = {n: s for n, s in shapes.items() if len(s) == 2}
    config: dict = {}
    try:
        config = json.loads((checkpoint.parent / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    config = config if isinstance(config, dict) else {}
    model_type = str(config.get("model_type", ""))
    known = _EMBEDDING_KEYS.get(model_type, _DEFAULT_EMBEDDING_KEY)
    for name in (known, known.removeprefix("model."), known.split(".", 1)[-1]):
        if name in two_d:
            return name
    vocab = config.get("vocab_size")
    named = [n for n in two_d if re.search(r"embed|wte", n, re.IGNORECASE)]
    fits = [n for n in named if vocab is not None and two_d[n][0] == vocab]
    if len(fits) == 1:
        return fits[0]
    if not config and len(two_d) == 1:
        return next(iter(two_d))
    suggest = (fits or named or [n for n in two_d if vocab is not None and two_d[n][0] == vocab] or list(two_d))[:1]
    listing = ", ".join(f"{n} {list(s)}" for n, s in sorted(two_d.items())[:12]) or "none"
    more = f" and {len(two_d) - 12} more" if len(two_d) > 12 else ""
    what = f"config.json says model_type {model_type!r}, vocab_size {vocab}" if config else "no config.json next to it"
    hint = f"; e.g. --key {suggest[0]}" if suggest else ""
    three_d = [n for n, s in shapes.items() if len(s) == 3]
    if not two_d and three_d:  # a whole history in a folder taken for a checkpoint
        raise InputError(
            f"{checkpoint}: read as one checkpoint (a 2-D embedding matrix), but it holds no 2-D tensor and"
            f" the 3-D {three_d[0]} {list(shapes[three_d[0]])}: an embedding history; give the file itself"
            " (or a quoted glob of history files) as the input, not the folder holding it"
        )
    raise InputError(
        f"{checkpoint}: cannot choose the embedding matrix ({what}); its 2-D tensors: {listing}{more};"
        f" name one with key= / --key{hint}"
    )
