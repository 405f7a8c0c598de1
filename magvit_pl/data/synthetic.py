"""The embedded default dataset: procedurally generated, labelled clips of moving textured shapes.

Each class fixes a shape and a motion pattern; everything else (colours, textures, speeds, phases,
size, the background and an occluding distractor blob) is drawn per clip. So the class is visible
from the clip, future frames follow from past ones, and masked regions can be inferred from what
surrounds them: frame prediction, interpolation, in/outpainting and class conditioning all have
something to learn. Rendering is vectorised numpy over (T, H, W); clip ``i`` of a split depends only
on ``(seed, split, i)``, so the bytes are the same on every machine and for any dataset size.

``ensure_default_dataset`` writes the clips as shards with the same writer and manifest as
``prepare``, so the DataModule reads both the same way.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from magvit_pl.data.shards import (FORMAT_VERSION, StorageFormat, encode_sample, make_key, shard_name, umask_mode,
                                   write_shard)
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import atomic_open, write_json

CLASSES = ("circle_bounce", "square_spin", "triangle_orbit", "star_pulse",
           "ring_wave", "cross_diagonal", "diamond_zoom", "bars_sway")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# libx264 'superfast' encodes these small clips twice as fast as 'medium', at higher PSNR (37.5 ->
# 38.7 dB) for 1.8x the bytes (~16 KB a clip); the files decode as fast.
ENCODER_PRESET = "superfast"


# ----------------------------------------------------------------------------------------------
# shapes: soft signed distances in object coordinates (u, v), unit size, negative inside


def _shape_sdf(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if name in ("circle", "star", "ring"):
        r = np.sqrt(u * u + v * v)
        if name == "circle":
            return r - 1.0
        if name == "ring":
            return np.abs(r - 0.75) - 0.25
        c = u / np.maximum(r, 1e-6)  # cos(phi); five points via cos(5 phi) = 16c^5 - 20c^3 + 5c
        c2 = c * c
        return r - (0.62 + 0.38 * c * (16 * c2 * c2 - 20 * c2 + 5))
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if name == "triangle":  # equilateral, pointing up, inscribed in the unit circle
        return np.maximum(np.abs(u) * 0.866 - v * 0.5, v) - 0.5
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 1.0, av - 0.3), np.maximum(av - 1.0, au - 0.3))
    if name == "diamond":  # a rhombus, taller than wide
        return np.abs(u) * 0.85 + np.abs(v) * 0.5 - 0.5
    if name == "bars":  # three parallel bars at v = -0.6, 0, 0.6
        av = np.abs(v)
        return np.maximum(np.abs(u) - 1.0, np.minimum(av, np.abs(av - 0.6)) - 0.16)
    raise ValueError(name)


SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "bars")


def _motion(label: int, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Centre (x, y), angle and scale over time ``t`` in [0, 1] for the class's motion pattern.

    Coordinates are fractions of the frame; scale is the shape radius as a fraction of the frame.
    """
    n = len(t)
    size = rng.uniform(0.15, 0.22)
    sign = rng.choice([-1.0, 1.0])
    x0, y0 = rng.uniform(0.3, 0.7, size=2)
    angle = np.full(n, rng.uniform(0, 2 * np.pi))
    scale = np.full(n, size)
    if label == 0:  # circle: straight line, bouncing off the walls
        vx, vy = rng.uniform(0.6, 1.1, size=2) * rng.choice([-1.0, 1.0], size=2)
        lo, hi = size, 1 - size
        x = lo + np.abs(np.mod(x0 - lo + vx * t, 2 * (hi - lo)) - (hi - lo))
        y = lo + np.abs(np.mod(y0 - lo + vy * t, 2 * (hi - lo)) - (hi - lo))
    elif label == 1:  # square: spinning while drifting sideways
        x, y = x0 + sign * 0.3 * (t - 0.5), np.full(n, y0)
        angle = angle + sign * rng.uniform(2.5, 4.0) * t * np.pi
    elif label == 2:  # triangle: orbiting the centre, pointing along its path
        rad, ph = rng.uniform(0.18, 0.26), rng.uniform(0, 2 * np.pi)
        a = ph + sign * rng.uniform(1.2, 1.8) * np.pi * t
        x, y = 0.5 + rad * np.cos(a), 0.5 + rad * np.sin(a)
        angle = a
    elif label == 3:  # star: spinning in place, pulsing in size
        x, y = np.full(n, x0 * 0.5 + 0.25), np.full(n, y0 * 0.5 + 0.25)
        angle = angle + sign * rng.uniform(1.0, 1.6) * np.pi * t
        scale = size * (1 + 0.35 * np.sin(2 * np.pi * (rng.uniform(1.5, 2.5) * t + rng.uniform())))
    elif label == 4:  # ring: sine wave along x
        x = 0.2 + 0.6 * (t if sign > 0 else 1 - t)
        y = 0.5 + 0.2 * np.sin(2 * np.pi * (rng.uniform(1.0, 1.6) * t + rng.uniform()))
    elif label == 5:  # cross: diagonal line, slowly turning
        x = 0.2 + 0.6 * t
        y = 0.2 + 0.6 * (t if sign > 0 else 1 - t)
        angle = angle + 0.5 * np.pi * t
    elif label == 6:  # diamond: upright, zooming in (or out) at a fixed place
        x, y = np.full(n, x0), np.full(n, y0)
        angle = np.zeros(n)
        grow = np.linspace(0.45, 1.6, n) if sign > 0 else np.linspace(1.6, 0.45, n)
        scale = size * grow
    else:  # bars: swaying (rocking back and forth) while sinking or rising slowly
        x = np.full(n, x0)
        y = y0 + sign * 0.25 * (t - 0.5)
        angle = angle + 0.6 * np.sin(2 * np.pi * (rng.uniform(1.0, 1.5) * t + rng.uniform()))
    return x, y, angle, scale


