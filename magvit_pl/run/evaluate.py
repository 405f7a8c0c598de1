"""``python cli.py fvd --real A --fake B``: FVD between any two sets of clips, with its protocol next to it.

Each side is a folder of videos, a prepared shard folder or an ``.npz`` of clips (:mod:`magvit_pl.run.clipsets`);
``--real`` may also be a statistics file written by ``--save_real_stats``, so a dataset's real side is computed
once. The clips go through :class:`~magvit_pl.metrics.fvd.FrechetVideoDistance` (the I3D protocol of
``docs/fvd.md``) and, on request, frame FID (Inception, over every frame of the clips) and LPIPS (paired sets
only: the same clip names on both sides). The result, one JSON line and a file, holds every number with the
protocol that makes it comparable: clip selection, sample counts, resolutions, resize, I3D file hash.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from magvit_pl.data.transforms import frames_to_tensor
from magvit_pl.metrics.frame import FID, LPIPSMetric
from magvit_pl.metrics.fvd import FrechetVideoDistance, read_real_stats
from magvit_pl.run.clipsets import Clip, ClipSet, ClipSpec, Resize
from magvit_pl.run.errors import MissingFileError, UserError
from magvit_pl.run.files import check_output_file, write_json

# protocol fields that must agree between a saved real-statistics file and this run
MATCHING = ("stride", "resolution", "resize", "features", "weights_sha256", "clip_frames", "clip_stride",
            "clips_per_video", "clip_start", "clip_resolution", "clip_resize")


class SetFVD(FrechetVideoDistance):
    """:class:`FrechetVideoDistance` whose protocol also records how the clips were selected."""

    def __init__(self, selection: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.selection = dict(selection)

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), **self.selection}


def fvd(
    real: str,
    fake: str,
    num_frames: int = 16,
    stride: int = 1,
    clips_per_video: int = 1,
    resolution: int | None = None,
    resize: Resize = "crop",
    num_samples: int | None = None,
    split: str = "test",
    fid: bool = False,
    lpips: bool = False,
    save_real_stats: str | None = None,
    batch_size: int = 8,
    output: str | None = None,
    runs_root: str = "runs",
) -> dict[str, Any]:
    """Compute FVD between two sets of clips; print it with its protocol and write both to a JSON file.

    Args:
        real: The reference set: a folder of videos (or of frame folders), a prepared shard folder, an .npz of
            clips (uint8 N×T×H×W×3), or a statistics .npz written by ``--save_real_stats``.
        fake: The set to score (e.g. the output of ``python cli.py sample``), in any of the clip forms.
        num_frames: Frames per clip (at least 9 for I3D; 16 is the common FVD16).
        stride: Take every n-th frame of a video.
        clips_per_video: Clips per video: the first starts at frame 0, more are spread evenly over the video.
        resolution: Bring every frame to resolution×resolution before FVD (see ``resize``); default: keep the
            clips' size (then all clips must share it). FVD itself always resizes to 224×224.
        resize: ``crop`` (short side to ``resolution``, centre crop; how ``prepare`` makes clips) or ``squash``.
        num_samples: Use at most this many clips from each set (default: all).
        split: The split read from a prepared shard folder.
        fid: Also report FID over the frames of the clips (Inception; ``fetch-weights inception``).
        lpips: Also report LPIPS between paired clips (the same names on both sides; ``fetch-weights lpips_vgg16``).
        save_real_stats: Write the real set's FVD statistics to this .npz, to pass as ``--real`` next time.
        batch_size: Clips per I3D forward pass.
        output: The JSON file to write; default ``RUNS_ROOT/fvd/<timestamp>.json``.
        runs_root: Where the default output goes.
    """
    spec = ClipSpec(num_frames, stride, clips_per_video, resolution, resize)
    if num_samples is not None and num_samples < 2:
        raise UserError(f"--num_samples {num_samples}: FVD needs at least 2 clips on each side")
    if batch_size < 1:
        raise UserError(f"--batch_size {batch_size}: must be >= 1")
    out = check_output_file(output or Path(runs_root) / "fvd" / f"{time.strftime('%Y%m%d-%H%M%S')}.json", "--output", "fvd.json")
    if save_real_stats is not None:
        check_output_file(save_real_stats, "--save_real_stats", "real_stats.npz")
    result = compare_sets(real, fake, spec, num_samples=num_samples, split=split, fid=fid, lpips=lpips,
                          save_real_stats=save_real_stats, batch_size=batch_size)
    write_json(out, result)
    print(json.dumps(result))
    _print_table(result)
    print(f"wrote {out}")
    return result


def compare_sets(real: str, fake: str, spec: ClipSpec, num_samples: int | None = None, split: str = "test", fid: bool = False,
                 lpips: bool = False, save_real_stats: str | None = None, batch_size: int = 8,
                 fvd_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The numbers and protocol of ``fvd`` without printing (``fvd_kwargs`` reach :class:`FrechetVideoDistance`,
    e.g. a stand-in ``extractor`` and ``resize`` in tests). See :func:`fvd` for the arguments."""
    stats_file = _is_stats_file(real)
    if stats_file and (fid or lpips):
        raise UserError(f"--real {real} holds FVD statistics only; --fid and --lpips need real clips")
    if stats_file and save_real_stats:
        raise UserError(f"--real {real} already holds statistics; --save_real_stats needs real clips")
    fake_set = ClipSet(fake, "--fake", split)
    real_set = None if stats_file else ClipSet(real, "--real", split)
    metric = SetFVD(spec.record(), stride=spec.stride, batch_size=batch_size, **(fvd_kwargs or {}))
    frame_fid = _metric("fid") if fid else None
    frame_lpips = _metric("lpips") if lpips else None
    stored = _load_stats(real, metric) if stats_file else None

    progress = _progress()
    with progress:
        if lpips:
            for real_clips, fake_clips in _paired(real_set, fake_set, spec, num_samples, batch_size, progress):
                _add(metric, frame_fid, real_clips, True)
                _add(metric, frame_fid, fake_clips, False)
                frame_lpips.update(_tensor(fake_clips), _tensor(real_clips))
        else:
            if real_set is not None:
                for clips in _batches(real_set, spec, num_samples, batch_size, progress, "real"):
                    _add(metric, frame_fid, clips, True)
            for clips in _batches(fake_set, spec, num_samples, batch_size, progress, "fake"):
                _add(metric, frame_fid, clips, False)
    for side, clip_set in (("--real", real_set), ("--fake", fake_set)):
        _check_usable(side, clip_set, metric)
    if stored is not None:
        _check_input_resolution(stored, metric, real)
    value = float(metric.compute())
    protocol = metric.protocol()
    protocol.update(real=stored["source"] if stored else real_set.describe(), fake=fake_set.describe(),
                    skipped={side: s.skipped for side, s in (("real", real_set), ("fake", fake_set)) if s is not None and s.skipped})
    result: dict[str, Any] = {"fvd": value}
    if frame_fid is not None:
        result["fid"] = float(frame_fid.compute())
        protocol["fid"] = "Inception-v3 pool3 over every frame of the clips, 299x299 bilinear"
    if frame_lpips is not None:
        result["lpips"] = float(frame_lpips.compute())
        protocol["lpips"] = "LPIPS-VGG16 between paired clips (same names), mean over frames"
    if save_real_stats:
        metric.save_real_stats(save_real_stats, manifest_sha256=real_set.identity())
        protocol["real_stats_saved"] = str(save_real_stats)
    return {**result, "protocol": protocol, "time": time.strftime("%Y-%m-%d %H:%M:%S")}


