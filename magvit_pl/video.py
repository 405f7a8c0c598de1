"""How a video looks in each place, and the one conversion between each pair of forms.

* on disk, in shards and in data pipelines: ``uint8`` frames ``(T, H, W, C)``, 0..255;
* inside models, losses and metrics: float clips ``(B, C, T, H, W)`` (or one clip ``(C, T, H, W)``) in [-1, 1];
* per-frame networks and metrics (LPIPS, Inception, PSNR/SSIM): frames ``(B·T, C, H, W)``.

Pixels are mapped by ``x / 127.5 − 1`` and back by ``round((x + 1) · 127.5)`` after clamping to [-1, 1],
so a uint8 clip survives the round trip exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from magvit_pl.run.errors import UserError


def from_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., T, H, W, C)`` → float32 ``(..., C, T, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    return x.movedim(-1, -4).float().div_(127.5).sub_(1.0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``(..., C, T, H, W)`` in [-1, 1] → uint8 ``(..., T, H, W, C)`` numpy (clamped, rounded)."""
    x = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().contiguous().numpy()


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` → ``(B·T, C, H, W)``, clip by clip; frames ``(N, C, H, W)`` pass through."""
    if video.ndim == 5:
        b, c, t, h, w = video.shape
        return video.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
    if video.ndim == 4:
        return video
    raise UserError(f"expected videos (B, C, T, H, W) or frames (N, C, H, W), got shape {tuple(video.shape)}")


def from_frames(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B·T, C, H, W)`` → ``(B, C, T, H, W)``: the inverse of :func:`to_frames` for ``batch`` clips."""
    n, c, h, w = frames.shape
    return frames.reshape(batch, n // batch, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
