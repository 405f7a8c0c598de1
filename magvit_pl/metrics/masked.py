"""PSNR and SSIM restricted to a pixel mask, as torchmetrics Metrics (DDP-synced sums).

A conditional task hands part of the clip to the model; the generated clip should reproduce that part.
These two metrics score only the masked ("given") pixels, so they answer "was the condition
respected?" without being diluted by the freely generated rest.

Both take videos ``(B, C, T, H, W)`` in [-1, 1] (data range 2) and a bool mask ``(B, 1, T, H, W)``
(broadcastable over channels). Each video gets one score (mean over its masked pixels); the metric
is the mean over videos. Videos whose mask is empty are skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from magvit_pl.data.transforms import to_frames


#: PSNR of a perfect reconstruction would be infinite; MSE is floored here so a perfect match reads
#: 10·log10(4 / 1e-10) ≈ 106.0 dB at data range 2, and an average over videos stays finite.
MSE_FLOOR = 1e-10


def _check(preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    if preds.shape != target.shape or preds.ndim != 5:
        raise ValueError(f"preds and target must both be (B, C, T, H, W); got {tuple(preds.shape)} and {tuple(target.shape)}")
    b, _, t, h, w = preds.shape
    if mask.ndim != 5 or mask.shape[0] != b or tuple(mask.shape[2:]) != (t, h, w) or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, T, H, W) = ({b}, 1, {t}, {h}, {w}); got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def masked_psnr(preds: Tensor, target: Tensor, mask: Tensor, data_range: float = 2.0) -> tuple[Tensor, Tensor]:
    """Per-video PSNR over the masked pixels.

    Returns ``(psnr (B,), valid (B,) bool)``; ``valid`` is False for videos with an empty mask (their
    PSNR entry is 0 and must be ignored).
    """
    mask = _check(preds, target, mask)
    c = preds.shape[1]
    weight = mask.to(preds.dtype)  # (B, 1, T, H, W)
    sq = (preds - target).pow(2) * weight  # (B, C, T, H, W)
    count = weight.flatten(1).sum(1) * c  # (B,) masked values counted over channels
    mse = sq.flatten(1).sum(1) / count.clamp_min(1)
    psnr = 10 * torch.log10(data_range**2 / mse.clamp_min(MSE_FLOOR))
    valid = count > 0
    return torch.where(valid, psnr, torch.zeros_like(psnr)), valid


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim_map(preds: Tensor, target: Tensor, data_range: float = 2.0, kernel_size: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM map of two image batches ``(N, C, H, W)`` → ``(N, H, W)`` (mean over channels).

    Gaussian window (11, σ 1.5), K1 0.01, K2 0.03, reflect padding so the map keeps the frame size
    (the same map as torchmetrics' ``structural_similarity_index_measure``).
    """
    n, c, h, w = preds.shape
    pad = kernel_size // 2
    if h <= pad or w <= pad:
        raise ValueError(f"frames of {h}x{w} are too small for an SSIM window of {kernel_size}")
    win = _gaussian_window(kernel_size, sigma, preds.dtype, preds.device)
    win = win.expand(5 * c, 1, kernel_size, kernel_size)  # one depthwise filter per (stat, channel)
    stats = torch.cat([preds, target, preds * preds, target * target, preds * target], dim=1)  # (N, 5C, H, W)
    stats = F.pad(stats, (pad, pad, pad, pad), mode="reflect")
    mu_x, mu_y, e_xx, e_yy, e_xy = F.conv2d(stats, win, groups=5 * c).split(c, dim=1)  # each (N, C, H, W)
    var_x = (e_xx - mu_x**2).clamp_min(0)  # rounding can make these slightly negative
    var_y = (e_yy - mu_y**2).clamp_min(0)
    cov = e_xy - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(1)  # (N, H, W)


def masked_ssim(preds: Tensor, target: Tensor, mask: Tensor, data_range: float = 2.0) -> tuple[Tensor, Tensor]:
    """Per-video SSIM averaged over the masked pixels. Returns ``(ssim (B,), valid (B,) bool)``."""
    mask = _check(preds, target, mask)
    b, c, t, h, w = preds.shape
    s = ssim_map(to_frames(preds), to_frames(target), data_range).view(b, t, h, w)
    weight = mask[:, 0].to(s.dtype)  # (B, T, H, W)
    count = weight.flatten(1).sum(1)
    score = (s * weight).flatten(1).sum(1) / count.clamp_min(1)
    return score, count > 0


class _MaskedVideoMetric(Metric):
    """Mean over videos of a per-video score on masked pixels; ``update(preds, target, mask)``."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, data_range: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _score(self, preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, preds: Tensor, target: Tensor, mask: Tensor) -> None:
        score, valid = self._score(preds.float(), target.float(), mask)
        self.total += score[valid].double().sum()
        self.count += valid.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class MaskedPSNR(_MaskedVideoMetric):
    """PSNR (dB) on the masked pixels, averaged over videos; ``data_range`` 2 for [-1, 1] videos."""

    higher_is_better = True

    def _score(self, preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return masked_psnr(preds, target, mask, self.data_range)


class MaskedSSIM(_MaskedVideoMetric):
    """Frame-wise SSIM on the masked pixels, averaged over videos; ``data_range`` 2 for [-1, 1] videos."""

    higher_is_better = True

    def _score(self, preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return masked_ssim(preds, target, mask, self.data_range)
