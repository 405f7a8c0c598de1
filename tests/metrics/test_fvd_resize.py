"""The FVD resize is TF 1.x ``resize_bilinear`` with ``align_corners=False`` (what the TF FVD reference and the
official MAGVIT evaluation compute): output pixel i samples the source at i·in/out, not at PyTorch's half-pixel
positions."""
from __future__ import annotations

import numpy as np
import torch

from magvit_pl.metrics.fvd import resize_clips


def tf1_resize_numpy(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) → (size, size), written out from TF1's definition: source = out · in/out (in float32, as TF and the
    official MAGVIT code compute it), clamped neighbours."""
    h, w = image.shape
    out = np.empty((size, size))
    for i in range(size):
        y = float(np.float32(i) * np.float32(h / size))
        y0 = min(int(np.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = float(np.float32(j) * np.float32(w / size))
            x0 = min(int(np.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * fx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * fx
            out[i, j] = top + (bottom - top) * fy
    return out


def clip_of(image: torch.Tensor) -> torch.Tensor:
    return image.float().view(1, 1, 1, *image.shape)  # (B, C, T, H, W)


def test_upsampling_and_downsampling_sample_tf1s_grid():
    ramp = torch.arange(4.0).view(1, 4).expand(4, 4)  # columns 0, 1, 2, 3
    up = resize_clips(clip_of(ramp), 8)[0, 0, 0]
    torch.testing.assert_close(up[0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))  # half-pixel: 0, .25, .75, …
    ramp8 = torch.arange(8.0).view(1, 8).expand(8, 8)
    down = resize_clips(clip_of(ramp8), 4)[0, 0, 0]
    torch.testing.assert_close(down[0], torch.tensor([0.0, 2.0, 4.0, 6.0]))  # every other pixel; half-pixel: .5, 2.5, …


def test_matches_tf1_on_odd_sizes_and_keeps_frames_apart():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (37, 53))
    got = resize_clips(clip_of(torch.from_numpy(image)), 24)[0, 0, 0].double().numpy()
    np.testing.assert_allclose(got, tf1_resize_numpy(image, 24), atol=1e-6)
    video = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 4, 10, 14))).float()
    out = resize_clips(video, 16)
    assert out.shape == (2, 3, 4, 16, 16)
    for b, c, t in ((0, 0, 0), (1, 2, 3), (0, 1, 2)):
        np.testing.assert_allclose(out[b, c, t].double().numpy(), tf1_resize_numpy(video[b, c, t].double().numpy(), 16), atol=1e-6)
