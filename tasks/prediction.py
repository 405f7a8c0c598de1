"""Frame prediction (FP) and class-conditional frame prediction (CFP).

Given: the first ``num_cond_frames`` frames (1 for BAIR, 5 for Kinetics-600). Padding of Ṽ: the
last given frame repeated (official ``cond_padding='edge'``). Latent mask (``latent_rule='task'``):
every token whose temporal patch holds a given frame, i.e. the first ``ceil(num_cond_frames / dt)``
latent frames; for one given frame and dt = 4 this is the official ``cond_latent_frames = 1``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from magvit_pl.tasks import Condition
from magvit_pl_tasks._common import FrameTask, frames_given, repeat_last_given


class FramePrediction(FrameTask):
    """Predict the rest of the clip from its first frames.

    Args:
        num_cond_frames: number of given first frames (1 for BAIR, 5 for Kinetics-600).
        latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
    """

    name = "frame_prediction"
    family = "prediction"
    uses_class = False
    description = "predict the future from the first num_cond_frames frames (FP)"

    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """First frames given, the last given frame repeated after them. Deterministic."""
        n = self.num_cond_frames
        b, t, h, w = self.check_frames(video, min_frames=n + 1)
        given = frames_given(t, n, device=video.device)  # (T,)
        mask = given[None, None, :, None, None].expand(b, 1, t, h, w).clone()  # (B, 1, T, H, W)
        return Condition(video=repeat_last_given(video, n), pixel_mask=mask)


class ClassFramePrediction(FramePrediction):
    """Frame prediction that also sees the class label (CFP).

    Args:
        num_cond_frames: number of given first frames.
        latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
    """

    name = "class_frame_prediction"
    family = "prediction"
    uses_class = True
    description = "frame prediction plus the class label (CFP)"
