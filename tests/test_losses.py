"""GAN, R1, LeCam and perceptual losses on hand-computed cases; ResNet-50 keys match torchvision."""
import math

import pytest
import torch

from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.losses import (LeCamEMA, PerceptualLoss, discriminator_gan_loss, generator_gan_loss, r1_penalty,
                              reconstruction_loss)
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
    pen = r1_penalty(logits, x, cost=10.0, unit_range=False)  # the gradient with respect to x itself
    # cost · mean_b ‖2·w·x_b‖² = 10 · mean(4·2.25·5, 4·2.25·1) = 10 · 27
    assert pen.item() == pytest.approx(270.0)
    (gw,) = torch.autograd.grad(pen, w)  # d/dw 10·4w²·mean‖x‖² = 80·w·3
    assert gw.item() == pytest.approx(80 * 1.5 * 3)


def test_l2_and_r1_in_unit_range_equal_the_official_values_on_the_same_batch():
    """The official trainer sees pixels u in [0, 1]; the model here sees x = 2u − 1. With the defaults the L2 and
    R1 terms equal what the official code computes on u with its weights (L2 1, R1 cost 10); on x they would
    be 4x and 1/4x those (the measured ratio of the issue)."""
    torch.manual_seed(0)
    u = torch.rand(3, 3, 4, 8, 8)  # official clips in [0, 1]
    u_rec = (u + 0.1 * torch.randn_like(u)).clamp(0, 1)
    conv = torch.nn.Conv3d(3, 2, 3, padding=1)
    head = torch.nn.Linear(2 * 4 * 8 * 8, 1)

    def disc_model(x):  # a discriminator of the [-1, 1] model pixels
        return head(torch.tanh(conv(x)).flatten(1)).squeeze(1)

    # official, in [0, 1]: l2_loss = mean((u - u')²); r1 = cost · mean_b ‖∇_u D'(u)‖², D'(u) = D(2u − 1)
    official_l2 = ((u - u_rec) ** 2).mean()
    uu = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(disc_model(2 * uu - 1).sum(), uu)
    official_r1 = 10.0 * g.pow(2).flatten(1).sum(1).mean()

    x, x_rec = 2 * u - 1, 2 * u_rec - 1
    assert reconstruction_loss(x_rec, x).item() == pytest.approx(official_l2.item(), rel=1e-5)
    assert reconstruction_loss(x_rec, x, unit_range=False).item() == pytest.approx(4 * official_l2.item(), rel=1e-5)
    xx = x.clone().requires_grad_(True)
    assert r1_penalty(disc_model(xx), xx, cost=10.0).item() == pytest.approx(official_r1.item(), rel=1e-5)
    xx = x.clone().requires_grad_(True)
    assert r1_penalty(disc_model(xx), xx, cost=10.0, unit_range=False).item() == pytest.approx(official_r1.item() / 4, rel=1e-5)


def test_lecam_loss_and_ema():
    lecam = LeCamEMA(decay=0.9, mode="per_sample")
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}
    lecam.ema_real.fill_(0.5)
    lecam.ema_fake.fill_(-0.5)
    real, fake = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
    # mean relu(real + 0.5)² + mean relu(0.5 − fake)² = (2.25 + 0)/2 + (0.25 + 0)/2
    assert lecam.loss(real, fake).item() == pytest.approx(1.25)
    assert lecam(real, fake).item() == pytest.approx(1.25)
    lecam.mode = "batch_mean"  # MAGVIT: on the batch means 0 and 0.5 → relu(0.5)² + relu(0)²
    assert lecam.loss(real, fake).item() == pytest.approx(0.25)
    lecam.update(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.9 * 0.5 + 0.1 * 0.0)
    assert lecam.ema_fake.item() == pytest.approx(0.9 * -0.5 + 0.1 * 0.5)
    restored = LeCamEMA()
    restored.load_state_dict(lecam.state_dict())
    assert restored.ema_fake.item() == pytest.approx(-0.4)
    # gradients reach the logits, not the anchors
    r = real.clone().requires_grad_(True)
    lecam.mode = "per_sample"
    lecam.loss(r, fake).backward()
    assert r.grad.tolist() == pytest.approx([2 * (1.0 + 0.4) / 2, 0.0])


def test_lecam_default_is_the_official_batch_mean_and_bad_modes_are_one_line():
    assert LeCamEMA().mode == "batch_mean"
    real, fake = torch.tensor([3.0, -3.0]), torch.tensor([2.0, -2.0])  # batch means 0 and 0: no penalty on the means
    assert LeCamEMA().loss(real, fake).item() == 0.0
    # per sample: mean relu(real)² + mean relu(−fake)² = 9/2 + 4/2
    assert LeCamEMA(mode="per_sample").loss(real, fake).item() == pytest.approx(6.5)
    with pytest.raises(UserError, match="LeCam mode must be one of batch_mean, per_sample"):
        LeCamEMA(mode="mean")


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


def test_perceptual_defaults_score_every_frame_and_feed_unit_pixels(tmp_path):
    """Official: time is flattened (every frame scored) and the ResNet-50 sees [0, 1] frames resized to 224 with
    no ImageNet mean/std; ``input_norm='imagenet'`` is the torchvision convention."""
    from magvit_pl.losses import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pt"
    torch.save(ResNet50().state_dict(), path)
    real = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    seen = {}
    for norm in ("unit", "imagenet"):
        loss = PerceptualLoss("resnet50_logits", weights_path=str(path), **({} if norm == "unit" else {"input_norm": norm}))
        loss.load_weights()

        def record(x, norm=norm):  # what the network is fed
            seen[norm] = x
            return torch.zeros(x.shape[0], 1000)

        loss.net.forward = record
        loss(real, real)
    assert loss.num_frames is None and PerceptualLoss("none").num_frames is None
    unit = seen["unit"]
    assert unit.shape == (10, 3, 224, 224)  # all 5 frames of both clips
    resized = torch.nn.functional.interpolate(real.transpose(1, 2).reshape(10, 3, 16, 16), size=(224, 224), mode="bilinear",
                                              align_corners=False)
    assert torch.allclose(unit, (resized + 1) / 2, atol=1e-6)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen["imagenet"], (unit - mean) / std, atol=1e-5)
    with pytest.raises(UserError, match="input_norm must be unit or imagenet"):
        PerceptualLoss("none", input_norm="caffe")
