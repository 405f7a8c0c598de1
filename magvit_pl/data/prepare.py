"""``cli.py prepare``: turn a folder of videos (or a split list) into webdataset shards + a manifest.

Pipeline per file, in a pool of worker processes: sha256 -> decode (optional fps resampling, scaled
while decoding so the short side is ``resolution``) -> check length -> encode the sample. The main
process groups results into shards in a fixed plan (files sorted per split, ``shard_size`` per
shard), writes each shard atomically when all its files are done, and records it in
``.parts/NAME.json``. A re-run with the same settings skips every shard whose tar and record match
the plan. Bad files (corrupt, truncated, empty, not a video, too short, too slow, frames too large)
are skipped and listed with the reason; nothing a file contains can crash the run, and a worker that
hangs past the time limit is killed and replaced. A write that fails (disk full) stops the run with
one line; the shards finished before it stay valid and a re-run resumes from them.

The output folder is prepare's alone: every option is checked before it is touched; a non-empty
folder prepare did not make is refused; one run at a time holds ``OUTPUT/.prepare.lock`` (an
``flock`` the kernel drops when the process dies, so a killed run never blocks the next); and only
files prepare recorded (shards listed in its manifest or in ``.parts/`` records, which are written
before their shard) or its own temporary files are ever removed or replaced. Decoder workers die
with the main process (``PR_SET_PDEATHSIG`` on Linux, and end-of-file on their pipe elsewhere).
"""
from __future__ import annotations

import contextlib
import csv
import errno
import gc
import hashlib
import io
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import signal
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from magvit_pl.data.shards import (FORMAT_VERSION, MAX_SAMPLE_FRAMES, SHARD_NAME, class_name_problem, encode_sample,
                                   make_key, shard_name, umask_mode, write_shard)
from magvit_pl.data.video import VideoReadError, center_crop, probe, read_video
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.files import atomic_open, write_json

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".wmv", ".flv", ".3gp")
SPLITS = ("train", "val", "test")
GOP, PIX_FMT = 16, "yuv444p"  # mp4 payload: keyframe interval (cheap seeking) and chroma layout
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test", "eval": "test"}
CREATED_BY = "magvit_pl.data.prepare"
LOCK_NAME = ".prepare.lock"
MAX_LIST_BYTES = 1 << 30  # a list / CSV / classes file larger than this is not one
# the temporary names io.atomic_path gives prepare's own files (mkstemp: 8 random characters)
_OWN_TEMP = re.compile(r"\.(?:(?:train|val|test)-\d{6}\.[a-z0-9_]{8}\.tmp\.tar|manifest\.[a-z0-9_]{8}\.tmp\.json"
                       r"|classes\.[a-z0-9_]{8}\.tmp\.txt)")
_OWN_PART_TEMP = re.compile(r"\.(?:train|val|test)-\d{6}\.tar\.[a-z0-9_]{8}\.tmp\.json")


