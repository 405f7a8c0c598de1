"""How well a tokenizer reconstructs video, next to a baseline that learns nothing.

The **pooled baseline** keeps the same latent grid as the tokenizer but no quantisation: average-pool
the clip by the tokenizer's downsampling factors ``(t, h, w)``, then upsample trilinearly back. It
stores 3 floats per token where the tokenizer stores one code, so a tokenizer that does not beat it
has learned less than blurring does.

:class:`ReconstructionMetrics` accumulates PSNR, SSIM, LPIPS (when its weights are fetched) and
reconstruction FVD (when the I3D weights are fetched and clips have at least 9 frames) of
reconstructions against originals, all in [-1, 1]; metrics whose weights are missing are reported as
skipped with the reason, never as a number; :data:`COLUMNS` are how tables show them
(:func:`magvit_pl.run.report.print_table`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F

from magvit_pl.metrics.frame import LPIPSMetric, VideoPSNR, VideoSSIM
from magvit_pl.metrics.fvd import FrechetVideoDistance
from magvit_pl.run.errors import MissingWeightsError

log = logging.getLogger(__name__)


def pooled_baseline(video: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Average-pool ``video`` (B, C, T, H, W) by ``factors`` (t, h, w), then trilinear upsampling back.

    The no-learning reference at the tokenizer's latent grid (same number of positions, 3 floats each).
    """
    t, h, w = (int(f) for f in factors)
    if video.shape[2] % t or video.shape[3] % h or video.shape[4] % w:
        raise ValueError(f"clip shape {tuple(video.shape[2:])} is not divisible by the grid factors {tuple(factors)}")
    pooled = F.avg_pool3d(video, kernel_size=(t, h, w))  # (B, C, T/t, H/h, W/w)
    return F.interpolate(pooled, size=video.shape[2:], mode="trilinear", align_corners=False)


class ReconstructionMetrics:
    """PSNR / SSIM / LPIPS / rFVD of reconstructions, each metric optional when its weights are missing.

    ``update(recon, video)`` with both (B, 3, T, H, W) in [-1, 1]; ``compute()`` returns
    ``{"psnr": dB, "ssim": …, "lpips": … | None, "rfvd": … | None, "clips": n, "skipped": {metric: why}}``.
    """

    def __init__(self, lpips: bool = True, fvd: bool = True, device: torch.device | str = "cpu"):
        self.psnr = VideoPSNR().to(device)
        self.ssim = VideoSSIM().to(device)
        self.skipped: dict[str, str] = {}
        self.lpips = self._optional("lpips", lambda: LPIPSMetric().to(device)) if lpips else None
        self.fvd = None
        if fvd:
            self.fvd = self._optional("rfvd", lambda: FrechetVideoDistance().to(device))
        self.clips = 0

    def _optional(self, name: str, build):
        try:
            return build()
        except MissingWeightsError as err:
            self.skipped[name] = str(err)
            return None

    @torch.no_grad()
    def update(self, recon: torch.Tensor, video: torch.Tensor) -> None:
        recon = recon.clamp(-1, 1)
        self.psnr.update(recon, video)
        self.ssim.update(recon, video)
        if self.lpips is not None:
            self.lpips.update(recon, video)
        if self.fvd is not None:
            if video.shape[2] >= self.fvd.min_frames:
                self.fvd.update(video, real=True)
                self.fvd.update(recon, real=False)
            else:
                self.skipped["rfvd"] = f"clips have {video.shape[2]} frames, I3D needs {self.fvd.min_frames}"
        self.clips += video.shape[0]

    def compute(self) -> dict:
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute()), "lpips": None, "rfvd": None}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        if self.fvd is not None and "rfvd" not in self.skipped:
            if self.clips >= 2:
                out["rfvd"] = float(self.fvd.compute())
            else:
                self.skipped["rfvd"] = "needs at least 2 clips"
        return {**out, "clips": self.clips, "skipped": dict(self.skipped)}


#: the columns every reconstruction table shows: (result key, header, number format)
COLUMNS = (("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".3f"), ("lpips", "LPIPS", ".3f"), ("rfvd", "rFVD", ".1f"))
