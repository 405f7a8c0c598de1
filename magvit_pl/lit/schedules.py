"""Learning-rate schedules shared by both stages (pure functions, used through ``LambdaLR``)."""
from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["warmup_cosine", "official"]
LR_SCHEDULES: tuple[str, ...] = ("warmup_cosine", "official")


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


def official_warmup_cosine(step: int, warmup_steps: int, total_steps: int | None) -> float:
    """The official schedule, scenic's ``'constant * cosine_decay * linear_warmup'`` with ``steps_per_cycle`` =
    the run's total steps (e.g. maskgvt_ucf101_config.py:97-103): ``min(1, step / warmup)`` times
    ``½(1 + cos(π·((max(0, step − warmup) / total) mod 1)))``. Unlike :func:`warmup_cosine` the first step has
    rate 0 and the cosine spans the whole run, so it ends slightly above 0 (e.g. 1.1% of the peak for 5,000
    warmup steps of 74,000). ``total_steps`` of ``None`` keeps the rate constant after warmup."""
    ret = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if total_steps:
        progress = max(0.0, (step - warmup_steps) / float(total_steps))
        ret *= max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))
    return ret


def lr_multiplier(kind: str, step: int, warmup_steps: int, total_steps: int | None, min_ratio: float = 0.0) -> float:
    """Multiplier of the base rate at ``step`` for schedule ``kind`` (``warmup_cosine`` or ``official``;
    ``min_ratio`` applies to ``warmup_cosine`` only)."""
    if kind == "official":
        return official_warmup_cosine(step, warmup_steps, total_steps)
    return warmup_cosine(step, warmup_steps, total_steps, min_ratio)


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
