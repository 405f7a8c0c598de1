"""Video I/O (PyAV) and the frame helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from magvit_pl.data.transforms import center_crop, clip_indices, random_crop, resize_short_side, sample_clip
from magvit_pl.data.video_io import VideoReadError, encode_video, probe, read_video, write_video
from magvit_pl.run.errors import MissingFileError, UserError


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_mp4_round_trip_and_probe(tmp_path, pattern):
    frames = pattern(12, 32, 48)
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # no temp file left behind
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.codec) == (48, 32, 12, "h264")
    assert info.fps == pytest.approx(12) and info.duration == pytest.approx(1.0, abs=0.01)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert _mae(back, frames) < 4.5  # CRF 18, 4:2:0 (a random image would be ~85)


def test_odd_size_mp4_is_padded_by_edge_replication(tmp_path, pattern):
    frames = pattern(4, 17, 33)  # 4:2:0 needs even sizes
    back = read_video(write_video(tmp_path / "odd.mp4", frames, fps=8))
    assert back.shape == (4, 18, 34, 3)
    assert _mae(back[:, :17, :33], frames) < 6.0
    assert _mae(back[:, 17, :33], frames[:, 16]) < 6.0  # the added row repeats the last one


def test_gif_round_trip(tmp_path, pattern):
    frames = pattern(6, 24, 24)
    path = write_video(tmp_path / "clip.gif", frames, fps=10)
    assert probe(path).codec == "gif"
    back = read_video(path)
    assert back.shape == frames.shape
    assert _mae(back, frames) < 10.0  # one 256-colour palette for the clip


def test_write_rejects_unknown_suffix_and_bad_arrays(tmp_path, pattern):
    with pytest.raises(UserError, match="suffix"):
        write_video(tmp_path / "x.avi", pattern(2, 8, 8), fps=5)
    with pytest.raises(ValueError, match="uint8"):
        encode_video(np.zeros((2, 8, 8, 3), np.float32), fps=5)


@pytest.mark.parametrize("suffix,codec,pix_fmt", [
    ("avi", "mpeg4", "yuv420p"),
    ("mkv", "ffv1", "yuv420p10le"),
    ("mp4", "libx264", "yuv444p"),
    ("webm", "libvpx-vp9", "yuv420p"),
])
def test_reads_other_containers_and_pixel_formats(tmp_path, suffix, codec, pix_fmt, pattern, write_raw):
    frames = pattern(5, 24, 40)
    back = read_video(write_raw(tmp_path / f"v.{suffix}", frames, codec=codec, pix_fmt=pix_fmt))
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert _mae(back, frames) < 8.0


def test_grayscale_becomes_rgb(tmp_path, pattern, write_raw):
    frames = pattern(4, 16, 16)
    back = read_video(write_raw(tmp_path / "g.mkv", frames, codec="ffv1", pix_fmt="gray"))
    assert back.shape == (4, 16, 16, 3)
    assert np.array_equal(back[..., 0], back[..., 1]) and np.array_equal(back[..., 1], back[..., 2])
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(back[..., 0] - luma).mean() < 4.0


def _levels(frames: np.ndarray) -> np.ndarray:
    """Frame i of the test videos below is uniformly grey at level 8 * i."""
    return np.round(frames.reshape(len(frames), -1).mean(1) / 8).astype(int)


def _grey_ramp(n: int) -> np.ndarray:
    return np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 8, 16 * 16 * 3).reshape(n, 16, 16, 3)


def test_fps_resampling_picks_nearest_frames(tmp_path, write_raw):
    path = write_raw(tmp_path / "ramp.mp4", _grey_ramp(30), fps=30, pix_fmt="yuv444p", options={"crf": "0"})
    assert list(_levels(read_video(path))) == list(range(30))
    assert list(_levels(read_video(path, fps=10))) == list(range(0, 30, 3))
    assert list(_levels(read_video(path, fps=60))) == [i // 2 for i in range(60)]  # ties: earlier frame
    assert list(_levels(read_video(path, fps=10, start=0.5, max_frames=3))) == [15, 18, 21]
    assert list(_levels(read_video(path, start=0.5, max_frames=4))) == [15, 16, 17, 18]


def test_variable_frame_rate_uses_timestamps(tmp_path, write_raw):
    times = [0, 10, 20, 100, 110, 300]  # ms
    path = write_raw(tmp_path / "vfr.mp4", _grey_ramp(6), pts_ms=times, pix_fmt="yuv444p", options={"crf": "0"})
    assert list(_levels(read_video(path))) == [0, 1, 2, 3, 4, 5]
    # targets 0, 100, 200, 300 ms -> nearest frames at 0, 100, 110 (|200-110| < |200-300|), 300 ms
    assert list(_levels(read_video(path, fps=10))) == [0, 3, 4, 5]


def test_short_side_scaling_while_decoding(tmp_path, pattern, write_raw):
    path = write_raw(tmp_path / "wide.mp4", pattern(3, 40, 100))
    assert read_video(path, short_side=20).shape == (3, 20, 50, 3)
    assert read_video(write_raw(tmp_path / "tiny.mp4", pattern(3, 18, 34)), short_side=32).shape == (3, 32, 60, 3)


@pytest.mark.parametrize("kind,message", [
    ("empty", "empty"), ("text", "not a video"), ("cut", "truncated"), ("cut_faststart", "truncated"),
    ("audio_only", "no video stream"),
])
def test_bad_files_raise_video_read_error(tmp_path, kind, message, pattern, write_raw):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello\n" * 100)
    elif kind.startswith("cut"):
        opts = {"movflags": "faststart"} if kind == "cut_faststart" else None
        full = write_raw(tmp_path / "full.mp4", pattern(60, 32, 32, seed=1), options=opts)
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        import av

        path = tmp_path / "audio.wav"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    with pytest.raises(VideoReadError, match=message) as info:
        read_video(path)
    assert isinstance(info.value, UserError) and str(path) in str(info.value)


def test_missing_file_and_timeout(tmp_path, pattern, write_raw):
    with pytest.raises(MissingFileError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    path = write_raw(tmp_path / "ok.mp4", pattern(10, 16, 16))
    with pytest.raises(VideoReadError, match="timed out"):
        read_video(path, timeout_s=1e-9)


def test_decoding_from_bytes_matches_file(tmp_path, pattern, write_raw):
    path = write_raw(tmp_path / "a.mp4", pattern(8, 16, 16))
    assert np.array_equal(read_video(path.read_bytes()), read_video(path))


def test_real_clip_probe_and_decode(clips_dir):
    path = clips_dir / "rawvideo_part_0.mp4"
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (340, 256, 32) and info.fps == pytest.approx(30)
    frames = read_video(path, short_side=64)
    assert frames.shape == (32, 64, 84, 3)  # 340 * 64 / 256 = 85 -> even
    assert 20 < frames.mean() < 235 and frames.std() > 10  # real content, not a blank frame


# -- frame helpers ----------------------------------------------------------------------------


def test_resize_short_side_numpy_and_torch_antialiased():
    checker = ((np.indices((64, 96)).sum(0) % 2) * 255).astype(np.uint8)  # 1-pixel checkerboard
    frames = np.repeat(checker[None, :, :, None], 3, axis=-1).repeat(2, 0)  # (2, 64, 96, 3)
    small = resize_short_side(frames, 16)
    assert small.shape == (2, 16, 24, 3) and small.dtype == np.uint8
    assert abs(small.mean() - 127.5) < 2 and small.std() < 3  # averaged, not aliased to 0/255
    as_torch = resize_short_side(torch.from_numpy(frames).float(), 16)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (2, 16, 24, 3)
    assert torch.allclose(as_torch.round(), torch.from_numpy(small).float(), atol=1)
    tall = resize_short_side(np.zeros((1, 30, 10, 3), np.uint8), 20)
    assert tall.shape == (1, 60, 20, 3)


def test_crops_take_the_right_pixels():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.int32).reshape(2, 6, 8, 3)
    assert np.array_equal(center_crop(frames, 4), frames[:, 1:5, 2:6])
    assert np.array_equal(center_crop(frames, (2, 8)), frames[:, 2:4, :])
    rng = np.random.default_rng(0)
    crops = {random_crop(frames, 4, rng)[0, 0, 0, 0] for _ in range(60)}
    assert len(crops) == 15  # every one of the 3 x 5 positions occurs
    with pytest.raises(ValueError, match="larger"):
        center_crop(frames, 7)


def test_clip_sampling():
    frames = np.arange(20)
    assert list(sample_clip(frames, 4, stride=3, start=2)) == [2, 5, 8, 11]
    assert list(clip_indices(20, 4, 3)) == [5, 8, 11, 14]  # centred without a generator
    starts = {int(clip_indices(20, 4, 3, rng=np.random.default_rng(i))[0]) for i in range(200)}
    assert starts == set(range(11))
    with pytest.raises(ValueError, match="too short: 9 frames < 10"):
        clip_indices(9, 4, 3)
