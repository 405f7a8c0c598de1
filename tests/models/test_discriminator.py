"""StyleGAN-style 3D discriminator: levels from resolution, residual scaling, shapes and gradients."""
import math

import pytest
import torch

from magvit_pl.models.discriminator import DiscriminatorBlock, StyleGANDiscriminator3D, default_channel_multipliers


def test_levels_follow_resolution():
    assert default_channel_multipliers(128) == (2, 4, 4, 4, 4)
    assert default_channel_multipliers(64) == (2, 4, 4, 4)
    assert default_channel_multipliers(32) == (2, 4, 4)
    assert default_channel_multipliers(8) == (2,)


def test_paper_size_on_meta():
    with torch.device("meta"):
        d = StyleGANDiscriminator3D()  # 64 channels, 16x128x128
        out = d(torch.empty(2, 3, 16, 128, 128))
    assert out.shape == (2,)
    # 5 blocks: 16x128² → 1x4x4 (time stops at one frame), 256 channels → Dense(4096 → 256)
    assert d.fc.in_features == 256 * 1 * 4 * 4
    assert sum(p.numel() for p in d.parameters()) == 15_339_457


def test_block_residual_is_scaled_by_sqrt2():
    block = DiscriminatorBlock(2, 2)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        block.shortcut.weight.copy_(torch.eye(2).view(2, 2, 1, 1, 1))
    x = torch.randn(1, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    pooled = x.view(1, 2, 2, 2, 2, 2, 2, 2).mean(dim=(3, 5, 7))  # 2x2x2 average
    assert torch.allclose(block(x), pooled / math.sqrt(2), atol=1e-6)


def test_tiny_forward_and_gradients():
    torch.manual_seed(0)
    d = StyleGANDiscriminator3D(base_channels=8, num_frames=8, resolution=32)
    assert len(d.blocks) == 3
    x = torch.randn(2, 3, 8, 32, 32, requires_grad=True)
    logits = d(x)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # samples are independent (no normalisation): one clip's logit does not depend on the other
    x2 = x.detach().clone()
    x2[1] = 0
    assert torch.allclose(d(x2)[0], logits[0].detach(), atol=1e-5)


def test_wrong_clip_size_is_explained():
    d = StyleGANDiscriminator3D(base_channels=4, num_frames=4, resolution=16)
    with pytest.raises(ValueError, match="set num_frames / resolution"):
        d(torch.zeros(1, 3, 4, 32, 32))
