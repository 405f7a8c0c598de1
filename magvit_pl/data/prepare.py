"""``cli.py prepare``: turn a folder of videos (or a split list) into webdataset shards + a manifest.

    discover the videos (discover.py) -> plan the shards (output_folder.py) -> per file, in decoder
    processes (pool.py): sha256, decode scaled so the short side is ``resolution``, check the length,
    encode the sample -> per shard, once its files are back: the tar, written atomically, and its
    record ``.parts/NAME.json`` -> classes.txt and manifest.json (manifest.py)

One frozen :class:`PrepareSettings` (the arguments, checked before anything is touched) drives the
run. A re-run with the same settings keeps every shard whose tar and record match the plan. Bad files
(corrupt, truncated, empty, not a video, too short, too slow, frames too large) are skipped and listed
with the reason; nothing a file contains can crash the run, and a decoder that hangs past the time
limit is killed and replaced. A write that fails (disk full) stops the run with one line; the shards
finished before it stay valid and a re-run resumes from them. The output folder is prepare's alone:
see :mod:`magvit_pl.data.output_folder`.
"""
from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np

from magvit_pl.data.discover import VIDEO_EXTENSIONS, Item, discover
from magvit_pl.data.manifest import build_manifest
from magvit_pl.data.output_folder import (check_previous_run, claim_output, exclusive, finished_part, fingerprint,
                                          plan_shards, refuse_unrecorded, remove_own_temp_files, remove_stale, writing)
from magvit_pl.data.pool import Lost, Pool
from magvit_pl.data.prepare_report import Progress, print_summary, summary
from magvit_pl.data.shards import (FORMAT_VERSION, MAX_SAMPLE_FRAMES, encode_sample, make_key, umask_mode,
                                   write_shard)
from magvit_pl.data.transforms import center_crop
from magvit_pl.data.video_io import VideoReadError, probe, read_video
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import atomic_open, sha256_file, write_json

GOP, PIX_FMT = 16, "yuv444p"  # mp4 payload: keyframe interval (cheap seeking) and chroma layout


