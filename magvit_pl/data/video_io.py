"""Video files with PyAV: probe, read (decode), encode, write.

A video here is a uint8 array ``(T, H, W, 3)`` (RGB, channel last). Anything the bundled FFmpeg can
decode is accepted; grayscale, 10-bit and 4:4:4 sources come out as 8-bit RGB, and a display-matrix
rotation by a multiple of 90 degrees (phones' portrait video) is applied. Every failure is a
:class:`VideoReadError` with a short reason, so ``prepare`` can skip the file and list why.

Limits that keep a hostile file from exhausting memory or time (each a VideoReadError): a source
frame of at most ``MAX_PIXELS`` (8K; checked on the header before anything is decoded, since a
35-byte GIF can claim a 16000x16000 screen, and by FFmpeg for every frame) and an aspect ratio within
``MAX_ASPECT`` (scaling a 4096x2 strip to a short side of 128 would make 262144-pixel-wide frames);
at most ``max_bytes`` of decoded frames per call; ``timeout_s`` per call. Frame transforms (resize,
crops, clips) are in :mod:`magvit_pl.data.transforms`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from magvit_pl.data.transforms import short_side_size
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.files import atomic_path

Source = Union[str, os.PathLike, bytes]

MAX_PIXELS = 8192 * 4320  # largest source frame read_video decodes (8K DCI)
MAX_ASPECT = 16  # largest long side / short side ratio
MAX_BYTES = 2 << 30  # largest decoded output of one read_video call


class VideoReadError(UserError):
    """A video could not be decoded; ``reason`` says why in a few words."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream (``num_frames`` may be an estimate)."""

    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    codec: str


def _name(src: Source) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray)) else str(src)


def _open(src: Source, timeout_s: float | None = None) -> av.container.InputContainer:
    """Open ``src`` for reading, turning every failure into a VideoReadError."""
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise VideoReadError(_name(src), "empty (0 bytes)")
        handle: object = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise MissingFileError(f"video file not found: {path}")
        if path.stat().st_size == 0:
            raise VideoReadError(path, "empty file (0 bytes)")
        handle = str(path)
    try:
        # `timeout` bounds blocking reads (network sources); the decode loop has its own deadline.
        return av.open(handle, mode="r", timeout=timeout_s)
    except av.error.FFmpegError as e:
        raise VideoReadError(_name(src), f"corrupt, truncated or not a video ({_msg(e)})") from None


def _msg(e: Exception) -> str:
    """FFmpeg's reason without the errno and file name PyAV adds."""
    return getattr(e, "strerror", None) or str(e)


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        container.close()
        raise VideoReadError(name, "no video stream")
    return container.streams.video[0]


def check_frame_size(name: str, height: int, width: int) -> None:
    """Raise VideoReadError for frames beyond MAX_PIXELS or MAX_ASPECT (0 = unknown: not checked)."""
    if height <= 0 or width <= 0:
        return
    if height * width > MAX_PIXELS:
        raise VideoReadError(name, f"frame size {width}x{height} is above the limit of {MAX_PIXELS} pixels "
                                   f"(8192x4320)")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise VideoReadError(name, f"frame size {width}x{height}: aspect ratio beyond the limit of {MAX_ASPECT}:1")


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: Source) -> VideoInfo:
    """Read the header of ``path`` (no decoding). ``num_frames`` is estimated from the duration when
    the container does not store a frame count (mkv, webm)."""
    container = _open(path)
    try:
        stream = _video_stream(container, _name(path))
        fps = _stream_fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = stream.frames or int(round(duration * fps))
        cc = stream.codec_context
        return VideoInfo(cc.width, cc.height, fps, int(frames), duration, cc.name)
    finally:
        container.close()


