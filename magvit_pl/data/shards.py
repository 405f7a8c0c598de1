"""The shard format: one webdataset sample per video, and the stages that write and decode it.

A sample is three tar members sharing a key::

    KEY.mp4    the clip, H.264 (libx264, 4:4:4, CRF 18, keyframe every 16 frames)   [format 'mp4']
    KEY.npy    or: the raw uint8 (T, H, W, 3) frames as a .npy file                 [format 'npy']
    KEY.json   {"label", "class", "source", "split", "fps", "frames", "height", "width"}

mp4 is the default (about 35x smaller; see data/README.md for the measurements). The short
keyframe interval lets :func:`decode_sample` seek to a clip instead of decoding the whole video.
Shards are written whole to a temporary name and renamed, so a ``*.tar`` that exists is complete.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from magvit_pl.data.video import VideoReadError, clip_indices, encode_video, to_rgb
from magvit_pl.io import atomic_path

FORMAT_VERSION = 1
PAYLOADS = ("mp4", "npy")
StorageFormat = Literal["mp4", "npy"]


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


def read_shard(path: str | Path) -> Iterable[dict]:
    """Iterate over the raw samples (bytes per member, plus ``__key__``) of one shard file."""
    import webdataset as wds

    return wds.tarfile_to_samples()([{"url": str(path)}])


# ----------------------------------------------------------------------------------------------
# decoding


def sample_meta(sample: dict) -> dict:
    """The parsed json member of a raw sample."""
    return json.loads(sample["json"])


def decode_sample(sample: dict, num_frames: int | None = None, stride: int = 1, start: int | None = None,
                  rng: np.random.Generator | None = None) -> dict:
    """Decode a raw sample into ``{"key", "frames" uint8 (T, H, W, 3), "label", "meta"}``.

    With ``num_frames`` only a clip is returned: ``num_frames`` frames every ``stride``, starting at
    frame ``start`` (None: random with ``rng``, centred without). For mp4 only the frames from the
    keyframe before the clip to its end are decoded. A video shorter than the clip raises ValueError.
    """
    meta = sample_meta(sample)
    key = sample["__key__"]
    if num_frames is None:
        idx = None
    else:
        idx = clip_indices(int(meta["frames"]), num_frames, stride, start, rng)
    if "npy" in sample:
        frames = _npy_view(sample["npy"])
        frames = np.array(frames if idx is None else frames[idx])  # copy: the view is read-only
    elif "mp4" in sample:
        frames = decode_mp4_frames(sample["mp4"], meta["fps"], idx, name=key)
    else:
        raise VideoReadError(key, f"sample has no video member (expected one of {PAYLOADS})")
    return {"key": key, "frames": frames, "label": int(meta.get("label", -1)), "meta": meta}


def _npy_view(data: bytes) -> np.ndarray:
    """A zero-copy array view of .npy bytes."""
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(buf)
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=buf.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def decode_mp4_frames(data: bytes, fps: float, indices: np.ndarray | None = None, name: str = "<bytes>") -> np.ndarray:
    """Decode the frames at ``indices`` (sorted; None = all) of a constant-rate video held in memory.

    Seeks to the keyframe before the first index, so the cost is one keyframe interval plus the
    clip, not the whole video.
    """
    try:
        container = av.open(io.BytesIO(data))
    except av.error.FFmpegError as e:
        raise VideoReadError(name, f"corrupt sample ({e})") from None
    try:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        tb, t0 = stream.time_base, stream.start_time or 0
        wanted = None if indices is None else {int(i): n for n, i in enumerate(indices)}
        if wanted and min(wanted) > 0:
            container.seek(t0 + int(min(wanted) / fps / tb), stream=stream, backward=True)
        out: list = [None] * len(wanted) if wanted is not None else []
        found = 0
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            if wanted is None:
                out.append(to_rgb(frame, reformatter))
                continue
            i = int(round(float((frame.pts - t0) * tb) * fps))
            if i in wanted:
                out[wanted[i]] = to_rgb(frame, reformatter)
                found += 1
                if found == len(wanted):
                    break
            elif i > max(wanted):
                break
    except av.error.FFmpegError as e:
        raise VideoReadError(name, f"corrupt sample ({e})") from None
    finally:
        container.close()
    if wanted is not None and found < len(wanted):
        missing = sorted(i for i, n in wanted.items() if out[n] is None)
        raise VideoReadError(name, f"sample ends early: frames {missing[:3]}... not found")
    if not out:
        raise VideoReadError(name, "zero frames decoded")
    return np.stack(out)
