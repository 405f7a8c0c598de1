"""Frame interpolation (FI).

Given: the first and the last ``num_cond_frames`` frames (1 in the paper). Padding of Ṽ: a linear
blend of the last given start frame and the first given end frame, frame ``k`` of the ``L`` missing
ones (k = 1..L) at weight ``k / (L + 1)`` on the end frame (official ``cond_padding='interpolate'``).
Latent mask (``latent_rule='task'``): tokens whose temporal patch holds a given frame, i.e. the first
and last latent frame for one given frame at each end (official ``cond_latent_frames = 1``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from magvit_pl.tasks import Condition
from magvit_pl_tasks._common import FrameTask, frames_given


class FrameInterpolation(FrameTask):
    """Fill in the frames between given first and last frames.

    Args:
        num_cond_frames: number of given frames at each end of the clip.
        latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
    """

    name = "frame_interpolation"
    family = "interpolation"
    uses_class = False
    description = "fill in the frames between the first and the last frame (FI)"

    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """Ends given, middle frames linearly blended between them. Deterministic."""
        n = self.num_cond_frames
        b, t, h, w = self.check_frames(video, min_frames=2 * n + 1)
        missing = t - 2 * n
        start = video[:, :, n - 1 : n]  # (B, C, 1, H, W) last given frame of the start
        end = video[:, :, t - n : t - n + 1]  # (B, C, 1, H, W) first given frame of the end
        frac = torch.arange(1, missing + 1, dtype=video.dtype, device=video.device) / (missing + 1)
        middle = start + (end - start) * frac[None, None, :, None, None]  # (B, C, L, H, W)
        cond = torch.cat([video[:, :, :n], middle, video[:, :, t - n :]], dim=2)
        given = frames_given(t, n, n, device=video.device)  # (T,)
        mask = given[None, None, :, None, None].expand(b, 1, t, h, w).clone()
        return Condition(video=cond, pixel_mask=mask)
