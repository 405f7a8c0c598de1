"""Hostile media through ``reconstruct``'s loader: frames or one line naming the file and the reason,
never a hang and never an allocation the file only claims (the checks of ``data/video_io.py``)."""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest

from magvit_pl.data.video_io import MAX_PIXELS
from magvit_pl.run.errors import UserError
from magvit_pl.run.reconstruct import load_frames

# kind -> None when frames must come back, else words the one-line error must contain
EXPECTED = {
    "truncated": "corrupt, truncated or not a video",
    "zero_length": "empty file (0 bytes)",
    "text_named_mp4": "corrupt, truncated or not a video",
    "gif_header_16000": f"frame size 16000x16000 is above the limit of {MAX_PIXELS} pixels",
    "y4m_header_20000_named_mp4": "corrupt, truncated or not a video",
    "aspect_4096x2": "frame size 4096x2: aspect ratio beyond the limit of 16:1",
    "audio_only": "no video stream",
    "real_4000x3000": None,  # one 12-megapixel frame, scaled while decoding: a one-frame video is fine here
    "long_cut_tail": None,  # only the first max_frames frames are read; the cut tail is never reached
    "ten_hours": None,
    "rotated": None,
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_reconstruct_loader_returns_frames_or_one_line(kind, tmp_path, hostile):
    path = hostile(kind, tmp_path)
    rss, t0 = _peak_rss_mb(), time.monotonic()
    if EXPECTED[kind] is None:
        frames, fps = load_frames(str(path), 32, 16, 4)
        assert frames.dtype == np.uint8 and 1 <= len(frames) <= 16 and fps > 0
        assert min(frames.shape[1:3]) == 32 and frames.shape[1] % 4 == 0 and frames.shape[2] % 4 == 0
    else:
        with pytest.raises(UserError) as info:
            load_frames(str(path), 32, 16, 4)
        message = str(info.value)
        assert EXPECTED[kind] in message and str(path) in message and "\n" not in message, message
    assert time.monotonic() - t0 < 30  # "not for ever": generous, so a loaded machine is not a failure
    assert _peak_rss_mb() - rss < 200
    if kind == "real_4000x3000":
        assert frames.shape == (1, 32, 40, 3)  # 4000x3000 -> 42x32 while decoding -> 40x32 (multiples of 4)
    elif kind == "rotated":
        assert frames.shape == (12, 48, 32, 3)  # shown as a phone shows it: portrait