# ----------------------------------------------------------------------------------------------
# rendering


def _palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` random saturated RGB colours in [0, 1], shape (k, 3)."""
    hue = rng.uniform(0, 1, size=k)
    sat, val = rng.uniform(0.5, 1.0, size=k), rng.uniform(0.55, 1.0, size=k)
    rgb = np.clip(np.abs(np.mod(hue[:, None] * 6 + np.array([0, 4, 2]), 6) - 3) - 1, 0, 1)  # hue wheel
    return val[:, None] * (1 - sat[:, None] * (1 - rgb))


def _background(x: np.ndarray, y: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scrolling smooth texture: a few random plane waves, coloured by a random 2-colour ramp.

    Returns (3, T, H, W) in [0, 1] (channel first: numpy broadcasts over a last axis of 3 slowly).
    """
    vx, vy = rng.uniform(-0.35, 0.35, size=2)
    k = 4
    freq = rng.uniform(2, 9, size=k) * 2 * np.pi
    theta = rng.uniform(0, np.pi, size=k)
    phase = rng.uniform(0, 2 * np.pi, size=k)
    fx, fy = freq * np.cos(theta), freq * np.sin(theta)
    # wave i at (x - vx t, y - vy t) is sin(A_i(x, y) + B_i(t)); sin(A + B) = sin A cos B + cos A sin B,
    # so the sum over waves is one (T, 2k) @ (2k, H*W) product
    a = fx[:, None] * x.reshape(1, -1) + fy[:, None] * y.reshape(1, -1)  # (k, H*W)
    b = phase[None] - (fx * vx + fy * vy)[None] * t[:, None]  # (T, k)
    time_part = np.concatenate([np.cos(b), np.sin(b)], axis=1) / k  # (T, 2k)
    space_part = np.concatenate([np.sin(a), np.cos(a)], axis=0)  # (2k, H*W)
    field = (time_part @ space_part).astype(np.float32).reshape(len(t), *x.shape)  # (T, H, W) in [-1, 1]
    lo, hi = (_palette(rng, 2) * np.array([[0.55], [0.8]])).astype(np.float32)  # darker than the objects
    mid, half = (lo + hi)[:, None, None, None] / 2, (hi - lo)[:, None, None, None] / 2  # (3, 1, 1, 1)
    return mid + field[None] * half


def _draw(canvas: np.ndarray, shape: str, x, y, angle, scale, colours, xg, yg, rng, px: float,
          stretch: float = 1.0) -> np.ndarray:
    """Alpha-composite a textured shape over ``canvas`` (3, T, H, W); returns its alpha (T, H, W).

    ``x, y, angle, scale`` are per-frame arrays (T,); ``stretch`` squeezes the shape along v."""
    f32 = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]  # noqa: E731  (T,) -> (T, 1, 1)
    dx = xg[None] - f32(x)  # (T, H, W)
    dy = yg[None] - f32(y)
    c, s, sc = f32(np.cos(angle)), f32(np.sin(angle)), f32(scale)
    u, v = (c * dx + s * dy) / sc, (-s * dx + c * dy) / (sc * stretch)  # object coordinates, radius 1
    sdf = _shape_sdf(shape, u, v)
    alpha = np.clip(0.5 - sdf * sc * min(stretch, 1.0) * px, 0.0, 1.0)  # about one-pixel soft edge
    k, tilt = np.float32(rng.uniform(3, 7) * np.pi), np.float32(rng.uniform(-0.5, 0.5))
    stripes = 0.5 + 0.5 * np.sin(k * (u + tilt * v))  # the texture moves and turns with the object
    c0, c1 = colours.astype(np.float32)[:, :, None, None, None]  # (3, 1, 1, 1) each
    fill = c0 + stripes[None] * (c1 - c0)  # (3, T, H, W)
    canvas += alpha[None] * (fill - canvas)
    return alpha


def render_clip(label: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64,
                return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one clip of class ``label`` as uint8 (T, H, W, 3); with ``return_mask`` also the
    float alpha (T, H, W) of the class object (after occlusion)."""
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    xg, yg = np.meshgrid(coords, coords)  # (H, W), x to the right, y down
    canvas = _background(xg, yg, t, rng)
    colours = _palette(rng, 2)
    # the distractor: a striped ellipse crossing the frame, in front of or behind the object
    front = rng.uniform() < 0.5
    side = rng.choice([-1.0, 1.0])
    d_y0, d_y1 = rng.uniform(0.1, 0.9, size=2)
    d_x = 0.5 + side * (1.3 * t - 0.65)
    d_y = d_y0 + (d_y1 - d_y0) * t
    d_angle = np.full(num_frames, rng.uniform(0, np.pi))
    d_scale = np.full(num_frames, rng.uniform(0.1, 0.14))
    d_col = _palette(rng, 2) * 0.8
    x, y, angle, scale = _motion(label, t, rng)
    if not front:
        _draw(canvas, "circle", d_x, d_y, d_angle, d_scale, d_col, xg, yg, rng, size, stretch=0.55)
    mask = _draw(canvas, SHAPES[label], x, y, angle, scale, colours, xg, yg, rng, size)
    if front:
        d_alpha = _draw(canvas, "circle", d_x, d_y, d_angle, d_scale, d_col, xg, yg, rng, size, stretch=0.55)
        mask = mask * (1 - d_alpha)
    video = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 3, 0)  # (T, H, W, 3)
    video = np.ascontiguousarray(video)
    return (video, mask) if return_mask else video


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


def default_params(num_train: int = 512, num_val: int = 64, num_test: int = 64, num_frames: int = 16,
                   resolution: int = 64, seed: int = 0, shard_size: int = 64,
                   storage: StorageFormat = "mp4", fps: float = 8.0) -> dict:
    """The generator settings recorded in the manifest (a dataset on disk is reused only if equal)."""
    return dict(num_train=num_train, num_val=num_val, num_test=num_test, num_frames=num_frames,
                resolution=resolution, seed=seed, shard_size=shard_size, storage=storage, fps=fps)


def ensure_default_dataset(root: str | os.PathLike = "data/shards/synthetic", num_train: int = 512,
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
            raise UserError(f"{root} exists but is not the synthetic dataset with these settings; "
                            f"delete it or pick another folder")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            _write_dataset(tmp, params, workers)
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
        import fcntl
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


def _write_dataset(out: Path, p: dict, workers: int | None) -> None:
    t0 = time.perf_counter()
    jobs = _shard_jobs(p)
    workers = min(8, os.cpu_count() or 1, len(jobs)) if workers is None else workers
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from magvit_pl.data.prepare import die_with_parent

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        # workers die with this process: a survivor would hold the dataset lock (inherited) for ever
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            list(pool.map(_write_synthetic_shard, *zip(*[(out, p, *job) for job in jobs])))
    else:
        for job in jobs:
            _write_synthetic_shard(out, p, *job)
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
        "name": out.name,
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
