"""What was read of settled local input files, kept by their ``stat`` data: a file (or folder)
that is still the version it was (same size, modification and change times, inode; see
:func:`~dask_pdist.io.paths.version_of`, which the store's recorded versions rely on too) is
not read again. Following a run opens the whole run at every save: this keeps that to one
``stat`` per stored checkpoint, reading only the new ones. Only files settled for two seconds
are kept (a newer one's times may not yet tell a rewrite apart); both tables are bounded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from dask_pdist.io.paths import Location, identity, is_remote, locate, settled, version_of
from dask_pdist.io.safetensors_format import TensorInfo, pread_exact, read_header

__all__ = ["FileFacts", "file_facts", "still_known", "known_run", "remember_run", "known_folder", "remember_folder"]

_MAX = 1 << 16


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


class FileFacts:
    """What opening a history needs of one checkpoint file: its tensors (header), identity
    (for graph keys), version (io/paths.py version_of) and fingerprints (by header length)."""

    def __init__(self, tensors: dict[str, TensorInfo], ident: tuple, version: int, size: int) -> None:
        self.tensors, self.identity, self.version, self.size = tensors, ident, version, size
        self.fingerprints: dict[int, str] = {}

    def fingerprint(self, path: str | Path | Location, header_bytes: int) -> str:
        # size and header hash: what --resume compares to know the input is the same
        if header_bytes not in self.fingerprints:
            head = pread_exact(locate(path), 0, header_bytes)
            self.fingerprints[header_bytes] = f"{self.size}:{hashlib.sha256(head).hexdigest()[:32]}"
        return self.fingerprints[header_bytes]


#: The facts of settled local files, by path, with the ``stat`` data they were read
#: under: a file still that version (what the store's recorded versions trust too, see
#: version_of) is not read again, so that following a run reads each new checkpoint's header
#: once, not the whole run's at every save. Bounded: cleared when full.
_KNOWN: dict[str, tuple[tuple[int, ...], FileFacts]] = {}


def file_facts(path: Path | Location, st: os.stat_result | None = None) -> FileFacts:
    """The facts of a safetensors file: kept from an earlier read while its ``stat`` data is
    unchanged (a local file settled then), else read now (its header). ``st``: its ``stat``,
    taken just before by the caller (listing the checkpoints), else taken here."""
    if is_remote(path):
        tensors, _ = read_header(path)
        return FileFacts(tensors, identity(path), version_of(path), path.size("checkpoint file"))
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            st = None  # read_header says why
    where = str(path)  # (relative to another folder, it is another file: its inode says so)
    seen = _stat_key(st) if st is not None else None
    known = _KNOWN.get(where)
    if known is not None and known[0] == seen and stat.S_ISREG(st.st_mode):  # type: ignore[union-attr]
        return known[1]
    tensors, _ = read_header(path)
    st = st or os.stat(path)
    facts = FileFacts(tensors, (str(Path(path).resolve()), st.st_mtime_ns), version_of(path, st), st.st_size)
    if facts.version:  # settled: its identity vouches for its content
        if len(_KNOWN) >= _MAX:
            _KNOWN.clear()
        _KNOWN[where] = (_stat_key(st), facts)
    return facts


def still_known(where: str, st: os.stat_result | None, facts: FileFacts) -> bool:
    """True if ``facts`` are what :func:`file_facts` keeps for the settled file ``where``, whose
    ``stat`` data ``st`` (just taken) are still those it was read under."""
    known = _KNOWN.get(where)
    return (
        st is not None
        and known is not None
        and known[1] is facts
        and known[0] == _stat_key(st)
        and stat.S_ISREG(st.st_mode)
    )


#: The run of checkpoints this process opened last: (key, what it was opened with) ->
#: (the checkpoints' paths, what the reader made of them). Following a run or a training
#: callback reopens the whole run at every save: the checkpoints already seen are taken from
#: here, not checked again one by one, while each is the same settled file.
_LAST_RUN: dict[tuple, tuple[list[str], tuple]] = {}


def known_run(memo: tuple, checkpoints: list, stats: dict[str, os.stat_result]) -> tuple[int, tuple | None]:
    """How many leading ``checkpoints`` (paths, in order) are those of the run last opened
    with ``memo``, each still the same settled file (:func:`still_known`, from its ``stat``
    data in ``stats``, just taken), and what :func:`remember_run` kept of that run."""
    last = _LAST_RUN.get(memo)
    if last is None:
        return 0, None
    names, record = last
    files = record[3]  # (key, first, paths, files, starts): the files' facts
    n = 0
    for checkpoint, name, facts in zip(checkpoints, names, files, strict=False):
        if str(checkpoint) != name or not still_known(name, stats.get(name), facts):
            break
        n += 1
    return n, record


def remember_run(memo: tuple, checkpoints: list, record: tuple) -> None:
    """Keep what was made of a run's ``checkpoints`` (one run: the one a follow reopens)."""
    _LAST_RUN.clear()
    _LAST_RUN[memo] = ([str(c) for c in checkpoints], record)


#: What a settled checkpoint folder of a run holds (whether it has trainer_state.json, and
#: its complete checkpoint file), by the ``stat`` data of the folder and of that file: a
#: folder and file unchanged since (as io/paths.py version_of trusts) are not listed and read
#: again, so following a run looks into each new checkpoint folder once, not into every one at
#: every save. Bounded: cleared when full.
_KNOWN_FOLDERS: dict[tuple[str, bool], tuple[tuple[int, ...], bool, Path, tuple[int, ...]]] = {}


def known_folder(folder: Path, follow_symlinks: bool) -> tuple[bool, Path] | None:
    """(whether it holds trainer_state.json, its complete checkpoint file) of a checkpoint
    folder recorded by :func:`remember_folder`, if the folder and that file are unchanged
    since; else None (look into it)."""
    known = _KNOWN_FOLDERS.get((str(folder), follow_symlinks))
    if known is None:
        return None
    try:
        if _stat_key(os.stat(folder)) != known[0] or _stat_key(os.stat(known[2])) != known[3]:
            return None
    except OSError:
        return None
    return known[1], known[2]


def remember_folder(folder: Path, follow_symlinks: bool, stated: bool, inner: Path) -> None:
    """Record what a checkpoint folder was found to hold (``inner``: its checkpoint file,
    complete), if the folder and the file are settled."""
    try:
        st, inner_st = os.stat(folder), os.stat(inner)
    except OSError:
        return
    if settled(st) and settled(inner_st):
        if len(_KNOWN_FOLDERS) >= _MAX:
            _KNOWN_FOLDERS.clear()
        _KNOWN_FOLDERS[(str(folder), follow_symlinks)] = (_stat_key(st), stated, inner, _stat_key(inner_st))
