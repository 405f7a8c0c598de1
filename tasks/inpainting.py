"""Inpainting: generate a missing region inside the clip (IPC, IPD).

Missing regions (pixel and, with ``latent_rule='task'``, token grids alike; official arithmetic):
central: rows and cols ``[n//4, 3n//4)``; dynamic: rows ``[h//4, 3h//4)`` and a ``w//2``-wide
window whose left edge in frame ``i`` is ``round(linspace(0, w//2, t))[i]`` (sliding left to right).
Padding of Ṽ: the missing pixels set to ``pad_value`` (official constant 0 in [0, 1] = black = -1.0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from magvit_pl.tasks import LatentRule
from magvit_pl_tasks._common import BLACK, RegionTask, centre, check_pad_value, fill_outside, sliding_stripe


class _Inpainting(RegionTask):
    family = "inpainting"

    def __init__(self, latent_rule: LatentRule = "task", pad_value: float = BLACK) -> None:
        """
        Args:
            latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
            pad_value: value of the missing pixels in Ṽ, in [-1, 1] (-1 = black, as official).
        """
        super().__init__(latent_rule=latent_rule)
        self.pad_value = check_pad_value(self.name, pad_value)

    def pad(self, video: Tensor, region: Tensor) -> Tensor:
        return fill_outside(video, region, self.pad_value)


class InpaintingCentral(_Inpainting):
    """Given: everything but the centre box rows/cols [n/4, 3n/4). Missing pixels = pad_value."""

    name = "inpainting_central"
    description = "generate a missing central box (IPC)"

    def given_region(self, t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
        (r0, r1), (c0, c1) = centre(h), centre(w)
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        hole = ((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :]  # (h, w)
        return (~hole)[None].expand(t, h, w)


class InpaintingDynamic(_Inpainting):
    """Given: everything but an H/2 x W/2 box (rows [H/4, 3H/4)) sliding left to right. Missing = pad_value."""

    name = "inpainting_dynamic"
    description = "generate a missing H/2 x W/2 box sliding left to right (IPD)"

    def given_region(self, t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
        r0, r1 = centre(h)
        rows = torch.arange(h, device=device)
        in_rows = ((rows >= r0) & (rows < r1))[None, :, None]  # (1, h, 1)
        hole = sliding_stripe(t, h, w, device) & in_rows  # (t, h, w)
        return ~hole
