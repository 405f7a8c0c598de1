"""The shard format: one webdataset sample per video, and the stages that write and decode it.

A sample is three tar members sharing a key::

    KEY.mp4    the clip, H.264 (libx264, 4:4:4, CRF 18, keyframe every 16 frames)   [format 'mp4']
    KEY.npy    or: the raw uint8 (T, H, W, 3) frames as a .npy file                 [format 'npy']
    KEY.json   {"label", "class", "source", "split", "fps", "frames", "height", "width"}

mp4 is the default (about 35x smaller; see data/README.md for the measurements). The short
keyframe interval lets :func:`decode_sample` seek to a clip instead of decoding the whole video.
Shards are written whole to a temporary name and renamed, so a ``*.tar`` that exists is complete.

Shards and manifests are files from outside: reading them never runs anything and never trusts a
number. Shard names are plain file names (:func:`check_shard_name`; webdataset's ``gopen`` would run
a ``pipe:`` name in a shell, so shards are opened here, as regular files only, never through it), and
are read as plain tar only (webdataset's tar reader opens ``r|*`` and would inflate a compressed
member of any size; :func:`read_shard` groups members into samples as it does); every sample's json, payload type, dtype and shape are checked against each other
(:func:`sample_meta`, :func:`decode_sample`) before a frame is used. A bad shard raises
:class:`ShardError`, a bad sample :class:`SampleError`, both one line naming it.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import tarfile
import unicodedata
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from magvit_pl.data.transforms import clip_indices
from magvit_pl.data.video_io import VideoReadError, check_frame_size, encode_video, to_rgb
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import atomic_path

FORMAT_VERSION = 1
PAYLOADS = ("mp4", "npy")
StorageFormat = Literal["mp4", "npy"]
# A shard name: letters, digits, '_', '-', '.', ending in .tar, not starting with '-' or '.' (what
# prepare and the synthetic generator write: train-000000.tar). No '/', ':', '..', spaces or controls.
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,195}\.tar")
MAX_SAMPLE_FRAMES = 10_000_000  # json 'frames' above this is not a video this project made
FPS_RANGE = (1e-6, 1e6)  # json 'fps' (prepare records the source's rate: 10 frames over 10 hours is 3e-4)


class ShardError(UserError):
    """A shard file cannot be read (missing, not a regular file, not a tar, cut short)."""

    def __init__(self, path: object, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"shard {self.path}: {reason}")


class SampleError(UserError):
    """A sample's members disagree or hold values this project never writes."""

    def __init__(self, key: object, reason: str):
        self.key, self.reason = str(key), reason
        super().__init__(f"sample {self.key}: {reason}")


def class_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a class name, or None. classes.txt holds one name per line and is read
    back (``--classes``) line by line, stripped, skipping '#' comments: a name survives that round trip
    only without line breaks or other control characters, outer white space or a leading '#'."""
    if not isinstance(name, str) or not name:
        return "is empty or not a string"
    if len(name) > 1000:
        return "is longer than 1000 characters"
    if name.splitlines() != [name] or any(unicodedata.category(c) == "Cc" for c in name):
        return "contains a line break or another control character"
    if name != name.strip():
        return "starts or ends with white space"
    if name.startswith("#"):
        return "starts with '#' (a comment in classes.txt)"
    return None


def check_shard_name(name: object, where: str = "manifest") -> str:
    """``name`` if it is a plain shard file name (see SHARD_NAME), else a one-line UserError."""
    if isinstance(name, str) and SHARD_NAME.fullmatch(name) and ".." not in name:
        return name
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    raise UserError(f"{where}: shard name {shown} is not a plain file name in the data folder (allowed: letters, "
                    f"digits, '-', '_', '.', ending in .tar, not starting with '-' or '.', no '..')")


def shard_name(split: str, index: int) -> str:
    """``train-000000.tar`` style name of shard ``index`` of ``split``."""
    return f"{split}-{index:06d}.tar"


def make_key(prefix: str, source: str) -> str:
    """A webdataset key: a unique ``prefix`` (e.g. ``train-000000-00042``) plus a readable stem of
    the source, with every character other than letters, digits, - and _ replaced (no dots)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:60]
    return f"{prefix}_{safe}"


def encode_sample(key: str, frames: np.ndarray, meta: dict, fmt: StorageFormat = "mp4", crf: int = 18,
                  gop: int = 16, pix_fmt: str = "yuv444p", preset: str = "medium") -> dict:
    """Build the tar members of one sample from uint8 ``(T, H, W, 3)`` frames and its metadata
    (``crf``, ``gop``, ``pix_fmt``, ``preset``: the libx264 settings for format 'mp4')."""
    t, h, w, _ = frames.shape
    meta = {**meta, "frames": int(t), "height": int(h), "width": int(w)}
    if fmt == "mp4":
        payload = encode_video(frames, meta["fps"], fmt="mp4", crf=crf, gop=gop, pix_fmt=pix_fmt, preset=preset)
    elif fmt == "npy":
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(frames), allow_pickle=False)
        payload = buf.getvalue()
    else:
        raise ValueError(f"unknown storage format {fmt!r}; use one of {PAYLOADS}")
    return {"__key__": key, fmt: payload, "json": json.dumps(meta).encode()}


