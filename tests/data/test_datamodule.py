"""VideoDataModule: batch format, exactly-once eval over workers and ranks, seeded training stream."""
from __future__ import annotations

import os

import lightning as L
import numpy as np
import pytest
import torch

from magvit_pl.data import datamodule as dm_mod
from magvit_pl.data import synthetic
from magvit_pl.data.datamodule import VideoDataModule
from magvit_pl.data.manifest import read_manifest
from magvit_pl.data.transforms import frames_to_tensor, tensor_to_frames
from magvit_pl.data.shards import decode_sample, read_shard
from magvit_pl.run.errors import MissingFileError, UserError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small synthetic set: 24 train clips in 6 shards, 10 val in 3 (4, 4, 2), 6 test in 2."""
    root = tmp_path_factory.mktemp("data") / "syn"
    return synthetic.ensure_default_dataset(root, num_train=24, num_val=10, num_test=6, num_frames=8,
                                            resolution=32, shard_size=4, workers=0)


def _all_keys(data_dir, split):
    manifest = read_manifest(data_dir)
    return [s["__key__"] for sh in manifest["splits"][split]["shards"] for s in read_shard(data_dir / sh["name"])]


def _module(data_dir, **kw):
    args = dict(data_dir=str(data_dir), num_frames=4, resolution=24, frame_stride=2, batch_size=4)
    dm = VideoDataModule(**{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_have_the_documented_format(data_dir):
    dm = _module(data_dir)
    assert dm.num_classes == 8 and dm.class_names == list(synthetic.CLASSES)
    batch = next(iter(dm.train_dataloader()))
    video, label, key = batch["video"], batch["label"], batch["key"]
    assert video.shape == (4, 3, 4, 24, 24) and video.dtype == torch.float32
    assert -1.0 <= video.min() < -0.5 and 0.5 < video.max() <= 1.0
    assert label.dtype == torch.int64 and isinstance(key, list) and len(key) == 4
    for k, lab in zip(key, label.tolist()):  # keys name the class the label says
        assert k.endswith(synthetic.CLASSES[lab])


def test_val_clip_is_the_centred_clip_resized_and_cropped(data_dir):
    dm = _module(data_dir)
    batch = next(iter(dm.val_dataloader()))
    raw = next(iter(read_shard(data_dir / "val-000000.tar")))
    assert batch["key"][0] == raw["__key__"]
    frames = decode_sample(raw)["frames"]  # (8, 32, 32, 3): centred 4 frames every 2 -> 0, 2, 4, 6
    clip = torch.nn.functional.interpolate(frames_to_tensor(frames[0:8:2]), size=(24, 24), mode="bilinear",
                                           antialias=True, align_corners=False)
    assert (batch["video"][0] - clip).abs().mean() < 0.01
    assert np.abs(tensor_to_frames(batch["video"][0]).astype(int) - tensor_to_frames(clip)).max() <= 2


@pytest.mark.parametrize("workers", [0, 2])
def test_val_and_test_give_every_sample_exactly_once(data_dir, workers):
    dm = _module(data_dir, num_workers=workers, batch_size=3)
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        for _ in range(2):  # and again the next epoch
            batches = list(loader)
            keys = [k for b in batches for k in b["key"]]
            assert sorted(keys) == sorted(_all_keys(data_dir, split))
            assert len(batches) == len(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_simulated_ranks_split_eval_disjointly(data_dir, workers, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = _module(data_dir, num_workers=workers, batch_size=2).val_dataloader()
        seen.append([k for b in loader for k in b["key"]])
        assert len(list(loader)) == len(loader)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(_all_keys(data_dir, "val"))
    assert abs(len(seen[0]) - len(seen[1])) <= 2


def test_training_stream_is_seeded_by_seed_epoch_and_rank(data_dir, monkeypatch):
    def epoch(seed=0, ep=0, workers=0):
        loader = _module(data_dir, seed=seed, num_workers=workers, train_samples_per_epoch=10).train_dataloader()
        loader.epoch_fn = lambda: ep
        return list(loader)

    first, again = epoch(), epoch()
    assert len(first) == 3  # 10 clips -> 3 batches of 4 (12 clips)
    assert [b["key"] for b in first] == [b["key"] for b in again]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(first, again))
    assert [b["key"] for b in epoch(ep=1)] != [b["key"] for b in first]
    assert [b["key"] for b in epoch(seed=1)] != [b["key"] for b in first]
    two = epoch(workers=2)
    assert len(two) == 4 and [b["key"] for b in two] == [b["key"] for b in epoch(workers=2)]  # 2 x 2 batches
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    other_rank = epoch()
    assert len(other_rank) == 2 and [b["key"] for b in other_rank] != [b["key"] for b in first][:2]


def test_trainer_epochs_reach_the_workers(data_dir):
    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.keys = {}

        def training_step(self, batch, _):
            self.keys.setdefault(self.current_epoch, []).extend(batch["key"])
            return (self.w * batch["video"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _module(data_dir, train_samples_per_epoch=8, num_workers=1)
    model = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    for ep in (0, 1):
        loader = dm.train_dataloader()
        loader.epoch_fn = lambda e=ep: e
        assert model.keys[ep] == [k for b in loader for k in b["key"]]
    assert model.keys[0] != model.keys[1]


def test_missing_data_names_the_path_and_the_prepare_command(tmp_path):
    with pytest.raises(MissingFileError) as info:
        VideoDataModule(data_dir=str(tmp_path / "nothing")).prepare_data()
    assert str(tmp_path / "nothing") in str(info.value) and "python cli.py prepare" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="manifest.json"):
        VideoDataModule(data_dir=str(tmp_path / "empty")).setup("fit")
    assert VideoDataModule.classes_from_manifest  # static helper exists for the CLI
    with pytest.raises(UserError, match="must be >= 1"):
        VideoDataModule(num_frames=0)


def test_unknown_split_lists_the_available_ones(data_dir):
    dm = _module(data_dir, val_split="validation")
    with pytest.raises(UserError, match="no 'validation' split.*train, val, test"):
        dm.val_dataloader()


def test_default_is_the_synthetic_set_under_the_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv(dm_mod.DATA_ENV, str(tmp_path / "shards"))
    calls = []
    real = synthetic.ensure_default_dataset

    def small(root, num_frames, resolution):  # the real default set takes ~10 s: build a tiny one
        calls.append((root, num_frames, resolution))
        return real(root, num_train=8, num_val=8, num_test=8, num_frames=num_frames,
                                                resolution=resolution, shard_size=8, workers=0)

    monkeypatch.setattr(dm_mod.synthetic, "ensure_default_dataset", small)
    dm = VideoDataModule(num_frames=4, resolution=32, batch_size=2)
    assert dm.num_classes == 8 and not calls  # class names known without generating anything
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [(tmp_path / "shards" / "dead_leaves-16x32", 16, 32)]
    assert next(iter(dm.val_dataloader()))["video"].shape == (2, 3, 4, 32, 32)
    assert VideoDataModule().root == tmp_path / "shards" / "dead_leaves-16x64"  # named by generator and size


DDP_SCRIPT = '''
import json, sys
import os

import lightning as L
import torch
from magvit_pl.data.datamodule import VideoDataModule

data_dir, out = sys.argv[1], sys.argv[2]


class Keys(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_keys, self.val_keys = [], []

    def training_step(self, batch, _):
        self.train_keys.extend(batch["key"])
        return (self.w * batch["video"].mean()).sum()

    def validation_step(self, batch, _):
        self.val_keys.extend(batch["key"])

    def on_validation_epoch_end(self):
        with open(f"{out}/keys-{self.global_rank}.json", "w") as fh:
            json.dump({"train": self.train_keys, "val": self.val_keys}, fh)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


dm = VideoDataModule(data_dir=data_dir, num_frames=4, resolution=24, batch_size=2, num_workers=1,
                     train_samples_per_epoch=8)
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, num_sanity_val_steps=0,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Keys(), datamodule=dm)
'''


@pytest.mark.slow
def test_real_ddp_ranks_read_val_exactly_once(data_dir, tmp_path):
    """Two gloo DDP processes (Lightning re-launches the script): val split across ranks for real."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_keys.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(script), str(data_dir), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = [json.loads((tmp_path / f"keys-{r}.json").read_text()) for r in (0, 1)]
    assert not set(keys[0]["val"]) & set(keys[1]["val"])
    assert sorted(keys[0]["val"] + keys[1]["val"]) == sorted(_all_keys(data_dir, "val"))
    assert len(keys[0]["train"]) == len(keys[1]["train"]) == 4  # 8 clips per epoch over 2 ranks
    assert keys[0]["train"] != keys[1]["train"]  # each rank draws its own stream


