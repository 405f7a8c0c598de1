"""Data-layer throughput: storage formats, prepare, and the DataModule vs decoding raw videos.

    python benchmarks/data_throughput.py                      # real clips in ../shared/data/clips + synthetic
    python benchmarks/data_throughput.py --clips DIR --resolution 128 --repeats 5

Prints one JSON line (medians of ``--repeats``) and a rich table. Sections:
  storage  bytes per clip, write clips/s, read+decode clips/s (a random 16-frame clip) and PSNR
           of each shard payload (mp4 4:4:4, mp4 4:2:0, raw npy) on the real clips and the synthetic set
  prepare  videos/s and frames/s of ``prepare`` on the real clips (2 workers)
  loader   training clips/s (and CPU ms per clip) through VideoDataModule with 0, 1, 2 workers,
           against decoding the source video for every clip (what a loader without shards would do)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from magvit_pl.data import synthetic
from magvit_pl.data.datamodule import VideoDataModule
from magvit_pl.data.prepare import prepare
from magvit_pl.data.shards import decode_sample, encode_sample, read_shard, write_shard
from magvit_pl.data.transforms import sample_clip
from magvit_pl.data.video_io import VideoReadError, read_video

DEFAULT_CLIPS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clips"
FORMATS = {"mp4-444": dict(fmt="mp4", pix_fmt="yuv444p"), "mp4-420": dict(fmt="mp4", pix_fmt="yuv420p"),
           "npy": dict(fmt="npy")}


def _median_rate(fn, count: int, repeats: int) -> float:
    """Median over repeats of count / seconds(fn())."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def storage(videos: list[np.ndarray], fps: float, tmp: Path, repeats: int, num_frames: int) -> dict:
    """Bytes, write speed, random-clip read speed and fidelity of each payload format.

    Repeats go round-robin over the formats, so a busy machine slows every format alike.
    """
    writes: dict[str, list[float]] = {name: [] for name in FORMATS}
    reads: dict[str, list[float]] = {name: [] for name in FORMATS}
    paths = {name: tmp / f"storage-{name}.tar" for name in FORMATS}
    for _ in range(repeats):
        for name, kw in FORMATS.items():
            t0 = time.perf_counter()
            write_shard(paths[name], (encode_sample(f"k{i:05d}", v, {"fps": fps, "label": 0}, **kw)
                                      for i, v in enumerate(videos)))
            writes[name].append(len(videos) / (time.perf_counter() - t0))
            raw = list(read_shard(paths[name]))
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            for sample in raw:
                decode_sample(sample, num_frames, 1, None, rng)
            reads[name].append(len(raw) / (time.perf_counter() - t0))
    out = {}
    for name, path in paths.items():
        raw = list(read_shard(path))
        psnr = statistics.mean(_psnr(decode_sample(s)["frames"], v) for s, v in zip(raw, videos))
        out[name] = {"kb_per_video": round(path.stat().st_size / len(videos) / 1024, 1),
                     "kb_per_frame": round(path.stat().st_size / sum(len(v) for v in videos) / 1024, 2),
                     "write_videos_per_s": round(statistics.median(writes[name]), 1),
                     "read_clips_per_s": round(statistics.median(reads[name]), 1), "psnr_db": round(psnr, 1)}
    return out


def bench_prepare(clips: list[Path], tmp: Path, resolution: int, repeats: int) -> tuple[dict, Path]:
    src = tmp / "src" / "clips"
    src.mkdir(parents=True)
    for c in clips:
        os.symlink(c.resolve(), src / c.name)
    results, out = [], None
    for r in range(repeats):
        out = tmp / f"prepared-{r}"
        s = prepare(str(tmp / "src"), str(out), resolution=resolution, shard_size=2, workers=2, val_fraction=0.0,
                    quiet=True)
        results.append(s)
    secs = statistics.median(s["seconds"] for s in results)
    s = results[-1]
    return {"videos": s["videos"], "frames": s["frames"], "seconds": secs,
            "videos_per_s": round(s["videos"] / secs, 2), "frames_per_s": round(s["frames"] / secs, 1)}, out


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def loader(data_dir: Path, resolution: int, num_frames: int, batches: int, repeats: int) -> dict:
    """Training clips/s through the DataModule for 0, 1, 2 workers (worker start-up included), and the
    CPU milliseconds per clip (this process and the workers: on a shared machine the steadier figure);
    repeats round-robin over the worker counts."""
    loaders = {}
    for workers in (0, 1, 2):
        dm = VideoDataModule(data_dir=str(data_dir), num_frames=num_frames, resolution=resolution, batch_size=8,
                             num_workers=workers, shuffle_buffer=32, train_samples_per_epoch=8 * batches)
        dm.setup("fit")
        loaders[f"workers_{workers}"] = dm.train_dataloader()
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    cpu: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, dl in loaders.items():
            c0 = _cpu_seconds()
            rates[name].append(_median_rate(lambda: sum(1 for _ in dl), 8 * batches, 1))
            cpu[name].append((_cpu_seconds() - c0) * 1000 / (8 * batches))
    return {**{name: round(statistics.median(r), 1) for name, r in rates.items()},
            **{f"{name}_cpu_ms_per_clip": round(statistics.median(c), 2) for name, c in cpu.items()}}


