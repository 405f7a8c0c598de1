"""``python cli.py fvd`` with the real networks (skipped when their weights are not fetched): FVD (I3D) and paired
LPIPS of two folders equal the metrics computed in Python on the same clips, and the JSON file holds each number with
its protocol. (Frame FID goes through the same streaming: ``test_fvd_command.py`` checks it with a stand-in network,
since 36 Inception passes at 299² would double this file's time.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magvit_pl.run.clipsets import write_clip
from magvit_pl.data import frames_to_tensor


def weights_or_skip(name: str) -> None:
    from magvit_pl.run.errors import MissingWeightsError
    from magvit_pl.run.weights import weight_path

    try:
        weight_path(name)
    except MissingWeightsError:
        pytest.skip(f"weights '{name}' not fetched (python cli.py fetch-weights {name})")


def test_cli_fvd_and_lpips_equal_the_python_metrics(tmp_path, run_cli):
    for name in ("i3d", "lpips_vgg16"):
        weights_or_skip(name)
    from magvit_pl.metrics.fvd import FrechetVideoDistance
    from magvit_pl.metrics.frame import LPIPSMetric

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:24, 0:32]
    real = [np.stack([np.stack([(xx * 8 + 9 * t + 40 * i) % 256, (yy * 10) % 256, np.full_like(xx, 30 * i)], -1)
                      for t in range(9)]).astype(np.uint8) for i in range(2)]  # moving gradients
    fake = [np.clip(c.astype(int) + rng.integers(-60, 60, c.shape), 0, 255).astype(np.uint8) for c in real]  # + noise
    for i in range(2):
        write_clip(tmp_path / "real", f"clip{i}", real[i], "mkv")
        write_clip(tmp_path / "fake", f"clip{i}", fake[i], "png")
    code, err = run_cli(["fvd", "--real", tmp_path / "real", "--fake", tmp_path / "fake", "--num_frames", "9",
                         "--lpips", "true", "--output", tmp_path / "fvd.json"])
    assert code == 0, err
    result = json.loads((tmp_path / "fvd.json").read_text())

    real_t, fake_t = (torch.stack([frames_to_tensor(c) for c in clips]) for clips in (real, fake))
    fvd = FrechetVideoDistance()
    fvd.update(real_t, real=True)
    fvd.update(fake_t, real=False)
    lpips = LPIPSMetric()
    lpips.update(fake_t, real_t)
    assert result["fvd"] == pytest.approx(float(fvd.compute()), rel=1e-9) and result["fvd"] > 1.0
    assert result["lpips"] == pytest.approx(float(lpips.compute()), rel=1e-6) and 0.05 < result["lpips"] < 1
    protocol = result["protocol"]
    assert protocol["weights_sha256"] == fvd.protocol()["weights_sha256"] and protocol["resolution"] == 224
    assert (protocol["num_real"], protocol["num_fake"], protocol["frames"], protocol["input_resolution"]) == (2, 2, 9, [24, 32])
    assert json.loads(run_cli.out.splitlines()[0])["fvd"] == result["fvd"]  # the printed JSON line: the same record
