"""``python cli.py fvd``: clips read from video folders, frame folders, .npz files and shard folders give the FVD
that :class:`FrechetVideoDistance` computes in Python on the same clips (here with a stand-in feature network, so no
weights are needed; ``test_fvd_i3d.py`` does it with the real I3D); real statistics saved once give the same number
again and are refused under another protocol; mistakes are one ``error:`` line."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from magvit_pl.run.clipsets import ClipSet, ClipSpec, write_clip, write_npz
from magvit_pl.data import center_crop, frames_to_tensor, resize_short_side
from magvit_pl.run.errors import UserError
from magvit_pl.run.evaluate import compare_sets
from magvit_pl.metrics.fvd import FrechetVideoDistance


def stand_in(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, 8, 8) → (B, 12): per-channel means and spreads over all pixels and over time (a fixed, cheap map)."""
    return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4)), x.mean((3, 4)).std(2), x.amax((2, 3, 4))], 1)


FVD_KW = {"extractor": stand_in, "resize": 8}


def reference_fvd(real: list[np.ndarray], fake: list[np.ndarray], min_frames: int = 9) -> float:
    metric = FrechetVideoDistance(**FVD_KW, min_frames=min_frames)
    metric.update(torch.stack([frames_to_tensor(c) for c in real]), real=True)
    metric.update(torch.stack([frames_to_tensor(c) for c in fake]), real=False)
    return float(metric.compute())


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Real: 2 FFV1 .mkv videos and 2 PNG frame folders of 12 frames (24×28); fake: 3 brighter videos in one .npz."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 200, (12, 24, 28, 3), dtype=np.uint8) for _ in range(4)]
    fake = [np.clip(rng.integers(0, 200, (12, 24, 28, 3)) + 40, 0, 255).astype(np.uint8) for _ in range(3)]
    for i, clip in enumerate(real):
        write_clip(root / "real", f"v{i}", clip, "mkv" if i < 2 else "png")
    write_npz(root / "fake.npz", np.stack(fake), [f"v{i}" for i in range(3)])
    return {"root": root, "real": real, "fake": fake}


def test_folders_and_npz_give_the_python_fvd(sets):
    result = compare_sets(str(sets["root"] / "real"), str(sets["root"] / "fake.npz"), ClipSpec(num_frames=9), fvd_kwargs=FVD_KW)
    want = reference_fvd([c[:9] for c in sets["real"]], [c[:9] for c in sets["fake"]])
    assert result["fvd"] == pytest.approx(want, rel=1e-12) and want > 0.1
    p = result["protocol"]
    assert (p["num_real"], p["num_fake"], p["frames"], p["input_resolution"]) == (4, 3, 9, [24, 28])
    assert p["real"]["kind"] == "videos" and p["real"]["videos"] == 4 and p["fake"]["kind"] == "npz"
    assert p["clip_start"] == "0" and p["weights_sha256"] == "custom-extractor" and not p["skipped"]

    # two clips per video every second frame, cropped to 16x16: the clips the protocol says
    spec = ClipSpec(num_frames=4, stride=2, clips_per_video=2, resolution=16)
    cut = lambda clips: [center_crop(resize_short_side(c[s : s + 7 : 2], 16), 16) for c in clips for s in (0, 5)]  # noqa: E731
    result = compare_sets(str(sets["root"] / "real"), str(sets["root"] / "fake.npz"), spec, fvd_kwargs={**FVD_KW, "min_frames": 4})
    assert result["fvd"] == pytest.approx(reference_fvd(cut(sets["real"]), cut(sets["fake"]), min_frames=4), rel=1e-12)
    assert result["protocol"]["num_real"] == 8 and result["protocol"]["input_resolution"] == [16, 16]

    # videos too short for one clip are skipped and named, never silently
    with pytest.raises(UserError, match=r"--real .*real: 0 usable clips \(4 skipped; v0: 12 frames, a clip needs 17"):
        compare_sets(str(sets["root"] / "real"), str(sets["root"] / "fake.npz"), ClipSpec(num_frames=9, stride=2), fvd_kwargs=FVD_KW)


