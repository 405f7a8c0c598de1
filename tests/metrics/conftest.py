"""Fixtures shared by the metric tests: real clips from ../shared/data and the cached weights.

The suite runs with --import-mode=importlib, so helpers are handed out through the ``md`` fixture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# tests/metrics/conftest.py → repo root → ../shared/data (absent in a fresh clone: tests skip)
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLIPS = DATA / "clips"


def clip_path(name: str) -> Path:
    path = CLIPS / name
    if not path.is_file():
        pytest.skip(f"real clip {path} not available")
    return path


def weights_or_skip(name: str) -> Path:
    from magvit_pl.run.errors import MissingWeightsError
    from magvit_pl.run.weights import weight_path

    try:
        return weight_path(name)
    except MissingWeightsError:
        pytest.skip(f"weights '{name}' not fetched (python cli.py fetch-weights {name})")


def read_frames(name: str, num: int, start: int = 0, step: int = 1) -> np.ndarray:
    """``num`` RGB frames ``(T, H, W, 3)`` uint8 from a clip, decoded with PyAV."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(clip_path(name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start and (i - start) % step == 0:
                out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == num:
                break
    assert len(out) == num, f"{name} has fewer than {start + num * step} frames"
    return np.stack(out)


def to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` → float ``(3, T, H, W)`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def square_clip(name: str, num: int, size: int, start: int = 0, step: int = 1) -> torch.Tensor:
    """Centre square crop resized (area) to ``size``: ``(3, T, size, size)`` in [-1, 1]."""
    v = to_video(read_frames(name, num, start, step))
    _, _, h, w = v.shape
    s = min(h, w)
    v = v[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(v, size=(size, size), mode="area") if s != size else v  # T acts as batch


@pytest.fixture(scope="session")
def md():
    """The helpers above, as one namespace (``md.square_clip(...)``, ``md.weights_or_skip(...)``)."""
    import types

    return types.SimpleNamespace(DATA=DATA, CLIPS=CLIPS, clip_path=clip_path, weights_or_skip=weights_or_skip,
                                 read_frames=read_frames, to_video=to_video, square_clip=square_clip)
