"""The Task base class: argument checks, default latent mask, metrics and their update protocol."""
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

import magvit_pl.tasks as T
from magvit_pl.run.errors import MissingWeightsError
from magvit_pl.metrics.masked import MaskedPSNR, MaskedSSIM
from magvit_pl.tasks import Condition, Task, TaskError, pool_mask
from magvit_pl_tasks.generation import ClassGeneration
from magvit_pl_tasks.outpainting import OutpaintingCentral
from magvit_pl_tasks.prediction import FramePrediction

CLIPS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clips"


class Corner(Task):
    """A plugin-style task that only writes build_condition: top-left 3x3 pixels of every frame."""

    name = "corner"
    family = "custom"
    description = "top-left corner given"

    def build_condition(self, video, generator=None):
        b, _, t, h, w = video.shape
        mask = torch.zeros(b, 1, t, h, w, dtype=torch.bool)
        mask[..., :3, :3] = True
        return Condition(torch.where(mask, video, torch.zeros(())), mask)


def test_constructor_checks():
    for bad in (0, -2, True, 1.5, "1"):
        with pytest.raises(TaskError, match="num_cond_frames"):
            FramePrediction(num_cond_frames=bad)
    with pytest.raises(TaskError, match="latent_rule must be one of"):
        OutpaintingCentral(latent_rule="most")
    with pytest.raises(TaskError, match="pad_value must be in"):
        ClassGeneration(pad_value=3.0)
    with pytest.raises(TypeError):
        Task()  # abstract: build_condition missing


def test_clip_too_short_and_indivisible_downsample():
    with pytest.raises(TaskError, match="at least 6 frames, got 5"):
        FramePrediction(num_cond_frames=5).build_condition(torch.zeros(1, 3, 5, 8, 8))
    pm = torch.ones(1, 1, 16, 40, 40, dtype=torch.bool)
    with pytest.raises(TaskError, match=r"not divisible by the tokenizer downsampling \(4, 8, 16\)"):
        OutpaintingCentral().latent_mask(pm, (4, 8, 16))


def test_plugin_default_latent_mask_is_any_pooling():
    task = Corner()
    cond = task.build_condition(torch.rand(2, 3, 8, 8, 8))
    lat = task.latent_mask(cond.pixel_mask, (4, 4, 4))  # 3x3 corner touches token (0, 0) only
    assert lat.shape == (2, 2, 2, 2)
    assert lat.sum().item() == 2 * 2 and lat[:, :, 0, 0].all()
    assert not Corner(latent_rule="all").latent_mask(cond.pixel_mask, (4, 4, 4)).any()
    assert torch.equal(pool_mask(cond.pixel_mask, (1, 1, 1), "all")[:, None], cond.pixel_mask)


