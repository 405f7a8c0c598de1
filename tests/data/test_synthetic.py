"""The embedded synthetic dataset: deterministic, classes tell apart, written like prepare's output."""
from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from magvit_pl.data import synthetic
from magvit_pl.data.shards import decode_sample, read_shard
from magvit_pl.run.errors import UserError

SMALL = dict(num_train=16, num_val=8, num_test=8, num_frames=8, resolution=32, shard_size=8, workers=0)


def test_same_seed_same_bytes_different_seed_different_clips():
    a = synthetic.render_clip(3, synthetic.clip_rng(0, "train", 5), 8, 32)
    b = synthetic.render_clip(3, synthetic.clip_rng(0, "train", 5), 8, 32)
    c = synthetic.render_clip(3, synthetic.clip_rng(1, "train", 5), 8, 32)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert a.tobytes() == b.tobytes()
    assert np.abs(a.astype(int) - c).mean() > 10
    assert np.abs(np.diff(a.astype(int), axis=0)).mean() > 1  # it moves


def test_labels_are_balanced_and_fixed_per_index():
    labels = [synthetic.clip_label(0, "train", i) for i in range(64)]
    assert np.bincount(labels, minlength=8).tolist() == [8] * 8
    assert labels == [synthetic.clip_label(0, "train", i) for i in range(64)]


def _mask_features(mask: np.ndarray) -> np.ndarray:
    """Shape-and-motion statistics of the class object's mask (T, H, W)."""
    t, h, w = mask.shape
    area = mask.sum((1, 2)) + 1e-6
    yy, xx = np.mgrid[0:h, 0:w] / h
    cx, cy = (mask * xx).sum((1, 2)) / area, (mask * yy).sum((1, 2)) / area
    step = np.hypot(np.diff(cx), np.diff(cy))
    change = np.abs(np.diff(mask, axis=0)).sum((1, 2)) / area[1:]
    return np.array([area.mean() / (h * w), area.std() / area.mean(), step.mean(), step.std(), change.mean(),
                     np.hypot(cx[-1] - cx[0], cy[-1] - cy[0])])


def test_classes_are_visually_distinct():
    """A nearest-centroid classifier on simple mask statistics tells the 8 classes apart."""
    feats, labels = [], []
    for i in range(96):
        label = synthetic.clip_label(0, "train", i)
        _, mask = synthetic.render_clip(label, synthetic.clip_rng(0, "train", i), 16, 32, return_mask=True)
        feats.append(_mask_features(mask))
        labels.append(label)
    x, y = np.array(feats), np.array(labels)
    z = (x - x.mean(0)) / x.std(0)
    train = np.arange(len(y)) < 48
    centroids = np.stack([z[train & (y == c)].mean(0) for c in range(8)])
    pred = np.argmin(((z[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[~train]).mean() >= 0.8  # chance is 0.125
    # and the per-class means of the statistics differ for every pair of classes
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert dist[~np.eye(8, dtype=bool)].min() > 0.5


def test_dataset_on_disk_matches_prepare_format(tmp_path):
    root = synthetic.ensure_default_dataset(tmp_path / "syn", **SMALL)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == list(synthetic.CLASSES)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 16, "val": 8, "test": 8}
    shard = manifest["splits"]["val"]["shards"][0]["name"]
    samples = [decode_sample(s) for s in read_shard(root / shard)]
    assert len(samples) == 8
    first = samples[0]
    expected = synthetic.render_clip(first["label"], synthetic.clip_rng(0, "val", 0), 8, 32)
    assert first["frames"].shape == (8, 32, 32, 3) and first["meta"]["class"] == synthetic.CLASSES[first["label"]]
    assert np.abs(first["frames"].astype(int) - expected).mean() < 6  # mp4 4:4:4 CRF 18 (random pairs: ~80)
    # a second call finds it complete and leaves it alone; other settings are refused
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert synthetic.ensure_default_dataset(tmp_path / "syn", **SMALL) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="not the synthetic dataset"):
        synthetic.ensure_default_dataset(tmp_path / "syn", **{**SMALL, "num_train": 8})
    # the same settings elsewhere give identical shard bytes
    other = synthetic.ensure_default_dataset(tmp_path / "again", **{**SMALL, "workers": 2})
    for p in sorted(root.glob("*.tar")):
        assert (other / p.name).read_bytes() == p.read_bytes()


def _race(root: str, barrier) -> None:
    barrier.wait()
    synthetic.ensure_default_dataset(root, **SMALL)


def test_two_processes_racing_end_with_one_complete_dataset(tmp_path):
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "syn"), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert json.loads((tmp_path / "syn" / "manifest.json").read_text())["splits"]["train"]["count"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [".syn.lock", "syn"]  # no temp folder left
