"""FVD cost and sanity at small scale: I3D feature speed, and FVD between real clips and distortions.

Real clips: ``--per-video`` 16-frame windows from each video in ``--clips`` (default
../shared/data/clips), centre-cropped and resized to ``--size``² (the resolution a small model
generates), then resized to 224² for I3D as in the FVD protocol. Reported:

  speed    seconds per 100 clips for I3D features (resize to 224 included), on ``--device`` with
           ``--threads`` CPU threads
  fvd      FVD(half A, half B) of the real clips (alternate windows of every video: a floor set by
           the sample count), FVD(real, mild blur) and FVD(real, Gaussian noise)

Prints one JSON line on stdout and a rich table on stderr::

    python benchmarks/fvd.py                          # 2 clips per video, 64², 16 frames
    python benchmarks/fvd.py --per-video 4 --threads 8 --device cuda
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from magvit_pl.data.transforms import center_crop, frames_to_tensor
from magvit_pl.data.video_io import read_video
from magvit_pl.metrics.fvd import FrechetVideoDistance
from magvit_pl.metrics.frechet import frechet_distance, gaussian_stats

DEFAULT_CLIPS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clips"


def real_clips(folder: Path, per_video: int, frames: int, size: int) -> torch.Tensor:
    """``(N, 3, frames, size, size)`` in [-1, 1]: evenly spaced windows from every video in ``folder``."""
    clips = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in {".mp4", ".avi", ".webm", ".mkv"}):
        video = center_crop(read_video(path, short_side=size), size)  # (T, size, size, 3)
        if len(video) < frames:
            continue
        starts = np.linspace(0, len(video) - frames, per_video).astype(int)
        clips += [video[s:s + frames] for s in starts]
    return frames_to_tensor(np.stack(clips))  # (N, 3, T, H, W) in [-1, 1]


def distortions(x: torch.Tensor, noise_sigma: float, seed: int) -> dict[str, torch.Tensor]:
    blur = F.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)  # 3×3 box per frame
    g = torch.Generator().manual_seed(seed)
    noise = (x + noise_sigma * 2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)  # sigma in [0, 1] units
    return {"blur": blur, "noise": noise}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of real videos")
    ap.add_argument("--per-video", type=int, default=2, help="16-frame windows taken from each video")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (>= 9)")
    ap.add_argument("--size", type=int, default=64, help="clip resolution before the resize to 224")
    ap.add_argument("--noise", type=float, default=0.1, help="Gaussian noise sigma, in [0, 1] pixel units")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4, help="clips per I3D forward")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    x = real_clips(args.clips, args.per_video, args.frames, args.size)
    sets = {"real": x, **distortions(x, args.noise, args.seed)}
    metric = FrechetVideoDistance(batch_size=args.batch_size)
    feats, seconds = {}, {}
    for name, v in sets.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats[name] = metric.features(v.to(device)).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - t0

    # halves drawn alike: clips come per video in time order, so even/odd indices split every video
    half_a, half_b = feats["real"][0::2], feats["real"][1::2]
    mu_r, s_r = gaussian_stats(feats["real"])
    fvd = {"real_half_vs_half": frechet_distance(*gaussian_stats(half_a), *gaussian_stats(half_b))}
    for name in ("blur", "noise"):
        fvd[f"real_vs_{name}"] = frechet_distance(mu_r, s_r, *gaussian_stats(feats[name]))
    total_clips, total_s = 3 * len(x), sum(seconds.values())
    result = {
        "benchmark": "fvd",
        "device": str(device) if device.type != "cpu" else f"cpu x{args.threads} threads",
        "clips": len(x), "frames": args.frames, "size": args.size, "i3d_input": 224,
        "seconds_per_100_clips": round(100 * total_s / total_clips, 2),
        "fvd": {k: round(v, 2) for k, v in fvd.items()},
        "blur": "3x3 box per frame", "noise_sigma": args.noise, "seed": args.seed,
        "protocol": {k: metric.protocol()[k] for k in ("features", "resize", "weights_sha256")},
    }
    print(json.dumps(result))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FVD at {args.size}² × {args.frames} frames, {len(x)} real clips ({result['device']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("I3D s / 100 clips", f"{result['seconds_per_100_clips']:.1f}")
    for k, v in fvd.items():
        table.add_row(f"FVD {k.replace('_', ' ')}", f"{v:.1f}")
    Console(file=sys.stderr).print(table)


if __name__ == "__main__":
    main()
