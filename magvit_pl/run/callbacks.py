"""What the CLI adds to every Trainer: checkpoint saving and loading, the ``latest`` link, loss curves.

* :class:`AtomicCheckpointIO` (a Trainer plugin): saves through :func:`~magvit_pl.run.checkpoint.save_checkpoint`
  (crash-safe, see below), loads weights-only with one-line errors.
* :class:`RunCheckpoint`: ``last.ckpt`` every N steps, after each validation and when training ends;
  ``RUNS_ROOT/KIND/latest`` → this run once its first checkpoint is written.
* :class:`LossCurves`: ``media/loss_curves.png`` after each validation.
* exact resume (random state, validation on a forked state): :class:`magvit_pl.run.resume.ResumeState`.

Why a checkpoint plugin: Lightning's ``TorchCheckpointIO`` (2.6) serialises the checkpoint in memory, writes
it to a temporary file made by ``tempfile.mkstemp()`` in the *system* temporary folder (an fsspec
transaction) and then ``shutil.move``-s it onto the destination. When that folder is on another filesystem
than the run directory (a tmpfs ``/tmp``, a scratch or network disk for runs) the move is a copy that first
truncates ``last.ckpt`` and then rewrites it: a full disk, a quota or a kill during that copy leaves a
truncated ``last.ckpt`` and the previous checkpoint is gone. It also needs the whole checkpoint to fit in
the system temporary folder, and nothing is fsync-ed. :class:`AtomicCheckpointIO` writes next to the
destination instead, fsyncs and renames (:func:`magvit_pl.run.files.atomic_path`); a file left by a hard
kill (``.tmp-XXXX.partial``) is never taken for a checkpoint by ``ModelCheckpoint`` or ``--ckpt_path last``.
Remote paths (``s3://`` …) fall back to Lightning's behaviour. Removing is unchanged.

Loading (what ``fit --ckpt_path`` resumes from) is always ``weights_only=True`` (Lightning passes ``None``,
which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would turn into a full unpickle), and a foreign, truncated or
corrupt file is a one-line :class:`~magvit_pl.run.errors.UserError`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from magvit_pl.run.checkpoint import checkpoint_read_errors, save_checkpoint
from magvit_pl.run.media import save_loss_curves
from magvit_pl.run.run_dir import media_dir, point_latest


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic: the destination holds either the previous
    checkpoint or the new one, never a partial file (see the module docstring).

    Use: ``Trainer(plugins=[AtomicCheckpointIO()])`` (the CLI adds it unless a config names another).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by "
                            f"{type(self).__name__}")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path)
        save_checkpoint(checkpoint, path)
        return None

    def load_checkpoint(self, path: _PATH, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if weights_only is None:
            weights_only = True
        with checkpoint_read_errors(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` (and the newest ``stepNNNNNNN.ckpt``) every ``every_n_steps`` steps, after each
    validation, and when training ends, so neither a crash nor a ``max_steps`` that is not a multiple of
    the interval loses trained steps. (Lightning's ModelCheckpoint takes one trigger at a time.)

    With ``latest=(root, run_dir)``, ``root/latest`` → ``run_dir`` once the first checkpoint is on disk: a run
    stopped before ``last.ckpt`` exists (a bad value, a missing logger package, a crash in its first steps) leaves ``latest``
    at the previous run, which ``fit --ckpt_path last`` and ``configs/mtm.yaml`` still find."""

    def __init__(self, dirpath: str | Path, every_n_steps: int, latest: tuple[Path, Path] | None = None):
        super().__init__(dirpath=dirpath, filename="step{step:07d}", auto_insert_metric_name=False, save_last=True,
                         every_n_train_steps=every_n_steps or None, every_n_epochs=None if every_n_steps else 1)
        self._latest = latest

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self._latest is not None and trainer.is_global_zero and Path(filepath).name == "last.ckpt" and Path(filepath).is_file():
            point_latest(*self._latest)
            self._latest = None

    def _save_now(self, trainer) -> None:
        if self._should_skip_saving_checkpoint(trainer) or self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._save_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save_now(trainer)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM (Lightning stops between batches): save ``last.ckpt`` at this step, so a preempted run
        resumes where it stopped, not at the last periodic checkpoint. One process only: with several,
        ranks may stop at different points, and the last periodic checkpoint is what they share."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and trainer.world_size == 1:
            self._save_now(trainer)
            exception.saved_step = trainer.global_step  # read by the CLI's one-line message


class LossCurves(Callback):
    """After each validation, draw ``media/loss_curves.png`` from the run's ``metrics.csv`` (rank 0).

    One panel per group of logged quantities (train losses, train diagnostics, each validation metric,
    the learning rate; see :func:`magvit_pl.run.media.plot_curves`): smoothed lines over faint raw points,
    axes with ticks and labels, a legend, and a linear, log or symlog y axis so that every series is
    visible whatever its sign and magnitude.
    """

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.logger is None:
            return
        trainer.logger.save()
        path = Path(trainer.logger.log_dir) / "metrics.csv"
        if path.is_file():
            save_loss_curves(path, media_dir(trainer) / "loss_curves.png")
