"""The clip stream: webdataset pipeline stages from shard files to model-ready clips.

Training (endless, reseeded every epoch, cut to a whole number of batches per worker)::

    shards ─ wds.ResampledShards ─ read_shards ─ wds.shuffle ─ decode ─ fit ─ to_item ─ islice(skip, n)

Evaluation (every sample exactly once, in shard order, centred clips)::

    shards ─ split_by_rank ─ wds.split_by_worker ─ read_shards ─ decode ─ fit ─ to_item
    (fewer shards than readers: every reader reads all shards and keeps every n-th sample instead)

Each stage is a small function over an iterator; a bad shard or sample goes to its ``handler=``.
Training skips it with a warning naming it (:class:`SkipUnusable`; ``MAX_FAILURES`` in a row stop the
run, so a stream that only meets broken shards cannot resample them forever); evaluation, which must
see every sample, stops at the first with one line naming it (``wds.reraise_exception``).

Every random choice of a training pass (shard draws, shuffle, clip start, crop, flip) comes from
generators seeded with ``(seed, epoch, rank, stream)``. The epoch and rank are fixed in the main
process (:class:`Pass`, set by the loader) and travel to the workers with the dataset: webdataset's
own epoch counters (ResampledShards, detshuffle) count in the worker's copy of the dataset, which
non-persistent workers throw away, so every epoch would replay the first; and its node splitter reads
the rank inside the worker, where a spawned worker has no process group.

Replay: a pass that must skip k batches (a resumed fit) plays stream ``(worker + k) mod workers`` in
each worker, so that the DataLoader's round-robin hands out batch k first, and each worker decodes and
drops its share of the k batches, so its random draws stay in step with the uninterrupted pass.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from magvit_pl.data.shards import SampleError, ShardError, decode_sample, read_shard, sample_meta
from magvit_pl.data.transforms import frames_to_tensor, square_clip
from magvit_pl.data.video_io import VideoReadError
from magvit_pl.run.errors import UserError

MAX_FAILURES = 100  # unusable training samples or shards in a row before a run stops
_HINT = "lower --data.num_frames / --data.frame_stride or prepare again with a larger --min_frames"


@dataclass(frozen=True)
class ClipSpec:
    """What a clip is: ``num_frames`` frames every ``frame_stride`` of a stored video, cropped square at
    ``resolution`` (in training at a random place and flipped half of the time, when enabled)."""

    num_frames: int
    resolution: int
    frame_stride: int = 1
    random_crop: bool = True
    random_flip: bool = True
    num_classes: int | None = None  # labels must lie in [0, num_classes) (None: not checked)


@dataclass(frozen=True)
class Pass:
    """One pass over the data as the main process sets it up, before the workers start."""

    epoch: int = 0
    skip_batches: int = 0  # batches of this epoch already consumed (a resumed fit); training only
    rank: int = 0
    world_size: int = 1
    workers: int = 0  # the DataLoader's num_workers


class Clip(NamedTuple):
    """A clip between the stages: uint8 frames (T, H, W, 3), label (-1: none), sample key."""

    frames: np.ndarray
    label: int
    key: str


class UnusableSample(UserError):
    """A sample that cannot become a clip; the message names it, its shard and why."""


# ----------------------------------------------------------------------------------------------
# stages and error policies


def read_shards(shards: Iterable[dict], handler: Callable[[Exception], bool] = wds.reraise_exception,
                counts: dict[str, int] | None = None) -> Iterator[dict]:
    """Stage: shards (webdataset's ``{"url": path}``, absolute local paths) -> their raw samples, read
    by :func:`~magvit_pl.data.shards.read_shard` (regular files only, never through ``gopen``). A
    shard that cannot be read, or holds no samples (with ``counts``: another number than it says),
    goes to ``handler`` as a ShardError."""
    for shard in shards:
        path, found = shard["url"], 0
        try:
            for sample in read_shard(path):
                found += 1
                yield sample
            if counts is None and not found:
                raise ShardError(path, "holds no samples")
            if counts is not None and found != counts[path]:
                raise ShardError(path, f"holds {found} samples, manifest.json says {counts[path]}; "
                                       f"prepare the data again")
        except ShardError as err:
            if not handler(err):
                return


def split_by_rank(shards: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """Stage: this DDP rank's share of the shards (the rank read in the main process, see the module
    docstring)."""
    return islice(shards, rank, None, world_size)


def sample_problem(sample: dict, err: Exception) -> str:
    """One line naming the sample (and its shard) and what is wrong with it."""
    where = f" (shard {sample['__url__']})" if "__url__" in sample else ""
    if isinstance(err, (SampleError, VideoReadError)):
        return f"{err}{where}"
    return f"sample {sample.get('__key__')}{where}: {err}; {_HINT}"  # too short for the clip


def fit(clip: Clip, spec: ClipSpec, rng: np.random.Generator | None) -> Clip:
    """Stage: the clip's frames square at ``spec.resolution`` (random crop / flip with ``rng``)."""
    return clip._replace(frames=square_clip(clip.frames, spec.resolution, rng, spec.random_crop, spec.random_flip))


