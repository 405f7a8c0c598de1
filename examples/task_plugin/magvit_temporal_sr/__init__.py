"""Temporal super-resolution for magvit-pl: every ``stride``-th frame is given, the rest is generated.

A complete task plugin: a subclass of ``magvit_pl.tasks.Task`` with the condition (which pixels are
given and how the rest is padded), one option of its own (``stride``), and a metric of its own (PSNR
on the frames that had to be generated) next to the defaults. Every task metric's ``update`` takes
``(generated, real, given)``, ``given`` being the bool pixel mask of the condition.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from magvit_pl.metrics.masked import MaskedPSNR
from magvit_pl.tasks import Condition, Task


class MissingFramesPSNR(MaskedPSNR):
    """PSNR on the pixels that were NOT given (the generated frames)."""

    def update(self, generated: Tensor, real: Tensor, given: Tensor) -> None:  # type: ignore[override]
        super().update(generated, real, ~given)


class TemporalSuperResolution(Task):
    """Given every ``stride``-th frame (starting with the first), generate the frames in between.

    Its constructor declares only ``stride``: run-wide task options (``num_cond_frames``,
    ``latent_rule``) reach a task only when its constructor declares them, so this one keeps the
    default latent rule (a token is condition if any frame of its patch is given).

    Args:
        stride: distance between given frames (2 = every other frame).
    """

    name = "temporal_super_resolution"
    family = "interpolation"
    uses_class = False
    description = "generate the frames between every other given frame (example plugin)"

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        if stride < 2:
            raise ValueError(f"stride must be >= 2, got {stride}")
        self.stride = stride

    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """Given frames kept; each missing frame linearly blended between its given neighbours."""
        b, c, t, h, w = video.shape
        idx = torch.arange(t, device=video.device)
        given = idx % self.stride == 0  # (T,)
        left = (idx // self.stride) * self.stride  # previous given frame
        right = torch.clamp(left + self.stride, max=(t - 1) // self.stride * self.stride)  # next given frame
        frac = torch.where(right > left, (idx - left).float() / (right - left).clamp(min=1).float(), torch.zeros(t, device=video.device))
        cond = video[:, :, left] * (1 - frac)[None, None, :, None, None] + video[:, :, right] * frac[None, None, :, None, None]
        mask = given[None, None, :, None, None].expand(b, 1, t, h, w).clone()
        return Condition(video=cond, pixel_mask=mask)

    def metrics(self, include_fvd: bool = True) -> dict[str, Any]:
        """The defaults (FVD when available, PSNR/SSIM on the given frames) plus PSNR on the generated ones."""
        out = super().metrics(include_fvd=include_fvd)
        out["psnr_generated"] = MissingFramesPSNR()
        return out
