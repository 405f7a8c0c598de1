"""The embedded default dataset: procedural video with natural-image statistics, labelled by camera motion.

The clips are dead leaves seen by a moving camera (:mod:`magvit_pl.data.dead_leaves`): occluding
textured objects of power-law sizes, natural colour statistics, soft and out-of-focus edges, objects
that move on their own; the class is the camera motion (pan in four directions, zoom in/out, rotate,
still). A tokenizer trained on them reconstructs real video it never saw, future frames follow from
past ones and masked regions can be inferred from what surrounds them: frame prediction,
interpolation, in/outpainting and class conditioning all have something to learn. Clip ``i`` of a
split depends only on ``(seed, split, i)``, so the bytes are the same on every machine and for any
dataset size.

``ensure_default_dataset`` writes the clips as shards with the same writer and manifest as
``prepare``, so the DataModule reads both the same way.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from magvit_pl.data.dead_leaves import CLASSES, render_clip
from magvit_pl.data.pool import die_with_parent
from magvit_pl.data.shards import (FORMAT_VERSION, StorageFormat, encode_sample, make_key, shard_name, umask_mode,
                                   write_shard)
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import atomic_open, write_json

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# libx264 'superfast' encodes these small clips twice as fast as 'medium', at higher PSNR for ~1.8x the
# bytes; the files decode as fast.
ENCODER_PRESET = "superfast"
# which renderer made a dataset on disk: one made by another (the shapes of magvit-pl 0.1) is not reused
GENERATOR = "dead_leaves"


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that clip ``index`` of ``split`` is drawn from."""
    return np.random.default_rng([seed, SPLIT_IDS.get(split, 3), index])


def clip_label(seed: int, split: str, index: int) -> int:
    """Labels cycle through the classes (balanced), in an order shuffled per split."""
    order = np.random.default_rng([seed, SPLIT_IDS.get(split, 3), 2**31]).permutation(len(CLASSES))
    return int(order[index % len(CLASSES)])


def generate(split: str, count: int, seed: int = 0, num_frames: int = 16, size: int = 64,
             start: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(index, label, frames)`` for clips ``start .. start + count - 1`` of ``split``."""
    for i in range(start, start + count):
        label = clip_label(seed, split, i)
        yield i, label, render_clip(label, clip_rng(seed, split, i), num_frames, size)


# ----------------------------------------------------------------------------------------------
# the dataset on disk


def default_params(num_train: int = 2048, num_val: int = 64, num_test: int = 64, num_frames: int = 16,
                   resolution: int = 64, seed: int = 0, shard_size: int = 64,
                   storage: StorageFormat = "mp4", fps: float = 8.0) -> dict:
    """The generator settings recorded in the manifest (a dataset on disk is reused only if equal)."""
    return dict(generator=GENERATOR, num_train=num_train, num_val=num_val, num_test=num_test, num_frames=num_frames,
                resolution=resolution, seed=seed, shard_size=shard_size, storage=storage, fps=fps)


def ensure_default_dataset(root: str | os.PathLike = "data/shards/dead_leaves", num_train: int = 2048,
                           num_val: int = 64, num_test: int = 64, num_frames: int = 16, resolution: int = 64,
                           seed: int = 0, shard_size: int = 64, storage: StorageFormat = "mp4",
                           fps: float = 8.0, workers: int | None = None) -> Path:
    """Generate the synthetic dataset under ``root`` unless a complete one with the same settings is
    there; return ``root``.

    The set is built in a temporary sibling folder and renamed into place in one step, so ``root``
    is either absent or complete, and two processes racing here both end with the same finished
    folder (a lock file avoids doing the work twice where ``fcntl`` exists). ``workers`` processes
    render and encode shards in parallel (None: one per CPU, at most 8; 0: in this process).
    """
    root = Path(root)
    params = default_params(num_train, num_val, num_test, num_frames, resolution, seed, shard_size, storage, fps)
    if _is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, params):  # another process finished while we waited
            return root
        if root.exists():
            raise UserError(f"{root} exists but is not the synthetic dataset with these settings (an older "
                            f"magvit-pl made it, or other settings); delete it (it is regenerated on first use) or "
                            f"pick another folder")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            _write_dataset(tmp, params, workers, name=root.name)
            umask_mode(tmp, directory=True)
            try:
                os.rename(tmp, root)
            except OSError:
                if not _is_complete(root, params):  # lost a race to a process without the lock
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_complete(root: Path, params: dict) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("synthetic") == params
    except ValueError:
        return False


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl  # POSIX only
    except ImportError:  # Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _shard_jobs(p: dict) -> list[tuple[str, int, int, int]]:
    """(split, shard index, first clip, count) for every shard of the dataset."""
    jobs = []
    for split, count in (("train", p["num_train"]), ("val", p["num_val"]), ("test", p["num_test"])):
        for s, first in enumerate(range(0, count, p["shard_size"])):
            jobs.append((split, s, first, min(p["shard_size"], count - first)))
    return jobs


def _write_synthetic_shard(out: Path, p: dict, split: str, index: int, first: int, count: int) -> None:
    samples = (
        encode_sample(make_key(f"{split}-{i:06d}", CLASSES[label]), frames,
                      {"label": label, "class": CLASSES[label], "source": f"synthetic/{split}/{i}",
                       "split": split, "fps": p["fps"]}, fmt=p["storage"], preset=ENCODER_PRESET)
        for i, label, frames in generate(split, count, p["seed"], p["num_frames"], p["resolution"], first)
    )
    write_shard(out / shard_name(split, index), samples)


def _write_dataset(out: Path, p: dict, workers: int | None, name: str | None = None) -> None:
    """Render and encode every shard into ``out`` and write its manifest (``name``: the folder it becomes)."""
    from magvit_pl.data.prepare_report import Progress

    t0 = time.perf_counter()
    jobs = _shard_jobs(p)
    workers = min(8, os.cpu_count() or 1, len(jobs)) if workers is None else workers
    with Progress(len(jobs), False, f"generating {name or out.name} ({sum(j[3] for j in jobs)} clips, once)") as bar:
        if workers > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            # workers die with this process: a survivor would hold the dataset lock (inherited) for ever
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                for job, _ in zip(jobs, pool.map(_write_synthetic_shard, *zip(*[(out, p, *job) for job in jobs]))):
                    bar.advance(shard_name(job[0], job[1]), "ok")
        else:
            for job in jobs:
                _write_synthetic_shard(out, p, *job)
                bar.advance(shard_name(job[0], job[1]), "ok")
    splits: dict[str, dict] = {}
    for split, index, first, count in jobs:
        entry = splits.setdefault(split, {"count": 0, "frames": 0, "shards": []})
        entry["shards"].append({"name": shard_name(split, index), "count": count,
                                "bytes": (out / shard_name(split, index)).stat().st_size})
        entry["count"] += count
        entry["frames"] += count * p["num_frames"]
    with atomic_open(out / "classes.txt", "w", encoding="utf-8") as fh:
        fh.write("".join(f"{c}\n" for c in CLASSES))
    write_json(out / "manifest.json", {
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "created_by": "magvit_pl.data.synthetic",
        "settings": {"resolution": p["resolution"], "fps": p["fps"], "storage": p["storage"],
                     "preset": ENCODER_PRESET},
        "storage": p["storage"],
        "resolution": p["resolution"],
        "fps": p["fps"],
        "num_frames": p["num_frames"],
        "classes": list(CLASSES),
        "splits": splits,
        "synthetic": p,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    umask_mode(out / "manifest.json")
