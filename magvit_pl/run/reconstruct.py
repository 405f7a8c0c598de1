"""``python cli.py reconstruct``: any video through a trained tokenizer, to see what it keeps and loses.

The video is decoded (its first ``--max_frames`` frames; the short side scaled to ``--resolution``
while decoding, or the video's own size with ``--resolution 0``), centre-cropped to multiples of the
tokenizer's spatial downsampling (the tokenizer is fully convolutional: any size works) and passed
through the EMA tokenizer in chunks of its training clip length in time. The last chunk is padded by
repeating its last frame and the padding dropped again, so memory holds one chunk whatever the
video's length. Out come original | reconstruction (| the pooled baseline with ``--baseline``) side
by side as mp4 or gif, and PSNR / SSIM / LPIPS over all frames as one JSON line and a table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from magvit_pl.data.transforms import center_crop, frames_to_tensor
from magvit_pl.data.video_io import probe, write_video
from magvit_pl.metrics.reconstruction import COLUMNS, ReconstructionMetrics, pooled_baseline
from magvit_pl.pretrained import load_tokenizer_any, training_clip_frames as clip_frames_of
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.generate import read_input
from magvit_pl.run.media import video_grid
from magvit_pl.run.report import print_table
from magvit_pl.run.run_dir import latest_checkpoint

DEFAULT_RESOLUTION = 128  # short side: big enough to see faces and edges, small enough for a CPU
DEFAULT_CLIP_FRAMES = 16  # chunk length for checkpoints that do not record their training clip length


def load_frames(path: str, resolution: int, max_frames: int, spatial: int) -> tuple:
    """The first ``max_frames`` frames of ``path`` as uint8 (T, H, W, 3), short side scaled to ``resolution``
    (0: own size) and centre-cropped to multiples of ``spatial``; plus the frame rate. Every problem
    with the file (missing, not a video, hostile sizes, too slow) is a one-line UserError naming it."""
    frames = read_input(path, max_frames, resolution or None)
    h, w = frames.shape[1] // spatial * spatial, frames.shape[2] // spatial * spatial
    if h == 0 or w == 0:
        raise UserError(f"--input {path}: frames of {frames.shape[2]}x{frames.shape[1]} pixels are smaller than the "
                        f"tokenizer's {spatial}-pixel token; pass a larger --resolution")
    return center_crop(frames, (h, w)), probe(path).fps or 25.0


@torch.no_grad()
def reconstruct(
    input: str,
    output: str = "reconstruction.mp4",
    ckpt_path: str | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    max_frames: int = 64,
    chunk_frames: int | None = None,
    baseline: bool = False,
    lpips: bool = True,
    runs_root: str = "runs",
) -> dict:
    """Reconstruct a video with a trained tokenizer: side-by-side video out, PSNR/SSIM/LPIPS printed.

    Args:
        input: Any video PyAV/FFmpeg reads (mp4, avi, mkv, webm, gif, ...).
        output: Where to write original | reconstruction (| baseline) side by side: ``.mp4`` or ``.gif``.
        ckpt_path: Tokenizer checkpoint or model folder (``export --format safetensors``); default:
            ``RUNS_ROOT/tokenizer/latest/checkpoints/last.ckpt``.
        resolution: Scale the short side to this many pixels, keeping the aspect ratio (0: the video's own
            size; memory per chunk grows with the frame area). Either way the frames are centre-cropped
            to multiples of the tokenizer's spatial downsampling.
        max_frames: Reconstruct at most the first this many frames.
        chunk_frames: Frames per chunk in time (a multiple of the temporal downsampling); default: the
            clip length the tokenizer was trained on.
        baseline: Add a third column and row: the no-learning baseline at the same latent grid
            (average-pool by the downsampling, trilinear upsampling back).
        lpips: Also report LPIPS (needs ``python cli.py fetch-weights lpips_vgg16``; skipped with a note otherwise).
        runs_root: Where training runs live (for the default checkpoint).
    """
    out_path = Path(output)
    if out_path.suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"--output {output}: must end in .mp4 or .gif")
    if resolution < 0:
        raise UserError(f"--resolution {resolution}: must be >= 0 (0 = the video's own size)")
    if max_frames < 1:
        raise UserError(f"--max_frames {max_frames}: must be >= 1")
    if not Path(input).is_file():
        raise MissingFileError(f"--input {input}: file not found")
    ckpt_path = str(ckpt_path or latest_checkpoint(runs_root, "tokenizer"))
    tok = load_tokenizer_any(ckpt_path)  # a checkpoint or a model folder
    chunk = _chunk_frames(tok, ckpt_path, chunk_frames, resolution)
    t0 = time.perf_counter()
    frames, fps = load_frames(input, resolution, max_frames, tok.downsample_factors[1])
    grid, metrics = _through_tokenizer(tok, frames, chunk, baseline, lpips)
    write_video(out_path, grid, fps=fps)
    report = _report(metrics, tok, frames.shape, chunk, fps, time.perf_counter() - t0,
                     {"input": str(input), "output": str(out_path), "ckpt_path": ckpt_path})
    print(f"wrote {out_path} (original | reconstruction{' | baseline' if baseline else ''})")
    return report


def _chunk_frames(tok: torch.nn.Module, ckpt_path: str, chunk_frames: int | None, resolution: int) -> int:
    """Frames per chunk (``--chunk_frames``, else the training clip length), checked against the downsampling."""
    dt, ds, _ = tok.downsample_factors
    chunk = chunk_frames or clip_frames_of(ckpt_path) or DEFAULT_CLIP_FRAMES
    if chunk < 1 or chunk % dt:
        raise UserError(f"--chunk_frames {chunk}: must be a positive multiple of the tokenizer's temporal downsampling {dt}")
    if 0 < resolution < ds:
        raise UserError(f"--resolution {resolution}: must be at least the tokenizer's spatial downsampling {ds} (or 0)")
    return chunk


def _through_tokenizer(tok: torch.nn.Module, frames: np.ndarray, chunk: int, baseline: bool,
                       lpips: bool) -> tuple[np.ndarray, dict[str, ReconstructionMetrics]]:
    """Reconstruct ``frames`` chunk by chunk (the last padded by repeating its last frame, the padding dropped):
    the side-by-side grid (T, H, W', 3) and the filled metrics of each column."""
    metrics = {"tokenizer": ReconstructionMetrics(lpips=lpips, fvd=False)}
    if baseline:
        metrics["baseline"] = ReconstructionMetrics(lpips=lpips, fvd=False)
    grids = []
    progress = Progress(TextColumn("reconstruct"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
                        TimeRemainingColumn(), console=Console(stderr=True))
    with progress:
        for start in progress.track(range(0, frames.shape[0], chunk)):
            video = frames_to_tensor(frames[start : start + chunk]).unsqueeze(0)  # (1, 3, n, H, W)
            n = video.shape[2]
            padded = torch.cat([video, video[:, :, -1:].expand(-1, -1, chunk - n, -1, -1)], 2) if n < chunk else video
            columns = [video, tok(padded)[0].clamp(-1, 1)[:, :, :n]]
            if baseline:
                columns.append(pooled_baseline(padded, tok.downsample_factors)[:, :, :n])
            for m, recon in zip(metrics.values(), columns[1:]):
                m.update(recon, video)
            grids.append(video_grid([torch.cat(columns)]))  # one row: the columns side by side
    return np.concatenate(grids), metrics


def _report(metrics: dict[str, ReconstructionMetrics], tok: torch.nn.Module, shape: tuple, chunk: int, fps: float,
            seconds: float, paths: dict[str, str]) -> dict:
    """Print the report as one JSON line and a table; return it."""
    num, h, w = shape[:3]
    dt, ds, _ = tok.downsample_factors
    computed = {name: m.compute() for name, m in metrics.items()}
    results = {name: {k: r[k] for k in ("psnr", "ssim", "lpips")} for name, r in computed.items()}
    skipped = computed["tokenizer"]["skipped"]  # LPIPS without its weights; rFVD is not asked for
    report = {
        **paths, "frames": int(num), "size": [int(h), int(w)], "fps": round(float(fps), 3), "chunk_frames": int(chunk),
        "grid_per_chunk": list(tok.token_grid(chunk, h, w)), "seconds": round(seconds, 2), **results, "skipped": skipped,
    }
    print(json.dumps(report))
    labels = {"tokenizer": "tokenizer (EMA)", "baseline": f"baseline (avg-pool {dt}x{ds}x{ds})"}
    print_table({labels[k]: {**v, "skipped": skipped} for k, v in results.items()},
                title=f"reconstruct: {num} frames of {w}x{h}, chunks of {chunk}", columns=COLUMNS[:3])
    return report
