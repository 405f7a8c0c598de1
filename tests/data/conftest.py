"""Fixtures for the data tests: tiny videos written with PyAV in any codec / pixel format / timing,
the real clips in ../shared/data/clips (skipped when absent), and broken files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

CLIPS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "clips"




@pytest.fixture
def clips_dir() -> Path:
    if not CLIPS.is_dir():
        pytest.skip("real clips (../shared/data/clips) not available")
    return CLIPS


@pytest.fixture
def broken_files(tmp_path, pattern, write_raw):
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
