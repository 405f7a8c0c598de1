"""magvit_pl.video: the one uint8 <-> [-1, 1] and clip <-> frames conversion."""
import numpy as np
import torch

from magvit_pl.video import from_frames, from_uint8, to_frames, to_uint8


def test_uint8_round_trip_is_exact_and_maps_the_ends():
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)  # (T, H, W, C)
    video = from_uint8(frames)
    assert video.shape == (3, 3, 4, 5) and video.dtype == torch.float32
    assert torch.equal(video[:, 1, 2, 3], torch.from_numpy(frames[1, 2, 3]).float() / 127.5 - 1)
    assert np.array_equal(to_uint8(video), frames)
    ends = from_uint8(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1))
    assert ends.flatten().tolist() == [-1.0, 1.0]


def test_batches_convert_the_same_and_out_of_range_values_clamp():
    frames = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)  # (B, T, H, W, C)
    batch = from_uint8(frames)
    assert batch.shape == (2, 3, 3, 4, 4) and torch.equal(batch[1], from_uint8(frames[1]))
    assert to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).view(1, 1, 5, 1)).flatten().tolist() == [0, 0, 128, 255, 255]


def test_frames_are_clip_by_clip_and_invertible():
    video = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2)  # (B, C, T, H, W)
    frames = to_frames(video)
    assert frames.shape == (8, 3, 2, 2)
    assert torch.equal(frames[5], video[1, :, 1])  # clip 1, frame 1
    assert torch.equal(from_frames(frames, 2), video)
    assert to_frames(frames) is frames  # frames pass through
