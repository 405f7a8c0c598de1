"""Per-frame metrics for videos in [-1, 1]: PSNR, SSIM, LPIPS and FID, as torchmetrics Metrics.

Every ``update`` takes videos ``(B, C, T, H, W)`` or frames ``(N, C, H, W)``, float in [-1, 1]; videos
are scored frame by frame and the metric is the mean over all frames seen (on all DDP ranks).
The pretrained networks (LPIPS-VGG16, Inception) are not registered as submodules, so they stay out
of checkpoints; they follow the device of the inputs.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from magvit_pl.metrics.frechet import frechet_distance
from magvit_pl.metrics.inception import FEATURES, InceptionFeatures
from magvit_pl.models.lpips import LPIPS
from magvit_pl.run.errors import UserError
from magvit_pl.run.weights import resolve
from magvit_pl.data.transforms import to_frames


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] frames → [0, 1], float32, clamped."""
    return ((to_frames(x).float() + 1) / 2).clamp(0, 1)


def _check_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape:
        raise UserError(f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}")


def _follow(net: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    p = next(net.parameters(), None)
    if p is not None and p.device != x.device:
        net.to(x.device)
    return net


class VideoPSNR(PeakSignalNoiseRatio):
    """PSNR (dB) per frame, averaged over frames; inputs in [-1, 1] (PSNR of the [0, 1] images)."""

    def __init__(self, **kwargs: Any):
        super().__init__(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean", **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        _check_pair(preds, target)
        super().update(_unit(preds), _unit(target))


class VideoSSIM(StructuralSimilarityIndexMeasure):
    """SSIM (Gaussian 11×11, σ 1.5) per frame, averaged over frames; inputs in [-1, 1]."""

    def __init__(self, **kwargs: Any):
        super().__init__(data_range=1.0, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        _check_pair(preds, target)
        super().update(_unit(preds), _unit(target))


@functools.lru_cache(maxsize=2)
def _shared_lpips(path: str) -> LPIPS:
    return LPIPS(path)


@functools.lru_cache(maxsize=2)
def _shared_inception(path: str) -> InceptionFeatures:
    return InceptionFeatures(path)


class LPIPSMetric(Metric):
    """Mean LPIPS-VGG16 distance over frames (lower is more similar)."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, weights_path: str | None = None, batch_size: int = 32, **kwargs: Any):
        """
        Args:
            weights_path: LPIPS-VGG16 weights; default the verified ``lpips_vgg16`` file in the cache.
            batch_size: frames per forward pass.
        """
        super().__init__(**kwargs)
        object.__setattr__(self, "_net", _shared_lpips(str(resolve("lpips_vgg16", weights_path))))
        self.batch_size = batch_size
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        _check_pair(preds, target)
        net = _follow(self._net, preds)
        p, t = to_frames(preds).float(), to_frames(target).float()
        with torch.autocast(preds.device.type, enabled=False):
            for a, b in zip(p.split(self.batch_size), t.split(self.batch_size)):
                self.total += net(a.clamp(-1, 1), b.clamp(-1, 1)).double().sum()
        self.count += p.shape[0]

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise UserError("LPIPS has no frames: call update() first")
        return self.total / self.count


class FID(Metric):
    """Fréchet Inception Distance over frames: ``update(x, real)``, then ``compute()``.

    Features are summed into float64 first and second moments (``dist_reduce_fx='sum'``), so DDP
    sync is cheap however many frames are seen.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, weights_path: str | None = None, batch_size: int = 16, **kwargs: Any):
        """
        Args:
            weights_path: Inception TorchScript; default the verified ``inception`` file in the cache.
            batch_size: frames per forward pass.
        """
        super().__init__(**kwargs)
        object.__setattr__(self, "_net", _shared_inception(str(resolve("inception", weights_path))))
        self.batch_size = batch_size
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", default=torch.zeros(FEATURES, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", default=torch.zeros(FEATURES, FEATURES, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, x: torch.Tensor, real: bool, is_features: bool = False) -> None:
        """Add real (``real=True``) or generated videos/frames in [-1, 1], or ``(N, 2048)`` features with ``is_features``."""
        if is_features:
            self._accumulate(x, real)
            return
        net = _follow(self._net, x)
        frames = to_frames(x)
        if frames.shape[1] != 3:
            raise UserError(f"FID expects RGB frames, got {frames.shape[1]} channels")
        with torch.autocast(x.device.type, enabled=False):
            for chunk in frames.split(self.batch_size):
                self._accumulate(net(chunk), real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        """Add precomputed ``(N, 2048)`` Inception features; same as ``update(features, real, is_features=True)``."""
        self.update(features, real, is_features=True)

    def _accumulate(self, features: torch.Tensor, real: bool) -> None:
        if features.ndim != 2 or features.shape[1] != FEATURES:
            raise UserError(f"FID features must be (N, {FEATURES}), got shape {tuple(features.shape)}")
        side, f = ("real" if real else "fake"), features.detach().double()
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])

    def _stats(self, side: str) -> tuple[Any, Any]:
        n = int(getattr(self, f"{side}_n"))
        if n < 2:
            raise UserError(f"FID needs at least 2 {side} frames, got {n}")
        s, outer = getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer")
        mu = s / n
        cov = (outer - n * torch.outer(mu, mu)) / (n - 1)  # unbiased covariance
        return mu.cpu().numpy(), cov.cpu().numpy()

    def compute(self) -> torch.Tensor:
        mu_r, s_r = self._stats("real")
        mu_f, s_f = self._stats("fake")
        return torch.tensor(frechet_distance(mu_r, s_r, mu_f, s_f), dtype=torch.float64)
