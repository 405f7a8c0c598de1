"""Sets of clips on disk, read for evaluation (``fvd``) and written by ``sample``.

A set is one of:

* a **folder of videos**: every file PyAV/FFmpeg reads (mp4, avi, mkv, webm, gif …) anywhere below it is one
  video, and so is every folder that directly holds image frames (png, jpg …, in natural name order: the
  layout of StyleGAN-V's evaluation scripts and of ``sample --format png``);
* a **prepared shard folder** (``manifest.json`` from ``cli.py prepare``), one split of it;
* an **.npz of clips**: one uint8 array ``(N, T, H, W, 3)`` (named ``clips``/``videos``, or the only array;
  optional ``names`` and ``labels``), read without pickles.

Every video gives ``clips_per_video`` clips of ``num_frames`` frames taken every ``stride`` frames: the first
clip starts at frame 0, more are spread evenly over the video. Videos too short for one clip, and files that do
not decode, are skipped and listed (:attr:`ClipSet.skipped`). Frames are then brought to ``resolution``:
``crop`` scales the short side and centre-crops a square (how ``prepare`` and the data module make clips),
``squash`` resizes to a square ignoring the aspect ratio; without ``resolution`` clips keep their size.

Clips are written losslessly (:func:`write_clip`): a folder of PNG frames per clip, or FFV1 in ``.mkv`` (RGB);
:func:`write_npz` writes a whole set as one ``.npz``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Literal

import av
import numpy as np

from magvit_pl.data.manifest import read_manifest
from magvit_pl.data.shards import decode_sample, read_shard
from magvit_pl.data.transforms import center_crop, resize, resize_short_side
from magvit_pl.data.video_io import read_video
from magvit_pl.run.errors import MissingFileError, UserError, first_line
from magvit_pl.run.files import atomic_path, sha256_file
from magvit_pl.run.media import save_png

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".wmv", ".flv", ".3gp")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LOAD_TIMEOUT_S = 60.0
Resize = Literal["crop", "squash"]
ClipFormat = Literal["png", "mkv"]


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from each video and sized (see the module docstring)."""

    num_frames: int = 16
    stride: int = 1
    clips_per_video: int = 1
    resolution: int | None = None
    resize: Resize = "crop"

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "clips_per_video"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be an integer >= 1")
        if self.resolution is not None and self.resolution < 1:
            raise UserError(f"--resolution {self.resolution}: must be >= 1 (or leave it out to keep the clips' size)")
        if self.resize not in ("crop", "squash"):
            raise UserError(f"--resize {self.resize}: choose crop or squash")

    @property
    def span(self) -> int:
        """Frames of the source one clip covers."""
        return (self.num_frames - 1) * self.stride + 1

    def starts(self, length: int) -> list[int]:
        """First frames of the clips of a ``length``-frame video (empty when it is too short)."""
        if length < self.span:
            return []
        return sorted({int(s) for s in np.linspace(0, length - self.span, self.clips_per_video).round()})

    def sized(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (T, H, W, 3) uint8 brought to ``resolution`` (unchanged without one)."""
        if self.resolution is None:
            return frames
        if self.resize == "squash":
            return frames if frames.shape[1:3] == (self.resolution,) * 2 else resize(frames, self.resolution, self.resolution)
        return center_crop(resize_short_side(frames, self.resolution), self.resolution)

    def record(self) -> dict[str, Any]:
        """The clip selection, for a protocol record."""
        return {"clip_frames": self.num_frames, "clip_stride": self.stride, "clips_per_video": self.clips_per_video,
                "clip_start": "0" if self.clips_per_video == 1 else "evenly spaced from 0",
                "clip_resolution": self.resolution, "clip_resize": self.resize if self.resolution else "none (own size)"}


@dataclasses.dataclass
class Clip:
    name: str
    frames: np.ndarray  # uint8 (T, H, W, 3)
    label: int = -1


class ClipSet:
    """The clips of a folder of videos, a shard folder's ``split`` or an ``.npz`` (``flag`` names it in errors)."""

    def __init__(self, path: str | Path, flag: str, split: str = "test"):
        self.path, self.flag, self.split = Path(path), flag, split
        self.skipped: list[str] = []
        if not self.path.exists():
            raise MissingFileError(f"{flag} {path}: not found; expected a folder of videos, a prepared shard folder or an .npz of clips")
        if self.path.is_file():
            if self.path.suffix.lower() != ".npz":
                raise UserError(f"{flag} {path}: a file; expected a folder of videos, a prepared shard folder or an .npz of clips")
            self.kind = "npz"
            self._npz = read_clips_npz(self.path, flag)
            self.videos = len(self._npz["clips"])
        elif (self.path / "manifest.json").is_file():
            self.kind = "shards"
            self.manifest = read_manifest(self.path)
            splits = self.manifest["splits"]
            if split not in splits:
                raise UserError(f"{flag} {path}: has no split {split!r}; pass --split with one of {', '.join(splits)}")
            self.videos = int(splits[split].get("count", 0))
        else:
            self.kind = "videos"
            self._items = _folder_items(self.path)
            self.videos = len(self._items)
        if self.videos == 0:
            raise UserError(f"{flag} {path}: holds no videos ({'split ' + split if self.kind == 'shards' else self.kind})")

    # -- reading
    def clips(self, spec: ClipSpec, limit: int | None = None) -> Iterator[Clip]:
        """Up to ``limit`` clips (all without one), in a fixed order: sorted names, shard order, array order."""
        count = 0
        for name, frames, label in self._videos(spec):
            starts = spec.starts(len(frames))
            if not starts:
                self.skipped.append(f"{name}: {len(frames)} frames, a clip needs {spec.span}")
                continue
            for i, start in enumerate(starts):
                if limit is not None and count >= limit:
                    return
                clip = frames[start : start + spec.span : spec.stride]
                yield Clip(name if len(starts) == 1 and spec.clips_per_video == 1 else f"{name}#{i}", spec.sized(clip), label)
                count += 1

    def _videos(self, spec: ClipSpec) -> Iterator[tuple[str, np.ndarray, int]]:
        """(name, frames, label) per video; only the frames the clips need when one clip is taken per video."""
        needed = spec.span if spec.clips_per_video == 1 else None
        if self.kind == "npz":
            names, labels = self._npz["names"], self._npz["labels"]
            for i, clip in enumerate(self._npz["clips"]):
                yield names[i], clip, labels[i]
        elif self.kind == "shards":
            yield from self._shard_videos(needed)
        else:
            for name, item in self._items:
                try:
                    if isinstance(item, list):  # a folder of frames
                        frames = np.stack([read_video(p, max_frames=1, timeout_s=LOAD_TIMEOUT_S)[0] for p in item[:needed]])
                    else:
                        frames = read_video(item, max_frames=needed, timeout_s=LOAD_TIMEOUT_S)
                except (UserError, ValueError) as err:  # VideoReadError names the file; frames of several sizes
                    self.skipped.append(f"{name}: {str(err)[:160]}")
                    continue
                yield name, frames, -1

    def _shard_videos(self, needed: int | None) -> Iterator[tuple[str, np.ndarray, int]]:
        for shard in self.manifest["splits"][self.split].get("shards", []):
            for sample in read_shard(self.path / shard["name"]):
                try:
                    out = decode_sample(sample, num_frames=needed, start=0) if needed else decode_sample(sample)
                    frames = out["frames"]  # one clip per video: only the frames it spans are decoded
                except ValueError as err:  # too short for one clip
                    self.skipped.append(f"{sample['__key__']}: {str(err)[:160]}")
                    continue
                yield out["key"], frames, int(out["label"])

    # -- identity
    def describe(self) -> dict[str, Any]:
        """What the set is, for a protocol record: path, kind, videos, split, a sha256 of its contents' listing."""
        out = {"path": str(self.path), "kind": self.kind, "videos": self.videos}
        if self.kind == "shards":
            out["split"] = self.split
        out["sha256"] = self.identity()
        return out

    def identity(self) -> str:
        """sha256 identifying the data: of the .npz file, of the manifest and split, or of the listing (names, sizes)."""
        if self.kind == "npz":
            return sha256_file(self.path)
        if self.kind == "shards":
            return hashlib.sha256(f"{sha256_file(self.path / 'manifest.json')}:{self.split}".encode()).hexdigest()
        listing = [(name, [p.stat().st_size for p in item] if isinstance(item, list) else item.stat().st_size) for name, item in self._items]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _folder_items(root: Path) -> list[tuple[str, Path | list[Path]]]:
    """(name relative to ``root`` without the file suffix, video file or sorted frame files) of every video below
    ``root``, sorted."""
    items: list[tuple[str, Path | list[Path]]] = []
    for folder in [root, *sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: _natural(str(p)))]:
        files = [p for p in folder.iterdir() if p.is_file()]
        frames = sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: _natural(p.name))
        if frames:
            items.append((folder.relative_to(root).as_posix() if folder != root else ".", frames))
        items += [(p.relative_to(root).with_suffix("").as_posix(), p) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    stems = [name for name, _ in items]  # names without the file suffix pair a.mkv with a.mp4, a frame folder a/, npz name a
    items = [(name if stems.count(name) == 1 or isinstance(item, list) else item.relative_to(root).as_posix(), item)
             for name, item in items]
    return sorted(items, key=lambda item: _natural(item[0]))


def read_clips_npz(path: str | Path, flag: str) -> dict[str, Any]:
    """``{"clips": uint8 (N, T, H, W, 3), "names": [str], "labels": [int]}`` of an .npz of clips (no pickles);
    one line for anything else (an FVD statistics file included)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            if "mu" in files and "sigma" in files:
                raise UserError(f"{flag} {path}: holds FVD statistics, not clips (statistics are accepted by --real only)")
            key = next((k for k in ("clips", "videos") if k in files), files[0] if len(files) == 1 else None)
            if key is None:
                raise UserError(f"{flag} {path}: name the clip array 'clips' (found arrays {', '.join(files)})")
            clips = z[key]
            names = [str(n) for n in z["names"]] if "names" in files else [f"{i:05d}" for i in range(len(clips))]
            labels = [int(v) for v in z["labels"]] if "labels" in files else [-1] * len(clips)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{flag} {path}: not a readable .npz without pickles ({first_line(err, default=type(err).__name__)[:120]})") from None
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise UserError(f"{flag} {path}: '{key}' must be uint8 clips (N, T, H, W, 3), found {clips.dtype} {clips.shape}")
    if len(names) != len(clips) or len(labels) != len(clips):
        raise UserError(f"{flag} {path}: 'names' and 'labels' must have one entry per clip ({len(clips)})")
    return {"clips": clips, "names": names, "labels": labels}


# ------------------------------------------------------------------------------------------- writing
def write_clip(folder: str | Path, name: str, frames: np.ndarray, fmt: ClipFormat = "png", fps: float = 8.0) -> Path:
    """Write uint8 ``frames`` (T, H, W, 3) losslessly: ``folder/name/00000.png …`` or ``folder/name.mkv`` (FFV1, RGB)."""
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if fmt == "png":
        out = Path(folder) / name
        out.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            save_png(out / f"{i:05d}.png", frame)
        return out
    if fmt != "mkv":
        raise UserError(f"--format {fmt}: choose png, mkv or npz")
    out = Path(folder) / f"{name}.mkv"
    with atomic_path(out) as tmp:
        with av.open(str(tmp), mode="w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
            for i, frame in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="bgr0")
                video_frame.pts = i
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode(None))
    return out


def write_npz(path: str | Path, clips: np.ndarray, names: list[str], **arrays: np.ndarray) -> Path:
    """A whole set as one ``.npz`` (``clips`` uint8 (N, T, H, W, 3), ``names``, any more arrays), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        np.savez(tmp, clips=np.asarray(clips, np.uint8), names=np.asarray(names, dtype=str), **arrays)
    return path