def raw_decode(clips: list[Path], resolution: int, num_frames: int, count: int, repeats: int) -> float:
    """Clips/s when every clip decodes its source video (scaled while decoding) and samples a clip."""
    rng = np.random.default_rng(0)

    def run():
        for i in range(count):
            frames = read_video(clips[i % len(clips)], short_side=resolution, threads=1)
            sample_clip(frames, num_frames, 1, None, rng)

    return round(_median_rate(run, count, repeats), 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of real videos (skipped if absent)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=8, help="training batches of 8 per loader measurement")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result: dict = {"resolution": args.resolution, "num_frames": args.num_frames, "repeats": args.repeats,
                    "cpus": os.cpu_count()}
    clips = sorted(Path(args.clips).glob("*.*")) if Path(args.clips).is_dir() else []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        syn_dir = synthetic.ensure_default_dataset(tmp / "synthetic", num_train=128, num_val=8, num_test=8,
                                                   resolution=args.resolution, workers=0)
        syn_videos = [v for _, _, v in synthetic.generate("train", 64, size=args.resolution)]
        result["storage_synthetic"] = storage(syn_videos, 8.0, tmp, args.repeats, args.num_frames)
        result["loader_synthetic"] = loader(syn_dir, args.resolution, args.num_frames, args.batches, args.repeats)
        if clips:
            real = []
            for c in clips:
                try:
                    real.append(read_video(c, short_side=args.resolution))
                except VideoReadError:
                    pass
            result["storage_real"] = storage(real, 25.0, tmp, args.repeats, args.num_frames)
            result["prepare_real"], prepared = bench_prepare(clips, tmp, args.resolution, max(1, args.repeats // 2))
            result["loader_real"] = loader(prepared, args.resolution, args.num_frames, args.batches, args.repeats)
            result["loader_real"]["raw_decode_every_clip"] = raw_decode(clips, args.resolution, args.num_frames,
                                                                        len(clips), args.repeats)
    print(json.dumps(result))
    _table(result)
    return result


def _table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stderr)
    for data in ("synthetic", "real"):
        if f"storage_{data}" not in r:
            continue
        t = Table(title=f"shard payload, {data} videos at {r['resolution']} px (median of {r['repeats']})")
        for col in ("format", "KB/video", "KB/frame", "write videos/s", "read clips/s", "PSNR dB"):
            t.add_column(col, justify="right")
        for name, v in r[f"storage_{data}"].items():
            t.add_row(name, str(v["kb_per_video"]), str(v["kb_per_frame"]), str(v["write_videos_per_s"]),
                      str(v["read_clips_per_s"]), str(v["psnr_db"]))
        console.print(t)
        t = Table(title=f"training clips/s ({data}, {r['num_frames']}x{r['resolution']}², batch 8)")
        t.add_column("path")
        t.add_column("clips/s", justify="right")
        t.add_column("CPU ms/clip", justify="right")
        rows = r[f"loader_{data}"]
        for name, v in rows.items():
            if not name.endswith("_cpu_ms_per_clip"):
                t.add_row(name, str(v), str(rows.get(f"{name}_cpu_ms_per_clip", "")))
        console.print(t)
    if "prepare_real" in r:
        pr = r["prepare_real"]
        console.print(f"prepare (2 workers): {pr['videos']} videos, {pr['frames']} frames in {pr['seconds']} s = "
                      f"{pr['videos_per_s']} videos/s, {pr['frames_per_s']} frames/s")


if __name__ == "__main__":
    main()