def read_video(
    path: Source,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float = 0.0,
    timeout_s: float | None = 120.0,
    threads: int = 0,
    short_side: int | None = None,
    max_bytes: int | None = MAX_BYTES,
) -> np.ndarray:
    """Decode a video into a uint8 array ``(T, H, W, 3)``.

    Args:
        path: A file path, or the encoded bytes of a video.
        fps: Resample to this frame rate by picking, for each target time ``start + k / fps``, the
            source frame whose timestamp is nearest (the earlier one on a tie; works for variable
            frame rate). None keeps every frame.
        max_frames: Stop after this many output frames.
        start: Skip everything before this time (seconds from the start of the stream).
        timeout_s: Give up with a VideoReadError after this many seconds of decoding.
        threads: Decoder threads (0 lets FFmpeg choose; use 1 inside data-loader workers).
        short_side: Scale each frame while decoding so its shorter side is this many pixels and the
            longer side keeps the aspect ratio, rounded to an even number (area filter when
            shrinking, bicubic when enlarging). Memory then never holds full-size frames.
        max_bytes: Give up with a VideoReadError once the decoded frames would exceed this many
            bytes (None: no limit).
    """
    if fps is not None and fps <= 0:
        raise UserError(f"fps must be positive or None, got {fps}")
    name = _name(path)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        container = _open(path, timeout_s)
    except VideoReadError:
        if deadline is not None and time.monotonic() > deadline:  # FFmpeg's interrupt stopped the open
            raise VideoReadError(name, "timed out while opening") from None
        raise
    try:
        stream = _video_stream(container, name)
        cc = stream.codec_context
        check_frame_size(name, cc.height, cc.width)  # before FFmpeg allocates anything frame-sized
        cc.options = {"max_pixels": str(MAX_PIXELS)}  # and FFmpeg refuses bigger frames the header hid
        stream.thread_type = "AUTO"
        cc.thread_count = threads
        out = _Frames(name, short_side, deadline, max_bytes, max_frames)
        decoded, at_end = _decode(container, stream, out, fps, start)
        declared = int(stream.frames or 0)
    finally:
        container.close()
    frames = out.frames
    if not frames:
        raise VideoReadError(name, "zero frames decoded")
    # A stream that ends well before the frame count its header declares was cut off.
    if at_end and start == 0 and declared > 1 and decoded < 0.9 * declared:
        raise VideoReadError(name, f"truncated: decoded {decoded} of {declared} frames the header declares")
    return np.stack(frames)


def to_rgb(frame: av.VideoFrame, reformatter: VideoReformatter, short_side: int | None = None) -> np.ndarray:
    """The frame as uint8 RGB (H, W, 3), scaled by swscale when ``short_side`` is set.

    Pass the same ``reformatter`` for every frame of a video: it keeps the swscale context, which
    ``frame.to_ndarray(format=...)`` rebuilds per frame (3x slower on small frames).
    """
    if short_side is None:
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    h, w = short_side_size(frame.height, frame.width, short_side, multiple=2)
    interp = "AREA" if h * w < frame.height * frame.width else "BICUBIC"
    return reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation=interp).to_ndarray()


