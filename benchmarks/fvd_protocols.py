"""How much FVD moves between the preprocessing of the public FVD implementations (the numbers in docs/fvd.md).

The same real clips and the same "generated" clips (the real ones blurred and noised) go through the same I3D
(the TF-Hub Kinetics-400 weights magvit-pl uses) with each implementation's preprocessing:

  ours          squash to 224x224 on TF 1.x resize_bilinear's grid (align_corners=False: source = output * in/out),
                no antialias; [-1, 1]: magvit_pl.metrics.fvd, the TF reference and the official MAGVIT evaluation
  half_pixel    squash to 224x224 with PyTorch's bilinear (align_corners=False: half-pixel centres); [-1, 1]
  crop          short side to 224 (PyTorch bilinear, half-pixel centres), centre crop 224x224; [-1, 1]
                (common_metrics_on_video_quality's StyleGAN-V path)
  crop_half     the same crop, inputs in [-0.5, 0.5] (VideoGPT's preprocessing; VideoGPT also uses another
                I3D checkpoint, which this cannot reproduce offline)

Prints one JSON line (stdout) and a table (stderr)::

    python benchmarks/fvd_protocols.py --clips ../shared/data/clips --per-video 2 --frames 16
    python benchmarks/fvd_protocols.py --resolution 128     # clips first cropped to 128x128, as a model generates them
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from magvit_pl.run.clipsets import ClipSet, ClipSpec
from magvit_pl.data import frames_to_tensor
from magvit_pl.metrics.fvd import resize_clips
from magvit_pl.metrics.frechet import frechet_distance, gaussian_stats

DEFAULT_CLIPS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clips"
SIZE = 224


def short_side_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(3, T, H, W) → short side ``size`` (long side rounded up), bilinear half-pixel, centre crop size×size."""
    _, _, h, w = video.shape
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), size)
    out = F.interpolate(video, size=target, mode="bilinear", align_corners=False)  # T acts as the batch
    top, left = (out.shape[2] - size) // 2, (out.shape[3] - size) // 2
    return out[:, :, top : top + size, left : left + size]


VARIANTS = {
    "ours": lambda v: resize_clips(v[None], SIZE)[0],
    "half_pixel": lambda v: F.interpolate(v, size=(SIZE, SIZE), mode="bilinear", align_corners=False),
    "crop": lambda v: short_side_crop(v, SIZE),
    "crop_half": lambda v: short_side_crop(v, SIZE) / 2,
}


def distort(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for generated clips: 3x3 box blur and Gaussian noise (sigma 8 grey levels)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x.permute(0, 2, 3, 1).numpy() + rng.normal(0, 8, frames.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--per-video", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=None,
                        help="first crop the clips to RxR (what a model generates, e.g. 64 or 128); default: their own size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.clips.is_dir():
        sys.exit(f"error: --clips {args.clips}: no such folder")
    torch.set_num_threads(args.threads)
    from magvit_pl.metrics.i3d import I3D

    net = I3D.from_pretrained()
    rng = np.random.default_rng(0)
    spec = ClipSpec(args.frames, clips_per_video=args.per_video, resolution=args.resolution)
    clips = list(ClipSet(args.clips, "--clips").clips(spec))
    features = {name: ([], []) for name in VARIANTS}
    t0 = time.perf_counter()
    with torch.no_grad():
        for clip in clips:
            for side, frames in enumerate((clip.frames, distort(clip.frames, rng))):
                video = frames_to_tensor(frames)  # (3, T, H, W) in [-1, 1], the clip's own size
                for name, prepare in VARIANTS.items():
                    features[name][side].append(net(prepare(video)[None].contiguous()).double())
    fvd = {name: frechet_distance(*gaussian_stats(torch.cat(real)), *gaussian_stats(torch.cat(fake)))
           for name, (real, fake) in features.items()}
    result = {"clips_per_side": len(clips), "frames": args.frames, "resolution": args.resolution or "own size", "videos": sorted({c.name.split("#")[0] for c in clips}),
              "fvd": {k: round(v, 3) for k, v in fvd.items()},
              "relative_to_ours": {k: round(v / fvd["ours"] - 1, 4) for k, v in fvd.items()},
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    from rich.console import Console
    from rich.table import Table

    size = f"{args.resolution}x{args.resolution}" if args.resolution else "their own size"
    table = Table(title=f"FVD of {len(clips)} real vs {len(clips)} blurred+noised clips ({args.frames} frames, {size}), one I3D")
    for col in ("preprocessing", "FVD", "vs ours"):
        table.add_column(col, justify="left" if col == "preprocessing" else "right")
    for name, value in fvd.items():
        table.add_row(name, f"{value:.2f}", f"{value / fvd['ours'] - 1:+.2%}")
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
