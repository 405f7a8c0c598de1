"""GAN, R1, LeCam and perceptual losses on hand-computed cases; ResNet-50 keys match torchvision."""
import math

import pytest
import torch

from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.losses import LeCamEMA, PerceptualLoss, discriminator_gan_loss, generator_gan_loss, r1_penalty
from magvit_pl.models.resnet import ResNet50


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_gan_losses():
    assert generator_gan_loss(torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert generator_gan_loss(torch.tensor([2.0, -1.0])).item() == pytest.approx((softplus(-2) + softplus(1)) / 2)
    d = discriminator_gan_loss(torch.tensor([2.0, 0.0]), torch.tensor([-1.0]))
    assert d.item() == pytest.approx((softplus(-2) + softplus(0)) / 2 + softplus(-1))
    # a perfect discriminator has ~zero loss, the generator fooling it has ~zero loss
    assert discriminator_gan_loss(torch.tensor([30.0]), torch.tensor([-30.0])).item() < 1e-10
    assert generator_gan_loss(torch.tensor([30.0])).item() < 1e-10


def test_r1_penalty_matches_hand_gradient():
    w = torch.tensor(1.5, requires_grad=True)
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)  # two samples
    logits = w * x.pow(2).sum(1)  # D(x_b) = w·‖x_b‖², ∇ = 2·w·x_b
    pen = r1_penalty(logits, x, cost=10.0)
    # cost · mean_b ‖2·w·x_b‖² = 10 · mean(4·2.25·5, 4·2.25·1) = 10 · 27
    assert pen.item() == pytest.approx(270.0)
    (gw,) = torch.autograd.grad(pen, w)  # d/dw 10·4w²·mean‖x‖² = 80·w·3
    assert gw.item() == pytest.approx(80 * 1.5 * 3)


def test_lecam_loss_and_ema():
    lecam = LeCamEMA(decay=0.9)
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}
    lecam.ema_real.fill_(0.5)
    lecam.ema_fake.fill_(-0.5)
    real, fake = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    # mean relu(real + 0.5)² + mean relu(0.5 − fake)² = (2.25 + 0)/2 + (0.25 + 0)/2
    assert lecam.loss(real, fake).item() == pytest.approx(1.25)
    assert lecam(real, fake).item() == pytest.approx(1.25)
    lecam.batch_mean = True  # MAGVIT: on the batch means 0 and 0.5 → relu(0.5)² + relu(0)²
    assert lecam.loss(real, fake).item() == pytest.approx(0.25)
    lecam.update(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.9 * 0.5 + 0.1 * 0.0)
    assert lecam.ema_fake.item() == pytest.approx(0.9 * -0.5 + 0.1 * 0.5)
    restored = LeCamEMA()
    restored.load_state_dict(lecam.state_dict())
    assert restored.ema_fake.item() == pytest.approx(-0.4)
    # gradients reach the logits, not the anchors
    r = real.clone().requires_grad_(True)
    lecam.batch_mean = False
    lecam.loss(r, fake).backward()
    assert r.grad.tolist() == pytest.approx([2 * (1.0 + 0.4) / 2, 0.0])


def test_resnet50_state_dict_matches_torchvision_names():
    with torch.device("meta"):
        net = ResNet50()
    sd = net.state_dict()
    # 53 convs + 53 BatchNorms × 5 entries + fc weight and bias
    assert len(sd) == 53 + 53 * 5 + 2 == 320
    assert sum(k.endswith("conv1.weight") or k.endswith("conv2.weight") or k.endswith("conv3.weight")
               or k.endswith("downsample.0.weight") for k in sd) == 53
    assert sd["fc.weight"].shape == (1000, 2048) and sd["fc.bias"].shape == (1000,)
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer4.2.bn3.running_var"].shape == (2048,)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride in the 3×3
    assert sd["layer3.5.bn2.num_batches_tracked"].shape == ()
    assert "layer3.6.conv1.weight" not in sd and "layer2.1.downsample.0.weight" not in sd
    assert sum(p.numel() for p in net.parameters()) == 25_557_032  # torchvision's resnet50


def test_perceptual_none_and_argument_errors(tmp_path):
    p = PerceptualLoss("none")
    assert p(torch.zeros(1, 3, 2, 8, 8), torch.ones(1, 3, 2, 8, 8)).item() == 0.0
    with pytest.raises(MissingFileError, match="ResNet-50 weights not found"):
        PerceptualLoss("resnet50_logits", weights_path=str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="needs weights_path"):
        PerceptualLoss("resnet50_logits")
    with pytest.raises(UserError, match="perceptual backbone must be"):
        PerceptualLoss("vgg")
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a torchvision resnet50 state dict"):
        PerceptualLoss("resnet50_logits", weights_path=str(bad), num_frames=1)(
            torch.zeros(1, 3, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8))


def test_perceptual_resnet50_logits(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet50.pt"
    torch.save(ResNet50().state_dict(), path)
    loss = PerceptualLoss("resnet50_logits", weights_path=str(path), num_frames=1)
    loss.train()
    assert not loss.net.training  # stays in eval mode
    assert all(not p.requires_grad for p in loss.net.parameters())
    real = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    recon = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    torch.manual_seed(1)
    same = loss(real, real.clone())
    assert same.item() == pytest.approx(0.0, abs=1e-10)
    torch.manual_seed(1)
    value = loss(real, recon)
    assert value.item() > 0
    value.backward()
    # only the sampled frame of recon gets a gradient; the network gets none
    frames_with_grad = (recon.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).sum().item()
    assert frames_with_grad == 1
    assert all(p.grad is None for p in loss.net.parameters())
    # checkpoints leave the frozen network out, and load back strictly
    assert list(loss.state_dict()) == []
    holder = torch.nn.Module()
    holder.perceptual = loss
    holder.load_state_dict(holder.state_dict(), strict=True)
    assert torch.equal(loss.net.fc.weight, torch.load(path, weights_only=True)["fc.weight"])


def test_perceptual_frame_sampling_is_shared_and_distinct():
    loss = PerceptualLoss("none", num_frames=3)
    real = torch.arange(2 * 8, dtype=torch.float32).view(2, 1, 8, 1, 1).expand(2, 3, 8, 2, 2)
    torch.manual_seed(0)
    x, y = loss._frames(real, real + 100)
    assert x.shape == (6, 3, 2, 2)
    assert torch.equal(y, x + 100)  # the same frames from both videos
    picked = x[:, 0, 0, 0].view(2, 3)
    assert len(set(picked[0].tolist())) == 3 and all(0 <= v < 8 for v in picked[0].tolist())
    assert all(8 <= v < 16 for v in picked[1].tolist())  # clip 1's own frames


def test_perceptual_lpips_backbone():
    pytest.importorskip("magvit_pl.models.lpips")
    from magvit_pl.run.errors import MissingWeightsError

    try:
        loss = PerceptualLoss("lpips_vgg16", num_frames=2)
    except MissingWeightsError:
        pytest.skip("LPIPS weights not fetched (python cli.py fetch-weights lpips_vgg16)")
    real = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    assert loss(real, real.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(real, -real).item() > 0
    assert list(loss.state_dict()) == []
