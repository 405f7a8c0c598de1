"""StyleGAN-style 3D ResNet discriminator of MAGVIT's tokenizer GAN.

Paper: MAGVIT, https://arxiv.org/abs/2212.05199 ; structure checked against the official code
(google-research/magvit, videogvt/models/stylegan_discriminator_3d.py): no normalisation, LeakyReLU 0.2,
each block average-pools t, h, w by 2 (time only while more than one frame is left) and sums a
residual branch, divided by √2; then conv → flatten → Dense → LeakyReLU → Dense(1).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.checks import check_args
from magvit_pl.run.errors import UserError
from magvit_pl.models.config import ConfigMixin
from magvit_pl.models.blocks import avg_pool_down


def default_channel_multipliers(resolution: int) -> tuple[int, ...]:
    """(2, 4, 4, 4, 4) at 128 px: one block per halving down to 4×4 pixels."""
    levels = max(1, int(math.log2(resolution)) - 2)
    return (2,) + (4,) * (levels - 1)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class DiscriminatorBlock(nn.Module):
    """conv 3³ → act → pool ; conv 3³ → act ; plus pooled input through a 1×1×1 conv ; sum / √2.

    ``temporal_kernel_size=1``: 1×3×3 convs (the per-frame 2D discriminator of the 2D stage)."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel_size: int = 3):
        super().__init__()
        k, pad = (temporal_kernel_size, 3, 3), (temporal_kernel_size // 2, 1, 1)
        self.conv1 = nn.Conv3d(in_channels, in_channels, k, padding=pad)
        self.conv2 = nn.Conv3d(in_channels, out_channels, k, padding=pad)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = avg_pool_down(_act(self.conv1(x)))
        h = _act(self.conv2(h))
        return (self.shortcut(avg_pool_down(x)) + h) / math.sqrt(2)


class StyleGANDiscriminator3D(ConfigMixin, nn.Module):
    """3D ResNet discriminator: video (B, C, T, H, W) → logits (B,).

    Args:
        in_channels: Channels of the video.
        base_channels: Width of the stem; block i has ``base_channels · channel_multipliers[i]``.
        channel_multipliers: One entry per block, each halving H and W (and T while T > 1). Default:
            (2, 4, 4, 4, 4) at 128 px, one block fewer per halving of ``resolution`` (4×4 at the end).
        num_frames: Frames of the clips it will see (fixes the size of the first Dense layer).
        resolution: Height and width of the clips it will see.
        temporal_kernel_size: Kernel size in time of its 3×3 convs: 3 (the 3D discriminator) or 1 (a
            per-frame 2D one for the 2D stage, trained on 1-frame clips, whose kernels
            :mod:`~magvit_pl.models.inflation` inflates).

    Activation checkpointing is applied from outside (:mod:`magvit_pl.models.checkpointing`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        channel_multipliers: tuple[int, ...] | None = None,
        num_frames: int = 16,
        resolution: int = 128,
        temporal_kernel_size: int = 3,
    ):
        super().__init__()
        check_args("discriminator", locals(), {"in_channels": ">= 1", "base_channels": ">= 1", "channel_multipliers": ">= 1",
                                               "num_frames": ">= 1", "resolution": ">= 1"})
        if temporal_kernel_size not in (1, 3):
            raise UserError(f"discriminator temporal_kernel_size must be 1 or 3; got {temporal_kernel_size}")
        k, pad = (temporal_kernel_size, 3, 3), (temporal_kernel_size // 2, 1, 1)
        mults = default_channel_multipliers(resolution) if channel_multipliers is None else tuple(channel_multipliers)
        self.input_shape = (in_channels, num_frames, resolution, resolution)
        self.conv_in = nn.Conv3d(in_channels, base_channels, k, padding=pad)
        blocks, ch, t, s = [], base_channels, num_frames, resolution
        for m in mults:
            blocks.append(DiscriminatorBlock(ch, base_channels * m, temporal_kernel_size))
            ch, t, s = base_channels * m, (t + 1) // 2 if t > 1 else 1, (s + 1) // 2
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv3d(ch, ch, k, padding=pad)
        self.fc = nn.Linear(ch * t * s * s, ch)
        self.head = nn.Linear(ch, 1)
        for mod in self.modules():  # xavier-uniform weights, zero biases (as the official code)
            if isinstance(mod, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if tuple(video.shape[1:]) != self.input_shape:
            raise ValueError(
                f"discriminator built for clips {self.input_shape} (C, T, H, W), got {tuple(video.shape[1:])}; "
                "set num_frames / resolution to the clip size"
            )
        x = _act(self.conv_in(video))
        for block in self.blocks:
            x = block(x)
        x = _act(self.conv_out(x))
        x = _act(self.fc(x.flatten(1)))  # (B, ch·t·h·w) → (B, ch)
        return self.head(x).squeeze(1)
