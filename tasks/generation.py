"""Class-conditional generation (CG): only the class label is given.

The official code builds no condition video for this task (``cond_fn=None``). To keep one interface,
Ṽ here is a constant ``pad_value`` clip and the pixel and latent masks are empty, so no token of Ṽ is
ever used (a caller may skip tokenizing it when ``pixel_mask.any()`` is False). PSNR/SSIM on the
given region are meaningless here, so the metrics are FVD only.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from magvit_pl.tasks import Condition, Task, build_fvd
from magvit_pl_tasks._common import BLACK, check_pad_value, check_video


class ClassGeneration(Task):
    """Generate a whole clip from its class label.

    Args:
        pad_value: value of the (unused) condition video, in [-1, 1].
    """

    name = "class_generation"
    family = "generation"
    uses_class = True
    description = "generate a clip from its class label only (CG)"

    def __init__(self, pad_value: float = BLACK) -> None:
        super().__init__()  # the latent mask is empty under every latent_rule: not an option here
        self.pad_value = check_pad_value(self.name, pad_value)

    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """Nothing given: Ṽ = pad_value everywhere, empty pixel mask. Deterministic."""
        b, t, h, w = check_video(self, video)
        cond = torch.full_like(video, self.pad_value)
        mask = torch.zeros(b, 1, t, h, w, dtype=torch.bool, device=video.device)
        return Condition(video=cond, pixel_mask=mask)

    def metrics(self, include_fvd: bool = True) -> dict[str, Any]:
        """FVD only (nothing is given, so there is no region to check)."""
        fvd = build_fvd(paired=True) if include_fvd else None
        return {} if fvd is None else {"fvd": fvd}
