"""The pooled no-learning baseline, ReconstructionMetrics and benchmarks/reconstruction.py."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from magvit_pl.metrics.reconstruction import ReconstructionMetrics, pooled_baseline

REPO = Path(__file__).resolve().parents[2]


def test_pooled_baseline_keeps_what_the_grid_can_hold():
    g = torch.Generator().manual_seed(0)
    const = torch.rand(2, 3, 1, 1, 1, generator=g).expand(2, 3, 8, 16, 16) * 2 - 1
    assert torch.allclose(pooled_baseline(const, (2, 4, 4)), const, atol=1e-6)
    # a smooth ramp along w survives except near the borders, where trilinear upsampling clamps
    ramp = torch.linspace(-1, 1, 64).view(1, 1, 1, 1, 64).expand(1, 3, 4, 8, 64)
    out = pooled_baseline(ramp, (1, 1, 4))
    assert (out - ramp)[..., 4:-4].abs().max() < 1e-5 and (out - ramp).abs().max() > 0.01
    # detail below the grid is lost: a checkerboard of period 2 pools to its mean
    checker = ((torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2).float().mul(2).sub(1)
    video = checker.expand(1, 3, 4, 16, 16)
    assert pooled_baseline(video, (2, 4, 4)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="not divisible"):
        pooled_baseline(torch.zeros(1, 3, 5, 16, 16), (2, 4, 4))


def test_metrics_match_the_definitions():
    g = torch.Generator().manual_seed(1)
    video = torch.rand(3, 3, 4, 16, 16, generator=g) * 1.6 - 0.8
    noise = torch.randn(video.shape, generator=g) * 0.05
    m = ReconstructionMetrics(lpips=False, fvd=False)
    m.update(video[:2] + noise[:2], video[:2])
    m.update(video[2:] + noise[2:], video[2:])
    out = m.compute()
    frames_mse = (noise / 2).pow(2).transpose(1, 2).flatten(0, 1).flatten(1).mean(1)  # per frame, [0, 1] units
    expected = (10 * torch.log10(1 / frames_mse)).mean().item()
    assert out["psnr"] == pytest.approx(expected, abs=1e-3)
    assert out["clips"] == 3 and out["lpips"] is None and out["rfvd"] is None
    assert 0.5 < out["ssim"] < 1.0


def test_benchmark_script_compares_a_checkpoint_with_the_baseline(tmp_path, tokenizer_run, pattern, write_raw, capsys):
    spec = importlib.util.spec_from_file_location("bench_reconstruction", REPO / "benchmarks" / "reconstruction.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    videos = tmp_path / "videos"
    write_raw(videos / "a.mp4", pattern(12, 40, 48, seed=0))
    write_raw(videos / "b.avi", pattern(10, 36, 36, seed=1), codec="mpeg4")
    (videos / "notes.txt").write_text("not a video")
    ckpt = tokenizer_run / "checkpoints" / "last.ckpt"
    out = bench.main(["--ckpt", str(ckpt), "--videos", str(videos), "--num_frames", "8", "--resolution", "32",
                      "--clips_per_video", "2", "--threads", "1", "--no_lpips", "--no_fvd", "--grid", str(tmp_path / "g.png")])
    printed = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert printed == json.loads(json.dumps(out)) and out["clips"] == 4
    base = out["results"]["baseline: avg-pool (2, 4, 4) + trilinear"]
    model = out["results"][str(ckpt)]
    assert base["clips"] == model["clips"] == 4 and model["grid"] == [2, 4, 4]
    assert math.isfinite(base["psnr"]) and base["psnr"] > 20  # smooth gradients survive pooling well
    assert math.isfinite(model["psnr"]) and model["psnr"] != base["psnr"]
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
