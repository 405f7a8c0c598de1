"""Small pieces both LightningModules share: the EMA update and the NaN/inf guard."""
from __future__ import annotations

import logging

import torch

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
