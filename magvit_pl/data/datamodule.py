"""VideoDataModule: clips from webdataset shards (made by ``prepare`` or the synthetic generator).

Batches are dicts::

    video  float32 (B, 3, T, H, W) in [-1, 1]
    label  int64 (B,)  (-1 when the dataset has no labels)
    key    list[str]   the sample keys (unique per dataset)

Train: an endless stream over randomly resampled shards, shuffled through a buffer, cut into epochs
of ``train_samples_per_epoch`` clips; every random choice is seeded with ``(seed, epoch, rank,
worker)``, so an epoch's batches are reproducible and a new epoch reseeds. A fit resumed from a
mid-epoch checkpoint continues with the batch the interrupted run would have seen next. Val / test:
every sample exactly once per epoch, in a fixed order, centred clips and crops, split across DDP
ranks and then workers; with ``eval_clips_per_video`` k > 1 each video gives k clips evenly spaced over it
(starts ``int(linspace(0, last start, k))``, the official BAIR protocol's 15 clips of 16 frames from each
30-frame video), keyed ``<key>@<start>``. The stages are in :mod:`magvit_pl.data.stream`, the loader that sets up each
pass and saves its place in checkpoints in :mod:`magvit_pl.data.loader`.

Bad data: ``manifest.json`` is checked as a whole when it is read, and every shard of a split must
exist as a regular file of the recorded size before a loader starts (:mod:`magvit_pl.data.manifest`).
In training an unusable sample or shard is skipped with a warning naming it (``MAX_FAILURES`` in a row
stop the run with one line naming the last); in evaluation the first one stops it. SIGTERM while a
loader is waiting for data stops the run too.
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch

from magvit_pl.data import synthetic
from magvit_pl.data.loader import ClipLoader
from magvit_pl.data.manifest import check_shard_file, read_manifest
from magvit_pl.data.shards import check_shard_name
from magvit_pl.data.stream import ClipSpec, ShardClips
from magvit_pl.run.errors import UserError

DATA_ENV = "MAGVIT_PL_DATA"  # overrides the default shard root "data/shards"


def default_data_root() -> Path:
    """Where prepared and synthetic shards live: ``$MAGVIT_PL_DATA`` or ``./data/shards``."""
    return Path(os.environ.get(DATA_ENV) or "data/shards")


class VideoDataModule(L.LightningDataModule):
    """Video clips from prepared shards, or from the embedded synthetic dataset.

    Args:
        data_dir: A folder made by ``cli.py prepare`` (with manifest.json). None uses the embedded
            synthetic dataset, generated on first use under ``$MAGVIT_PL_DATA`` or ``data/shards``.
        num_frames: Frames per clip.
        resolution: Clips are square, resolution x resolution (short side resized to it, then cropped).
        frame_stride: Take every n-th frame of the stored video.
        batch_size: Clips per batch (per device).
        eval_batch_size: Batch size for validation and test (default: batch_size).
        num_workers: Data-loader worker processes (0 loads in the training process).
        shuffle_buffer: Training samples held for shuffling (memory: this many encoded videos).
        train_samples_per_epoch: Training clips per epoch over all devices (rounded up to whole
            batches per worker); the training stream itself is endless.
        random_crop: Random spatial crop for training (else centre crop).
        random_flip: Random horizontal flip for training.
        seed: Seed of every training random choice, combined with epoch, rank and worker.
        train_split: Split name used for training.
        val_split: Split used for validation (e.g. 'test' for UCF-101, which has no val split).
        test_split: Split used for testing (UCF-101 class generation is evaluated on ``train``, as the paper).
        eval_clips_per_video: Clips taken from each video in validation and test, evenly spaced (1: the
            centred clip; BAIR's official protocol: 15 clips of 16 frames from each 30-frame video).
        pin_memory: Pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        num_frames: int = 16,
        resolution: int = 64,
        frame_stride: int = 1,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 256,
        train_samples_per_epoch: int = 512,
        random_crop: bool = True,
        random_flip: bool = True,
        seed: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        pin_memory: bool = False,
        eval_clips_per_video: int = 1,
    ):
        super().__init__()
        for name, value in (("num_frames", num_frames), ("resolution", resolution), ("frame_stride", frame_stride),
                            ("batch_size", batch_size), ("train_samples_per_epoch", train_samples_per_epoch),
                            ("eval_clips_per_video", eval_clips_per_video)):
            if value < 1:
                raise UserError(f"--data.{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.num_frames, self.resolution, self.frame_stride = num_frames, resolution, frame_stride
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.train_samples_per_epoch = train_samples_per_epoch
        self.random_crop, self.random_flip, self.seed = random_crop, random_flip, seed
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.pin_memory = pin_memory
        self.eval_clips_per_video = eval_clips_per_video
        self._manifest: dict | None = None

    # -- where the data is ------------------------------------------------------------------------

    def synthetic_kwargs(self) -> dict:
        """Arguments for synthetic.ensure_default_dataset matching this module's clip size."""
        frames = max(16, (self.num_frames - 1) * self.frame_stride + 1)
        return {"num_frames": frames, "resolution": self.resolution}

    @property
    def root(self) -> Path:
        """The shard folder this module reads."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        kw = self.synthetic_kwargs()  # named by generator and size: a set made by an older generator stays apart
        return default_data_root() / f"{synthetic.GENERATOR}-{kw['num_frames']}x{kw['resolution']}"

    def prepare_data(self) -> None:
        """Generate the synthetic dataset if it is used and absent; check a given data_dir."""
        if self.data_dir is None:
            synthetic.ensure_default_dataset(self.root, **self.synthetic_kwargs())
        else:
            read_manifest(self.root)

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            if self.data_dir is None and not (self.root / "manifest.json").is_file():
                self.prepare_data()  # used outside a Trainer: generate the synthetic set now
            self._manifest = read_manifest(self.root)
        return self._manifest

    @staticmethod
    def classes_from_manifest(data_dir: str | os.PathLike) -> list[str]:
        """Class names (label order) of a prepared dataset."""
        return list(read_manifest(data_dir).get("classes", []))

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (the synthetic set's are known without generating it)."""
        if self.data_dir is None and self._manifest is None:
            return list(synthetic.CLASSES)
        return list(self.manifest.get("classes", []))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        self._manifest = None  # re-read: prepare_data may have just written it
        _ = self.manifest

    # -- loaders ----------------------------------------------------------------------------------

    def _dataset(self, split_key: str, train: bool) -> ShardClips:
        split = self.splits[split_key]
        splits = self.manifest.get("splits", {})
        entry = splits.get(split)
        if not entry or not entry.get("shards"):
            have = ", ".join(k for k, v in splits.items() if v.get("count")) or "none"
            raise UserError(f"{self.root} has no '{split}' split (splits with data: {have}); "
                            f"set --data.{split_key}_split to one of them")
        root = os.path.abspath(self.root)  # absolute: no shard path can read as a URL scheme
        shards = [os.path.join(root, check_shard_name(s["name"])) for s in entry["shards"]]
        for path, s in zip(shards, entry["shards"]):
            check_shard_file(path, s.get("bytes"))
        classes = self.manifest.get("classes")
        spec = ClipSpec(self.num_frames, self.resolution, self.frame_stride, self.random_crop, self.random_flip,
                        num_classes=len(classes) if classes else None)
        return ShardClips(shards, [int(s["count"]) for s in entry["shards"]], spec, train=train, seed=self.seed,
                          shuffle_buffer=self.shuffle_buffer, samples_per_epoch=self.train_samples_per_epoch,
                          batch_size=self.batch_size if train else self.eval_batch_size,
                          eval_clips=1 if train else self.eval_clips_per_video)

    def _loader(self, dataset: ShardClips) -> ClipLoader:
        # its own generator: starting the loader must not draw from the global torch RNG (exact resume)
        return ClipLoader(dataset, epoch_fn=self._trainer_epoch, batch_size=dataset.batch_size,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.seed))

    def _trainer_epoch(self) -> int | None:
        return None if self.trainer is None else int(self.trainer.current_epoch)

    def train_dataloader(self) -> ClipLoader:
        return self._loader(self._dataset("train", train=True))

    def val_dataloader(self) -> ClipLoader:
        return self._loader(self._dataset("val", train=False))

    def test_dataloader(self) -> ClipLoader:
        return self._loader(self._dataset("test", train=False))
