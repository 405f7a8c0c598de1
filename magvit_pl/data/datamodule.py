"""VideoDataModule: clips from webdataset shards (made by ``prepare`` or the synthetic generator).

Batches are dicts::

    video  float32 (B, 3, T, H, W) in [-1, 1]
    label  int64 (B,)  (-1 when the dataset has no labels)
    key    list[str]   the sample keys (unique per dataset)

Train: an endless stream over randomly resampled shards, shuffled through a buffer, cut into epochs
of ``train_samples_per_epoch`` clips. Every random choice (shard order, shuffle, clip start, crop,
flip) comes from one numpy generator per data-loader worker seeded with
``(seed, epoch, rank, worker)``: an epoch's batches are reproducible, and a new epoch reseeds.
The epoch number is the trainer's ``current_epoch`` (or a count of passes without a trainer), read
in the main process each time the loader is iterated and handed to the workers with the dataset.

Exact resume: when a run restarts from a mid-epoch checkpoint, the loader reads how many batches of the
epoch the trainer has already completed and each worker replays (decodes and drops) its share of them
with the same generator, so the next batch is the one the interrupted run would have seen. Replaying
costs decode time for the skipped clips (at most one epoch's worth), nothing else.

Val / test: shards in a fixed order, centred clips and crops. They are split across DDP ranks and
then workers by whole shards when there are enough shards, otherwise by sample index, so every
sample is seen exactly once per epoch and nothing is duplicated or dropped (the last batch of a
worker can be short, and ranks may differ by a batch).

Bad data: ``manifest.json`` is checked as a whole when it is read (:func:`check_manifest`), and every
shard of a split must exist as a regular file of the recorded size before a loader starts. In
training an unusable sample or shard (see :mod:`magvit_pl.data.shards`) is skipped with a warning
naming it, and ``MAX_FAILURES`` of them in a row stop the run with one line naming the last; in
evaluation the first one stops it. SIGTERM while a loader is waiting for data stops the run too
(Lightning itself only looks for SIGTERM between batches).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import warnings
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from magvit_pl.data import synthetic
from magvit_pl.data.shards import (FORMAT_VERSION, SampleError, ShardError, check_shard_name, class_name_problem,
                                   decode_sample, read_shard)
from magvit_pl.data.video import VideoReadError, center_crop, random_crop, resize_short_side
from magvit_pl.run.errors import MissingFileError, UserError

DATA_ENV = "MAGVIT_PL_DATA"  # overrides the default shard root "data/shards"
MAX_FAILURES = 100  # unusable training samples or shards in a row before a run stops
MAX_MANIFEST_BYTES = 1 << 30
MAX_SHARD_COUNT = 10_000_000  # samples in one shard
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def default_data_root() -> Path:
    """Where prepared and synthetic shards live: ``$MAGVIT_PL_DATA`` or ``./data/shards``."""
    return Path(os.environ.get(DATA_ENV) or "data/shards")


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of a shard folder; MissingFileError naming the prepare command."""
    path = Path(data_dir) / "manifest.json"
    if not Path(data_dir).is_dir():
        raise MissingFileError(f"data folder {data_dir} not found; make it with: "
                               f"python cli.py prepare --input VIDEOS --output {data_dir}")
    if not path.is_file():
        raise MissingFileError(f"{path} not found ({data_dir} is not a prepared dataset); make it with: "
                               f"python cli.py prepare --input VIDEOS --output {data_dir}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB; it is not a manifest this project wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path} is not valid JSON ({str(e)[:100]}); prepare the data again") from None
    return check_manifest(manifest, str(path))


