"""Turn tensors into things people look at: video grids (mp4 + gif) and loss-curve PNGs."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from magvit_pl.io import atomic_open


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, C, T, H, W) float in [-1, 1] → (B, T, H, W, C) uint8."""
    video = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return video.to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def video_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Tile several (B, C, T, H, W) batches (one row each, B clips side by side) into (T, H', W', 3) uint8.

    Rows may have different B (missing cells stay black); all must share C, T, H, W.
    """
    clips = [to_uint8(r) for r in rows]
    _, t, h, w, c = clips[0].shape
    cols = max(x.shape[0] for x in clips)
    grid = np.zeros((t, len(clips) * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    for i, row in enumerate(clips):
        for j, clip in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = clip if c == 3 else clip[..., :1]
    return grid


def save_video_grid(stem: str | Path, rows: Sequence[torch.Tensor], fps: int = 8, formats: Sequence[str] = ("mp4", "gif")) -> list[Path]:
    """Write the grid of ``rows`` as ``stem.mp4`` / ``stem.gif``; returns the written paths."""
    from magvit_pl.data.video import write_video

    frames = video_grid(rows)
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        write_video(path, frames, fps=fps)
        paths.append(path)
    return paths


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG (no imaging library needed), atomically."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with atomic_open(path, "wb") as fh:
        fh.write(png)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_curves(curves: dict[str, Sequence[tuple[float, float]]], width: int = 640, height: int = 360, log_y: bool = True) -> np.ndarray:
    """Rasterise named (x, y) series into an (H, W, 3) uint8 image: one colour per series, white background.

    Each series is normalised to its own y range (log scale by default) so curves of different
    magnitude stay readable; the legend is the colour order of ``curves`` (documented next to the file).
    """
    img = np.full((height, width, 3), 255, np.uint8)
    m = 10
    img[height - m, m : width - m] = 0
    img[m : height - m, m] = 0
    for k, (name, pts) in enumerate(curves.items()):
        pts = [(x, y) for x, y in pts if np.isfinite(y) and (y > 0 or not log_y)]
        if len(pts) < 2:
            continue
        xs = np.array([p[0] for p in pts], np.float64)
        ys = np.array([p[1] for p in pts], np.float64)
        ys = np.log10(ys) if log_y else ys
        xs = (xs - xs.min()) / max(xs.max() - xs.min(), 1e-12)
        ys = (ys - ys.min()) / max(ys.max() - ys.min(), 1e-12)
        px = m + 1 + xs * (width - 2 * m - 2)
        py = height - m - 1 - ys * (height - 2 * m - 2)
        colour = _COLOURS[k % len(_COLOURS)]
        for (x0, y0), (x1, y1) in zip(zip(px[:-1], py[:-1]), zip(px[1:], py[1:])):
            n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            xx = np.linspace(x0, x1, n).round().astype(int)
            yy = np.linspace(y0, y1, n).round().astype(int)
            img[yy, xx] = colour
            img[np.clip(yy + 1, 0, height - 1), xx] = colour
    return img
