"""Frame transforms: the short-side rule, resizing, crops, flips, clip sampling, and how a video looks in
each place with the one conversion between each pair of forms:

* on disk, in shards and in data pipelines: uint8 frames ``(T, H, W, C)``, 0..255, channel-last numpy arrays or
  torch tensors (transforms give back the type they were given);
* inside models, losses and metrics: float clips ``(C, T, H, W)`` (or ``(B, C, T, H, W)``) in [-1, 1]
  (:func:`frames_to_tensor` / :func:`tensor_to_frames`: ``x / 127.5 − 1`` and back by rounding after clamping, so
  a uint8 clip survives the round trip exactly);
* per-frame networks and metrics (LPIPS, Inception, PSNR/SSIM): frames ``(B·T, C, H, W)``
  (:func:`to_frames` / :func:`from_frames`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

from magvit_pl.run.errors import UserError

if TYPE_CHECKING:
    import torch

Frames = Union[np.ndarray, "torch.Tensor"]


# ----------------------------------------------------------------------------------------------
# uint8 <-> [-1, 1]


def pixels_to_unit(x: "torch.Tensor") -> "torch.Tensor":
    """uint8 pixel values -> float32 in [-1, 1] (any shape; a new tensor)."""
    y = x.float()
    return (y.div_(127.5) if y is not x else y.div(127.5)).sub_(1.0)  # in place only on the copy float() made


def unit_to_pixels(x: "torch.Tensor") -> "torch.Tensor":
    """float values in [-1, 1] -> uint8 pixels on the CPU (clamped, then rounded; any shape)."""
    return x.detach().float().cpu().clamp(-1, 1).add_(1).mul_(127.5).round_().byte()


def frames_to_tensor(frames: Frames) -> "torch.Tensor":
    """uint8 frames (T, H, W, C) -> float32 video (C, T, H, W) in [-1, 1]; batches (B, T, H, W, C) -> (B, C, T, H, W)."""
    import torch  # loaded on first use: prepare crops frames and never needs torch

    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    return pixels_to_unit(x.movedim(-1, -4))  # (..., C, T, H, W)


def tensor_to_frames(video: "torch.Tensor") -> np.ndarray:
    """float video (C, T, H, W) in [-1, 1] -> uint8 frames (T, H, W, C) (clamped and rounded); batches
    (B, C, T, H, W) -> (B, T, H, W, C)."""
    return unit_to_pixels(video).movedim(-4, -1).contiguous().numpy()


# ----------------------------------------------------------------------------------------------
# clips <-> frames (per-frame networks and metrics: LPIPS, Inception, PSNR/SSIM)


def to_frames(video: "torch.Tensor") -> "torch.Tensor":
    """``(B, C, T, H, W)`` -> ``(B·T, C, H, W)``, clip by clip; frames ``(N, C, H, W)`` pass through."""
    if video.ndim == 5:
        b, c, t, h, w = video.shape
        return video.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
    if video.ndim == 4:
        return video
    raise UserError(f"expected videos (B, C, T, H, W) or frames (N, C, H, W), got shape {tuple(video.shape)}")


def from_frames(frames: "torch.Tensor", batch: int) -> "torch.Tensor":
    """``(B·T, C, H, W)`` -> ``(B, C, T, H, W)``: the inverse of :func:`to_frames` for ``batch`` clips."""
    n, c, h, w = frames.shape
    return frames.reshape(batch, n // batch, c, h, w).transpose(1, 2)  # (B, C, T, H, W)


# ----------------------------------------------------------------------------------------------
# sizes and resizing


def short_side_size(height: int, width: int, short_side: int, multiple: int = 1) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is ``short_side``: the longer side keeps the aspect
    ratio, rounded to a multiple of ``multiple`` (2 when decoding, for codecs that need even sizes) and
    never shorter than ``short_side``."""
    if height <= width:
        return short_side, max(short_side, multiple * round(width * short_side / height / multiple))
    return max(short_side, multiple * round(height * short_side / width / multiple)), short_side


