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
"""
from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from magvit_pl.data.shards import FORMAT_VERSION, encode_sample, make_key, shard_name, umask_mode, write_shard
from magvit_pl.data.video import VideoReadError, center_crop, probe, read_video
from magvit_pl.errors import MissingFileError, UserError
from magvit_pl.io import atomic_open, write_json

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".wmv", ".flv", ".3gp")
SPLITS = ("train", "val", "test")
GOP, PIX_FMT = 16, "yuv444p"  # mp4 payload: keyframe interval (cheap seeking) and chroma layout
SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test", "eval": "test"}


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
            train/val/test folder sets the split) or a text file listing video paths. 'ucf101': the
            UCF-101 video root (ClassName/v_*.avi). 'csv': a CSV file with rows path,label[,split].
        output: Directory for the shards and manifest (created).
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
        overwrite: Delete shards from an earlier run with different settings instead of stopping.
        quiet: No progress bar or summary table.
    """
    t_start = time.perf_counter()
    if resolution < 2 or resolution % 2:
        raise UserError(f"--resolution must be an even number >= 2, got {resolution}")
    if shard_size < 1:
        raise UserError(f"--shard_size must be >= 1, got {shard_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    items, class_names = _discover(input, layout, val_fraction, split_dir, split_id, video_root, classes)
    if not items:
        raise UserError(f"no videos found in {input} (layout '{layout}', extensions {', '.join(VIDEO_EXTENSIONS)})")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(format_version=FORMAT_VERSION, resolution=resolution, fps=fps, max_frames=max_frames,
                    min_frames=min_frames, crop_square=crop_square, storage=storage, crf=crf, gop=GOP,
                    pix_fmt=PIX_FMT)
    _check_previous_run(out, settings, overwrite)
    plan = _plan(items, shard_size)
    parts_dir = out / ".parts"
    done = {name: rec for name, srcs in plan.items() if (rec := _finished_part(out, name, srcs, settings))}
    _remove_stale(out, set(plan))
    todo = [(name, srcs) for name, srcs in plan.items() if name not in done]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    job = dict(resolution=resolution, fps=fps, max_frames=max_frames, min_frames=min_frames,
               crop_square=crop_square, storage=storage, crf=crf, timeout_s=timeout_s)
    n_files = sum(len(s) for _, s in todo)
    # start the worker processes before the progress bar's thread exists (they are forked on Linux)
    pool = _Pool(workers, limit_s=timeout_s * 1.5 + 2) if workers > 0 and todo else None
    try:
        with _Progress(n_files, quiet, f"prepare {out.name}") as progress:
            for name, record in _run_shards(todo, job, pool, out, parts_dir, settings, progress):
                done[name] = record
    finally:
        if pool is not None:
            pool.close()
    manifest = _manifest(out, input, layout, settings, class_names, plan, done, time.perf_counter() - t_start)
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
# finding the videos, their classes and splits


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


def _discover(input: str, layout: str, val_fraction: float, split_dir: str | None, split_id: int,
              video_root: str | None, classes: str | None) -> tuple[list[Item], list[str]]:
    """All source videos of ``input`` as Items, plus the class names in label order."""
    src = Path(input).expanduser()
    if not src.exists():
        raise MissingFileError(f"input not found: {src}")
    if layout == "ucf101":
        return _discover_ucf101(src, val_fraction, split_dir, split_id)
    if layout == "csv":
        rows = _csv_rows(src)
        base = Path(video_root) if video_root else src.parent
    elif layout == "folder":
        if src.is_dir():
            paths = sorted(p for p in src.rglob("*") if p.is_file() and _is_video(p)
                           and not any(part.startswith(".") for part in p.relative_to(src).parts))
            base, rows = src, [(str(p.relative_to(src)), None, None) for p in paths]
        else:
            base = Path(video_root) if video_root else src.parent
            rows = [(ln, None, None) for ln in _read_lines(src)]
        rows = [(rel, label or _folder_class(rel, base), split or _folder_split(rel)) for rel, label, split in rows]
    else:
        raise UserError(f"unknown --layout '{layout}': use folder, ucf101 or csv")
    names = _class_order([r[1] for r in rows], classes)
    index = {c: i for i, c in enumerate(names)}
    items = []
    for rel, cls, split in rows:
        if cls not in index:
            raise UserError(f"class '{cls}' of {rel} is not in the --classes file {classes}")
        split = _normalise_split(split, rel) or ("val" if _hash_fraction(rel) < val_fraction else "train")
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        items.append(Item(str(path), rel, index[cls], cls, split))
    return items, names


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
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
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
    part = out / ".parts" / f"{name}.json"
    try:
        rec = json.loads(part.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("settings") != settings or rec.get("inputs") != _fingerprint(items):
        return None
    tar = out / name
    if rec["count"] > 0 and not (tar.is_file() and tar.stat().st_size == rec["bytes"]):
        return None
    return rec


def _check_previous_run(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / "manifest.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings")
    except ValueError:
        old = None
    if old == settings:
        return
    if not overwrite:
        raise UserError(f"{out} holds shards made with other settings ({old}); pass --overwrite true to replace "
                        f"them or choose another --output")
    for p in out.glob("*.tar"):
        p.unlink()
    for p in (out / ".parts").glob("*.json"):
        p.unlink()
    path.unlink()


def _remove_stale(out: Path, planned: set[str]) -> None:
    """Delete shards (and records) of ours that the current plan no longer has."""
    for split in SPLITS:
        for p in out.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
            if p.name not in planned:
                p.unlink()
        for p in (out / ".parts").glob(f"{split}-*.tar.json"):
            if p.name[: -len(".json")] not in planned:
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


def _worker_loop(conn: mp.connection.Connection) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(_work(task))


class _Pool:
    """``workers`` processes fed one task at a time; a task running past ``limit_s`` has its process
    killed (FFmpeg can block inside C code where no Python timeout reaches) and a fresh one started."""

    def __init__(self, workers: int, limit_s: float):
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self.ctx = mp.get_context(method)
        self.limit_s = limit_s
        self.procs = [self._start() for _ in range(workers)]

    def _start(self):
        # Free cyclic garbage before forking: a PyAV object holding FFmpeg worker threads (e.g. an audio
        # resampler's filter graph) that the child collected would wait forever for threads that exist
        # only in the parent (tests/reliability/test_hostile_media.py reproduces it).
        gc.collect()
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_loop, args=(child,), daemon=True)
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
        self.procs[n] = self._start()

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
    with _writing(out / name):
        count, size = write_shard(out / name, ok) if ok else (0, 0)
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
              done: dict[str, dict], seconds: float) -> dict:
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
        "created_by": "magvit_pl.data.prepare",
        "input": str(input),
        "layout": layout,
        "settings": settings,
        "storage": settings["storage"],
        "resolution": settings["resolution"],
        "fps": settings["fps"],
        "classes": class_names,
        "splits": splits,
        "sources": sources,
        "skipped": [{"path": s["path"], "reason": s["reason"]} for s in sources if s["status"] != "ok"],
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