@dataclass(frozen=True)
class Item:
    """One source video: where it is, its name in the manifest, its class and split."""

    path: str
    rel: str
    label: int
    cls: str
    split: str


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
    t_start = time.perf_counter()
    _check_options(resolution=resolution, fps=fps, max_frames=max_frames, min_frames=min_frames, shard_size=shard_size,
                   workers=workers, val_fraction=val_fraction, split_id=split_id, storage=storage, crf=crf,
                   timeout_s=timeout_s)
    items, class_names, unusable = _discover(input, layout, val_fraction, split_dir, split_id, video_root, classes)
    if not items:
        raise UserError(f"no videos found in {input} (layout '{layout}', extensions {', '.join(VIDEO_EXTENSIONS)})")
    out = _claim_output(output)
    with _exclusive(out) as lock_fd:
        _remove_own_temp_files(out)
        settings = dict(format_version=FORMAT_VERSION, resolution=resolution, fps=fps, max_frames=max_frames,
                        min_frames=min_frames, crop_square=crop_square, storage=storage, crf=crf, gop=GOP,
                        pix_fmt=PIX_FMT)
        _check_previous_run(out, settings, overwrite)
        plan = _plan(items, shard_size)
        parts_dir = out / ".parts"
        done = {name: rec for name, srcs in plan.items() if (rec := _finished_part(out, name, srcs, settings))}
        _remove_stale(out, set(plan))
        todo = [(name, srcs) for name, srcs in plan.items() if name not in done]
        _refuse_unrecorded(out, [name for name, _ in todo])
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        job = dict(resolution=resolution, fps=fps, max_frames=max_frames, min_frames=min_frames,
                   crop_square=crop_square, storage=storage, crf=crf, timeout_s=timeout_s)
        n_files = sum(len(s) for _, s in todo)
        # start the worker processes before the progress bar's thread exists (they are forked on Linux)
        pool = _Pool(workers, limit_s=timeout_s * 1.5 + 2, close_in_child=[lock_fd]) if workers > 0 and todo else None
        try:
            with _Progress(n_files, quiet, f"prepare {out.name}") as progress:
                for name, record in _run_shards(todo, job, pool, out, parts_dir, settings, progress):
                    done[name] = record
        finally:
            if pool is not None:
                pool.close()
        manifest = _manifest(out, input, layout, settings, class_names, plan, done, unusable,
                             time.perf_counter() - t_start)
        if not any(s["status"] == "ok" for s in manifest["sources"]):
            first = manifest["skipped"][0]
            raise UserError(f"none of the {len(manifest['sources'])} videos could be prepared (e.g. {first['path']}: "
                            f"{first['reason']}); no manifest was written")
        with _writing(out / "classes.txt"), atomic_open(out / "classes.txt", "w", encoding="utf-8") as fh:
            fh.write("".join(f"{c}\n" for c in class_names))
        with _writing(out / "manifest.json"):
            write_json(out / "manifest.json", manifest)
            umask_mode(out / "manifest.json")
    summary = _summary(manifest, n_files, len(plan) - len(todo))
    if not quiet:
        _print_summary(summary, manifest)
    return summary


# ----------------------------------------------------------------------------------------------
# checking the options and claiming the output folder (before anything is written)


def _number(value: object, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)


def _check_options(**opts: Any) -> None:
    """One UserError line naming the flag, its value and the allowed range for the first bad option."""
    def refuse(flag: str, allowed: str):
        raise UserError(f"--{flag} {opts[flag]!r:.40}: not allowed; use {allowed}")

    def in_range(flag: str, low: float, high: float, integer: bool, allowed: str, optional: bool = False) -> None:
        value = opts[flag]
        if optional and value is None:
            return
        if not _number(value, integer) or not low <= value <= high:
            refuse(flag, allowed)

    res = opts["resolution"]
    if not _number(res, True) or not 2 <= res <= 4096 or res % 2:
        refuse("resolution", "an even number of pixels in [2, 4096]")
    fps = opts["fps"]
    if fps is not None and (not _number(fps, False) or not 0 < fps <= 1000):
        refuse("fps", "a frame rate in (0, 1000], or leave it unset to keep each video's own rate")
    in_range("max_frames", 1, MAX_SAMPLE_FRAMES, True, f"an integer in [1, {MAX_SAMPLE_FRAMES}], or leave it unset "
             f"to keep whole videos", optional=True)
    in_range("min_frames", 1, MAX_SAMPLE_FRAMES, True, f"an integer in [1, {MAX_SAMPLE_FRAMES}]")
    if opts["max_frames"] is not None and opts["min_frames"] > opts["max_frames"]:
        refuse("min_frames", f"at most --max_frames ({opts['max_frames']}): every video would be too short")
    in_range("shard_size", 1, 100_000, True, "an integer in [1, 100000] (videos per shard)")
    in_range("workers", 0, 256, True, "an integer in [0, 256] (0: decode in this process), or leave it unset",
             optional=True)
    if not _number(opts["val_fraction"], False) or not 0 <= opts["val_fraction"] < 1:
        refuse("val_fraction", "a fraction in [0, 1)")
    in_range("split_id", 1, 3, True, "1, 2 or 3 (the UCF-101 split)")
    if opts["storage"] not in ("mp4", "npy"):
        refuse("storage", "mp4 or npy")
    in_range("crf", 0, 51, True, "an integer in [0, 51] (libx264 quality, 0 = lossless, 18 = default)")
    if not _number(opts["timeout_s"], False) or not 0 < opts["timeout_s"] <= 86_400:
        refuse("timeout_s", "a number of seconds in (0, 86400]")


