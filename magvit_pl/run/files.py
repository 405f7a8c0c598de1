"""Files: one crash-safe write (temporary name in the same folder → fsync → rename → fsync the folder),
the folder and output-path checks every command makes, and a file's sha256.

A reader never sees a half-written file, and an interrupted or failed write (crash, disk full, a
writer that raises) leaves whatever was at the destination untouched and no temporary file behind.
Every file magvit-pl writes for the user (checkpoints, exports, shards, manifests, media, results,
fetched weights) goes through :func:`atomic_path`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from magvit_pl.run.errors import UserError

# the temporary name of an anonymous write (checkpoints): nothing of the destination's name in it
ANONYMOUS_PREFIX, ANONYMOUS_SUFFIX = ".tmp-", ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, anonymous: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, fsync it, rename it onto ``path``
    (atomic on POSIX and Windows) and fsync the folder. On any exception the temporary file is removed
    and ``path`` is left as it was.

    The temporary file is ``.STEM.XXXXXXXX.tmpSUFFIX`` (``SUFFIX``: ``suffix``, else the destination's),
    so writers that pick a format from the extension (PyAV, matplotlib, tarfile) still work and
    ``prepare`` recognises its own leftovers. With ``anonymous`` it is ``.tmp-XXXXXXXX.partial``: no part
    of the destination's name, so a file left by a hard kill is never taken for a checkpoint (Lightning
    looks for ``*.ckpt``; ``--ckpt_path last`` for ``last``). It is created with the usual permissions
    (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if anonymous:
        prefix, temp_suffix = ANONYMOUS_PREFIX, ANONYMOUS_SUFFIX
    else:
        prefix, temp_suffix = f".{path.stem}.", f".tmp{path.suffix if suffix is None else suffix}"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=temp_suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open()`` that writes to a temporary file and renames it onto ``path`` on success (:func:`atomic_path`)."""
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


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform or filesystem can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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