def test_clips_longer_than_the_videos_fail_clearly(data_dir):
    dm = _module(data_dir, num_frames=8, frame_stride=2)  # the videos have 8 frames, the clip spans 15
    with pytest.raises(UserError, match="too short: 8 frames < 15.*--min_frames"):
        next(iter(dm.val_dataloader()))
    with pytest.warns(UserWarning, match="skipping sample"), pytest.raises(UserError, match="100 training samples"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_restored_loader_state_continues_the_interrupted_pass(data_dir, workers):
    """The loader state Lightning saves with a checkpoint places a new loader (a resumed run builds one)
    so that it hands out exactly the batches the interrupted pass had not handed out yet."""
    def loader():
        return _module(data_dir, num_workers=workers, batch_size=2, train_samples_per_epoch=12).train_dataloader()

    first = loader()
    first.epoch_fn = lambda: 3
    full = [(b["key"], b["video"]) for b in first]
    assert len(full) == len(first) == 6 and first.state_dict() == {"epoch": 3, "batches": 6}
    interrupted = iter(first)
    for _ in range(4):
        next(interrupted)
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 4}
    del interrupted

    resumed = loader()
    resumed.load_state_dict(state)
    rest = [(b["key"], b["video"]) for b in resumed]
    assert [k for k, _ in rest] == [k for k, _ in full[4:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[4:]))
    assert resumed.state_dict() == {"epoch": 3, "batches": 6}
    nxt = [b["key"] for b in resumed]  # without a trainer the passes go on counting from the restored epoch
    again = loader()
    again.epoch_fn = lambda: 4
    assert nxt == [b["key"] for b in again]

    at_end = loader()  # a state saved on the epoch's last batch: the next epoch, from its start
    at_end.load_state_dict({"epoch": 3, "batches": 6})
    assert [b["key"] for b in at_end] == nxt


def test_a_malformed_loader_state_is_one_line(data_dir):
    loader = _module(data_dir).train_dataloader()
    for state in ({"epoch": 1}, {"epoch": "1", "batches": 0}, {"epoch": 1, "batches": -2}, [1, 2],
                  {"epoch": True, "batches": 0}):
        with pytest.raises(UserError, match="data-loader state .* is malformed") as info:
            loader.load_state_dict(state)
        assert "\n" not in str(info.value)