# --------------------------------------------------------------------------------------- streaming
def _tensor(clips: list[Clip]) -> torch.Tensor:
    """uint8 clips → float (B, 3, T, H, W) in [-1, 1]; one line when their sizes differ."""
    shapes = {c.frames.shape for c in clips}
    if len(shapes) > 1:
        raise UserError(f"clips of different sizes {sorted(shapes)[:2]} (e.g. {clips[0].name}); pass --resolution R to bring them to R×R")
    return torch.stack([frames_to_tensor(c.frames) for c in clips])


def _add(metric: SetFVD, frame_fid: Any, clips: list[Clip], real: bool) -> None:
    videos = _tensor(clips)
    metric.update(videos, real=real)
    if frame_fid is not None:
        frame_fid.update(videos, real=real)


def _batches(clip_set: ClipSet, spec: ClipSpec, limit: int | None, batch_size: int, progress: Any, side: str) -> Iterator[list[Clip]]:
    task = progress.add_task(f"{side}: {clip_set.path.name}", total=_expected(clip_set, spec, limit))
    batch: list[Clip] = []
    for clip in clip_set.clips(spec, limit):
        batch.append(clip)
        if len(batch) == batch_size:
            yield batch
            progress.advance(task, len(batch))
            batch = []
    if batch:
        yield batch
        progress.advance(task, len(batch))