def write_shard(path: str | Path, samples: Iterable[dict]) -> tuple[int, int]:
    """Write ``samples`` (dicts from encode_sample) into the tar at ``path`` atomically.

    Returns (number of samples, bytes). An exception leaves no file at ``path``. Member times are
    fixed, so the same samples always give the same bytes.
    """
    count = 0
    with atomic_path(path) as tmp:
        # plain tarfile (what webdataset reads), so writing needs neither webdataset nor torch
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                for ext, data in sample.items():
                    if ext.startswith("__"):
                        continue
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed: same samples -> same bytes
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        size = tmp.stat().st_size
        umask_mode(tmp)
    return count, size


def umask_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file (or folder) created private by mkstemp/mkdtemp the usual permissions
    (0666 or 0777, minus the umask), so shared datasets stay readable by others."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def open_shard(path: str | Path) -> BinaryIO:
    """Open a shard for reading: a regular file only (a FIFO or device would block or never end);
    ShardError otherwise."""
    try:  # O_NONBLOCK: opening a FIFO with no writer returns at once (and is refused below)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ShardError(path, "file not found; prepare the data again") from None
    except OSError as e:
        raise ShardError(path, f"cannot open ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ShardError(path, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_shard(path: str | Path) -> Iterator[dict]:
    """The raw samples of one shard file: ``{"__key__", "__url__", EXT: bytes, ...}``, grouped like
    webdataset groups them (key = member name up to its first dot). Raises ShardError when the file
    is missing, not a regular file or not a plain tar, or when a sample repeats a member."""
    path = str(path)
    with open_shard(path) as fh:
        sample: dict | None = None
        try:
            with tarfile.open(fileobj=fh, mode="r|") as tar:  # plain tar only: no decompression
                for info in tar:
                    if not info.isreg():
                        continue
                    folder, _, base = info.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or not stem:
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    if sample is not None and sample["__key__"] != key:
                        yield sample
                        sample = None
                    if sample is None:
                        sample = {"__key__": key, "__url__": path}
                    ext = ext.lower()
                    if ext in sample:
                        raise ShardError(path, f"member {info.name!r} appears twice in sample {key}")
                    member = tar.extractfile(info)
                    sample[ext] = member.read() if member is not None else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ShardError(path, f"not a readable tar file ({e})") from None
        if sample is not None:
            yield sample


# ----------------------------------------------------------------------------------------------
# decoding


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sample_meta(sample: dict, num_classes: int | None = None) -> dict:
    """The json member of a raw sample, checked: ``frames``, ``height``, ``width`` positive integers
    (a frame size ``read_video`` would accept), ``fps`` a finite positive number, ``label`` an integer
    in ``[0, num_classes)`` (-1 or absent: unlabelled; any int64 when ``num_classes`` is None).
    Raises SampleError naming the sample and the field."""
    key = sample.get("__key__", "<no key>")
    if "json" not in sample:
        raise SampleError(key, "has no json member")
    try:
        meta = json.loads(sample["json"])
    except (ValueError, RecursionError) as e:
        raise SampleError(key, f"json member is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(meta, dict):
        raise SampleError(key, f"json member must be an object, got {type(meta).__name__}")
    for field, high in (("frames", MAX_SAMPLE_FRAMES), ("height", None), ("width", None)):
        value = meta.get(field)
        if not _is_int(value) or value < 1 or (high is not None and value > high):
            allowed = f"an integer in [1, {high}]" if high else "an integer >= 1"
            raise SampleError(key, f"json '{field}' must be {allowed}, got {value!r:.40}")
    try:
        check_frame_size(key, meta["height"], meta["width"])
    except VideoReadError as e:
        raise SampleError(key, f"json {e.reason}") from None
    fps = meta.get("fps")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise SampleError(key, f"json 'fps' must be a number in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], got {fps!r:.40}")
    label = meta.get("label", -1)
    low, high = (-1, 2**63 - 1) if num_classes is None else (-1 if num_classes == 0 else 0, max(num_classes - 1, -1))
    if not _is_int(label) or not low <= label <= high:
        raise SampleError(key, f"json 'label' must be an integer in [{low}, {high}] "
                               f"({num_classes if num_classes is not None else 'unknown'} classes), got {label!r:.40}")
    return meta


def decode_sample(sample: dict, num_frames: int | None = None, stride: int = 1, start: int | None = None,
                  rng: np.random.Generator | None = None, num_classes: int | None = None) -> dict:
    """Decode a raw sample into ``{"key", "frames" uint8 (T, H, W, 3), "label", "meta"}``.

    With ``num_frames`` only a clip is returned: ``num_frames`` frames every ``stride``, starting at
    frame ``start`` (None: random with ``rng``, centred without). For mp4 only the frames from the
    keyframe before the clip to its end are decoded. A video shorter than the clip raises ValueError;
    a sample whose members disagree (json vs payload shape, dtype, size, label range: see
    :func:`sample_meta`) raises SampleError, an undecodable payload VideoReadError.
    """
    meta = sample_meta(sample, num_classes)
    key = sample["__key__"]
    shape = (meta["frames"], meta["height"], meta["width"], 3)
    if num_frames is None:
        idx = None
    else:
        idx = clip_indices(meta["frames"], num_frames, stride, start, rng)
    if "npy" in sample:
        frames = _npy_view(sample["npy"], key, shape)
        frames = np.array(frames if idx is None else frames[idx])  # copy: the view is read-only
    elif "mp4" in sample:
        frames = decode_mp4_frames(sample["mp4"], meta["fps"], idx, name=key, size=shape[1:3])
    else:
        raise SampleError(key, f"has no video member (expected one of {PAYLOADS})")
    return {"key": key, "frames": frames, "label": meta.get("label", -1), "meta": meta}


def _npy_view(data: bytes, key: str = "<bytes>", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A zero-copy array view of .npy bytes: uint8 only (no pickled object arrays, no floats posing as
    pixels), C order, exactly ``shape`` when given, and exactly as many bytes as the header says."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version} is not 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        found, fortran, dtype = read_header(buf)
    except (ValueError, SyntaxError, TypeError, RecursionError) as e:
        raise SampleError(key, f"npy member is not a valid .npy array ({str(e)[:80]})") from None
    if dtype.hasobject:  # what np.load(allow_pickle=True) would unpickle: refused, never read
        raise SampleError(key, "npy member holds Python objects (a pickle); only uint8 frames are allowed")
    if dtype != np.uint8:
        raise SampleError(key, f"npy member has dtype {dtype}, expected uint8 frames")
    if fortran:
        raise SampleError(key, "npy member is in Fortran order, expected C order")
    if shape is not None and tuple(found) != shape:
        raise SampleError(key, f"npy member has shape {tuple(found)}, its json says {shape}")
    count = math.prod(found)
    if len(data) - buf.tell() != count:
        raise SampleError(key, f"npy member holds {len(data) - buf.tell()} bytes of data, its header says {count}")
    arr = np.frombuffer(data, dtype=np.uint8, count=count, offset=buf.tell())
    return arr.reshape(found)


def decode_mp4_frames(data: bytes, fps: float, indices: np.ndarray | None = None, name: str = "<bytes>",
                      size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` (sorted; None = all) of a constant-rate video held in memory.

    Seeks to the keyframe before the first index, so the cost is one keyframe interval plus the
    clip, not the whole video. Only the mp4 demuxer reads the bytes (no format guessing: a playlist
    or concat script posing as a sample never opens other files). With ``size`` (height, width),
    a stream or frame of another size raises SampleError before it is converted.
    """
    try:
        container = av.open(io.BytesIO(data), format="mp4")
    except av.error.FFmpegError as e:
        raise VideoReadError(name, f"corrupt sample ({e})") from None
    try:
        if not container.streams.video:
            raise VideoReadError(name, "sample has no video stream")
        stream = container.streams.video[0]
        if size is not None and (stream.codec_context.height, stream.codec_context.width) not in (size, (0, 0)):
            raise SampleError(name, f"mp4 stream is {stream.codec_context.width}x{stream.codec_context.height}, "
                                    f"its json says {size[1]}x{size[0]}")
        stream.codec_context.thread_count = 1
        tb, t0 = stream.time_base, stream.start_time or 0
        if tb is None:
            raise VideoReadError(name, "sample stream has no time base")
        wanted = None if indices is None else {int(i): n for n, i in enumerate(indices)}
        if wanted and min(wanted) > 0:
            container.seek(t0 + int(min(wanted) / fps / tb), stream=stream, backward=True)
        out: list = [None] * len(wanted) if wanted is not None else []
        found = 0
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            if size is not None and (frame.height, frame.width) != size:
                raise SampleError(name, f"mp4 frame is {frame.width}x{frame.height}, its json says {size[1]}x{size[0]}")
            if wanted is None:
                out.append(to_rgb(frame, reformatter))
                continue
            if frame.pts is None:
                raise VideoReadError(name, "sample has a frame without a timestamp")
            i = int(round(float((frame.pts - t0) * tb) * fps))
            if i in wanted:
                out[wanted[i]] = to_rgb(frame, reformatter)
                found += 1
                if found == len(wanted):
                    break
            elif i > max(wanted):
                break
    except (av.error.FFmpegError, OverflowError) as e:  # OverflowError: a seek target beyond int64
        raise VideoReadError(name, f"corrupt sample ({e})") from None
    finally:
        container.close()
    if wanted is not None and found < len(wanted):
        missing = sorted(i for i, n in wanted.items() if out[n] is None)
        raise VideoReadError(name, f"sample ends early: frames {missing[:3]}... not found")
    if not out:
        raise VideoReadError(name, "zero frames decoded")
    return np.stack(out)
