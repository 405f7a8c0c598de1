"""Crash-safe Lightning checkpoints: :class:`AtomicCheckpointIO`.

Lightning's ``TorchCheckpointIO`` (2.6) serialises the checkpoint in memory, writes it to a temporary
file made by ``tempfile.mkstemp()`` in the *system* temporary folder (an fsspec transaction) and
then ``shutil.move``-s it onto the destination. When that folder is on another filesystem than the
run directory (a tmpfs ``/tmp``, a scratch or network disk for runs) the move is a copy that first
truncates ``last.ckpt`` and then rewrites it: a full disk, a quota or a kill during that copy leaves
a truncated ``last.ckpt`` and the previous checkpoint is gone. It also needs the whole checkpoint
to fit in the system temporary folder, and nothing is fsync-ed.

``AtomicCheckpointIO`` writes the checkpoint to a hidden temporary file in the destination folder,
fsyncs it, and ``os.replace``-s it onto the destination (atomic on POSIX and Windows), then fsyncs
the folder. Any failure removes the temporary file and leaves the previous checkpoint as it was.
The temporary name (``.tmp-XXXX.partial``) contains neither ``last`` nor ``.ckpt``, so a file left
behind by a hard kill is never mistaken for a checkpoint by ``ModelCheckpoint`` or ``--ckpt_path
last``. Remote paths (``s3://`` …) fall back to Lightning's behaviour. Removing is unchanged.

Loading (what ``fit --ckpt_path`` resumes from) is always ``weights_only=True`` (Lightning passes
``None``, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would turn into a full unpickle), and a
foreign, truncated or corrupt file is a one-line :class:`~magvit_pl.run.errors.UserError`.

Use: ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from magvit_pl.run.checkpoint import checkpoint_read_errors

TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic: the destination holds either the previous
    checkpoint or the new one, never a partial file (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path)
        save_atomically(checkpoint, path)
        return None

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if weights_only is None:
            weights_only = True
        with checkpoint_read_errors(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        writer = _FdWriter(fd)
        try:
            torch.save(obj, writer)
            os.fsync(fd)
        except Exception:
            if writer.error is not None:  # torch reports a failed write as 'unexpected pos'; give the cause
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
            raise
        finally:
            os.close(fd)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


class _FdWriter:
    """A minimal file object for ``torch.save`` that writes every byte and keeps the first OSError
    (ENOSPC, EDQUOT, EFBIG …): torch's zip writer swallows it and reports only 'unexpected pos'."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as err:
            self.error = err
            raise
        return len(view)

    def flush(self) -> None:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform/filesystem can open a folder)."""
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


__all__ = ["AtomicCheckpointIO", "save_atomically"]
