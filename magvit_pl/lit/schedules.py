"""Learning-rate schedules shared by both stages (pure functions, used through ``LambdaLR``)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then cosine decay to ``min_ratio``.

    ``total_steps`` of ``None`` (an unbounded run) keeps the rate constant after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_training_steps(trainer) -> int | None:
    """Number of optimisation steps the trainer will run, or ``None`` when it is unbounded."""
    if trainer is None:
        return None
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - Lightning raises several types for unsized loaders
        return None
    return None if steps is None or math.isinf(steps) else int(steps)
