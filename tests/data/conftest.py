"""Fixtures for the data tests: tiny videos written with PyAV in any codec / pixel format / timing,
the real clips in ../shared/data/clips (skipped when absent), and broken files."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

CLIPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "clips"


def pattern(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients, uint8 (T, H, W, 3): easy to compress, every frame different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for t in range(num_frames):
        r = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + 0.05 * t) + rng.uniform(0, 0.01))
        g = 0.5 + 0.4 * np.cos(2 * np.pi * (yy - 0.03 * t))
        b = np.full_like(xx, (t % 10) / 10)
        out.append(np.stack([r, g, b], -1))
    return np.round(np.stack(out) * 255).astype(np.uint8)


def write_raw(path: Path, frames: np.ndarray, fps: float = 25, codec: str = "libx264", pix_fmt: str = "yuv420p",
              pts_ms: list[int] | None = None, options: dict | None = None) -> Path:
    """Write ``frames`` (uint8 T,H,W,3) with any codec/pixel format; ``pts_ms`` gives each frame's
    time in milliseconds (variable frame rate)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if options:
            stream.options = options
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)
            vf.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                vf.time_base = Fraction(1, 1000)
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(name="pattern")
def pattern_fixture():
    """The ``pattern(num_frames, height, width, seed=0)`` helper (tests import no conftest module)."""
    return pattern


@pytest.fixture(name="write_raw")
def write_raw_fixture():
    """The ``write_raw(path, frames, fps, codec, pix_fmt, pts_ms, options)`` helper."""
    return write_raw


@pytest.fixture
def clips_dir() -> Path:
    if not CLIPS.is_dir():
        pytest.skip("real clips (../shared/data/clips) not available")
    return CLIPS


@pytest.fixture
def broken_files(tmp_path):
    """Make the broken inputs prepare must skip; returns {name: (path, words expected in the reason)}."""

    def make(folder: Path) -> dict[str, tuple[Path, str]]:
        folder.mkdir(parents=True, exist_ok=True)
        good = write_raw(folder / "_full.mp4", pattern(24, 32, 32))
        data = good.read_bytes()
        files = {
            "empty": (folder / "empty.mp4", "empty"),
            "text": (folder / "notes.mp4", "not a video"),
            "truncated": (folder / "truncated.mp4", "truncated"),
            "one_frame": (folder / "one_frame.mp4", "too short: 1 frames"),
            "too_short": (folder / "short.avi", "too short: 5 frames"),
        }
        files["empty"][0].write_bytes(b"")
        files["text"][0].write_text("this is a text file, not a video\n" * 20)
        files["truncated"][0].write_bytes(data[: len(data) // 2])
        write_raw(files["one_frame"][0], pattern(1, 32, 32))
        write_raw(files["too_short"][0], pattern(5, 32, 32), codec="mpeg4")
        good.unlink()
        return files

    return make