def _is_int(value: object, low: int = 0, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def check_manifest(manifest: object, where: str = "manifest.json") -> dict:
    """``manifest`` if everything the loader reads from it is well-formed, else one UserError line:
    ``format_version`` one this code reads; ``classes`` a list of distinct names that survive
    classes.txt; ``splits`` a non-empty object whose names are plain words, each with a list of
    ``shards`` ``{name, count[, bytes]}`` (names plain file names, see ``check_shard_name``; counts
    integers that add up to the split's ``count``)."""
    def bad(message: str):
        raise UserError(f"{where}: {message}; prepare the data again")

    if not isinstance(manifest, dict):
        bad(f"expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not _is_int(version, 1, FORMAT_VERSION):
        bad(f"format_version {version!r:.40} is not one this version reads (1..{FORMAT_VERSION})")
    classes = manifest.get("classes", [])
    if not isinstance(classes, list):
        bad(f"'classes' must be a list of names, got {type(classes).__name__}")
    for name in classes:
        if (problem := class_name_problem(name)) is not None:
            bad(f"class name {name!r:.60} {problem}")
    if len(set(classes)) != len(classes):
        bad(f"class '{next(c for c in classes if classes.count(c) > 1)}' is listed twice")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        bad("'splits' must be a non-empty object of split name -> {count, shards}")
    for split, entry in splits.items():
        if not SPLIT_NAME.fullmatch(split):
            bad(f"split name {split!r:.60} is not a plain word (letters, digits, '_', '-')")
        if not isinstance(entry, dict) or not isinstance(entry.get("shards", []), list):
            bad(f"split '{split}' must be an object with a list of 'shards'")
        seen, total = set(), 0
        for shard in entry.get("shards", []):
            if not isinstance(shard, dict):
                bad(f"split '{split}': every shard must be an object {{name, count}}, got {type(shard).__name__}")
            name = check_shard_name(shard.get("name"), f"{where}, split '{split}'")
            if name in seen:
                bad(f"split '{split}' lists shard {name} twice")
            seen.add(name)
            if not _is_int(shard.get("count"), 0, MAX_SHARD_COUNT):
                bad(f"shard {name}: 'count' must be an integer in [0, {MAX_SHARD_COUNT}], "
                    f"got {shard.get('count')!r:.40}")
            if "bytes" in shard and not _is_int(shard["bytes"]):
                bad(f"shard {name}: 'bytes' must be an integer >= 0, got {shard['bytes']!r:.40}")
            total += shard["count"]
        if entry.get("count", total) != total or not _is_int(entry.get("count", total)):
            bad(f"split '{split}': 'count' {entry.get('count')!r:.40} is not the sum of its shards' counts ({total})")
        if "frames" in entry and not _is_int(entry["frames"]):
            bad(f"split '{split}': 'frames' must be an integer >= 0, got {entry['frames']!r:.40}")
    return manifest


def _check_shard_file(path: str, size: int | None) -> None:
    """ShardError unless ``path`` is a regular file of ``size`` bytes (None: any size)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(path, "listed in manifest.json but not found; prepare the data again") from None
    except OSError as e:
        raise ShardError(path, f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(path, "not a regular file")
    if size is not None and st.st_size != size:
        raise ShardError(path, f"has {st.st_size} bytes, manifest.json says {size}: it was changed or cut short; "
                               f"prepare the data again")


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # (C, T, H, W)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3) (clamped and rounded)."""
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


class DataWaitTerminated(UserError):
    """SIGTERM arrived while the run was waiting for a batch."""

    exit_code = 128 + 15


class ShardClips(IterableDataset):
    """Clips from a list of shards; see the module docstring for the train / eval behaviour.

    ``rank`` and ``world_size`` are read in the process that iterates the DataLoader (the main one)
    and travel to the workers with the dataset, so worker processes need no distributed setup.
    """

    def __init__(self, shards: list[str], counts: list[int], num_frames: int, resolution: int, frame_stride: int = 1,
                 train: bool = False, seed: int = 0, shuffle_buffer: int = 256, samples_per_epoch: int = 512,
                 batch_size: int = 1, num_workers: int = 0, random_crop: bool = True, random_flip: bool = True,
                 num_classes: int | None = None):
        super().__init__()
        if not shards:
            raise UserError("no shards to read")
        self.shards, self.counts = list(shards), list(counts)
        self.num_classes = num_classes  # labels must lie in [0, num_classes) (None: not checked)
        self.num_frames, self.resolution, self.frame_stride = num_frames, resolution, frame_stride
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.samples_per_epoch, self.batch_size, self.num_workers = samples_per_epoch, batch_size, num_workers
        self.random_crop, self.random_flip = random_crop, random_flip
        self.epoch = 0
        self.skip_batches = 0  # batches of this epoch already consumed (resume); train only
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_distributed(self, rank: int | None = None, world_size: int | None = None) -> None:
        """Record this process's DDP rank (default: from torch.distributed or RANK/WORLD_SIZE)."""
        if rank is None or world_size is None:
            rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        self.rank, self.world_size = int(rank), int(world_size)

    # -- sizes ------------------------------------------------------------------------------------

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def per_worker_train(self) -> int:
        """Train clips each worker yields per epoch: a whole number of batches, so that all ranks and
        workers together yield at least ``samples_per_epoch`` clips."""
        parts = self.world_size * self._workers() * self.batch_size
        return math.ceil(self.samples_per_epoch / parts) * self.batch_size

    def eval_counts(self) -> list[int]:
        """How many samples each worker of this rank yields in an eval pass."""
        n_w, parts = self._workers(), self.world_size * self._workers()
        if len(self.shards) >= parts:
            mine = self.counts[self.rank :: self.world_size]
            return [sum(mine[w::n_w]) for w in range(n_w)]
        total = sum(self.counts)
        return [len(range(self.rank * n_w + w, total, parts)) for w in range(n_w)]

    def __len__(self) -> int:
        """Samples this rank yields per epoch, counted so that ``len(DataLoader)`` is the exact
        number of batches (each worker's last eval batch may be short)."""
        if self.train:
            return self.per_worker_train() * self._workers()
        b = self.batch_size
        return sum(math.ceil(c / b) * b for c in self.eval_counts())

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_w = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_w != self._workers():  # the DataLoader's num_workers decides, whatever was set before
            self.num_workers = n_w if info is not None else 0
        if self.train:
            # The DataLoader hands batches out round-robin from worker 0: stream w makes batches w, w+n_w, ...
            # On a resume after k batches, worker i plays stream (i + k) % n_w, so batch k comes first.
            stream = (worker + self.skip_batches) % n_w
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, stream])
            skip = len(range(stream, self.skip_batches, n_w)) * self.batch_size
            return islice(self._train_stream(rng), min(skip, self.per_worker_train()), self.per_worker_train())
        return self._eval_stream(worker, n_w)

    def _train_stream(self, rng: np.random.Generator) -> Iterator[dict]:
        failures = _Failures()

        def resampled_shards() -> Iterator[dict]:
            while True:  # resample shards with replacement, forever; a broken one counts as a failure
                path = self.shards[int(rng.integers(len(self.shards)))]
                found = 0
                try:
                    for sample in read_shard(path):
                        found += 1
                        yield sample
                except ShardError as e:
                    failures.failed(str(e))
                    continue
                if not found:
                    failures.failed(f"shard {path}: holds no samples")

        for sample in _shuffle(resampled_shards(), self.shuffle_buffer, rng):
            try:
                clip = self._clip(sample, rng)
            except DataWaitTerminated:
                raise
            except (ValueError, UserError) as e:  # a bad or too-short sample: skip it, say which
                failures.failed(_sample_problem(sample, e))
                continue
            failures.ok()
            yield clip

    def _eval_samples(self, indices: Iterator[int]) -> Iterator[dict]:
        """The raw samples of shards ``indices`` in order; a shard holding another number of samples
        than the manifest says is a ShardError (evaluation must see exactly the recorded set)."""
        for i in indices:
            found = 0
            for sample in read_shard(self.shards[i]):
                found += 1
                yield sample
            if found != self.counts[i]:
                raise ShardError(self.shards[i], f"holds {found} samples, manifest.json says {self.counts[i]}; "
                                                 f"prepare the data again")

    def _eval_stream(self, worker: int, n_w: int) -> Iterator[dict]:
        parts = self.world_size * n_w
        if len(self.shards) >= parts:  # whole shards: by node, then by worker
            mine = self._eval_samples(iter(range(len(self.shards))[self.rank :: self.world_size][worker::n_w]))
        else:  # too few shards: every reader walks all shards, keeps its share of samples
            raw = self._eval_samples(iter(range(len(self.shards))))
            mine = islice(raw, self.rank * n_w + worker, None, parts)
        for sample in mine:
            try:
                clip = self._clip(sample, None)
            except DataWaitTerminated:
                raise
            except (ValueError, UserError) as e:  # evaluation must see every sample: stop with the reason
                raise UserError(_sample_problem(sample, e)) from None
            yield clip

    def _clip(self, sample: dict, rng: np.random.Generator | None) -> dict:
        """Decode a raw sample to a model-ready clip (random when ``rng`` is given, centred if not)."""
        d = decode_sample(sample, self.num_frames, self.frame_stride, None, rng, num_classes=self.num_classes)
        frames = d["frames"]  # (T, H, W, 3) uint8
        if min(frames.shape[1:3]) != self.resolution:
            frames = resize_short_side(frames, self.resolution)
        if rng is not None and self.random_crop:
            frames = random_crop(frames, self.resolution, rng)
        else:
            frames = center_crop(frames, self.resolution)
        if rng is not None and self.random_flip and rng.uniform() < 0.5:
            frames = frames[:, :, ::-1]
        return {"video": frames_to_tensor(frames), "label": d["label"], "key": d["key"]}


