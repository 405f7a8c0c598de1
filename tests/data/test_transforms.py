"""The one uint8 <-> [-1, 1] conversion (clips and batches), clips <-> frames, the one short-side rule and the clip
transform of the loader."""
from __future__ import annotations

import numpy as np
import torch

from magvit_pl.data.transforms import (frames_to_tensor, from_frames, pixels_to_unit, short_side_size, square_clip,
                                       tensor_to_frames, to_frames, unit_to_pixels)


def test_pixels_and_unit_values_convert_exactly_both_ways():
    pixels = torch.arange(256, dtype=torch.uint8)
    unit = pixels_to_unit(pixels)
    assert unit.dtype == torch.float32 and unit[0] == -1 and unit[255] == 1 and unit[51] == 51 / 127.5 - 1
    assert torch.equal(unit_to_pixels(unit), pixels)
    outside = torch.tensor([-3.0, -1.0, 0.0, 0.003, 0.999, 1.0, 7.0])  # clamped, then rounded (half to even)
    assert unit_to_pixels(outside).tolist() == [0, 0, 128, 128, 255, 255, 255]
    assert pixels_to_unit(unit) is not unit  # never in place: float input stays untouched
    batch = torch.rand(2, 3, 4, 5, 6) * 2 - 1  # (B, C, T, H, W): any shape
    assert unit_to_pixels(batch).shape == batch.shape


def test_frames_and_video_layouts():
    frames = np.random.default_rng(0).integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)  # (T, H, W, 3)
    video = frames_to_tensor(frames)
    assert video.shape == (3, 4, 6, 8) and video[1, 2, 3, 4] == frames[2, 3, 4, 1] / 127.5 - 1
    assert np.array_equal(tensor_to_frames(video), frames)


def test_batches_convert_clip_by_clip_and_out_of_range_values_clamp():
    frames = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)  # (B, T, H, W, C)
    batch = frames_to_tensor(frames)
    assert batch.shape == (2, 3, 3, 4, 4) and torch.equal(batch[1], frames_to_tensor(frames[1]))
    assert np.array_equal(tensor_to_frames(batch), frames)
    assert frames_to_tensor(torch.from_numpy(frames)).equal(batch)  # a uint8 tensor converts the same
    assert tensor_to_frames(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).view(1, 1, 5, 1)).flatten().tolist() == [0, 0, 128, 255, 255]


def test_clips_to_frames_go_clip_by_clip_and_back():
    video = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2)  # (B, C, T, H, W)
    frames = to_frames(video)
    assert frames.shape == (8, 3, 2, 2)
    assert torch.equal(frames[5], video[1, :, 1])  # clip 1, frame 1
    assert torch.equal(from_frames(frames, 2), video)
    assert to_frames(frames) is frames  # frames pass through


def test_one_short_side_rule_for_decoding_and_resizing():
    assert short_side_size(256, 340, 64) == (64, 85)  # 340 * 64 / 256 = 85
    assert short_side_size(256, 340, 64, multiple=2) == (64, 84)  # decoding: an even long side (half to even)
    assert short_side_size(340, 256, 64, multiple=2) == (84, 64)
    assert short_side_size(240, 320, 100) == (100, 133)  # 133.3
    assert short_side_size(30, 10, 20) == (60, 20)
    assert short_side_size(64, 64, 33, multiple=2) == (33, 33)  # never shorter than the short side


def test_square_clip_draws_crop_then_flip():
    frames = np.arange(2 * 6 * 10 * 3, dtype=np.uint8).reshape(2, 6, 10, 3)
    assert np.array_equal(square_clip(frames, 6), frames[:, :, 2:8])  # no generator: centred, unflipped
    draws = np.random.default_rng(5)
    top, left, flip = int(draws.integers(0, 1)), int(draws.integers(0, 5)), draws.uniform() < 0.5
    expected = frames[:, top : top + 6, left : left + 6]
    got = square_clip(frames, 6, np.random.default_rng(5))
    assert np.array_equal(got, expected[:, :, ::-1] if flip else expected)
    assert np.array_equal(square_clip(frames, 6, np.random.default_rng(5), crop=False, flip=False), frames[:, :, 2:8])