def to_item(clip: Clip) -> dict:
    """Stage: the batch item ``{"video": float (3, T, H, W) in [-1, 1], "label", "key"}``."""
    return {"video": frames_to_tensor(clip.frames), "label": clip.label, "key": clip.key}


class SkipUnusable:
    """Training's ``handler=``: an unusable sample or shard is skipped with a warning naming it; the
    ``limit``-th in a row stops the run with one line naming the last. Anything else is re-raised
    (SIGTERM's DataWaitTerminated among them)."""

    def __init__(self, limit: int = MAX_FAILURES):
        self.limit, self.in_a_row = limit, 0

    def __call__(self, err: Exception) -> bool:
        if not isinstance(err, (ShardError, UnusableSample)):
            raise err
        warnings.warn(f"skipping {err}", stacklevel=3)
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise UserError(f"{self.limit} training samples or shards in a row were unusable (last: {err})")
        return True

    def passed(self, items: Iterable) -> Iterator:
        """Stage: items that made it through every stage (each resets the count)."""
        for item in items:
            self.in_a_row = 0
            yield item


# ----------------------------------------------------------------------------------------------
# the dataset


class ShardClips(IterableDataset):
    """Clips from a list of shards: the endless, seeded training stream or the exactly-once
    evaluation pass (see the module docstring). ``pass_`` is set by the loader for every pass."""

    def __init__(self, shards: list[str], counts: list[int], spec: ClipSpec, train: bool = False, seed: int = 0,
                 shuffle_buffer: int = 256, samples_per_epoch: int = 512, batch_size: int = 1, eval_clips: int = 1):
        super().__init__()
        if not shards:
            raise UserError("no shards to read")
        self.shards, self.counts, self.spec = list(shards), list(counts), spec
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.samples_per_epoch, self.batch_size = samples_per_epoch, batch_size
        self.eval_clips = eval_clips  # clips per video in evaluation (evenly spaced; 1 = the centred clip)
        self.pass_ = Pass()

    # -- sizes ------------------------------------------------------------------------------------

    def per_worker_train(self, workers: int | None = None) -> int:
        """Train clips each worker yields per epoch: a whole number of batches, so that all ranks and
        workers together yield at least ``samples_per_epoch`` clips."""
        parts = self.pass_.world_size * max(1, self.pass_.workers if workers is None else workers) * self.batch_size
        return math.ceil(self.samples_per_epoch / parts) * self.batch_size

    def eval_counts(self) -> list[int]:
        """How many clips each worker of this rank yields in an eval pass (``eval_clips`` per sample)."""
        p = self.pass_
        n_w = max(1, p.workers)
        if len(self.shards) >= p.world_size * n_w:
            mine = self.counts[p.rank :: p.world_size]
            return [sum(mine[w::n_w]) * self.eval_clips for w in range(n_w)]
        total = sum(self.counts)
        return [len(range(p.rank * n_w + w, total, p.world_size * n_w)) * self.eval_clips for w in range(n_w)]

    def __len__(self) -> int:
        """Samples this rank yields per epoch, counted so that ``len(DataLoader)`` is the exact
        number of batches (each worker's last eval batch may be short)."""
        if self.train:
            return self.per_worker_train() * max(1, self.pass_.workers)
        return sum(math.ceil(c / self.batch_size) * self.batch_size for c in self.eval_counts())

    # -- the streams ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()  # the DataLoader's workers decide, whatever pass_ says
        worker, n_w = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._train_stream(worker, n_w) if self.train else self._eval_stream(worker, n_w)

    def _train_stream(self, worker: int, n_w: int) -> Iterator[dict]:
        p = self.pass_
        stream = (worker + p.skip_batches) % n_w  # worker i plays the stream that hands out batch k + i first
        rng = np.random.default_rng([self.seed, p.epoch, p.rank, stream])  # clip starts, crops, flips
        shard_seed, shuffle_seed = (int(s) for s in rng.integers(2**31, size=2))
        failures = SkipUnusable()
        shards = wds.ResampledShards(self.shards, worker_seed=lambda: shard_seed, deterministic=True)
        samples = read_shards(shards, handler=failures)
        samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(shuffle_seed))(samples)
        clips = wds.map(lambda sample: self._decode(sample, rng), handler=failures)(samples)
        items = failures.passed(wds.map(to_item)(wds.map(partial(fit, spec=self.spec, rng=rng))(clips)))
        per_worker = self.per_worker_train(n_w)
        skip = len(range(stream, p.skip_batches, n_w)) * self.batch_size
        return islice(items, min(skip, per_worker), per_worker)

    def _eval_stream(self, worker: int, n_w: int) -> Iterator[dict]:
        p = self.pass_
        shards, counts = [{"url": path} for path in self.shards], dict(zip(self.shards, self.counts))
        readers = p.world_size * n_w
        if len(self.shards) >= readers:  # whole shards: by rank, then by worker
            samples = read_shards(wds.split_by_worker(split_by_rank(shards, p.rank, p.world_size)), counts=counts)
        else:  # too few shards: every reader walks all of them and keeps its share of the samples
            samples = islice(read_shards(shards, counts=counts), p.rank * n_w + worker, None, readers)
        clips = (self._decode(sample, None, start) for sample in samples for start in self._eval_starts(sample))
        return wds.map(to_item)(wds.map(partial(fit, spec=self.spec, rng=None))(clips))

    def _eval_starts(self, sample: dict) -> list[int | None]:
        """Clip starts of an evaluated video: [None] (centred) for one clip, else ``eval_clips`` starts evenly
        spaced from 0 to the last possible one (truncated to ints, as DMVR's linspace sampling)."""
        if self.eval_clips == 1:
            return [None]
        s = self.spec
        try:
            frames = sample_meta(sample, s.num_classes)["frames"]
        except (ValueError, SampleError) as err:
            raise UnusableSample(sample_problem(sample, err)) from None
        last = frames - (s.num_frames - 1) * s.frame_stride - 1
        if last < 0:
            raise UnusableSample(sample_problem(
                sample, ValueError(f"too short: {frames} frames < {(s.num_frames - 1) * s.frame_stride + 1}")))
        return [int(v) for v in np.linspace(0, last, self.eval_clips)]

    def _decode(self, sample: dict, rng: np.random.Generator | None, start: int | None = None) -> Clip:
        """Stage: :meth:`_clip`, with errors that name the sample and its shard (UnusableSample)."""
        try:
            return self._clip(sample, rng, start)
        except (ValueError, SampleError, VideoReadError) as err:  # a bad or too-short sample
            raise UnusableSample(sample_problem(sample, err)) from None

    def _clip(self, sample: dict, rng: np.random.Generator | None, start: int | None = None) -> Clip:
        """A raw sample's clip: its frames decoded from the stored video (from ``start``; else random with
        ``rng``, centred without; only the frames from the keyframe before the clip are decoded)."""
        s = self.spec
        decoded = decode_sample(sample, s.num_frames, s.frame_stride, start, rng, num_classes=s.num_classes)
        key = decoded["key"] if start is None or self.eval_clips == 1 else f"{decoded['key']}@{start}"
        return Clip(decoded["frames"], decoded["label"], key)