def test_real_statistics_are_saved_once_and_checked(sets, tmp_path):
    real, fake, stats = str(sets["root"] / "real"), str(sets["root"] / "fake.npz"), tmp_path / "real.npz"
    first = compare_sets(real, fake, ClipSpec(num_frames=9), save_real_stats=str(stats), fvd_kwargs=FVD_KW)
    again = compare_sets(str(stats), fake, ClipSpec(num_frames=9), fvd_kwargs=FVD_KW)
    assert again["fvd"] == pytest.approx(first["fvd"], rel=1e-12)
    assert again["protocol"]["real_stats_cached"] and again["protocol"]["real"]["kind"] == "statistics"
    with pytest.raises(UserError, match="made with clip_frames=9, this run uses 10"):
        compare_sets(str(stats), fake, ClipSpec(num_frames=10), fvd_kwargs=FVD_KW)
    with pytest.raises(UserError, match="made with clip_resolution=None, this run uses 16"):
        compare_sets(str(stats), fake, ClipSpec(num_frames=9, resolution=16), fvd_kwargs=FVD_KW)
    with pytest.raises(UserError, match="holds FVD statistics only; --fid and --lpips need real clips"):
        compare_sets(str(stats), fake, ClipSpec(num_frames=9), fid=True, fvd_kwargs=FVD_KW)
    with pytest.raises(UserError, match="holds FVD statistics, not clips"):
        compare_sets(real, str(stats), ClipSpec(num_frames=9), fvd_kwargs=FVD_KW)


def test_shard_folders_are_read_by_split(share_data):
    shards = ClipSet(share_data, "--real", "test")
    clips = list(shards.clips(ClipSpec(num_frames=8)))
    assert len(clips) == shards.videos == 4 and all(c.frames.shape == (8, 32, 32, 3) and 0 <= c.label < 8 for c in clips)
    result = compare_sets(str(share_data), str(share_data), ClipSpec(num_frames=8), split="val",
                          fvd_kwargs={**FVD_KW, "min_frames": 8})
    assert abs(result["fvd"]) < 1e-9 and result["protocol"]["real"]["split"] == "val"
    with pytest.raises(UserError, match="has no split 'nope'; pass --split with one of train, val, test"):
        ClipSet(share_data, "--real", "nope")


class StandInInception(torch.nn.Module):
    """Frames (N, 3, H, W) → (N, 2048): 8×8 average pool and a fixed random projection (FID's shapes, no weights)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 2048)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(frames, 8).flatten(1))


def test_frame_fid_streams_every_frame_of_both_sets(sets, monkeypatch):
    from pathlib import Path

    from magvit_pl.metrics import frame

    net = StandInInception().requires_grad_(False)
    monkeypatch.setattr(frame, "resolve", lambda name, path: Path(f"stand-in-{name}"))
    monkeypatch.setattr(frame, "_shared_inception", lambda path: net)
    result = compare_sets(str(sets["root"] / "real"), str(sets["root"] / "fake.npz"), ClipSpec(num_frames=9), fid=True,
                          fvd_kwargs=FVD_KW)
    # the Fréchet distance of the frames' features, by way of the small Gram matrices (N < 2048: low rank):
    # tr (S1 S2)^½ = Σ singular values of A1ᵀA2 / √((n1-1)(n2-1)), A the centred features (D, n)
    feats = [net(torch.cat([frames_to_tensor(c[:9]).transpose(0, 1) for c in sets[side]])).double() for side in ("real", "fake")]
    assert [f.shape[0] for f in feats] == [36, 27]  # every frame of every clip
    mus = [f.mean(0) for f in feats]
    a1, a2 = (f - mu for f, mu in zip(feats, mus))
    c1, c2 = a1.shape[0] - 1, a2.shape[0] - 1
    want = ((mus[0] - mus[1]) ** 2).sum() + (a1**2).sum() / c1 + (a2**2).sum() / c2 - \
        2 * torch.linalg.svdvals(a1 @ a2.T).sum() / (c1 * c2) ** 0.5
    assert result["fid"] == pytest.approx(float(want), rel=1e-6) and result["fid"] > 0.01
    assert "Inception" in result["protocol"]["fid"]


def test_cli_mistakes_are_one_line(sets, tmp_path, run_cli):
    bad = tmp_path / "bad.npz"
    np.savez(bad, clips=np.zeros((2, 9, 8, 8, 3), np.float32))
    real = sets["root"] / "real"
    for args, message in (
            (["--real", tmp_path / "missing", "--fake", real], "--real .*missing: not found"),
            (["--real", real, "--fake", bad], r"'clips' must be uint8 clips \(N, T, H, W, 3\), found float32"),
            (["--real", real, "--fake", real, "--num_frames", "0"], "--num_frames 0: must be an integer >= 1"),
            (["--real", real, "--fake", real, "--num_samples", "1"], "--num_samples 1: FVD needs at least 2 clips"),
            (["--real", real, "--fake", real, "--resize", "stretch"], "resize")):
        code, err = run_cli(["fvd", *args, "--output", tmp_path / "out.json"])
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (args, err)
        assert re.search(message, err[0]), (message, err[0])
    assert not (tmp_path / "out.json").exists()  # written only by a run that finished (see test_fvd_i3d.py)
