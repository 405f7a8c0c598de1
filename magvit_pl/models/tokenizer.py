"""MAGVIT stage 1: the 3D-VQ tokenizer (encoder → quantizer → decoder), plain nn.Modules.

Paper: MAGVIT, https://arxiv.org/abs/2212.05199 (§3.1, appendix); facts checked against the official
JAX code (google-research/magvit, videogvt/models/enc_dec_3dcnn.py).

Videos are ``(B, 3, T, H, W)`` floats in [-1, 1]; tokens are ``(B, t, h, w)`` longs, flattened
row-major over (t, h, w) by whoever needs a sequence. The decoder output is not clamped.
With ``temporal_kernel_size=1`` and no temporal pooling the same class is a per-frame 2D tokenizer,
whose weights ``inflation.py`` turns into a 3D one.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn

from magvit_pl.run.checks import check_args
from magvit_pl.models.config import ConfigMixin
from magvit_pl.run.errors import UserError
from magvit_pl.models import kernels
from magvit_pl.models.blocks import (
    PADDING_MODES,
    PaddingMode,
    ResBlock,
    SameConv3d,
    avg_pool_down,
    group_norm,
    nearest_up,
)
from magvit_pl.models.quantizers import Quantizer, QuantizerOutput, VectorQuantizer


def default_temporal_downsample(num_levels: int, temporal_kernel_size: int) -> tuple[bool, ...]:
    """Time is pooled in the first two downsamples of a 3D model, never in a 2D one."""
    n_down = num_levels - 1
    if temporal_kernel_size == 1:
        return (False,) * n_down
    return tuple(i < 2 for i in range(n_down))


class Encoder(nn.Module):
    """conv in → per level: res blocks, then (not last) avg-pool down → res blocks → GN → SiLU → 1×1×1 conv."""

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        embedding_dim: int,
        kernel: tuple[int, int, int],
        padding_mode: PaddingMode,
        norm_groups: int = 32,
        causal: bool = False,
    ):
        super().__init__()
        self.temporal_downsample = tuple(temporal_downsample)
        self.conv_in = SameConv3d(in_channels, base_channels, kernel, bias=False, padding_mode=padding_mode, causal=causal)
        self.levels = nn.ModuleList()
        ch = base_channels
        for mult in channel_multipliers:
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * mult, kernel, padding_mode, norm_groups, causal))
                ch = base_channels * mult
            self.levels.append(blocks)
        self.mid = nn.ModuleList([ResBlock(ch, ch, kernel, padding_mode, norm_groups, causal) for _ in range(num_res_blocks)])
        self.norm_out = group_norm(ch, groups=norm_groups, per_frame=causal)
        self.conv_out = SameConv3d(ch, embedding_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(kernels.to_fast_layout(x))
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                x = block(x)
            if i < len(self.levels) - 1:
                x = avg_pool_down(x, pool_time=self.temporal_downsample[i])
        for block in self.mid:
            x = block(x)
        return self.conv_out(kernels.norm_silu(self.norm_out, x))


class Decoder(nn.Module):
    """conv in → res blocks → per level (deepest first): res blocks, then (not first) nearest ×2 up + conv
    → GN → SiLU → conv out."""

    def __init__(
        self,
        out_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        embedding_dim: int,
        kernel: tuple[int, int, int],
        padding_mode: PaddingMode,
        norm_groups: int = 32,
        causal: bool = False,
    ):
        super().__init__()
        self.temporal_downsample = tuple(temporal_downsample)
        ch = base_channels * channel_multipliers[-1]
        self.conv_in = SameConv3d(embedding_dim, ch, kernel, bias=True, padding_mode=padding_mode, causal=causal)
        self.mid = nn.ModuleList([ResBlock(ch, ch, kernel, padding_mode, norm_groups, causal) for _ in range(num_res_blocks)])
        self.levels = nn.ModuleList()  # stored deepest level first, the order they run in
        self.up_convs = nn.ModuleList()
        for i in reversed(range(len(channel_multipliers))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base_channels * channel_multipliers[i], kernel, padding_mode, norm_groups, causal))
                ch = base_channels * channel_multipliers[i]
            self.levels.append(blocks)
            if i > 0:
                self.up_convs.append(SameConv3d(ch, ch, kernel, bias=True, padding_mode=padding_mode, causal=causal))
        self.norm_out = group_norm(ch, groups=norm_groups, per_frame=causal)
        self.conv_out = SameConv3d(ch, out_channels, kernel, bias=True, padding_mode=padding_mode, causal=causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(kernels.to_fast_layout(x))
        for block in self.mid:
            x = block(x)
        n = len(self.levels)
        for j, blocks in enumerate(self.levels):
            for block in blocks:
                x = block(x)
            level = n - 1 - j
            if level > 0:
                x = nearest_up(x, up_time=self.temporal_downsample[level - 1])
                x = self.up_convs[j](x)
        return self.conv_out(kernels.norm_silu(self.norm_out, x)).contiguous()  # (B, C, T, H, W), row-major


class VQTokenizer(ConfigMixin, nn.Module):
    """MAGVIT 3D-VQ tokenizer: video (B, 3, T, H, W) in [-1, 1] ↔ tokens (B, t, h, w).

    Args:
        base_channels: Width of the first level (B: 64, L: 128).
        channel_multipliers: Width of each level as a multiple of ``base_channels``; every level but the
            last halves H and W ((1, 2, 2, 4) at 128 px: /8; (1, 2, 4) at 64 px: /4).
        num_res_blocks: Residual blocks per level (and in the middle), in encoder and decoder.
        temporal_downsample: For each downsample, whether it also halves time. Default: the first two
            for a 3D model (time /4), none when ``temporal_kernel_size`` is 1.
        embedding_dim: Channels of the latent; must equal the quantizer's code dimension.
        padding_mode: 'same' padding of the convs: zeros (released configs), reflect (the paper) or
            replicate; applied in time too.
        temporal_kernel_size: Kernel size in time of all 3×3 convs: 3 for the 3D model, 1 for a
            per-frame 2D model (train it on T=1 clips, then inflate it).
        quantizer: The quantizer module (VectorQuantizer or LookupFreeQuantizer); default
            VectorQuantizer(1024 codes, dim ``embedding_dim``).
        in_channels: Channels of the video (3 for RGB); the decoder outputs the same number.
        norm_groups: Groups of every GroupNorm (MAGVIT: 32; fewer when the width is not a multiple).
            At small widths 32 groups hold one channel each, which normalises away every channel's
            mean over the clip, global colour included (the CPU demo uses 4). 0 = no normalisation.
        causal: Temporally causal model (as in MAGVIT-v2): every conv pads time on the past side only and
            every GroupNorm normalises each frame alone, so latent frame ``i`` depends on frames
            ``< (i + 1) * dt`` and decoded frames ``i * dt ... (i + 1) * dt - 1`` on latent frames ``<= i``.
            A given first frame is then decoded from its own tokens, whatever is generated after it.
            ``"decoder"``: only the decoder is causal (what keeps given first frames; the encoder keeps
            its centred view). False (MAGVIT: its 3D-VQ is centred in time), True or "decoder".

    Activation checkpointing is applied from outside (:mod:`magvit_pl.models.checkpointing`), by the
    LightningModule's ``activation_checkpointing`` option.
    """

    def __init__(
        self,
        base_channels: int = 64,
        channel_multipliers: tuple[int, ...] = (1, 2, 2, 4),
        num_res_blocks: int = 2,
        temporal_downsample: tuple[bool, ...] | None = None,
        embedding_dim: int = 256,
        padding_mode: PaddingMode = "zeros",
        temporal_kernel_size: int = 3,
        quantizer: nn.Module | None = None,
        in_channels: int = 3,
        norm_groups: int = 32,
        causal: bool | Literal["decoder"] = False,
    ):
        super().__init__()
        check_args("tokenizer", locals(), {"base_channels": ">= 1", "channel_multipliers": ">= 1", "num_res_blocks": ">= 0",
                                           "embedding_dim": ">= 1", "in_channels": ">= 1", "norm_groups": ">= 0"})
        if padding_mode not in PADDING_MODES:
            raise UserError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {padding_mode!r}")
        if temporal_kernel_size not in (1, 3, 5):
            raise UserError(f"temporal_kernel_size must be 1, 3 or 5; got {temporal_kernel_size}")
        channel_multipliers = tuple(int(m) for m in channel_multipliers)
        if temporal_downsample is None:
            temporal_downsample = default_temporal_downsample(len(channel_multipliers), temporal_kernel_size)
        temporal_downsample = tuple(bool(t) for t in temporal_downsample)
        if len(temporal_downsample) != len(channel_multipliers) - 1:
            raise UserError(
                f"temporal_downsample needs one flag per downsample (len(channel_multipliers) - 1 = "
                f"{len(channel_multipliers) - 1}); got {temporal_downsample}"
            )
        quantizer = VectorQuantizer(1024, embedding_dim) if quantizer is None else quantizer
        if quantizer.embedding_dim != embedding_dim:
            raise UserError(
                f"the quantizer's code dimension ({quantizer.embedding_dim}) must equal embedding_dim ({embedding_dim})"
            )
        self.channel_multipliers = channel_multipliers
        self.temporal_downsample = temporal_downsample
        self.embedding_dim = embedding_dim
        self.temporal_kernel_size = temporal_kernel_size
        if causal not in (False, True, "decoder"):
            raise UserError(f"causal must be false, true or 'decoder'; got {causal!r}")
        self.causal = causal
        kernel = (temporal_kernel_size, 3, 3)
        args = (
            base_channels, channel_multipliers, num_res_blocks, temporal_downsample, embedding_dim, kernel, padding_mode
        )
        self.encoder = Encoder(in_channels, *args, norm_groups=norm_groups, causal=causal is True)
        self.quantizer = quantizer
        self.decoder = Decoder(in_channels, *args, norm_groups=norm_groups, causal=bool(causal))

    # ---- shapes
    @property
    def downsample_factors(self) -> tuple[int, int, int]:
        """(dt, ds, ds): how many frames / pixels one token covers."""
        dt = 2 ** sum(self.temporal_downsample)
        ds = 2 ** (len(self.channel_multipliers) - 1)
        return dt, ds, ds

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (t, h, w) of a clip; the clip's sizes must be multiples of the downsample factors."""
        dt, ds, _ = self.downsample_factors
        if num_frames % dt or height % ds or width % ds:
            raise UserError(
                f"clip size {num_frames}x{height}x{width} (frames x height x width) must be a multiple of the "
                f"tokenizer's downsampling {dt}x{ds}x{ds}"
            )
        return num_frames // dt, height // ds, width // ds

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # ---- the model
    def forward(self, video: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, QuantizerOutput]:
        """Reconstruct ``video`` (B, C, T, H, W); returns (reconstruction, quantizer output)."""
        q = self.quantize(video, step=step)
        return self.decoder(q.quantized), q

    def quantize(self, video: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """Encode and quantize ``video``: codes (B, D, t, h, w), token ids, quantizer loss, metrics."""
        self.token_grid(*video.shape[2:])  # validates the clip size
        return self.quantizer(self.encoder(video), step=step)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, C, T, H, W) → token ids (B, t, h, w) (no quantizer losses or statistics computed)."""
        self.token_grid(*video.shape[2:])  # validates the clip size
        z = self.encoder(video)
        if isinstance(self.quantizer, Quantizer):  # a plugin quantizer may have only forward()
            return self.quantizer.indices(z)
        return self.quantizer(z).indices

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, D, t, h, w) → video (B, C, T, H, W), not clamped."""
        return self.decoder(codes)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) → video (B, C, T, H, W), not clamped."""
        return self.decoder(self.quantizer.embed(tokens))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "VQTokenizer":
        """Build a preset (see ``PRESETS``), with any constructor argument overridden."""
        return cls(**{**tokenizer_preset_kwargs(name), **overrides})


# name → constructor arguments (codebook_size builds the default VectorQuantizer)
PRESETS: dict[str, dict[str, Any]] = {
    # paper B / L at 128 px: 16x128x128 → 4x16x16
    "B": dict(base_channels=64, channel_multipliers=(1, 2, 2, 4), embedding_dim=256, codebook_size=1024),
    "L": dict(base_channels=128, channel_multipliers=(1, 2, 2, 4), embedding_dim=256, codebook_size=1024),
    # BAIR at 64 px: 16x64x64 → 4x16x16
    "bair_B": dict(base_channels=64, channel_multipliers=(1, 2, 4), embedding_dim=256, codebook_size=1024),
    "bair_L": dict(base_channels=128, channel_multipliers=(1, 2, 4), embedding_dim=256, codebook_size=1024),
    # CPU-sized (step time: benchmarks/tokenizer.py, benchmarks/README.md): 8x32x32 → 2x8x8
    "tiny": dict(
        base_channels=16, channel_multipliers=(1, 2, 2), num_res_blocks=1, embedding_dim=64, codebook_size=256
    ),
}


def tokenizer_preset_kwargs(name: str) -> dict[str, Any]:
    """Constructor arguments of preset ``name`` for :class:`VQTokenizer` (a fresh quantizer each call)."""
    if name not in PRESETS:
        raise UserError(f"unknown tokenizer preset {name!r}; choose one of {', '.join(PRESETS)}")
    kwargs = dict(PRESETS[name])
    codebook_size = kwargs.pop("codebook_size")
    kwargs["quantizer"] = VectorQuantizer(codebook_size, kwargs["embedding_dim"])
    return kwargs


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())
