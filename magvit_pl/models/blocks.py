"""Building blocks shared by the tokenizer and the discriminator: 'same' 3D convs with a choice of
padding, the MAGVIT residual block, average-pool down- and nearest up-sampling.

All tensors are ``(B, C, T, H, W)``. On CPU in fp32 the convs, pooling and normalisations run through
:mod:`magvit_pl.models.kernels` (oneDNN, channels-last 3D memory order); the maths is the plain ops'.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.models import kernels

PaddingMode = Literal["zeros", "reflect", "replicate"]
PADDING_MODES = ("zeros", "reflect", "replicate")


def group_norm(channels: int, eps: float = 1e-6, affine: bool = True, groups: int = 32, per_frame: bool = False) -> nn.Module:
    """GroupNorm with ``groups`` groups (MAGVIT: 32), or fewer when ``channels`` is not a multiple of it;
    ``groups=0``: no normalisation (identity). ``per_frame``: statistics of each frame alone (a causal
    model's norm must not see later frames)."""
    if groups == 0:
        return nn.Identity()
    cls = FrameGroupNorm if per_frame else nn.GroupNorm
    return cls(math.gcd(groups, channels), channels, eps=eps, affine=affine)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of each frame of a (B, C, T, H, W) tensor on its own (same parameters as nn.GroupNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class SameConv3d(nn.Conv3d):
    """Stride-1 Conv3d whose output has the input's size ('same' padding), for odd kernels.

    ``padding_mode`` 'zeros' uses the conv's own padding; 'reflect' and 'replicate' pad with
    ``F.pad`` in time, height and width before a padding-free conv. Reflect padding needs a dimension larger
    than its pad (not so for time after pooling to one frame); such a dimension is replicate-padded,
    which is what reflecting a single value gives.

    ``causal=True`` pads time on the past side only, with ``kt - 1`` copies of the first frame (a static
    past; with zeros instead, the demo's decoder-causal tokenizer reconstructed the first frame of the real
    clips 0.25 dB worse), so output frame t sees input frames ``<= t`` only; H and W keep ``padding_mode``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int] | int,
        bias: bool = True,
        padding_mode: PaddingMode = "zeros",
        causal: bool = False,
    ):
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        if any(ki % 2 == 0 for ki in k):
            raise ValueError(f"SameConv3d needs odd kernel sizes, got {k}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        kt, kh, kw = k
        self.causal = bool(causal) and kt > 1
        native = padding_mode == "zeros"
        native_pad = (0 if self.causal else kt // 2, kh // 2, kw // 2) if native else 0
        super().__init__(in_channels, out_channels, k, padding=native_pad, bias=bias)
        self.same_padding_mode = padding_mode
        pt = 0 if self.causal else kt // 2  # a causal conv's time padding is all in the past (see _padded)
        self._pad = (kw // 2, kw // 2, kh // 2, kh // 2, pt, pt)  # F.pad order: W, H, T

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of ``x``, plus ``residual`` when given (fused into the conv on the CPU fast path
        without autograd)."""
        if residual is None:
            return kernels.conv3d(self._padded(x), self, self.padding)
        return kernels.conv3d_add(self._padded(x), self, self.padding, residual)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            x = _pad_past(x, self.kernel_size[0] - 1)
        if self.same_padding_mode != "zeros" and any(self._pad):
            return self._pad_input(x)
        return x

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        pw, _, ph, _, pt, _ = self._pad
        sizes_pads = list(zip(x.shape[2:], (pt, ph, pw)))
        if self.same_padding_mode == "replicate" or all(p < n for n, p in sizes_pads):
            return F.pad(x, self._pad, mode=self.same_padding_mode)
        for dim, (n, p) in enumerate(sizes_pads):  # reflect where the size allows, else replicate
            if p:
                pad = [0] * 6
                pad[4 - 2 * dim] = pad[5 - 2 * dim] = p
                x = F.pad(x, tuple(pad), mode="reflect" if p < n else "replicate")
        return x


def _pad_past(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``x`` (B, C, T, H, W) with ``frames`` copies of its first frame put before it."""
    return torch.cat([x[:, :, :1].expand(-1, -1, frames, -1, -1), x], dim=2)


class ResBlock(nn.Module):
    """GN → SiLU → conv → GN → SiLU → conv, plus the input (1×1×1 conv when channels change).

    Convs have no bias, as in MAGVIT's 3D-VQ; no attention, no dropout.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int], padding_mode: PaddingMode,
        norm_groups: int = 32, causal: bool = False,
    ):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups=norm_groups, per_frame=causal)
        self.conv1 = SameConv3d(in_channels, out_channels, kernel_size, bias=False, padding_mode=padding_mode, causal=causal)
        self.norm2 = group_norm(out_channels, groups=norm_groups, per_frame=causal)
        self.conv2 = SameConv3d(out_channels, out_channels, kernel_size, bias=False, padding_mode=padding_mode, causal=causal)
        self.shortcut = (
            SameConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(kernels.norm_silu(self.norm1, x))
        return self.conv2(kernels.norm_silu(self.norm2, h), self.shortcut(x))  # conv2(...) + shortcut


def avg_pool_down(x: torch.Tensor, pool_time: bool = True) -> torch.Tensor:
    """Halve H and W (and T when ``pool_time`` and T > 1) by average pooling.

    Odd sizes round up and the last window averages only the cells that exist (TensorFlow 'SAME'
    pooling, which excludes padding from the mean).
    """
    kt = 2 if pool_time and x.shape[2] > 1 else 1
    return kernels.avg_pool(x, (kt, 2, 2))


def nearest_up(x: torch.Tensor, up_time: bool = True) -> torch.Tensor:
    """Double H and W (and T when ``up_time``) by nearest-neighbour repetition."""
    return kernels.nearest_up(x, (2 if up_time else 1, 2, 2))
