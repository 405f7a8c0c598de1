"""Clips for the quality benchmarks (``benchmarks/reconstruction.py``, ``benchmarks/generation.py``), as one
``(N, 3, T, R, R)`` tensor in [-1, 1]: evenly spaced centre-cropped clips of every video in a folder, or every
clip of one split of a prepared shard folder exactly as the validation loader gives it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from magvit_pl.run.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


def video_clips(folder: Path, num_frames: int, resolution: int, per_video: int) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, T, R, R) in [-1, 1]: ``per_video`` evenly spaced clips of every video in ``folder``."""
    from magvit_pl.data.transforms import center_crop, frames_to_tensor
    from magvit_pl.data.video_io import read_video

    clips, names = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        frames = read_video(path, short_side=resolution, max_frames=600)
        if len(frames) < num_frames:
            print(f"skipping {path.name}: {len(frames)} frames < {num_frames}", file=sys.stderr)
            continue
        frames = center_crop(frames, resolution)
        for start in np.linspace(0, len(frames) - num_frames, per_video).round().astype(int):
            clips.append(frames_to_tensor(frames[start : start + num_frames]))
            names.append(f"{path.name}@{start}")
    if not clips:
        raise UserError(f"--videos {folder}: no video with at least {num_frames} frames")
    return torch.stack(clips), names


def shard_clips(folder: Path, split: str, num_frames: int, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Every clip of ``split`` of a shard folder, as the validation loader gives it."""
    videos, names, _ = labelled_shard_clips(folder, split, num_frames, resolution)
    return videos, names


def labelled_shard_clips(folder: Path, split: str, num_frames: int, resolution: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """:func:`shard_clips` and the clips' class labels ``(N,)`` int64."""
    from magvit_pl.data.datamodule import VideoDataModule

    dm = VideoDataModule(data_dir=str(folder), num_frames=num_frames, resolution=resolution, eval_batch_size=16,
                         num_workers=0, val_split=split)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    videos = torch.cat([b["video"] for b in batches])
    return videos, [f"{split}[{i}]" for i in range(len(videos))], torch.cat([b["label"] for b in batches])
