"""Small pieces both LightningModules share: EMA update, NaN/inf guard, where media files go."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback

from magvit_pl.run.errors import NonFiniteLossError

log = logging.getLogger(__name__)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters; buffers are copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


class NonFiniteGuard:
    """Counts steps whose loss terms are NaN/inf; too many in a row stops the run naming step and term."""

    def __init__(self, max_consecutive: int = 5):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def check(self, step: int, terms: dict[str, torch.Tensor]) -> bool:
        """True when every term is finite. Otherwise counts the step (to be skipped) and may raise."""
        bad = [name for name, value in terms.items() if not torch.isfinite(value.detach()).all()]
        if not bad:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        log.warning("non-finite loss at step %d in %s: step skipped (%d in a row)", step, ", ".join(bad), self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"loss term(s) {', '.join(bad)} were NaN/inf for {self.consecutive} consecutive steps (last at step {step}); "
                "stopping — the last checkpoint is intact; lower the learning rate or check the data"
            )
        return False


def media_dir(trainer) -> Path:
    """``<run dir>/media``: where reconstructions, samples and curves are written."""
    root = Path(trainer.default_root_dir)  # the CLI sets it to the run dir; trainer.log_dir would sync ranks
    path = root / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path



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
            from magvit_pl.run.media import save_loss_curves

            save_loss_curves(path, media_dir(trainer) / "loss_curves.png")