_HINT = "lower --data.num_frames / --data.frame_stride or prepare again with a larger --min_frames"


def _sample_problem(sample: dict, err: Exception) -> str:
    """One line naming the sample (and its shard) and what is wrong with it."""
    where = f" (shard {sample['__url__']})" if "__url__" in sample else ""
    if isinstance(err, (SampleError, VideoReadError)):
        return f"{err}{where}"
    return f"sample {sample.get('__key__')}{where}: {err}; {_HINT}"  # too short for the clip


class _Failures:
    """Unusable training samples and shards in a row: each is skipped with a warning naming it; the
    ``MAX_FAILURES``-th in a row stops the run with one line naming the last (a training stream that
    only ever met broken shards would otherwise resample them forever)."""

    def __init__(self) -> None:
        self.in_a_row = 0

    def ok(self) -> None:
        self.in_a_row = 0

    def failed(self, problem: str) -> None:
        warnings.warn(f"skipping {problem}", stacklevel=3)
        self.in_a_row += 1
        if self.in_a_row >= MAX_FAILURES:
            raise UserError(f"{MAX_FAILURES} training samples or shards in a row were unusable (last: {problem})")


def _shuffle(stream: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle through a buffer of ``size`` items (raw encoded samples), drawing with ``rng``."""
    if size <= 1:
        yield from stream
        return
    buf: list[dict] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    order = rng.permutation(len(buf))
    yield from (buf[i] for i in order)


@contextlib.contextmanager
def _sigterm_stops_the_wait() -> Iterator[None]:
    """While the body runs, SIGTERM raises DataWaitTerminated (after the handler that was installed,
    e.g. Lightning's, has recorded it). Lightning only checks for SIGTERM between batches: a data
    pipeline that stalls (a hung decoder, a stuck file system) would keep a run alive forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:  # the process chose to ignore SIGTERM: keep it that way
        yield
        return

    def stop(signum, frame):
        if callable(previous):
            previous(signum, frame)
        raise DataWaitTerminated("stopped by SIGTERM while waiting for data")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _from_worker(err: Exception) -> UserError | None:
    """The one-line UserError behind ``err`` when ``err`` is torch's re-raise of a UserError from a
    DataLoader worker (whose message carries the worker's whole traceback), else None."""
    text = str(err)
    if not (text.startswith("Caught ") and " in DataLoader worker process " in text.split("\n", 1)[0]):
        return None
    qualname, _, message = text.rstrip().rsplit("\n", 1)[-1].partition(": ")
    module, _, name = qualname.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)  # only classes already imported here
    if not (isinstance(cls, type) and issubclass(cls, UserError)) and not isinstance(err, UserError):
        return None
    error = UserError(message)
    error.exit_code = getattr(cls, "exit_code", UserError.exit_code)
    return error


class _GuardedBatches:
    """A DataLoader iterator whose waits SIGTERM can stop, and whose worker errors stay one line."""

    def __init__(self, iterator: Iterator):
        self._iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        with _sigterm_stops_the_wait():
            try:
                return next(self._iterator)
            except Exception as err:  # noqa: BLE001  only a worker's UserError is rewritten
                if (error := _from_worker(err)) is None:
                    raise
        raise error from None

    def __getattr__(self, name: str):
        return getattr(self._iterator, name)


class _EpochLoader(DataLoader):
    """A DataLoader that, each time it is iterated, tells its dataset the epoch and DDP rank (read
    here in the main process, then copied to the workers with the dataset)."""

    epoch_fn: Callable[[], int | None] | None = None
    skip_fn: Callable[[], int] | None = None
    _passes: int = 0

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._passes
        self._passes += 1
        self.dataset.set_distributed()
        skip = int(self.skip_fn()) if self.skip_fn is not None and self.dataset.train else 0
        if skip and skip >= super().__len__():  # resumed on an epoch's last batch: the next epoch starts
            epoch, skip = epoch + 1, 0
        self.dataset.set_epoch(epoch)
        self.dataset.skip_batches = skip
        return _GuardedBatches(super().__iter__())

    def __len__(self) -> int:
        self.dataset.set_distributed()
        return super().__len__()


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
        test_split: Split used for testing.
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
    ):
        super().__init__()
        for name, value in (("num_frames", num_frames), ("resolution", resolution), ("frame_stride", frame_stride),
                            ("batch_size", batch_size), ("train_samples_per_epoch", train_samples_per_epoch)):
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
        kw = self.synthetic_kwargs()
        name = "synthetic" if kw == {"num_frames": 16, "resolution": 64} else \
            f"synthetic-{kw['num_frames']}x{kw['resolution']}"
        return default_data_root() / name

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
            _check_shard_file(path, s.get("bytes"))
        counts = [int(s["count"]) for s in entry["shards"]]
        classes = self.manifest.get("classes")
        return ShardClips(shards, counts, self.num_frames, self.resolution, self.frame_stride, train=train,
                          num_classes=len(classes) if classes else None,
                          seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                          samples_per_epoch=self.train_samples_per_epoch,
                          batch_size=self.batch_size if train else self.eval_batch_size,
                          num_workers=self.num_workers, random_crop=self.random_crop, random_flip=self.random_flip)

    def _loader(self, dataset: ShardClips) -> DataLoader:
        # its own generator: starting the loader must not draw from the global torch RNG (exact resume)
        loader = _EpochLoader(dataset, batch_size=dataset.batch_size, num_workers=self.num_workers,
                              pin_memory=self.pin_memory, persistent_workers=False,
                              generator=torch.Generator().manual_seed(self.seed))
        loader.epoch_fn = self._trainer_epoch
        loader.skip_fn = self._trainer_batches_done
        return loader

    def _trainer_epoch(self) -> int | None:
        trainer = self.trainer
        return None if trainer is None else int(trainer.current_epoch)

    def _trainer_batches_done(self) -> int:
        """Training batches of the current epoch already completed: non-zero only when a fit resumes
        from a mid-epoch checkpoint (Lightning restores its progress counters before the loader starts)."""
        trainer = self.trainer
        if trainer is None or not trainer.training or trainer.state.status != "running":
            return 0
        progress = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
        return int(getattr(getattr(progress, "current", None), "ready", 0) or 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("train", train=True))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", train=False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test", train=False))