def _rotation(frame: av.VideoFrame) -> int:
    """Quarter turns (counter-clockwise, for np.rot90) that the frame's display matrix asks for;
    0 when there is none or its angle is not a multiple of 90 degrees."""
    try:
        angle = float(frame.rotation)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return 0
    if not np.isfinite(angle) or round(angle) % 90:
        return 0
    return (round(angle) // 90) % 4


@dataclasses.dataclass
class _Frames:
    """The RGB frames read_video keeps, converted as they are chosen, within its time and size limits."""

    name: str
    short_side: int | None
    deadline: float | None
    max_bytes: int | None
    max_frames: int | None
    frames: list[np.ndarray] = dataclasses.field(default_factory=list)
    nbytes: int = 0
    reformatter: VideoReformatter = dataclasses.field(default_factory=VideoReformatter)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise VideoReadError(self.name, "timed out while decoding")

    @property
    def full(self) -> bool:
        return self.max_frames is not None and len(self.frames) >= self.max_frames

    def add(self, frame: av.VideoFrame) -> None:
        self.check_time()
        check_frame_size(self.name, frame.height, frame.width)
        arr = to_rgb(frame, self.reformatter, self.short_side)
        turns = _rotation(frame)
        if turns:
            arr = np.ascontiguousarray(np.rot90(arr, turns))
        self.nbytes += arr.nbytes
        if self.max_bytes is not None and self.nbytes > self.max_bytes:
            raise VideoReadError(self.name, f"too long: the decoded frames pass {self.max_bytes / 2**20:.0f} MiB after "
                                            f"{len(self.frames)} frames; limit them with max_frames / fps")
        self.frames.append(arr)


@dataclasses.dataclass
class _Resampler:
    """Output frames at ``fps``: each target time ``start + k / fps`` takes the decoded frame whose
    timestamp is nearest (the earlier one on a tie); works for variable frame rates."""

    fps: float
    start: float
    prev: tuple[float, av.VideoFrame] | None = None  # (time, frame) of the last decoded frame
    next_k: int = 0  # index of the next target time
    last_end: float = 0.0  # when the last decoded frame stops being shown

    def push(self, t: float, end: float, frame: av.VideoFrame, out: _Frames) -> None:
        """Emit every target time the decoded ``frame`` (shown from ``t`` to ``end``) is past."""
        self.last_end = end
        while self.start + self.next_k / self.fps <= t and not out.full:
            target = self.start + self.next_k / self.fps
            near = self.prev if self.prev is not None and target - self.prev[0] <= t - target + 1e-9 else (t, frame)
            out.add(near[1])
            self.next_k += 1
        self.prev = (t, frame)

    def finish(self, out: _Frames) -> None:
        """Targets after the last frame's timestamp but before it ends take the last frame."""
        while self.prev is not None and not out.full and self.start + self.next_k / self.fps < self.last_end - 1e-9:
            out.add(self.prev[1])
            self.next_k += 1


def _decode(container, stream, out: _Frames, fps: float | None, start: float) -> tuple[int, bool]:
    """The decode loop of read_video: fills ``out``; returns (frames decoded, whether the stream was
    read to its end)."""
    tb = stream.time_base or Fraction(1, 1)
    t0 = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    src_rate = _stream_fps(stream) or 25.0
    if start > 0:
        try:
            container.seek(int((start + t0) / tb), stream=stream, backward=True)
        except av.error.FFmpegError:
            pass  # not seekable: decode from the beginning and skip
    resampler = _Resampler(fps, start) if fps is not None else None
    decoded, at_end = 0, False
    try:
        for frame in container.decode(stream):
            out.check_time()
            decoded += 1
            t = (float(frame.time) - t0) if frame.time is not None else (decoded - 1) / src_rate
            dur = float(frame.duration * tb) if frame.duration else 1.0 / src_rate
            if resampler is not None:
                resampler.push(t, t + dur, frame, out)
            elif t + 0.5 * dur > start:
                out.add(frame)
            if out.full:
                break
        else:
            at_end = True
    except av.error.FFmpegError as e:
        if out.deadline is not None and time.monotonic() > out.deadline:  # FFmpeg's own interrupt fired
            raise VideoReadError(out.name, "timed out while decoding") from None
        raise VideoReadError(out.name, f"truncated/corrupt: decode error after {decoded} frames ({_msg(e)})") from None
    if resampler is not None:
        resampler.finish(out)
    return decoded, at_end


# ----------------------------------------------------------------------------------------------
# writing


def encode_video(frames: np.ndarray, fps: float, fmt: str = "mp4", crf: int = 18, gop: int | None = None,
                 pix_fmt: str = "yuv420p", preset: str = "medium") -> bytes:
    """Encode uint8 ``(T, H, W, 3)`` frames and return the file bytes (``fmt``: 'mp4' or 'gif').

    mp4 uses libx264 at ``crf``; odd heights/widths are padded by one replicated row/column (4:2:0
    needs even sizes; with ``pix_fmt='yuv444p'`` sizes stay as they are). ``gop`` sets the keyframe
    interval (small values make seeking cheap). gif builds one 256-colour palette for the whole clip.
    """
    frames = _check_frames(frames)
    buf = io.BytesIO()
    buf.name = f"video.{fmt}"
    if fmt == "mp4":
        _encode_mp4(buf, frames, fps, crf, gop, pix_fmt, preset)
    elif fmt == "gif":
        _encode_gif(buf, frames, fps)
    else:
        raise UserError(f"unsupported video format '{fmt}': use mp4 or gif")
    return buf.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18,
                pix_fmt: str = "yuv420p") -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames to ``path`` atomically; the suffix (.mp4 or .gif) picks
    the format. mp4: libx264 at ``crf`` (0 = lossless in YUV) in ``pix_fmt`` ('yuv420p' plays
    everywhere; 'yuv444p' keeps full colour). Returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("mp4", "gif"):
        raise UserError(f"cannot write '{path}': the suffix must be .mp4 or .gif")
    data = encode_video(frames, fps, fmt=fmt, crf=crf, pix_fmt=pix_fmt)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _encode_mp4(buf, frames, fps, crf, gop, pix_fmt, preset):
    if pix_fmt == "yuv420p":  # 4:2:0 needs even sizes: replicate the last row / column
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=_rate(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        # x264's macroblock-tree rate control reads memory it never initialised, so with it on the
        # bytes depend on what this process encoded before (measured: 7 different files from one clip
        # in 30 encodes). Off, the same frames always give the same bytes; at CRF 18 the files of four
        # real 64 px clips grew 8-53% and gained 0.3-1.5 dB PSNR (x264 spends the bits mb-tree saved).
        opts = {"crf": str(crf), "preset": preset, "x264-params": "no-mbtree=1"}
        if gop is not None:
            opts.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        stream.options = opts
        stream.codec_context.thread_count = 1
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))


def _encode_gif(buf, frames, fps):
    t, h, w, _ = frames.shape
    rate = _rate(fps)
    with av.open(buf, mode="w", format="gif") as out:
        stream = out.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        # one palette for the whole clip: split -> palettegen (emits at EOF) -> paletteuse
        graph = av.filter.Graph()
        src = graph.add_buffer(width=w, height=h, format="rgb24", time_base=1 / rate)
        split, gen = graph.add("split"), graph.add("palettegen", "stats_mode=full")
        use, sink = graph.add("paletteuse", "dither=none"), graph.add("buffersink")
        src.link_to(split)
        split.link_to(gen, 0, 0)
        split.link_to(use, 1, 0)
        gen.link_to(use, 0, 1)
        use.link_to(sink)
        graph.configure()
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            graph.push(vf)
        graph.push(None)
        while True:
            try:
                out.mux(stream.encode(graph.pull()))
            except (av.error.EOFError, av.error.BlockingIOError):
                break
        out.mux(stream.encode(None))