def resize_short_side(frames: Frames, size: int, max_long: int | None = None) -> Frames:
    """Resize ``(..., H, W, C)`` frames so the shorter side is ``size`` (see :func:`short_side_size`;
    the long side capped at ``max_long`` if given). Shrinking is antialiased bilinear, enlarging plain
    bilinear; uint8 stays uint8 (rounded), float stays float, numpy stays numpy."""
    new_h, new_w = short_side_size(frames.shape[-3], frames.shape[-2], size)
    if max_long is not None:
        new_h, new_w = min(new_h, max_long), min(new_w, max_long)
    return resize(frames, new_h, new_w)


def resize(frames: Frames, height: int, width: int) -> Frames:
    """Resize ``(..., H, W, C)`` frames to ``height x width`` (antialiased when shrinking)."""
    import torch  # loaded on first use: prepare crops frames and never needs torch
    import torch.nn.functional as F  # noqa: N812  (with torch, above)

    h, w = frames.shape[-3], frames.shape[-2]
    if (h, w) == (height, width):
        return frames
    is_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(frames)) if is_numpy else frames
    dtype, lead = x.dtype, x.shape[:-3]
    x = x.reshape(-1, h, w, x.shape[-1]).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    shrink = height < h or width < w
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    x = x.permute(0, 2, 3, 1).reshape(*lead, height, width, -1)  # (..., H', W', C)
    x = x.round_().clamp_(0, 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    return x.numpy() if is_numpy else x


# ----------------------------------------------------------------------------------------------
# crops, flips, clips


def _crop_size(size: int | tuple[int, int], frames: Frames) -> tuple[int, int]:
    ch, cw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = frames.shape[-3], frames.shape[-2]
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the frames {h}x{w}; resize first")
    return ch, cw


def center_crop(frames: Frames, size: int | tuple[int, int]) -> Frames:
    """Crop the central ``size`` (int for a square, or (h, w)) of ``(..., H, W, C)`` frames."""
    ch, cw = _crop_size(size, frames)
    top, left = (frames.shape[-3] - ch) // 2, (frames.shape[-2] - cw) // 2
    return frames[..., top : top + ch, left : left + cw, :]


def random_crop(frames: Frames, size: int | tuple[int, int], rng: np.random.Generator) -> Frames:
    """Crop ``size`` at a uniformly random position (the same for every frame)."""
    ch, cw = _crop_size(size, frames)
    top, left = int(rng.integers(0, frames.shape[-3] - ch + 1)), int(rng.integers(0, frames.shape[-2] - cw + 1))
    return frames[..., top : top + ch, left : left + cw, :]


def square_clip(frames: np.ndarray, size: int, rng: np.random.Generator | None = None, crop: bool = True,
                flip: bool = True) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` frames as a ``size x size`` clip: short side resized to ``size``, then a
    crop (random with ``rng`` and ``crop``, else centred) and, with ``rng`` and ``flip``, a horizontal
    flip half of the time. Draws from ``rng`` in that order."""
    if min(frames.shape[1:3]) != size:
        frames = resize_short_side(frames, size)
    frames = random_crop(frames, size, rng) if rng is not None and crop else center_crop(frames, size)
    if rng is not None and flip and rng.uniform() < 0.5:
        frames = frames[:, :, ::-1]
    return frames


def clip_indices(num_available: int, num_frames: int, stride: int = 1, start: int | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices of a clip of ``num_frames`` frames taken every ``stride`` frames.

    ``start=None`` picks a uniformly random start with ``rng`` (or the centred clip when ``rng`` is
    None). Raises ValueError when the video is shorter than the clip span.
    """
    span = (num_frames - 1) * stride + 1
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
    if num_available < span:
        raise ValueError(f"too short: {num_available} frames < {span} (num_frames={num_frames}, stride={stride})")
    last = num_available - span
    if start is None:
        start = int(rng.integers(0, last + 1)) if rng is not None else last // 2
    if not 0 <= start <= last:
        raise ValueError(f"clip start {start} out of range [0, {last}]")
    return start + stride * np.arange(num_frames)


def sample_clip(frames: Frames, num_frames: int, stride: int = 1, start: int | None = None,
                rng: np.random.Generator | None = None) -> Frames:
    """Take ``num_frames`` frames every ``stride`` from ``frames`` (time first); see clip_indices."""
    idx = clip_indices(len(frames), num_frames, stride, start, rng)
    return frames[int(idx[0]) : int(idx[-1]) + 1 : stride]