def _claim_output(output: str) -> Path:
    """The output folder, created if absent; refused in one line when it is a file, cannot be created,
    or is a non-empty folder that prepare did not make."""
    out = Path(output).expanduser()
    if out.is_dir():
        try:
            entries = sorted(os.listdir(out))
        except OSError as e:
            raise UserError(f"--output {output}: cannot list the folder ({e.strerror or e})") from None
        if entries and not _made_by_prepare(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"--output {output} is a non-empty folder that prepare did not make ({shown}); prepare "
                            f"never deletes or replaces files it did not write: choose a new or empty folder")
        return out
    if out.exists() or out.is_symlink():
        raise UserError(f"--output {output} is {'a file' if out.is_file() else 'not a folder'}; "
                        f"give a folder for the shards (created if absent)")
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"--output {output}: cannot create the folder ({e.strerror or e})") from None
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _made_by_prepare(out: Path) -> bool:
    """Whether ``out`` holds prepare's lock file, its manifest, or its shard records."""
    if (out / LOCK_NAME).is_file():
        return True
    manifest = _read_json(out / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("created_by") == CREATED_BY:
        return True
    return bool(_part_records(out))


def _part_records(out: Path) -> dict[str, dict]:
    """``.parts/NAME.json`` records (finished or pending) whose name field matches their file: name -> record."""
    records = {}
    parts = out / ".parts"
    for p in sorted(parts.glob("*.tar.json")) if parts.is_dir() else []:
        rec = _read_json(p)
        name = p.name[: -len(".json")]
        if isinstance(rec, dict) and rec.get("name") == name and SHARD_NAME.fullmatch(name):
            records[name] = rec
    return records


def _recorded_shards(out: Path) -> set[str]:
    """Shard names prepare recorded in ``out``: listed in its manifest or in a part record. Only these
    (and prepare's temporary files) are ever removed or replaced."""
    names = set(_part_records(out))
    manifest = _read_json(out / "manifest.json")
    ours = isinstance(manifest, dict) and manifest.get("created_by") == CREATED_BY
    if ours and isinstance(manifest.get("splits"), dict):
        for entry in manifest["splits"].values():
            for shard in entry.get("shards", []) if isinstance(entry, dict) else []:
                name = shard.get("name") if isinstance(shard, dict) else None
                if isinstance(name, str) and SHARD_NAME.fullmatch(name) and ".." not in name:
                    names.add(name)
    return names


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[int | None]:
    """Hold an exclusive ``flock`` on ``OUT/.prepare.lock`` (yields its descriptor); a second run is
    refused in one line. The kernel drops the lock when the holder dies, so a killed run never blocks
    the next one. (No ``fcntl``, e.g. Windows: no lock.)"""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    path = out / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise UserError(f"--output {out}: cannot create {LOCK_NAME} ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"--output {out}: cannot lock {path} ({e.strerror or e})") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise UserError(f"another prepare (pid {holder}) is writing to {out}; wait for it to finish or choose "
                            f"another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _remove_own_temp_files(out: Path) -> None:
    """Delete the temporary files a killed run of prepare left (only names io.atomic_path gave ours)."""
    for folder, pattern in ((out, _OWN_TEMP), (out / ".parts", _OWN_PART_TEMP)):
        for p in folder.iterdir() if folder.is_dir() else []:
            if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()


def _refuse_unrecorded(out: Path, names: list[str]) -> None:
    """A shard this run would write whose name is taken by a file prepare did not record: one line."""
    recorded = _recorded_shards(out)
    for name in names:
        if (out / name).exists() or (out / name).is_symlink():
            if name not in recorded:
                raise UserError(f"{out / name} exists but prepare did not write it (no record lists it); move it "
                                f"away or choose another --output")


# ----------------------------------------------------------------------------------------------
# finding the videos, their classes and splits


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _read_text(path: Path) -> str:
    """The text of a list / CSV / classes file; one line for a missing, unreadable or binary file."""
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise UserError(f"{path} is larger than {MAX_LIST_BYTES >> 20} MB: not a list of videos")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    if b"\0" in data[:1 << 20]:
        raise UserError(f"{path} is not a text file (it holds NUL bytes); give a folder, a single video, a list of "
                        f"paths or a CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); give a "
                        f"folder, a single video, a list of paths or a CSV") from None


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in _read_text(path).splitlines() if ln.strip() and not ln.startswith("#")]


def _discover(input: str, layout: str, val_fraction: float, split_dir: str | None, split_id: int,
              video_root: str | None, classes: str | None) -> tuple[list[Item], list[str], list[dict]]:
    """All source videos of ``input`` as Items, the class names in label order, and the entries found
    that cannot be used ({path, reason}: symlink loops, broken links, unreadable folders)."""
    src = Path(input).expanduser()
    if not src.exists():
        raise MissingFileError(f"input not found: {src}")
    unusable: list[dict] = []
    if layout == "ucf101":
        items, names = _discover_ucf101(src, val_fraction, split_dir, split_id)
        _check_class_names(names, "classInd.txt")
        return items, names, unusable
    if layout == "csv":
        rows = _csv_rows(src)
        base = Path(video_root) if video_root else src.parent
    elif layout == "folder":
        if src.is_dir():
            paths, unusable = _walk_videos(src)
            base, rows = src, [(str(p.relative_to(src)), None, None) for p in paths]
        elif _is_video(src):  # one video file: a one-video training set
            base, rows = src.parent, [(src.name, None, "train")]
        else:
            base = Path(video_root) if video_root else src.parent
            rows = [(ln, None, None) for ln in _read_lines(src)]
        rows = [(rel, label or _folder_class(rel, base), split or _folder_split(rel)) for rel, label, split in rows]
    else:
        raise UserError(f"unknown --layout '{layout}': use folder, ucf101 or csv")
    for rel, cls, _ in rows:
        _check_class_names([cls], rel)
    names = _class_order([r[1] for r in rows], classes)
    _check_class_names(names, f"--classes {classes}")
    if len(set(names)) != len(names):
        twice = next(c for c in names if names.count(c) > 1)
        raise UserError(f"class '{twice}' is listed twice in --classes {classes}")
    index = {c: i for i, c in enumerate(names)}
    items = []
    for rel, cls, split in rows:
        if cls not in index:
            raise UserError(f"class '{cls}' of {rel} is not in the --classes file {classes}")
        split = _normalise_split(split, rel) or ("val" if _hash_fraction(rel) < val_fraction else "train")
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        items.append(Item(str(path), rel, index[cls], cls, split))
    return items, names, unusable


def _check_class_names(names: Iterable[str], where: str) -> None:
    """Refuse (one line) a class name that would not survive classes.txt (one name per line)."""
    for name in names:
        if (problem := class_name_problem(name)) is not None:
            raise UserError(f"class name {name!r:.80} (from {where}) {problem}; prepare refuses it because "
                            f"classes.txt holds one name per line: rename the folder or fix the label")


def _walk_videos(src: Path) -> tuple[list[Path], list[dict]]:
    """Video files under ``src`` (hidden entries ignored; folder symlinks followed, except one leading
    back to a folder above it), and the entries that cannot be used, each with a reason: symlink loops,
    broken symlinks, unreadable folders, video names that are not regular files."""
    found: list[Path] = []
    unusable: list[dict] = []

    def skip(path: Path, reason: str) -> None:
        unusable.append({"path": str(path.relative_to(src)), "reason": reason})

    top = os.stat(src)
    stack = [(src, frozenset({(top.st_dev, top.st_ino)}))]
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skip(folder, f"unreadable folder ({e.strerror or e})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as e:
                if e.errno == errno.ELOOP:
                    skip(path, "symlink loop")
                elif entry.is_symlink() and e.errno == errno.ENOENT:
                    skip(path, "broken symlink (its target does not exist)")
                else:
                    skip(path, f"unreadable ({e.strerror or e})")
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in above:
                    skip(path, "symlink loop (links back to a folder above it)")
                else:
                    stack.append((path, above | {(st.st_dev, st.st_ino)}))
            elif _is_video(path):
                if stat.S_ISREG(st.st_mode):
                    found.append(path)
                else:
                    skip(path, "not a regular file")
    unusable.sort(key=lambda u: u["path"])
    return sorted(found), unusable


def _folder_split(rel: str) -> str | None:
    first = Path(rel).parts[0].lower() if len(Path(rel).parts) > 2 else ""
    first = SPLIT_ALIASES.get(first, first)
    return first if first in SPLITS else None


def _folder_class(rel: str, base: Path) -> str:
    parent = Path(rel).parent.name
    return parent or base.resolve().name


def _normalise_split(split: str | None, rel: str) -> str | None:
    if split is None or split == "":
        return None
    s = SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())
    if s not in SPLITS:
        raise UserError(f"unknown split '{split}' for {rel}: use one of {', '.join(SPLITS)}")
    return s


def _class_order(found: Iterable[str], classes_file: str | None) -> list[str]:
    if classes_file:
        return _read_lines(Path(classes_file))
    names = sorted(set(found))
    if all(n.isdigit() for n in names):
        names.sort(key=int)
    return names


def _csv_rows(path: Path) -> list[tuple[str, str, str | None]]:
    """Rows (path, label, split or None) of a path,label[,split] CSV, with or without a header."""
    if not path.is_file():
        raise UserError(f"--layout csv needs a CSV file as --input, got the folder {path}")
    try:
        rows = [r for r in csv.reader(io.StringIO(_read_text(path), newline="")) if r and not r[0].startswith("#")]
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV ({e}); expected rows path,label[,split]") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    out = []
    for n, r in enumerate(rows, 1):
        if len(r) < 2:
            raise UserError(f"{path} row {n}: expected path,label[,split], got {','.join(r)!r}")
        out.append((r[0].strip(), r[1].strip(), r[2].strip() if len(r) > 2 else None))
    return out


def _discover_ucf101(root: Path, val_fraction: float, split_dir: str | None, split_id: int) -> tuple[list[Item], list[str]]:
    """UCF-101 official splits: classInd.txt ('1 ApplyEyeMakeup'), trainlist0N.txt ('Class/v_x.avi 1'),
    testlist0N.txt ('Class/v_x.avi'). 'val' (if val_fraction > 0) takes whole groups (v_*_gNN_*)
    out of train, because clips of one group come from one long video."""
    if split_id not in (1, 2, 3):
        raise UserError(f"--split_id must be 1, 2 or 3 for UCF-101, got {split_id}")
    candidates = [Path(split_dir)] if split_dir else [root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"]
    sdir = next((d for d in candidates if (d / "classInd.txt").is_file()), None)
    if sdir is None:
        raise MissingFileError(f"UCF-101 split files (classInd.txt, trainlist0{split_id}.txt) not found in "
                               f"{' or '.join(map(str, candidates))}; pass --split_dir")
    names = [ln.split()[1] for ln in _read_lines(sdir / "classInd.txt")]
    index = {c: i for i, c in enumerate(names)}
    items = []
    for split, fname in (("train", f"trainlist0{split_id}.txt"), ("test", f"testlist0{split_id}.txt")):
        for ln in _read_lines(sdir / fname):
            rel = ln.split()[0]
            cls = rel.split("/")[0]
            if cls not in index:
                raise UserError(f"{sdir / fname}: class '{cls}' of {rel} is not in classInd.txt")
            s = split
            if split == "train" and val_fraction > 0:
                group = Path(rel).stem.rsplit("_", 1)[0]  # v_Class_g08_c01 -> v_Class_g08
                s = "val" if _hash_fraction(group) < val_fraction else "train"
            items.append(Item(str(root / rel), rel, index[cls], cls, s))
    return items, names


# ----------------------------------------------------------------------------------------------
# shard plan and resume


def _plan(items: list[Item], shard_size: int) -> dict[str, list[Item]]:
    """Shard name -> its sources: per split, files sorted by name, ``shard_size`` per shard."""
    plan: dict[str, list[Item]] = {}
    for split in SPLITS:
        group = sorted((it for it in items if it.split == split), key=lambda it: it.rel)
        for s, first in enumerate(range(0, len(group), shard_size)):
            plan[shard_name(split, s)] = group[first : first + shard_size]
    return plan


def _fingerprint(items: list[Item]) -> list[list[Any]]:
    out = []
    for it in items:
        try:
            st = os.stat(it.path)
            out.append([it.rel, it.label, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([it.rel, it.label, None, None])
    return out


def _finished_part(out: Path, name: str, items: list[Item], settings: dict) -> dict | None:
    """The record of shard ``name`` if a previous run finished it with these sources and settings."""
    rec = _read_json(out / ".parts" / f"{name}.json")
    if not isinstance(rec, dict) or rec.get("settings") != settings or rec.get("inputs") != _fingerprint(items):
        return None
    tar = out / name
    if not isinstance(rec.get("count"), int):
        return None
    if rec["count"] > 0 and not (tar.is_file() and tar.stat().st_size == rec.get("bytes")):
        return None
    return rec


def _check_previous_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Stop (one line) when ``out`` holds a manifest made with other settings; with ``overwrite``,
    delete what that run recorded instead (and nothing else)."""
    path = out / "manifest.json"
    if not path.is_file():
        return
    manifest = _read_json(path)
    old = manifest.get("settings") if isinstance(manifest, dict) else None
    if old == settings:
        return
    if not overwrite:
        raise UserError(f"{out} holds shards made with other settings ({str(old)[:300]}); pass --overwrite true to "
                        f"replace them or choose another --output")
    _remove_recorded(out, _recorded_shards(out))
    path.unlink()


def _remove_stale(out: Path, planned: set[str]) -> None:
    """Delete the shards (and records) prepare recorded that the current plan no longer has."""
    _remove_recorded(out, _recorded_shards(out) - planned)


def _remove_recorded(out: Path, names: set[str]) -> None:
    """Delete recorded shards ``names`` and their records (names are plain file names: SHARD_NAME)."""
    for name in sorted(names):
        for p in (out / name, out / ".parts" / f"{name}.json"):
            if p.is_file() or p.is_symlink():
                p.unlink()


# ----------------------------------------------------------------------------------------------
# per-file work (runs in the worker processes)


def process_file(path: str, resolution: int, fps: float | None, max_frames: int | None, min_frames: int,
                 crop_square: bool, storage: str, crf: int, timeout_s: float) -> dict:
    """Decode and encode one video. Returns {'status': 'ok', 'frames_data', ...} or
    {'status': 'skipped', 'reason'}; never raises for anything the file contains."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"sha256": None}
    try:
        res["sha256"] = _sha256(path)
        src_fps = fps or probe(path).fps or 25.0
        frames = read_video(path, fps=fps, max_frames=max_frames, timeout_s=timeout_s, threads=1,
                            short_side=resolution)
        if len(frames) < min_frames:
            raise VideoReadError(path, f"too short: {len(frames)} frames < {min_frames}")
        if crop_square:
            frames = center_crop(frames, resolution)
        res.update(status="ok", frames=frames, fps=float(src_fps))
    except (UserError, OSError) as e:
        res.update(status="skipped", reason=getattr(e, "reason", None) or str(e))
    except Exception as e:  # noqa: BLE001  an unexpected decoder failure must not stop the run
        res.update(status="skipped", reason=f"unexpected {type(e).__name__}: {e}")
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _encode(res: dict, key: str, item: Item, storage: str, crf: int) -> dict:
    meta = {"label": item.label, "class": item.cls, "source": item.rel, "split": item.split, "fps": res["fps"]}
    return encode_sample(key, res["frames"], meta, fmt=storage, crf=crf, gop=GOP, pix_fmt=PIX_FMT)


def _work(args: tuple) -> dict:
    """Worker entry: decode one file, then encode its sample (the bytes travel back, not frames)."""
    item, key, job = args
    res = process_file(item.path, job["resolution"], job["fps"], job["max_frames"], job["min_frames"],
                       job["crop_square"], job["storage"], job["crf"], job["timeout_s"])
    if res["status"] == "ok":
        try:
            res["sample"] = _encode(res, key, item, job["storage"], job["crf"])
            res["num_frames"], res["height"], res["width"] = res["frames"].shape[:3]
        except Exception as e:  # noqa: BLE001
            res.update(status="skipped", reason=f"encode failed: {e}")
        del res["frames"]
    return res


# ----------------------------------------------------------------------------------------------
# a process pool with a hard per-task time limit


PARENT_POLL_S = 2.0  # an idle worker checks this often that its parent still lives


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then make
    sure the parent did not die before that took effect."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # no prctl: the pipe's end-of-file and the polling below still end the worker
    if os.getppid() != parent_pid:
        os._exit(0)


def _worker_loop(conn: mp.connection.Connection, inherited: list, parent_pid: int) -> None:
    """A decoder process: run tasks from ``conn`` until told to stop or the parent is gone.

    A forked child holds copies of every descriptor of the parent: the parent's ends of all worker
    pipes (its own included) and the output lock. They are closed first, so that the parent's death
    reads as end-of-file here and releases the lock."""
    for end in inherited:
        if isinstance(end, int):
            os.close(end)
        else:
            end.close()
    die_with_parent(parent_pid)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        while not conn.poll(PARENT_POLL_S):
            if os.getppid() != parent_pid:
                return
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(_work(task))
        except OSError:  # the parent is gone
            return


class _Pool:
    """``workers`` processes fed one task at a time; a task running past ``limit_s`` has its process
    killed (FFmpeg can block inside C code where no Python timeout reaches) and a fresh one started.
    Workers die with this process (see _worker_loop); ``close_in_child`` are descriptors of this
    process (the output lock) that workers must not keep open."""

    def __init__(self, workers: int, limit_s: float, close_in_child: list[int | None] = ()):
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self.ctx = mp.get_context(method)
        self.limit_s = limit_s
        self.close_in_child = [fd for fd in close_in_child if fd is not None] if method == "fork" else []
        self.procs: list[list] = []
        for _ in range(workers):
            self.procs.append(self._start())

    def _start(self):
        # Free cyclic garbage before forking: a PyAV object holding FFmpeg worker threads (e.g. an audio
        # resampler's filter graph) that the child collected would wait forever for threads that exist
        # only in the parent (tests/reliability/test_hostile_media.py reproduces it).
        gc.collect()
        parent, child = self.ctx.Pipe()
        forked = self.ctx.get_start_method() == "fork"
        inherited = [parent, *(slot[1] for slot in self.procs), *self.close_in_child] if forked else []
        proc = self.ctx.Process(target=_worker_loop, args=(child, inherited, os.getpid()), daemon=True)
        proc.start()
        child.close()
        return [proc, parent, None, None]  # process, connection, task id, start time

    def imap(self, tasks: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, dict]]:
        """Yield (task id, result) in completion order."""
        pending = iter(tasks)
        busy = 0
        exhausted = False
        while True:
            for slot in self.procs:
                if slot[2] is None and not exhausted:
                    nxt = next(pending, None)
                    if nxt is None:
                        exhausted = True
                        break
                    slot[2], slot[3] = nxt[0], time.monotonic()
                    slot[1].send(nxt[1])
                    busy += 1
            if busy == 0:
                return
            now = time.monotonic()
            wait_s = max(0.05, min(s[3] + self.limit_s - now for s in self.procs if s[2] is not None))
            ready = mp.connection.wait([s[1] for s in self.procs if s[2] is not None], timeout=wait_s)
            for n, slot in enumerate(self.procs):
                if slot[2] is None:
                    continue
                if slot[1] in ready:
                    try:
                        result = slot[1].recv()
                    except (EOFError, OSError):
                        result = {"status": "skipped", "reason": "decoder process crashed", "sha256": None}
                        self._replace(n)
                elif time.monotonic() - slot[3] > self.limit_s:
                    result = {"status": "skipped", "reason": f"timed out after {self.limit_s:.0f} s", "sha256": None}
                    self._replace(n)
                else:
                    continue
                task_id = slot[2]
                self.procs[n][2] = None
                busy -= 1
                yield task_id, result

    def _replace(self, n: int) -> None:
        proc, conn = self.procs[n][0], self.procs[n][1]
        proc.kill()
        proc.join()
        conn.close()
        del self.procs[n]  # its closed connection must not be handed to the new child
        self.procs.insert(n, self._start())

    def close(self) -> None:
        for proc, conn, _, _ in self.procs:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn, _, _ in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
            conn.close()


def _run_shards(todo: list[tuple[str, list[Item]]], job: dict, pool: "_Pool | None", out: Path,
                parts_dir: Path, settings: dict, progress: "_Progress") -> Iterator[tuple[str, dict]]:
    """Process every file of the unfinished shards (in ``pool``, or here when None); write each
    shard when its files are all back."""
    results: dict[str, dict[int, dict]] = {name: {} for name, _ in todo}
    sizes = {name: len(srcs) for name, srcs in todo}
    srcs_of = dict(todo)
    tasks = (((name, i), (it, make_key(f"{name[:-4]}-{i:05d}", it.rel), job))
             for name, srcs in todo for i, it in enumerate(srcs))
    stream = pool.imap(tasks) if pool is not None else ((tid, _work(args)) for tid, args in tasks)
    for (name, i), res in stream:
        results[name][i] = res
        progress.advance(srcs_of[name][i].rel, res["status"])
        if len(results[name]) == sizes[name]:
            yield name, _finish_shard(out, parts_dir, name, srcs_of[name], results.pop(name), settings)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write (disk full, permissions) into one line; the atomic writers have already
    removed their temporary file, and every shard finished before stays valid for a re-run."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}; the shards finished so far are kept and a "
                        f"re-run resumes from them") from None


def _finish_shard(out: Path, parts_dir: Path, name: str, items: list[Item], results: dict[int, dict],
                  settings: dict) -> dict:
    """Write the shard (ok samples in plan order) and its record; return the record."""
    ok = [results[i]["sample"] for i in range(len(items)) if results[i]["status"] == "ok"]
    record_path = parts_dir / f"{name}.json"
    with _writing(record_path):  # claim the name before the shard exists (see _recorded_shards)
        write_json(record_path, {"name": name, "pending": True})
    try:
        with _writing(out / name):
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
    sources = []
    for i, it in enumerate(items):
        r = results[i]
        src = {"path": it.rel, "class": it.cls, "label": it.label, "split": it.split, "sha256": r.get("sha256"),
               "status": r["status"]}
        if r["status"] == "ok":
            src.update(key=r["sample"]["__key__"], shard=name, frames=int(r["num_frames"]),
                       height=int(r["height"]), width=int(r["width"]), fps=r["fps"])
        else:
            src["reason"] = r["reason"]
        sources.append(src)
    record = {"name": name, "count": count, "bytes": size, "settings": settings, "inputs": _fingerprint(items),
              "sources": sources}
    with _writing(parts_dir / f"{name}.json"):
        write_json(parts_dir / f"{name}.json", record)
    return record


# ----------------------------------------------------------------------------------------------
# manifest and summary


def _manifest(out: Path, input: str, layout: str, settings: dict, class_names: list[str], plan: dict,
              done: dict[str, dict], unusable: list[dict], seconds: float) -> dict:
    from magvit_pl import __version__ as version  # noqa: PLC0415

    splits: dict[str, dict] = {}
    sources = []
    for name in plan:
        rec = done[name]
        split = name.rsplit("-", 1)[0]
        entry = splits.setdefault(split, {"count": 0, "frames": 0, "shards": []})
        if rec["count"]:
            entry["shards"].append({"name": name, "count": rec["count"], "bytes": rec["bytes"]})
        entry["count"] += rec["count"]
        entry["frames"] += sum(s.get("frames", 0) for s in rec["sources"])
        sources.extend(rec["sources"])
    return {
        "format_version": FORMAT_VERSION,
        "version": version,
        "name": out.name,
        "created_by": CREATED_BY,
        "input": str(input),
        "layout": layout,
        "settings": settings,
        "storage": settings["storage"],
        "resolution": settings["resolution"],
        "fps": settings["fps"],
        "classes": class_names,
        "splits": splits,
        "sources": sources,
        "skipped": [*unusable, *({"path": s["path"], "reason": s["reason"]} for s in sources if s["status"] != "ok")],
        "seconds": round(seconds, 2),
    }


def _summary(manifest: dict, processed: int, reused_shards: int) -> dict:
    ok = [s for s in manifest["sources"] if s["status"] == "ok"]
    return {
        "output": manifest["name"],
        "splits": {k: v["count"] for k, v in manifest["splits"].items()},
        "classes": len(manifest["classes"]),
        "videos": len(ok),
        "frames": sum(s["frames"] for s in ok),
        "skipped": manifest["skipped"],
        "processed_files": processed,
        "reused_shards": reused_shards,
        "seconds": manifest["seconds"],
    }


class _Progress:
    """A rich progress bar over files (a no-op when quiet)."""

    def __init__(self, total: int, quiet: bool, title: str):
        self.bar = None
        if not quiet and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[last]}"), transient=False)
            self.task = self.bar.add_task(title, total=total, last="")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def advance(self, name: str, status: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=f"{Path(name).name} {'' if status == 'ok' else status}")


def _print_summary(summary: dict, manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"prepared {manifest['name']}: {summary['videos']} videos, {summary['frames']} frames, "
                        f"{summary['classes']} classes in {summary['seconds']:.1f} s")
    table.add_column("split")
    table.add_column("videos", justify="right")
    table.add_column("shards", justify="right")
    table.add_column("MB", justify="right")
    for split, entry in manifest["splits"].items():
        mb = sum(s["bytes"] for s in entry["shards"]) / 2**20
        table.add_row(split, str(entry["count"]), str(len(entry["shards"])), f"{mb:.1f}")
    console.print(table)
    if summary["reused_shards"]:
        console.print(f"{summary['reused_shards']} shard(s) were already finished and kept")
    if summary["skipped"]:
        reasons = Counter(s["reason"].split(" (")[0].split(":")[0] for s in summary["skipped"])
        console.print(f"[yellow]skipped {len(summary['skipped'])} file(s)[/yellow] "
                      f"({', '.join(f'{k}: {v}' for k, v in reasons.most_common())}):")
        for s in summary["skipped"]:
            console.print(f"  {s['path']}: {s['reason']}", markup=False, highlight=False)
