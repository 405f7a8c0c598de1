"""Evaluation metrics as torchmetrics Metrics (DDP-synced): FVD (I3D), PSNR, SSIM, LPIPS, FID.

The networks behind FVD, LPIPS and FID come from ``python cli.py fetch-weights`` (magvit_pl.run.weights).
"""
from magvit_pl.metrics.frame import FID, LPIPSMetric, VideoPSNR, VideoSSIM
from magvit_pl.metrics.frechet import frechet_distance
from magvit_pl.metrics.fvd import FrechetVideoDistance
from magvit_pl.metrics.i3d import I3D

__all__ = ["FrechetVideoDistance", "frechet_distance", "I3D", "VideoPSNR", "VideoSSIM", "LPIPSMetric", "FID"]
