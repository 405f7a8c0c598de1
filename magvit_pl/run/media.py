"""Turn tensors and logs into things people look at: video grids (mp4 + gif), frame grids and loss curves (PNG)."""
from __future__ import annotations

import csv
import math
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from magvit_pl.data.transforms import tensor_to_frames
from magvit_pl.data.video_io import write_video
from magvit_pl.run.files import atomic_open
from magvit_pl.run.run_dir import media_dir


def video_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Tile several (B, C, T, H, W) batches (one row each, B clips side by side) into (T, H', W', 3) uint8.

    Rows may have different B (missing cells stay black); all must share C, T, H, W.
    """
    clips = [tensor_to_frames(r) for r in rows]
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
    frames = video_grid(rows)
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        write_video(path, frames, fps=fps)
        paths.append(path)
    return paths


def save_media(trainer, stem: str, rows: Sequence[torch.Tensor], fps: int = 8) -> list[Path]:
    """The grid of ``rows`` as ``media/STEM.mp4`` / ``.gif`` in the run folder, and shown by every logger that shows
    media (rank 0 calls it): a logger with ``log_video`` (W&B) gets the gif, a TensorBoard one (``experiment.add_image``)
    a strip of up to 8 frames of the grid, under the tag ``media/NAME`` (``STEM`` without its ``_stepN``)."""
    frames = video_grid(rows)
    paths = []
    for fmt in ("mp4", "gif"):
        path = media_dir(trainer) / f"{stem}.{fmt}"
        write_video(path, frames, fps=fps)
        paths.append(path)
    tag, step = f"media/{stem.split('_step')[0]}", int(trainer.global_step)
    for logger in getattr(trainer, "loggers", None) or []:
        if hasattr(logger, "log_video"):
            logger.log_video(key=tag, videos=[str(paths[1])], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            logger.experiment.add_image(tag, frame_strip(frames), step, dataformats="HWC")
    return paths


def frame_strip(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """Up to ``n`` frames of a (T, H, W, 3) video, evenly spread, side by side: (H, n·W, 3)."""
    pick = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    return np.concatenate(list(frames[pick]), axis=1)


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


def save_frames_png(path: str | Path, rows: Sequence[torch.Tensor], n: int = 9, scale: int = 4) -> None:
    """The middle frame of ``n`` clips spread over each (B, C, T, H, W) row tensor, rows top to bottom,
    enlarged ``scale`` times (nearest neighbour, so pixels stay visible), as a PNG."""
    pick = torch.linspace(0, len(rows[0]) - 1, min(n, len(rows[0]))).round().long()
    mid = rows[0].shape[2] // 2
    frames = video_grid([r[pick, :, mid : mid + 1] for r in rows])[0]
    save_png(path, frames.repeat(scale, 0).repeat(scale, 1))


# ------------------------------------------------------------------------------------ loss curves
# train/* names that are not loss terms: drawn in their own panel so the losses keep a readable scale
_DIAGNOSTICS = ("usage", "perplexity", "logits", "hit_rate", "nonfinite", "restarted")


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Every column of a Lightning ``metrics.csv`` as (step, value) points; empty cells, ``epoch``,
    ``step`` and non-numbers are left out."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        try:
            step = float(row.get("step") or "nan")
        except (TypeError, ValueError):
            continue
        for key, cell in row.items():
            if key in ("step", "epoch") or not cell:
                continue
            try:
                value = float(cell)
            except (TypeError, ValueError):  # a row with more cells than the header gives a list under key None
                continue
            if math.isfinite(step) and math.isfinite(value):
                series.setdefault(key, []).append((step, value))
    return series


def curve_panels(names: Sequence[str]) -> dict[str, list[str]]:
    """Group logged names into panels (title → names), so that each panel holds one kind of quantity:

    ``train losses`` (every ``train/x`` loss term), ``train diagnostics`` (codebook usage, perplexity,
    discriminator logits, ...), one panel per nested group (``val/acc/<task>`` → ``val/acc``, with
    ``val/acc`` itself as the mean), one panel per other metric (``val/psnr``, ``val/ssim``, ``lr``).
    """
    groups = {n.rsplit("/", 1)[0] for n in names if n.count("/") >= 2}
    panels: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.count("/") >= 2:
            title = name.rsplit("/", 1)[0]
        elif name in groups:
            title = name
        elif name.startswith("train/"):
            title = "train diagnostics" if any(d in name for d in _DIAGNOSTICS) else "train losses"
        else:
            title = name
        panels.setdefault(title, []).append(name)
    order = lambda t: (t != "train losses", not t.startswith("train"), t.startswith("lr"), t)  # noqa: E731
    return {t: panels[t] for t in sorted(panels, key=order)}


def _y_scale(values: np.ndarray) -> tuple[str, dict]:
    """``linear`` when the values span less than two decades, else ``log`` (all positive) or ``symlog``
    (zero or negative values too, linear within the smallest magnitudes), with its keyword arguments."""
    mags = np.abs(values[values != 0])
    if mags.size == 0:
        return "linear", {}
    small, large = np.percentile(mags, 5), mags.max()
    if large <= 100 * small:
        return "linear", {}
    if (values > 0).all():
        return "log", {}
    return "symlog", {"linthresh": float(max(small, large * 1e-5))}  # at most 5 decades each side of zero


def _smooth(y: np.ndarray) -> np.ndarray:
    """Debiased exponential moving average; the weight grows with the number of points (none below 10)."""
    weight = min(0.9, max(0.0, 1.0 - 10.0 / len(y)))
    out, acc = np.empty_like(y), 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1)) if weight > 0 else v
    return out


def plot_curves(series: dict[str, Sequence[tuple[float, float]]], columns: int = 3):
    """A matplotlib Figure with one panel per group of :func:`curve_panels`: for each ``train/`` series a
    smoothed line over faint raw points (other series, and any of at most 10 points: a plain line,
    with markers when short), a legend, the step
    on x and a y axis as chosen by :func:`_y_scale` for the panel's values. Built without pyplot (no
    global state, no display needed)."""
    from matplotlib import colormaps  # lazy: matplotlib takes ~1 s to import, and only plotting needs it
    from matplotlib.figure import Figure

    tab20 = colormaps["tab20"]
    panels = curve_panels([k for k, v in series.items() if v])
    rows = max(1, math.ceil(len(panels) / columns))
    cols = min(columns, max(1, len(panels)))
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, names) in zip(axes, panels.items()):
        colours = [f"C{i}" for i in range(len(names))] if len(names) <= 10 else [tab20(i % 20) for i in range(len(names))]
        for name, colour in zip(names, colours):
            pts = np.array(sorted(series[name]), dtype=np.float64)
            x, y = pts[:, 0], pts[:, 1]
            label = name.rsplit("/", 1)[-1] if title != name else name
            if len(y) <= 10 or not name.startswith("train/"):  # smooth the noisy per-step train series only
                ax.plot(x, y, "o-" if len(y) <= 30 else "-", color=colour, ms=3, lw=1.2, label=label)
            else:
                ax.plot(x, y, ".", color=colour, ms=2.5, alpha=0.25)
                ax.plot(x, _smooth(y), "-", color=colour, lw=1.4, label=label)
        values = np.concatenate([np.array([v for _, v in series[n]]) for n in names])
        scale, kwargs = _y_scale(values)
        ax.set_yscale(scale, **kwargs)
        if scale == "symlog":
            ax.yaxis.get_major_locator().set_params(numticks=9)
        ax.set_title(title if scale == "linear" else f"{title} ({scale} axis)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(title.split("/")[-1] if len(names) == 1 else ("loss" if "loss" in title else "value"))
        ax.grid(True, which="major", alpha=0.3)
        if len(names) > 4:  # beside the panel, clear of the curves
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize="x-small", loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def save_loss_curves(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """Plot every logged quantity of ``metrics_csv`` (see :func:`plot_curves`) into the PNG ``path``,
    atomically; returns the path, or None when nothing has been logged yet."""
    series = read_metrics_csv(metrics_csv)
    if not series:
        return None
    fig = plot_curves(series)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return Path(path)
