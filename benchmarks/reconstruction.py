"""Reconstruction quality of tokenizer checkpoints on real videos, next to the no-learning baseline.

For every ``--ckpt`` (several compare side by side in one run) and the pooled baseline at the same
latent grid (average-pool by the tokenizer's downsampling, trilinear upsampling back: see
``magvit_pl.metrics.reconstruction``), reports PSNR, SSIM, LPIPS and reconstruction FVD (clips of at
least 9 frames, I3D weights fetched) on:

* ``--videos DIR``: a folder of videos (any format PyAV reads): ``--clips_per_video`` evenly spaced
  clips of ``--num_frames`` frames from each, short side resized to ``--resolution``, centre-cropped;
* ``--shards DIR``: a prepared shard folder (``cli.py prepare`` or the embedded synthetic set), its
  ``--split`` read as validation reads it (the centred clip of every video).

Prints one JSON line and a table; ``--grid PNG`` also writes the first clips' middle frames as
original / baseline / each checkpoint rows, to look at.

    python benchmarks/reconstruction.py --ckpt runs/tokenizer/latest/checkpoints/last.ckpt --videos ../shared/data/clips
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from magvit_pl.run.checkpoint import load_checkpoint, load_tokenizer
from magvit_pl.run.errors import UserError
from magvit_pl.metrics.reconstruction import COLUMNS, ReconstructionMetrics, pooled_baseline
from magvit_pl.run.eval_clips import shard_clips, video_clips
from magvit_pl.run.report import print_table


def evaluate(reconstruct, clips: torch.Tensor, batch: int, lpips: bool, fvd: bool) -> tuple[dict, torch.Tensor]:
    metrics = ReconstructionMetrics(lpips=lpips, fvd=fvd)
    outs = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in clips.split(batch):
            recon = reconstruct(chunk).clamp(-1, 1)
            metrics.update(recon, chunk)
            outs.append(recon)
    result = metrics.compute()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result, torch.cat(outs)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", action="append", required=True, help="tokenizer checkpoint (repeat to compare)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder of videos (e.g. ../shared/data/clips)")
    src.add_argument("--shards", type=Path, help="prepared shard folder (e.g. data/shards/dead_leaves-16x32)")
    ap.add_argument("--split", default="val", help="with --shards: the split to read")
    ap.add_argument("--num_frames", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--clips_per_video", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no_lpips", action="store_true")
    ap.add_argument("--no_fvd", action="store_true")
    ap.add_argument("--grid", type=Path, help="write a PNG: original, baseline, each checkpoint (middle frames)")
    ap.add_argument("--grid_clips", type=int, default=9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.videos is not None:
        clips, names = video_clips(args.videos, args.num_frames, args.resolution, args.clips_per_video)
        source = {"videos": str(args.videos), "clips_per_video": args.clips_per_video}
    else:
        clips, names = shard_clips(args.shards, args.split, args.num_frames, args.resolution)
        source = {"shards": str(args.shards), "split": args.split}
    tokenizers = [load_tokenizer(p) for p in args.ckpt]
    factors = tokenizers[0].downsample_factors
    if any(tuple(t.downsample_factors) != tuple(factors) for t in tokenizers):
        print("note: the checkpoints have different latent grids; the baseline uses the first one's", file=sys.stderr)

    rows: dict[str, dict] = {}
    recons = []
    result, base = evaluate(lambda v: pooled_baseline(v, factors), clips, args.batch, not args.no_lpips, not args.no_fvd)
    rows[f"baseline: avg-pool {tuple(factors)} + trilinear"] = result
    for path, tok in zip(args.ckpt, tokenizers):
        result, recon = evaluate(lambda v, t=tok: t(v)[0], clips, args.batch, not args.no_lpips, not args.no_fvd)
        step = load_checkpoint(path).get("global_step")
        result.update(params=sum(p.numel() for p in tok.parameters()), codebook_size=int(tok.codebook_size),
                      grid=list(tok.downsample_factors), step=step)
        rows[path] = result
        recons.append(recon)

    out = {"benchmark": "reconstruction", "clips": len(clips), "num_frames": args.num_frames,
           "resolution": args.resolution, **source, "results": rows}
    print(json.dumps(out))
    print_table(rows, title="reconstruction (higher PSNR/SSIM, lower LPIPS/rFVD is better)", columns=COLUMNS,
                extra=(("clips", "clips", "d"), ("seconds", "s", ".1f")))
    if args.grid:
        from magvit_pl.run.media import save_frames_png

        save_frames_png(args.grid, [clips, base, *recons], args.grid_clips)
        print(f"grid: {args.grid} (rows: original, baseline, {', '.join(str(p) for p in args.ckpt)})")
    return out


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