def _paired(real_set: ClipSet, fake_set: ClipSet, spec: ClipSpec, limit: int | None, batch_size: int,
            progress: Any) -> Iterator[tuple[list[Clip], list[Clip]]]:
    """Batches of (real, fake) clips with the same names, in order; one line at the first pair that differs."""
    task = progress.add_task("paired clips", total=_expected(fake_set, spec, limit))
    reals, fakes = real_set.clips(spec, limit), fake_set.clips(spec, limit)
    batch: list[tuple[Clip, Clip]] = []
    for a, b in _zip_all(reals, fakes):
        if a is None or b is None or a.name != b.name:
            got = (a.name if a else "nothing", b.name if b else "nothing")
            raise UserError(f"--lpips needs paired sets (the same clip names on both sides); the real set gives {got[0]!r} "
                            f"where the fake set gives {got[1]!r}")
        batch.append((a, b))
        if len(batch) == batch_size:
            yield [p[0] for p in batch], [p[1] for p in batch]
            progress.advance(task, len(batch))
            batch = []
    if batch:
        yield [p[0] for p in batch], [p[1] for p in batch]
        progress.advance(task, len(batch))


def _zip_all(a: Iterator[Clip], b: Iterator[Clip]) -> Iterator[tuple[Clip | None, Clip | None]]:
    while True:
        x, y = next(a, None), next(b, None)
        if x is None and y is None:
            return
        yield x, y


def _expected(clip_set: ClipSet, spec: ClipSpec, limit: int | None) -> int:
    total = clip_set.videos * spec.clips_per_video
    return min(total, limit) if limit is not None else total


def _progress() -> Any:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                    TimeRemainingColumn(), console=Console(stderr=True))


def _metric(name: str) -> Any:
    return FID() if name == "fid" else LPIPSMetric()


# ------------------------------------------------------------------------------------ real statistics
def _is_stats_file(path: str) -> bool:
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".npz"):
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files
    except (OSError, ValueError, EOFError):
        return False


def _load_stats(path: str, metric: SetFVD) -> dict[str, Any]:
    """Use the checked statistics in ``path`` for the real side, once their protocol agrees with this run's."""
    if not Path(path).is_file():
        raise MissingFileError(f"--real {path}: not found")
    mu, sigma, n, key, stored = read_real_stats(path)
    current = metric.protocol()
    for field in MATCHING:
        if stored.get(field) != current.get(field):
            raise UserError(f"--real {path}: its statistics were made with {field}={stored.get(field)!r}, this run uses "
                            f"{current.get(field)!r}; FVD numbers are only comparable under one protocol")
    metric.set_real_statistics(mu, sigma, n)
    return {"protocol": stored, "source": {"path": str(path), "kind": "statistics", "num_real": n, "key": key,
                                           "input_resolution": stored.get("input_resolution")}}


def _check_usable(flag: str, clip_set: ClipSet | None, metric: SetFVD) -> None:
    """One line when a set gave fewer than 2 clips, naming why its videos were skipped."""
    if clip_set is None:
        return
    count = metric.protocol()["num_real" if flag == "--real" else "num_fake"]
    if count < 2:
        why = f" ({len(clip_set.skipped)} skipped; {clip_set.skipped[0]})" if clip_set.skipped else ""
        raise UserError(f"{flag} {clip_set.path}: {count} usable clips{why}; FVD needs at least 2 on each side")


def _check_input_resolution(stored: dict[str, Any], metric: SetFVD, path: str) -> None:
    frames, fake_frames = stored["protocol"].get("frames"), metric.protocol().get("frames")
    if frames is not None and fake_frames is not None and frames != fake_frames:
        raise UserError(f"--real {path}: its statistics come from clips of {frames} frames, the fake clips have {fake_frames}")
    real_res, fake_res = stored["protocol"].get("input_resolution"), metric.protocol().get("input_resolution")
    if real_res is not None and fake_res is not None and list(real_res) != list(fake_res):
        raise UserError(f"--real {path}: its statistics come from {real_res[0]}x{real_res[1]} clips, the fake clips are "
                        f"{fake_res[0]}x{fake_res[1]}; pass --resolution so both sides are compared at one size")


def _print_table(result: dict[str, Any]) -> None:
    p = result["protocol"]
    size = "x".join(map(str, p.get("input_resolution") or ["?"]))
    Console().print(f"{p['num_fake']} fake vs {p['num_real']} real clips of {p['frames']} frames (stride {p['stride']}), "
                    f"{size} resized to {p['resolution']}x{p['resolution']} for I3D", markup=False)
    table = Table()
    for name in ("metric", "value"):
        table.add_column(name, justify="right" if name == "value" else "left")
    for name in ("fvd", "fid", "lpips"):
        if name in result:
            table.add_row(name, f"{result[name]:.4f}")
    Console().print(table)