def test_masked_psnr_matches_torchmetrics_on_the_region():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 4, 16, 16, generator=g) * 2 - 1
    gen = (real + 0.1 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    mask = torch.zeros(2, 1, 4, 16, 16, dtype=torch.bool)
    mask[..., 4:12, 2:10] = True
    m = MaskedPSNR()
    m.update(gen, real, mask)
    want = [PeakSignalNoiseRatio(data_range=2.0)(gen[i, :, :, 4:12, 2:10], real[i, :, :, 4:12, 2:10]) for i in range(2)]
    assert m.compute().item() == pytest.approx(torch.stack(want).mean().item(), abs=1e-4)
    # unmasked pixels do not count; an empty mask is skipped; a perfect match is capped at ~106 dB
    far = gen.clone()
    far[..., :4, :] = 5.0
    m2 = MaskedPSNR()
    m2.update(far, real, mask)
    m2.update(gen, real, torch.zeros_like(mask))
    assert m2.compute().item() == pytest.approx(m.compute().item(), abs=1e-4)
    m3 = MaskedPSNR()
    m3.update(real, real, mask)
    assert m3.compute().item() == pytest.approx(10 * np.log10(4 / 1e-10), abs=1e-3)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(MaskedPSNR().compute())


def test_masked_ssim_matches_torchmetrics():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(1, 3, 2, 24, 24, generator=g) * 2 - 1
    gen = (real + 0.2 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    full = torch.ones(1, 1, 2, 24, 24, dtype=torch.bool)
    m = MaskedSSIM()
    m.update(gen, real, full)  # full mask: plain SSIM (reflect-padded map, mean over frames)
    ref = StructuralSimilarityIndexMeasure(data_range=2.0, return_full_image=True)
    score, ref_map = ref(gen[0].transpose(0, 1), real[0].transpose(0, 1))  # frames as a batch
    assert m.compute().item() == pytest.approx(score.item(), abs=1e-5)
    # a region: mean of the same SSIM map over the region only
    mask = torch.zeros_like(full)
    mask[..., 3:20, 6:15] = True
    m_region = MaskedSSIM()
    m_region.update(gen, real, mask)
    want = ref_map.mean(1)[:, 3:20, 6:15].mean()
    assert m_region.compute().item() == pytest.approx(want.item(), abs=1e-5)
    assert abs(m_region.compute().item() - m.compute().item()) > 1e-3
    same = MaskedSSIM()
    same.update(real, real, torch.ones_like(mask))
    assert same.compute().item() == pytest.approx(1.0, abs=1e-6)


class FakeFVD:
    def __init__(self):
        self.calls = []

    def update(self, generated, real, given):
        self.calls.append((generated, real, given))


def test_update_metrics_feeds_every_metric_generated_real_and_given():
    task = OutpaintingCentral()
    real = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    cond = task.build_condition(real)
    gen = torch.where(cond.pixel_mask, real, torch.zeros(()))  # respects the condition exactly
    fvd, plain = FakeFVD(), FakeFVD()
    metrics = {"fvd": fvd, "plain": plain, **task.metrics(include_fvd=False)}
    task.update_metrics(metrics, gen, real, cond)
    for m in (fvd, plain):
        assert len(m.calls) == 1 and m.calls[0][0] is gen and m.calls[0][1] is real and m.calls[0][2] is cond.pixel_mask
    assert metrics["psnr_given"].compute().item() == pytest.approx(106.02, abs=0.01)
    assert metrics["ssim_given"].compute().item() > 0.6  # only the box border sees the zero fill


def test_paired_fvd_adds_the_real_then_the_generated_clips():
    from magvit_pl.metrics.fvd import PairedFVD

    fvd = PairedFVD(extractor=lambda clips: clips.mean((2, 3, 4)), resize=8, min_frames=1)
    real = torch.rand(4, 3, 2, 8, 8) * 2 - 1
    gen = real.flip(0) * 0.5
    fvd.update(gen, real, torch.ones(4, 1, 2, 8, 8, dtype=torch.bool))
    assert torch.allclose(fvd.real_features[0], real.mean((2, 3, 4))) and torch.allclose(fvd.fake_features[0], gen.mean((2, 3, 4)))


@pytest.fixture
def fake_fvd_module(monkeypatch):
    mod = types.ModuleType("magvit_pl.metrics.fvd")
    monkeypatch.setitem(sys.modules, "magvit_pl.metrics.fvd", mod)
    monkeypatch.setattr(T, "_skipped_metrics_logged", set())
    return mod


def test_fvd_skipped_and_logged_once_when_weights_missing(fake_fvd_module, caplog):
    def missing():
        raise MissingWeightsError("i3d", "/cache/i3d.pt")

    fake_fvd_module.FrechetVideoDistance = fake_fvd_module.PairedFVD = missing
    with caplog.at_level(logging.WARNING, logger="magvit_pl.tasks"):
        first = OutpaintingCentral().metrics()
        second = FramePrediction().metrics()
        assert ClassGeneration().metrics() == {}
    assert sorted(first) == ["psnr_given", "ssim_given"] and sorted(second) == sorted(first)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1
    assert "FVD skipped" in logged[0] and logged[0].count("python cli.py fetch-weights i3d") == 1  # said once (issue 16)


def test_fvd_included_when_available(fake_fvd_module):
    fake_fvd_module.FrechetVideoDistance = fake_fvd_module.PairedFVD = FakeFVD
    assert sorted(OutpaintingCentral().metrics()) == ["fvd", "psnr_given", "ssim_given"]
    assert isinstance(ClassGeneration().metrics()["fvd"], FakeFVD)
    assert "fvd" not in OutpaintingCentral().metrics(include_fvd=False)


def _decode(path, frames=16):
    av = pytest.importorskip("av")
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == frames:
                break
    v = torch.from_numpy(np.stack(out)).permute(3, 0, 1, 2)[None].float()  # (1, C, T, H, W)
    return v / 127.5 - 1


@pytest.mark.skipif(not (CLIPS / "carphone_pristine.mp4").exists(), reason="shared clips not present")
def test_real_clip_condition_and_region_psnr():
    """carphone (144x176, non-square): the given box is copied exactly; PSNR of the degraded copy
    on that box equals torchmetrics' PSNR on the cropped box."""
    pristine = _decode(CLIPS / "carphone_pristine.mp4")
    distorted = _decode(CLIPS / "carphone_distorted.mp4")
    assert pristine.shape == (1, 3, 16, 144, 176)
    task = OutpaintingCentral()
    cond = task.build_condition(pristine)
    box = (slice(None), slice(None), slice(None), slice(36, 108), slice(44, 132))
    assert cond.pixel_mask[0, 0, 0].nonzero()[:, 0].unique().tolist() == list(range(36, 108))
    assert torch.equal(cond.video[box], pristine[box])
    assert torch.equal(cond.video[..., 0, 0], pristine[..., 36, 44])  # corner replicated
    m = task.metrics(include_fvd=False)
    task.update_metrics(m, distorted, pristine, cond)
    want = PeakSignalNoiseRatio(data_range=2.0)(distorted[box], pristine[box]).item()
    assert m["psnr_given"].compute().item() == pytest.approx(want, abs=1e-3)
    assert 10 < want < 40
    assert 0 < m["ssim_given"].compute().item() < 1
    lat = task.latent_mask(cond.pixel_mask, (4, 4, 4))  # 4 x 36 x 44 tokens, box rows [9, 27), cols [11, 33)
    assert lat[0, 0].nonzero()[:, 0].unique().tolist() == list(range(9, 27))
    assert lat[0, 0].nonzero()[:, 1].unique().tolist() == list(range(11, 33))