def prepare(
    input: str,
    output: str,
    layout: Literal["folder", "ucf101", "csv"] = "folder",
    resolution: int = 128,
    fps: float | None = None,
    max_frames: int | None = None,
    min_frames: int = 16,
    crop_square: bool = False,
    shard_size: int = 256,
    workers: int | None = None,
    val_fraction: float = 0.05,
    split_dir: str | None = None,
    split_id: int = 1,
    video_root: str | None = None,
    classes: str | None = None,
    storage: Literal["mp4", "npy"] = "mp4",
    crf: int = 18,
    timeout_s: float = 120.0,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict:
    """Decode, resize and pack videos into webdataset shards with a manifest.

    Writes ``OUTPUT/{train,val,test}-NNNNNN.tar``, ``OUTPUT/manifest.json`` and ``OUTPUT/classes.txt``.
    Re-running with the same settings only redoes unfinished shards.

    Args:
        input: 'folder': a directory of videos (class = parent folder name; a top-level
            train/val/test folder sets the split), a text file listing video paths, or one video file
            (a one-video 'train' set). 'ucf101': the UCF-101 video root (ClassName/v_*.avi). 'csv': a
            CSV file with rows path,label[,split].
        output: Directory for the shards and manifest: new (created), empty, or made by prepare.
        layout: How classes and splits are found: folder, ucf101 or csv.
        resolution: Length in pixels of the shorter side after resizing (the longer side keeps the
            aspect ratio, rounded to an even number).
        fps: Resample every video to this frame rate (nearest frame by timestamp); None keeps the
            source rate.
        max_frames: Keep at most this many frames from the start of each video; None keeps all.
        min_frames: Skip videos with fewer frames than this (after resampling).
        crop_square: Also centre-crop every video to resolution x resolution.
        shard_size: Videos per shard file.
        workers: Parallel decoding processes; None uses min(8, CPU count); 0 decodes in this process
            (no hard time limit).
        val_fraction: For splits not given by the layout: the fraction of training videos moved to
            'val', chosen by a hash of the path (the same files on every run and machine).
        split_dir: 'ucf101': the folder with classInd.txt and trainlist0N.txt / testlist0N.txt
            (default: INPUT/ucfTrainTestlist or its sibling).
        split_id: 'ucf101': which official split (1, 2 or 3).
        video_root: 'csv' (and list files): the folder relative paths start from (default: the
            folder of the list).
        classes: A text file with one class name per line that fixes the label order (e.g. the
            Kinetics-400 list); default: sorted class names found.
        storage: Sample payload: 'mp4' (H.264 4:4:4 at CRF ``crf``, ~35x smaller) or 'npy' (raw
            uint8 frames, lossless, fastest to read).
        crf: H.264 quality for 'mp4' (lower is better and larger; 18 is visually lossless).
        timeout_s: Give up on one file after this many seconds (it is listed as skipped).
        overwrite: When an earlier run used other settings, delete the shards it recorded instead of
            stopping (nothing else in the folder is touched).
        quiet: No progress bar or summary table.
    """
    return run(PrepareSettings(**locals()))  # the arguments, as one checked, frozen record


@dataclass(frozen=True)
class PrepareSettings:
    """Everything one run of prepare needs: the arguments of :func:`prepare` (documented there).
    Checked when built: the first bad value is one UserError line naming its flag and what is allowed."""

    input: str
    output: str
    layout: Literal["folder", "ucf101", "csv"]
    resolution: int
    fps: float | None
    max_frames: int | None
    min_frames: int
    crop_square: bool
    shard_size: int
    workers: int | None
    val_fraction: float
    split_dir: str | None
    split_id: int
    video_root: str | None
    classes: str | None
    storage: Literal["mp4", "npy"]
    crf: int
    timeout_s: float
    overwrite: bool
    quiet: bool

    def __post_init__(self) -> None:
        _check(self)

    @property
    def recorded(self) -> dict:
        """How a video becomes a sample, as recorded in manifest.json and every shard record: a re-run
        keeps only shards made with equal settings."""
        return dict(format_version=FORMAT_VERSION, resolution=self.resolution, fps=self.fps,
                    max_frames=self.max_frames, min_frames=self.min_frames, crop_square=self.crop_square,
                    storage=self.storage, crf=self.crf, gop=GOP, pix_fmt=PIX_FMT)

    @property
    def processes(self) -> int:
        """Decoder processes (0: decode in this process, without the hard time limit)."""
        return min(8, os.cpu_count() or 1) if self.workers is None else self.workers


def _number(value: object, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)


def _check(s: PrepareSettings) -> None:
    """One UserError line naming the flag, its value and the allowed range for the first bad option."""
    def refuse(flag: str, allowed: str):
        raise UserError(f"--{flag} {getattr(s, flag)!r:.40}: not allowed; use {allowed}")

    def in_range(flag: str, low: float, high: float, integer: bool, allowed: str, optional: bool = False) -> None:
        value = getattr(s, flag)
        if not (optional and value is None) and (not _number(value, integer) or not low <= value <= high):
            refuse(flag, allowed)

    if not _number(s.resolution, True) or not 2 <= s.resolution <= 4096 or s.resolution % 2:
        refuse("resolution", "an even number of pixels in [2, 4096]")
    if s.fps is not None and (not _number(s.fps, False) or not 0 < s.fps <= 1000):
        refuse("fps", "a frame rate in (0, 1000], or leave it unset to keep each video's own rate")
    in_range("max_frames", 1, MAX_SAMPLE_FRAMES, True, f"an integer in [1, {MAX_SAMPLE_FRAMES}], or leave it unset "
             f"to keep whole videos", optional=True)
    in_range("min_frames", 1, MAX_SAMPLE_FRAMES, True, f"an integer in [1, {MAX_SAMPLE_FRAMES}]")
    if s.max_frames is not None and s.min_frames > s.max_frames:
        refuse("min_frames", f"at most --max_frames ({s.max_frames}): every video would be too short")
    in_range("shard_size", 1, 100_000, True, "an integer in [1, 100000] (videos per shard)")
    in_range("workers", 0, 256, True, "an integer in [0, 256] (0: decode in this process), or leave it unset",
             optional=True)
    if not _number(s.val_fraction, False) or not 0 <= s.val_fraction < 1:
        refuse("val_fraction", "a fraction in [0, 1)")
    in_range("split_id", 1, 3, True, "1, 2 or 3 (the UCF-101 split)")
    if s.storage not in ("mp4", "npy"):
        refuse("storage", "mp4 or npy")
    in_range("crf", 0, 51, True, "an integer in [0, 51] (libx264 quality, 0 = lossless, 18 = default)")
    if not _number(s.timeout_s, False) or not 0 < s.timeout_s <= 86_400:
        refuse("timeout_s", "a number of seconds in (0, 86400]")


def run(s: PrepareSettings) -> dict:
    """Prepare the dataset ``s`` describes; returns the summary (see prepare_report.summary)."""
    t_start = time.perf_counter()
    found = discover(s.input, s.layout, s.val_fraction, s.split_dir, s.split_id, s.video_root, s.classes)
    if not found.items:
        raise UserError(f"no videos found in {s.input} (layout '{s.layout}', extensions "
                        f"{', '.join(VIDEO_EXTENSIONS)})")
    out = claim_output(s.output)
    with exclusive(out) as lock_fd:
        remove_own_temp_files(out)
        check_previous_run(out, s.recorded, s.overwrite)
        plan = plan_shards(found.items, s.shard_size)
        done = {name: rec for name, srcs in plan.items() if (rec := finished_part(out, name, srcs, s.recorded))}
        remove_stale(out, set(plan))
        todo = [(name, srcs) for name, srcs in plan.items() if name not in done]
        refuse_unrecorded(out, [name for name, _ in todo])
        done.update(_make_shards(out, todo, s, lock_fd))
        manifest = build_manifest(out, s.input, s.layout, s.recorded, found.class_names, [done[n] for n in plan],
                                  found.unusable, time.perf_counter() - t_start)
        _write_manifest(out, manifest, found.class_names)
    result = summary(manifest, sum(len(srcs) for _, srcs in todo), len(plan) - len(todo), shlex.quote(str(s.output)))
    if not s.quiet:
        print_summary(result, manifest)
    return result


def _write_manifest(out: Path, manifest: dict, class_names: list[str]) -> None:
    """classes.txt, then manifest.json (the file that makes the folder a dataset), atomically."""
    if not any(src["status"] == "ok" for src in manifest["sources"]):
        first = manifest["skipped"][0]
        raise UserError(f"none of the {len(manifest['sources'])} videos could be prepared (e.g. {first['path']}: "
                        f"{first['reason']}); no manifest was written")
    with writing(out / "classes.txt"), atomic_open(out / "classes.txt", "w", encoding="utf-8") as fh:
        fh.write("".join(f"{c}\n" for c in class_names))
    with writing(out / "manifest.json"):
        write_json(out / "manifest.json", manifest)
        umask_mode(out / "manifest.json")


# ----------------------------------------------------------------------------------------------
# per-file work (in the decoder processes)


@dataclass
class FileResult:
    """What a decoder process sends back for one source video (the encoded sample, never frames)."""

    sha256: str | None
    reason: str | None = None  # why the file was skipped; None: it is in ``sample``
    sample: dict | None = None  # the tar members (shards.encode_sample)
    frames: int = 0
    height: int = 0
    width: int = 0
    fps: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


def process_file(path: str, s: PrepareSettings) -> tuple[np.ndarray, float]:
    """Decode one video as prepare stores it: uint8 ``(T, H, W, 3)`` frames, scaled while decoding so the
    short side is ``s.resolution`` (centre-cropped square with ``s.crop_square``), and its frame rate.
    Raises VideoReadError, UserError or OSError for a file it cannot use."""
    src_fps = s.fps or probe(path).fps or 25.0
    frames = read_video(path, fps=s.fps, max_frames=s.max_frames, timeout_s=s.timeout_s, threads=1,
                        short_side=s.resolution)
    if len(frames) < s.min_frames:
        raise VideoReadError(path, f"too short: {len(frames)} frames < {s.min_frames}")
    if s.crop_square:
        frames = center_crop(frames, s.resolution)
    return frames, float(src_fps)


def _work(task: tuple[Item, str, PrepareSettings]) -> FileResult:
    """Decoder entry: hash, decode and encode one file. Never raises for anything the file contains."""
    item, key, s = task
    result = FileResult(sha256=None)
    try:
        result.sha256 = sha256_file(item.path)
        frames, fps = process_file(item.path, s)
    except (UserError, OSError) as e:
        result.reason = getattr(e, "reason", None) or str(e)
        return result
    except Exception as e:  # noqa: BLE001  an unexpected decoder failure must not stop the run
        result.reason = f"unexpected {type(e).__name__}: {e}"
        return result
    meta = {"label": item.label, "class": item.cls, "source": item.rel, "split": item.split, "fps": fps}
    try:
        result.sample = encode_sample(key, frames, meta, fmt=s.storage, crf=s.crf, gop=GOP, pix_fmt=PIX_FMT)
    except Exception as e:  # noqa: BLE001
        result.reason = f"encode failed: {e}"
        return result
    result.frames, result.height, result.width = (int(n) for n in frames.shape[:3])
    result.fps = fps
    return result


# ----------------------------------------------------------------------------------------------
# shards


def _make_shards(out: Path, todo: list[tuple[str, list[Item]]], s: PrepareSettings,
                 lock_fd: int | None) -> dict[str, dict]:
    """Process every file of the unfinished shards (in decoder processes, or here with ``workers`` 0);
    write each shard as soon as its files are all back. Returns shard name -> record."""
    tasks = (((name, i), (item, make_key(f"{name[:-4]}-{i:05d}", item.rel), s))
             for name, srcs in todo for i, item in enumerate(srcs))
    # start the decoder processes before the progress bar's thread exists (they are forked on Linux)
    pool = Pool(_work, s.processes, limit_s=s.timeout_s * 1.5 + 2, close_in_child=[lock_fd]) \
        if s.processes > 0 and todo else None
    records = {}
    try:
        with Progress(sum(len(srcs) for _, srcs in todo), s.quiet, f"prepare {out.name}") as progress:
            results = pool.imap(tasks) if pool is not None else ((tid, _work(task)) for tid, task in tasks)
            for name, items, got in _complete_shards(todo, results, progress):
                records[name] = _finish_shard(out, name, items, got, s.recorded)
    finally:
        if pool is not None:
            pool.close()
    return records


def _complete_shards(todo: list[tuple[str, list[Item]]], results: Iterable[tuple[tuple[str, int], object]],
                     progress: Progress) -> Iterator[tuple[str, list[Item], list[FileResult]]]:
    """(shard name, its items, their results in plan order) for each shard whose files are all back."""
    items_of = dict(todo)
    pending: dict[str, dict[int, FileResult]] = {name: {} for name, _ in todo}
    for (name, i), result in results:
        if isinstance(result, Lost):
            result = FileResult(sha256=None, reason=result.reason)
        pending[name][i] = result
        progress.advance(items_of[name][i].rel, "ok" if result.ok else "skipped")
        if len(pending[name]) == len(items_of[name]):
            got = pending.pop(name)
            yield name, items_of[name], [got[i] for i in range(len(got))]


def _finish_shard(out: Path, name: str, items: list[Item], results: list[FileResult], recorded: dict) -> dict:
    """Write the shard (ok samples in plan order) and its record; return the record."""
    ok = [r.sample for r in results if r.ok]
    record_path = out / ".parts" / f"{name}.json"
    with writing(record_path):  # claim the name before the shard exists (see output_folder)
        write_json(record_path, {"name": name, "pending": True})
    try:
        with writing(out / name):
            if ok:
                count, size = write_shard(out / name, ok)
            else:
                count, size = 0, 0
                if (out / name).is_file():  # a shard of ours from an earlier run with other files: now empty
                    (out / name).unlink()
    except BaseException:
        if not (out / name).exists():  # nothing was claimed after all
            record_path.unlink(missing_ok=True)
        raise
    record = {"name": name, "count": count, "bytes": size, "settings": recorded, "inputs": fingerprint(items),
              "sources": [_source_entry(item, r, name) for item, r in zip(items, results)]}
    with writing(record_path):
        write_json(record_path, record)
    return record


def _source_entry(item: Item, r: FileResult, shard: str) -> dict:
    """One source video as the manifest lists it."""
    src = {"path": item.rel, "class": item.cls, "label": item.label, "split": item.split, "sha256": r.sha256,
           "status": "ok" if r.ok else "skipped"}
    if r.ok:
        src.update(key=r.sample["__key__"], shard=shard, frames=r.frames, height=r.height, width=r.width, fps=r.fps)
    else:
        src["reason"] = r.reason
    return src
