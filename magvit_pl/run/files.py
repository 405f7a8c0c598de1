"""Crash-safe file writes: write to a temporary name in the same folder, fsync, then rename.

A reader never sees a half-written file, and an interrupted or failed write (crash, disk full) leaves
whatever was at the destination before untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from magvit_pl.run.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the destination's suffix (or ``suffix``) so that writers that pick a
    format from the extension (PyAV, torch) still work. On any exception the temporary file is
    removed and the destination is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open()`` that writes to a temporary file and renames it onto ``path`` on success."""
    if not any(m in mode for m in "wax"):
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists but is not a folder."""
    return next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)


def make_dir(path: str | os.PathLike, flag: str) -> Path:
    """``mkdir -p path`` with a one-line :class:`UserError` starting with ``flag`` (e.g. ``--cache DIR``) when a part
    of it is a file or cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = _file_in_the_way(path)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (err.strerror or type(err).__name__)
        raise UserError(f"{flag}: cannot create the folder {path}: {why}") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str, example: str = "out") -> Path:
    """One-line :class:`UserError` unless ``path`` can become a file: not an existing folder, no file among its parents."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name such as {path / example}")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder")
    return path
