"""Fréchet distance, the FVD metric's protocol/caching/DDP sync, and FVD on real clips."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magvit_pl.run.errors import MissingWeightsError, UserError
from magvit_pl.metrics.fvd import FrechetVideoDistance, frechet_distance, gaussian_stats, read_real_stats, resize_clips


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16))
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b + 0.5)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariances():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 40))  # 6 samples in 40-d: rank-5 covariance
    mu, s = gaussian_stats(a)
    assert np.linalg.matrix_rank(s) == 5
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    d = frechet_distance(mu, s, mu + 1.0, 4 * s)  # sqrt(4 s) = 2 sqrt(s): tr(s + 4s − 2·2s) = tr s
    assert d == pytest.approx(40 + np.trace(s), rel=1e-8)


def test_resize_clips_keeps_frame_order():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4, 1, 1).expand(2, 3, 4, 5, 5)
    y = resize_clips(x, 7)
    assert y.shape == (2, 3, 4, 7, 7)
    torch.testing.assert_close(y[..., 3, 3], x[..., 0, 0])  # constant frames stay themselves


def _extractor(x: torch.Tensor) -> torch.Tensor:
    """A cheap stand-in feature network: per-channel moments over (T, H, W) → (B, 9)."""
    return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4)), x.abs().amax((2, 3, 4))], dim=1)


def _videos(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 9, 8, 8, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def test_fvd_metric_with_stand_in_extractor(tmp_path):
    m = FrechetVideoDistance(extractor=_extractor, resize=8, seed=3, stride=2)
    real, fake = _videos(12, 0), _videos(10, 1, shift=0.3)
    m.update(real[:5], real=True)
    m.update(real[5:], real=True)
    m.update(fake, real=False)
    fvd = float(m.compute())
    mu_r, s_r = gaussian_stats(_extractor(real))
    mu_f, s_f = gaussian_stats(_extractor(fake))
    assert fvd == pytest.approx(frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-6)
    assert fvd > 0.05
    proto = m.protocol()
    assert proto["num_real"] == 12 and proto["num_fake"] == 10 and proto["frames"] == 9
    assert proto["stride"] == 2 and proto["seed"] == 3 and proto["resolution"] == 8
    assert proto["weights_sha256"] == "custom-extractor"
    assert m.state_dict() == {}  # the network stays out of checkpoints

    # identical sets → 0
    same = FrechetVideoDistance(extractor=_extractor, resize=8)
    same.update(real, real=True)
    same.update(real, real=False)
    assert float(same.compute()) == pytest.approx(0.0, abs=1e-6)

    # cached real statistics: round trip through .npz, keyed by the manifest hash and protocol
    path = m.save_real_stats(tmp_path / "real.npz", manifest_sha256="abc")
    mu, sigma, n, key, stored = read_real_stats(path)
    assert n == 12 and stored["frames"] == 9 and len(key) == 64
    np.testing.assert_allclose(mu, mu_r)
    fresh = FrechetVideoDistance(extractor=_extractor, resize=8, seed=3, stride=2)
    assert not fresh.load_real_stats(tmp_path / "missing.npz", "abc", num_real=12, frames=9)
    assert not fresh.load_real_stats(path, "other-manifest", num_real=12, frames=9)
    assert not fresh.load_real_stats(path, "abc", num_real=12, frames=16)
    assert fresh.load_real_stats(path, "abc", num_real=12, frames=9)
    fresh.update(fake, real=False)
    assert float(fresh.compute()) == pytest.approx(fvd, rel=1e-9)


def test_fvd_errors_and_warning():
    m = FrechetVideoDistance(extractor=_extractor, resize=8)
    with pytest.raises(UserError, match="at least 9 frames"):
        m.update(torch.zeros(2, 3, 8, 8, 8), real=True)
    with pytest.raises(UserError, match=r"\(B, 3, T, H, W\)"):
        m.update(torch.zeros(2, 9, 8, 8), real=True)
    m.update(_videos(3, 0), real=True)
    with pytest.raises(UserError, match="T×H×W"):
        m.update(torch.zeros(2, 3, 10, 8, 8), real=False)
    m.update(_videos(1, 1), real=False)
    with pytest.raises(UserError, match="at least 2 generated"):
        m.compute()
    m.update(_videos(4, 2), real=False)
    with pytest.warns(UserWarning, match="5 generated clips with only 3 real"):
        m.compute()
    with pytest.raises(UserError, match="min_frames"):
        FrechetVideoDistance(min_frames=4)


def test_fvd_needs_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGVIT_PL_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="fetch-weights i3d"):
        FrechetVideoDistance()


_DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from magvit_pl.metrics.fvd import FrechetVideoDistance
    rank, port = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ext = lambda x: torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4))], 1)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(10, 3, 9, 4, 4, generator=g) * 2 - 1
    fake = (torch.rand(7, 3, 9, 4, 4, generator=g) * 1.6 - 0.6)
    m = FrechetVideoDistance(extractor=ext, resize=4)
    m.update(real[:6] if rank == 0 else real[6:], real=True)  # uneven shares of the real clips
    if rank == 0:
        m.update(fake, real=False)  # rank 1 sees no generated clip at all
    ddp = float(m.compute())
    single = FrechetVideoDistance(extractor=ext, resize=4, sync_on_compute=False)
    single.update(real, real=True)
    single.update(fake, real=False)
    print(f"RESULT {rank} {ddp:.10f} {float(single.compute()):.10f} {m.protocol()['num_real']} {m.protocol()['num_fake']}")
    dist.destroy_process_group()
    """
)


def test_fvd_syncs_across_ddp_ranks(tmp_path):
    """Two gloo processes, each with part of the clips (one with no generated clip), compute the FVD of all."""
    script = tmp_path / "ddp_fvd.py"
    script.write_text(_DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    results = [line.split() for out, _ in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2
    for _, _, ddp, single, n_real, n_fake in results:
        assert float(ddp) == pytest.approx(float(single), rel=1e-6)
        assert (n_real, n_fake) == ("10", "7")


@pytest.fixture(scope="module")
def real_clip_features(md):
    """I3D features of 4 real 9-frame 64² clips, and of blurred and noised copies (~12 s on 1 free core)."""
    weights = md.weights_or_skip("i3d")
    torch.set_num_threads(1)
    sources = [("street_structuralize.mp4", 0), ("kinetics_arm_wrestling.mp4", 0), ("kinetics_arm_wrestling.mp4", 140),
               ("kinetics_cleaning_pool.mp4", 0)]
    x = torch.stack([md.square_clip(name, 9, 64, start=s) for name, s in sources])  # (4, 3, 9, 64, 64)
    blur = F.avg_pool3d(x, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
    noise = (x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    m = FrechetVideoDistance(weights_path=str(weights))
    return m, {name: m.features(v) for name, v in [("real", x), ("blur", blur), ("noise", noise)]}


def test_fvd_real_clips_identity_blur_noise(real_clip_features):
    m, feats = real_clip_features
    assert feats["real"].shape == (4, 400)
    scores = {}
    for name in ("real", "blur", "noise"):
        m.reset()
        m.update_features(feats["real"], real=True)
        m.update_features(feats[name], real=False)
        scores[name] = float(m.compute())
    print(f"FVD real-vs: {scores}")
    assert scores["real"] == pytest.approx(0.0, abs=1e-3)
    assert 10 < scores["blur"] < scores["noise"]
