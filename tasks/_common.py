"""Shared pieces of the built-in tasks: region rules valid on any grid, and the padding rules.

All index arithmetic follows the official code (google-research/magvit, ``train_lib/cond_utils.py``):
centre ranges are ``[n // 4, 3 * n // 4)``, the dynamic stripe/box starts at
``round(linspace(0, w // 2, t))`` (round half to even, like ``jnp.round``) and is ``w // 2`` wide.

Zero padding: the official pixel range is [0, 1] and it pads with 0, i.e. black. Our range is
[-1, 1], so the default ``pad_value`` is -1.0 (black, as in the official code), not 0.0 (mid-grey).
"""
from __future__ import annotations

import abc

import torch
from torch import Tensor

from magvit_pl.tasks import Condition, LatentRule, Task, TaskError, latent_shape

BLACK = -1.0
"""The official constant padding (0 in [0, 1]) expressed in our [-1, 1] range."""


def check_video(task: Task, video: Tensor, min_frames: int = 1, why: str = "") -> tuple[int, int, int, int]:
    """Validate a ``(B, C, T, H, W)`` float clip batch of at least ``min_frames`` frames; returns ``(B, T, H, W)``."""
    if video.ndim != 5 or not video.is_floating_point():
        raise ValueError(f"{task.name}: video must be a float (B, C, T, H, W) tensor, got {video.dtype} {tuple(video.shape)}")
    b, _, t, h, w = video.shape
    if t < min_frames:
        raise TaskError(f"{task.name}{why} needs clips of at least {min_frames} frames, got {t}")
    return b, t, h, w


def check_pad_value(task_name: str, pad_value: float) -> float:
    if not -1.0 <= float(pad_value) <= 1.0:
        raise TaskError(f"{task_name}: pad_value must be in [-1, 1] (pixel range of the model), got {pad_value}")
    return float(pad_value)


def centre(n: int) -> tuple[int, int]:
    """The centre half ``[n // 4, 3n // 4)`` of an axis of length ``n``."""
    return n // 4, n * 3 // 4


def sliding_starts(t: int, w: int, device: torch.device | None = None) -> Tensor:
    """Left edge per frame of a ``w // 2``-wide window sliding from 0 to ``w // 2``: long ``(t,)``."""
    pos = torch.linspace(0, w // 2, t, dtype=torch.float64, device=device)
    return torch.round(pos).long()  # torch.round rounds half to even, as jnp.round does


def sliding_stripe(t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Bool ``(t, h, w)``: the full-height ``w // 2``-wide stripe at :func:`sliding_starts`."""
    start = sliding_starts(t, w, device)[:, None]  # (t, 1)
    cols = torch.arange(w, device=device)[None, :]  # (1, w)
    inside = (cols >= start) & (cols < start + w // 2)  # (t, w)
    return inside[:, None, :].expand(t, h, w)


def frames_given(t: int, first: int, last: int = 0, device: torch.device | None = None) -> Tensor:
    """Bool ``(t,)``: True for the first ``first`` and the last ``last`` frames."""
    idx = torch.arange(t, device=device)
    return (idx < first) | (idx >= t - last)


def replicate_outside(video: Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    """Keep the box ``rows × cols`` and fill every other pixel with its nearest box pixel (edge padding)."""
    _, _, _, h, w = video.shape
    row_idx = torch.arange(h, device=video.device).clamp(rows[0], rows[1] - 1)
    col_idx = torch.arange(w, device=video.device).clamp(cols[0], cols[1] - 1)
    return video.index_select(3, row_idx).index_select(4, col_idx)


def repeat_last_given(video: Tensor, n: int) -> Tensor:
    """Keep the first ``n`` frames and repeat frame ``n - 1`` over the rest."""
    idx = torch.arange(video.shape[2], device=video.device).clamp(max=n - 1)
    return video.index_select(2, idx)


def fill_outside(video: Tensor, region: Tensor, value: float) -> Tensor:
    """Keep pixels where ``region`` (broadcastable to the video) is True, set the others to ``value``."""
    return torch.where(region, video, torch.full((), value, dtype=video.dtype, device=video.device))


class FrameTask(Task):
    """A task whose condition is whole frames: it declares ``num_cond_frames`` (and ``latent_rule``).

    Args:
        num_cond_frames: number of given frames (1 for BAIR, 5 for Kinetics-600 frame prediction).
        latent_rule: latent condition mask rule: 'task' (official), 'any' or 'all'.
    """

    def __init__(self, num_cond_frames: int = 1, latent_rule: LatentRule = "task") -> None:
        super().__init__(latent_rule=latent_rule)
        n = num_cond_frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TaskError(f"{self.name or type(self).__name__}: num_cond_frames must be an integer >= 1, got {n!r}")
        self.num_cond_frames = n

    def check_frames(self, video: Tensor, min_frames: int) -> tuple[int, int, int, int]:
        """:func:`check_video`, naming ``num_cond_frames`` when the clip is too short."""
        return check_video(self, video, min_frames, why=f" with num_cond_frames={self.num_cond_frames}")


class RegionTask(Task):
    """A task whose given region is one geometric rule applied to any grid.

    The pixel mask is the rule on ``(T, H, W)``; with ``latent_rule='task'`` the latent mask is the
    same rule on the token grid ``(t, h, w)``, as the official code computes it. Subclasses give
    :meth:`given_region` and :meth:`pad`.
    """

    @abc.abstractmethod
    def given_region(self, t: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
        """Bool ``(t, h, w)``: True where the content is given."""

    @abc.abstractmethod
    def pad(self, video: Tensor, region: Tensor) -> Tensor:
        """The condition video: given pixels of ``video`` kept, the rest filled; ``region`` is (T, H, W)."""

    def build_condition(self, video: Tensor, generator: torch.Generator | None = None) -> Condition:
        """Deterministic: ``generator`` is unused (the official masks are fixed)."""
        b, t, h, w = check_video(self, video)
        region = self.given_region(t, h, w, video.device)  # (T, H, W)
        mask = region[None, None].expand(b, 1, t, h, w).clone()  # (B, 1, T, H, W)
        return Condition(video=self.pad(video, region), pixel_mask=mask)

    def task_latent_mask(self, pixel_mask: Tensor, downsample: tuple[int, int, int]) -> Tensor:
        """The region rule on the token grid (official), e.g. rows ``[h//4, 3h//4)`` of the latent."""
        t, h, w = latent_shape(tuple(pixel_mask.shape[2:]), downsample)
        region = self.given_region(t, h, w, pixel_mask.device)  # (t, h, w)
        return region[None].expand(pixel_mask.shape[0], t, h, w).clone()
