"""Outpainting: generate everything outside a given region (OPC, OPV, OPH, OPD).

Regions (pixel and, with ``latent_rule='task'``, token grids alike; official index arithmetic):
central box rows/cols ``[n//4, 3n//4)``; vertical stripe cols ``[w//4, 3w//4)``; horizontal stripe
rows ``[h//4, 3h//4)``; dynamic: a full-height ``w//2``-wide stripe whose left edge in frame ``i`` is
``round(i · (w//2) / (t-1))`` (``round(linspace(0, w//2, t))``), i.e. it slides from the left edge
to the right edge over the clip.

Padding of Ṽ: the static regions replicate their edge pixels outward (official ``'edge'``); the
dynamic stripe pads with the constant ``pad_value`` (official ``'constant'``: black, -1.0 here).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from magvit_pl.tasks import LatentRule, TaskError
from magvit_pl_tasks._common import BLACK, RegionTask, centre, check_pad_value, fill_outside, replicate_outside, sliding_stripe


class _StaticOutpainting(RegionTask):
    """A fixed box ``rows × cols`` is given in every frame; subclasses choose which axes are cropped."""

    family = "outpainting"
    crop_rows: bool = True
    crop_cols: bool = True

    def __init__(
        self,
        latent_rule: LatentRule = "task",
        padding: Literal["edge", "constant"] = "edge",
        pad_value: float = BLACK,
    ) -> None:
        """
        Args:
            latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
            padding: 'edge' replicates the region's border pixels outward (official), 'constant'
                fills with pad_value.
            pad_value: fill value for padding='constant', in [-1, 1] (-1 = black, as official).
        """
        super().__init__(latent_rule=latent_rule)
        if padding not in ("edge", "constant"):
            raise TaskError(f"{self.name}: padding must be 'edge' or 'constant', got {padding!r}")
        self.padding = padding
        self.pad_value = check_pad_value(self.name, pad_value)

    def box(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Given rows and cols as half-open ranges."""
        return (centre(h) if self.crop_rows else (0, h)), (centre(w) if self.crop_cols else (0, w))

    def given_region(self, t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
        (r0, r1), (c0, c1) = self.box(h, w)
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        inside = ((rows >= r0) & (rows < r1))[:, None] & ((cols >= c0) & (cols < c1))[None, :]  # (h, w)
        return inside[None].expand(t, h, w)

    def pad(self, video: Tensor, region: Tensor) -> Tensor:
        if self.padding == "constant":
            return fill_outside(video, region, self.pad_value)
        rows, cols = self.box(video.shape[3], video.shape[4])
        return replicate_outside(video, rows, cols)


class OutpaintingCentral(_StaticOutpainting):
    """Given: the centre box, rows and cols [n/4, 3n/4). Edge-replicated padding."""

    name = "outpainting_central"
    description = "generate the border around a given central box (OPC)"


class OutpaintingVertical(_StaticOutpainting):
    """Given: the centre vertical stripe, cols [W/4, 3W/4), all rows. Edge-replicated padding."""

    name = "outpainting_vertical"
    description = "generate left and right of a given central vertical stripe (OPV)"
    crop_rows = False


class OutpaintingHorizontal(_StaticOutpainting):
    """Given: the centre horizontal stripe, rows [H/4, 3H/4), all cols. Edge-replicated padding."""

    name = "outpainting_horizontal"
    description = "generate above and below a given central horizontal stripe (OPH)"
    crop_cols = False


class OutpaintingDynamic(RegionTask):
    """Given: a W/2-wide full-height stripe sliding from the left to the right edge. Constant padding.

    Args:
        latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
        pad_value: fill value outside the stripe, in [-1, 1] (-1 = black, as official).
    """

    name = "outpainting_dynamic"
    family = "outpainting"
    description = "generate around a W/2-wide stripe moving left to right (OPD)"

    def __init__(self, latent_rule: LatentRule = "task", pad_value: float = BLACK) -> None:
        super().__init__(latent_rule=latent_rule)
        self.pad_value = check_pad_value(self.name, pad_value)

    def given_region(self, t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
        return sliding_stripe(t, h, w, device)

    def pad(self, video: Tensor, region: Tensor) -> Tensor:
        return fill_outside(video, region, self.pad_value)
