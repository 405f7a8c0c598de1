"""PSNR / SSIM wrappers, LPIPS (module and metric) and FID on frames."""
from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from magvit_pl.run.errors import MissingWeightsError, UserError
from magvit_pl.metrics.frame import FID, LPIPSMetric, VideoPSNR, VideoSSIM, to_frames
from magvit_pl.models.lpips import LPIPS


def test_to_frames_order():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4, 1, 1)  # (B, C, T, 1, 1)
    f = to_frames(x)
    assert f.shape == (8, 3, 1, 1)
    assert torch.equal(f[5, :, 0, 0], x[1, :, 1, 0, 0])  # frame 5 = clip 1, time 1
    with pytest.raises(UserError):
        to_frames(torch.zeros(3, 4))


def test_psnr_is_the_mean_over_frames():
    target = torch.zeros(1, 3, 2, 8, 8)
    preds = target.clone()
    preds[:, :, 0] += 0.2  # [-1, 1] offset 0.2 → 0.1 in [0, 1]: MSE 0.01 → 20 dB
    preds[:, :, 1] += 0.02  # → 0.01: MSE 1e-4 → 40 dB
    m = VideoPSNR()
    m.update(preds, target)
    assert float(m.compute()) == pytest.approx(30.0, abs=1e-3)  # mean of frames, not PSNR of the mean MSE
    assert not math.isclose(30.0, 10 * math.log10(1 / ((0.01 + 1e-4) / 2)))


def test_ssim_matches_torchmetrics_on_frames():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 3, 16, 16, generator=g) * 2 - 1
    preds = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    m = VideoSSIM()
    m.update(preds, target)
    ref = structural_similarity_index_measure(to_frames((preds + 1) / 2), to_frames((target + 1) / 2), data_range=1.0)
    assert float(m.compute()) == pytest.approx(float(ref), abs=1e-6)
    same = VideoSSIM()
    same.update(target, target)
    assert float(same.compute()) == pytest.approx(1.0, abs=1e-5)
    assert float(m.compute()) < 0.98
    with pytest.raises(UserError, match="same shape"):
        m.update(preds[:, :, :2], target)


def test_lpips_structure_without_weights():
    torch.manual_seed(0)
    net = LPIPS(pretrained=False)
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d = net(x, y)
    assert d.shape == (2,)
    torch.testing.assert_close(net(x, x), torch.zeros(2))
    torch.testing.assert_close(d, net(y, x))  # symmetric
    x.requires_grad_(True)
    net(x, y).sum().backward()  # usable as a loss: gradients reach the input
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(UserError):
        net(x, y[:1])


def _lpips_weights(md):
    return str(md.weights_or_skip("lpips_vgg16"))


def test_lpips_pretrained_carphone(md):
    torch.set_num_threads(1)
    net = LPIPS(_lpips_weights(md))
    assert all((h.weight >= 0).all() for h in net.heads)  # LPIPS v0.1 heads are non-negative
    pristine = md.to_video(md.read_frames("carphone_pristine.mp4", 2, start=30)).transpose(0, 1)  # (2, 3, 144, 176)
    distorted = md.to_video(md.read_frames("carphone_distorted.mp4", 2, start=30)).transpose(0, 1)
    g = torch.Generator().manual_seed(0)
    slightly = (pristine + 0.02 * torch.randn(pristine.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        d_same, d_noise, d_dist = net(pristine, pristine), net(pristine, slightly), net(pristine, distorted)
    print(f"LPIPS carphone: noised {d_noise.tolist()}, distorted {d_dist.tolist()}")
    torch.testing.assert_close(d_same, torch.zeros(2))
    assert (d_noise > 0).all() and (d_dist > 3 * d_noise).all() and (d_dist > 0.2).all()

    metric = LPIPSMetric(_lpips_weights(md), batch_size=1)
    metric.update(distorted.transpose(0, 1)[None], pristine.transpose(0, 1)[None])  # as one (1, 3, 2, H, W) video
    assert float(metric.compute()) == pytest.approx(float(d_dist.mean()), rel=1e-5)
    assert metric.state_dict() == {}


def test_fid_on_real_frames(md):
    torch.set_num_threads(1)
    weights = str(md.weights_or_skip("inception"))
    frames = md.to_video(md.read_frames("bikes.mp4", 4, start=0, step=20)).transpose(0, 1)  # (4, 3, 272, 640)
    fid = FID(weights)
    feats = fid._net(frames)  # (4, 2048), computed once for the checks below
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 after ReLU

    fid.update_features(feats[:2], real=True)
    fid.update_features(feats[2:], real=False)
    halves = float(fid.compute())
    assert math.isfinite(halves) and halves > 1.0

    fid.reset()
    fid.update_features(feats, real=True)
    fid.update_features(feats, real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-3)

    # the pixel path gives the same features as the network on the same frames
    fid.reset()
    fid.update(frames[:1][None].transpose(1, 2), real=True)  # a (1, 3, 1, H, W) video
    torch.testing.assert_close(fid.real_sum.float(), feats[0], rtol=1e-4, atol=1e-3)
    assert int(fid.real_n) == 1
    with pytest.raises(UserError, match="at least 2 real"):
        fid.compute()


def test_metrics_need_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGVIT_PL_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="fetch-weights lpips_vgg16"):
        LPIPS()
    with pytest.raises(MissingWeightsError, match="fetch-weights inception"):
        FID()
