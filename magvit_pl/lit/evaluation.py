"""``test --task``: score a trained MTM's samples, task by task, under a stated sampling protocol.

:class:`TaskEvaluator` holds, for every evaluated task and every repeat, its metrics (FVD when
available, PSNR/SSIM on the given region, any the task adds) and the share of condition tokens that
decoding kept. It is fed :class:`~magvit_pl.lit.mtm_batch.Sample` objects and knows nothing of the
LightningModule that calls it; :meth:`~magvit_pl.lit.mtm.MTMModule.test_step` samples, feeds it and
writes one grid per task, and ``on_test_epoch_end`` prints the table and writes ``results.json``
(:mod:`magvit_pl.run.report`).

The protocol (:class:`EvalConfig`, recorded in ``results.json``): ``num_repeats`` independent sets of
``num_samples`` generated clips, each scored against the real clips it was conditioned on; every metric
is reported as the mean over the repeats and, with more than one, its standard deviation
(``<metric>_std``), as the official evaluation (``eval_utils.compute_eval_metrics``, mean and ``np.std``
of the per-repeat scores). When ``num_samples`` exceeds the test clips, the clips are used again in order
(sample i conditions on clip i mod D, with its own seed), as the official evaluation cycles its data
iterator (``eval_utils.get_eval_data_iters``). :class:`SamplePlan` assigns each (clip, pass) to a
repeat. The real clips' I3D features are computed once per batch and shared by every task, pass and
repeat; with the default ``num_samples`` (the test set once per repeat) the real statistics of the test
set are also cached across runs (:meth:`TaskEvaluator.attach_real_stats`).

The paper's protocols: UCF-101 class generation, 10,000 samples from the *train* split × 4 repeats
(maskgvt_ucf101_config.py:118-120); BAIR frame prediction, 256 test videos × 100 samples = 25,600 × 4
repeats with 15 clips of 16 frames from each 30-frame video (maskgvt_bair_config.py:53, :79-82). See
``configs/paper/mtm_*`` and docs/paper_fidelity.md.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.nn import ModuleDict, ModuleList
from torchmetrics import MetricCollection

from magvit_pl.lit.mtm_batch import Sample
from magvit_pl.metrics.fvd import PairedFVD, test_set_key
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import sha256_file
from magvit_pl.run.weights import cache_dir
from magvit_pl.tasks import Condition, Task, resolve_tasks

log = logging.getLogger(__name__)

FVD_MIN_FRAMES = 9  # the I3D protocol


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The sampling protocol of ``test`` (recorded in ``results.json``).

    Args:
        num_samples: Generated clips per repeat, over all processes. None: one per test clip (the test set
            once per repeat). More than the test set: the test clips are used again, in order, each time
            with new seeds (BAIR: 25,600 = 256 test videos × 100). Under DDP it must divide evenly among the
            processes.
        num_repeats: Independent repeats of ``num_samples`` clips; every metric is reported as the mean over
            the repeats and its standard deviation (``<metric>_std``). UCF-101 and BAIR FP: 4.
    """

    num_samples: int | None = None
    num_repeats: int = 1


def eval_task_names(eval_task: str | None, trained: list[str]) -> list[str]:
    """Tasks ``test`` evaluates: ``eval_task`` (a task or a family) among the ``trained`` ones, else all trained."""
    if not eval_task:
        return list(trained)
    wanted = [t.name for t in resolve_tasks(eval_task)]
    missing = [n for n in wanted if n not in trained]
    if missing:
        raise UserError(f"--task {eval_task}: this model was not trained on {', '.join(missing)}; it knows: {', '.join(trained)}")
    return wanted


# ------------------------------------------------------------------------------------- sample plan
@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Which generated samples a process makes, and the repeat each belongs to.

    The process's test clips are numbered c = 0 … D−1 in loader order; pass p over them makes sample
    g = p·D + c. With ``per_repeat`` (N) set, samples g < N·R are made and sample g belongs to repeat
    g // N; without it every pass is one repeat (p < R), and D need not be known.

    Attributes:
        num_repeats: R.
        per_repeat: N samples per repeat on this process, or None (one per test clip).
        num_clips: D, this process's test clips (needed only with ``per_repeat``).
    """

    num_repeats: int = 1
    per_repeat: int | None = None
    num_clips: int | None = None

    def __post_init__(self):
        if self.per_repeat is not None and not self.num_clips:
            raise UserError("the evaluation's num_samples needs the number of test clips, which is unknown here "
                            "(a data loader without a length); leave model.evaluation.num_samples unset")

    @property
    def passes(self) -> int:
        """Passes over the test clips (the most any clip is used)."""
        if self.per_repeat is None:
            return self.num_repeats
        return math.ceil(self.per_repeat * self.num_repeats / self.num_clips)

    def groups(self, first: int, count: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
        """For the ``count`` clips numbered ``first`` … of one batch: ``[(pass, k, [(lo, hi, repeat), …]), …]``:
        in pass ``pass`` the batch's clips ``[0, k)`` are sampled, and rows ``[lo, hi)`` of them go to ``repeat``."""
        out = []
        for p in range(self.passes):
            if self.per_repeat is None:
                out.append((p, count, [(0, count, p)]))
                continue
            total = self.per_repeat * self.num_repeats
            start = p * self.num_clips + first  # sample index of the batch's first clip in this pass
            k = max(0, min(count, total - start))
            if k == 0:
                continue
            spans, lo = [], 0
            while lo < k:
                r = (start + lo) // self.per_repeat
                hi = min(k, (r + 1) * self.per_repeat - start)
                spans.append((lo, hi, r))
                lo = hi
            out.append((p, k, spans))
        return out


def planned_test_clips(loader: Any, num_batches: float | int | None) -> int | None:
    """Clips this process will see in the first ``num_batches`` batches of ``loader`` (all when None or inf),
    or None when unknown. A dataset with ``eval_counts()`` (per-worker clip counts, as
    :class:`~magvit_pl.data.datamodule.ShardClips`) is simulated batch by batch: PyTorch hands out the batches of
    an iterable dataset round-robin over the workers, skipping exhausted ones, each worker's last batch possibly
    short. A map-style dataset has ``len(dataset)`` clips in batches of ``batch_size``."""
    ds, bs = getattr(loader, "dataset", None), getattr(loader, "batch_size", None)
    if ds is None or not bs:
        return None
    if hasattr(ds, "eval_counts"):
        if hasattr(ds, "set_distributed"):
            ds.set_distributed()
        counts = list(ds.eval_counts())
    else:
        try:
            counts = [len(ds)]
        except TypeError:
            return None
    drop_last = bool(getattr(loader, "drop_last", False))
    streams = [[bs] * (c // bs) + ([c % bs] if c % bs and not drop_last else []) for c in counts]
    order: list[int] = []
    while any(streams):
        for s in streams:
            if s:
                order.append(s.pop(0))
    if num_batches is not None and math.isfinite(num_batches):
        order = order[: int(num_batches)]
    return sum(order)


def make_plan(config: EvalConfig, trainer: Any) -> SamplePlan:
    """The :class:`SamplePlan` of this process for ``config`` under ``trainer`` (its test loader, batch limit
    and world size)."""
    if config.num_samples is None:
        return SamplePlan(config.num_repeats)
    world = int(getattr(trainer, "world_size", 1) or 1)
    if config.num_samples % world:
        raise UserError(f"model.evaluation.num_samples={config.num_samples} must divide evenly among the {world} processes")
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    limits = getattr(trainer, "num_test_batches", None) or [None]
    clips = planned_test_clips(loader, limits[0])
    return SamplePlan(config.num_repeats, config.num_samples // world, clips)


def sample_seed(seed: int, batch_idx: int, pass_idx: int) -> int:
    """Seed of the samples of batch ``batch_idx`` in pass ``pass_idx`` (pass 0: ``seed + batch_idx``)."""
    return (seed + batch_idx + (pass_idx << 32)) % (1 << 63)


# ------------------------------------------------------------------------------------- evaluator
def _is_fvd(metric: Any) -> bool:
    return isinstance(metric, PairedFVD)


class TaskEvaluator:
    """Metrics and condition-token agreement of a set of tasks over a test run, per repeat.

    Args:
        tasks: the evaluated tasks by name (each builds its own metrics, once per repeat).
        num_frames: frames per clip; FVD is skipped (with a warning) below the I3D protocol's 9.
        device: where the metrics live (the samples' device).
        num_repeats: independent repeats (see :class:`EvalConfig`).
    """

    def __init__(self, tasks: dict[str, Task], num_frames: int, device: torch.device | str = "cpu", num_repeats: int = 1):
        fvd_ok = num_frames >= FVD_MIN_FRAMES
        if not fvd_ok:
            log.warning("FVD skipped: clips have %d frames and the I3D protocol needs at least %d", num_frames, FVD_MIN_FRAMES)
        self.tasks = dict(tasks)
        self.num_repeats = num_repeats
        self.metrics = ModuleDict({
            n: ModuleList([MetricCollection(t.metrics(include_fvd=fvd_ok), compute_groups=False) for _ in range(num_repeats)])
            for n, t in self.tasks.items()
        }).to(device)
        self.agreement: dict[str, list[torch.Tensor]] = {n: [] for n in self.tasks}
        self.counts: dict[str, list[int]] = {n: [0] * num_repeats for n in self.tasks}
        self.real_feature_passes = 0  # I3D passes over real clips (one per batch at most)
        self._real: torch.Tensor | None = None
        self._real_features: dict[int, torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def begin_batch(self, real: torch.Tensor) -> None:
        """Start a batch of real clips ``(B, C, T, H, W)``: their FVD features are computed once, when first needed."""
        self._real, self._real_features = real, {}

    def _features_of_real(self, fvd: Any) -> torch.Tensor:
        key = id(fvd.extractor)
        if key not in self._real_features:
            self._real_features[key] = fvd.features(self._real)
            self.real_feature_passes += 1
        return self._real_features[key]

    def update(self, name: str, sample: Sample, repeat: int = 0, rows: tuple[int, int] | None = None) -> None:
        """Score rows ``[lo, hi)`` (default all) of ``sample`` (generated for task ``name`` from the first rows of
        the batch given to :meth:`begin_batch`) in repeat ``repeat``."""
        lo, hi = rows if rows is not None else (0, sample.generated.shape[0])
        real = self._real[lo:hi]
        cond = sample.inputs.condition
        given = Condition(video=cond.video[lo:hi], pixel_mask=cond.pixel_mask[lo:hi])
        generated = sample.generated[lo:hi]
        metrics = dict(self.metrics[name][repeat].items())
        fvds = {k: m for k, m in metrics.items() if _is_fvd(m)}
        for fvd in fvds.values():  # the real side from the batch's shared features (or only counted)
            feats = None if fvd.uses_attached_real_stats else self._features_of_real(fvd)[lo:hi]
            fvd.update(generated, real, given.pixel_mask, real_features=feats)
        self.tasks[name].update_metrics({k: m for k, m in metrics.items() if k not in fvds}, generated, real, given)
        self.counts[name][repeat] += hi - lo
        cm = sample.inputs.cond_mask[lo:hi]
        if cm.any():  # share of condition tokens that decoding left equal to z̃ (COMMIT keeps the condition)
            self.agreement[name].append(((sample.tokens[lo:hi] == sample.inputs.z_cond[lo:hi]) & cm).sum() / cm.sum())

    def compute(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
        """``({task: {metric: mean over repeats, metric_std: their std (repeats > 1)}}, {task: {metric: per-repeat values}})``,
        with ``cond_token_agreement`` for tasks that give tokens."""
        results: dict[str, dict[str, float]] = {}
        per_repeat: dict[str, dict[str, list[float]]] = {}
        for name, collections in self.metrics.items():
            runs = [{k: float(v) for k, v in c.compute().items()} for c in collections]
            values: dict[str, float] = {}
            per_repeat[name] = {}
            for key in runs[0]:
                vals = torch.tensor([r[key] for r in runs], dtype=torch.float64)
                values[key] = float(vals.mean())
                if len(runs) > 1:
                    values[f"{key}_std"] = float(vals.std(unbiased=False))  # np.std of the official code (ddof 0)
                per_repeat[name][key] = vals.tolist()
            if self.agreement[name]:
                values["cond_token_agreement"] = float(torch.stack(self.agreement[name]).mean())
            results[name] = values
        return results, per_repeat

    def count_table(self, clips_seen: int) -> torch.Tensor:
        """``(tasks + 1, repeats)`` long: the samples scored per task and repeat, then this process's test clips
        (a tensor, to be summed over processes)."""
        rows = [self.counts[n] for n in self.names] + [[clips_seen] * self.num_repeats]
        return torch.tensor(rows, dtype=torch.long)

    def protocol(self, config: EvalConfig, datamodule: Any, counts: torch.Tensor, per_repeat: dict[str, Any]) -> dict[str, Any]:
        """The ``evaluation`` entry of ``results.json``: the protocol asked for and what was done (``counts`` from
        :meth:`count_table`, summed over processes)."""
        return {"num_samples": config.num_samples, "num_repeats": config.num_repeats,
                "test_split": getattr(datamodule, "splits", {}).get("test"),
                "eval_clips_per_video": getattr(datamodule, "eval_clips_per_video", 1),
                "test_clips": int(counts[-1, 0]), "generated_per_repeat": {n: counts[i].tolist() for i, n in enumerate(self.names)},
                "per_repeat": per_repeat, "real_feature_passes": self.real_feature_passes}

    # ---- the real side of FVD, computed once per test set
    def fvd_metrics(self) -> list[Any]:
        return [m for repeats in self.metrics.values() for c in repeats for m in c.values() if _is_fvd(m)]

    def attach_real_stats(self, trainer: Any) -> dict[str, Any] | None:
        """Cache the test set's real FVD statistics in ``<weights cache>/fvd_stats/<key>.npz``, the key made of
        the shard manifest's sha256, what selects the clips and the FVD protocol
        (:func:`~magvit_pl.metrics.fvd.test_set_key`): the next ``test`` of the same data skips the I3D pass over
        the real clips. Only valid when every repeat's real set is the whole test set (the default protocol).
        Returns ``{"file", "manifest_sha256", "reused"}``, or None without FVD or a manifest."""
        fvds = self.fvd_metrics()
        dm = getattr(trainer, "datamodule", None)
        manifest = Path(getattr(dm, "root", "")) / "manifest.json" if dm is not None else None
        if not fvds or manifest is None or not manifest.is_file():
            return None
        digest = sha256_file(manifest)
        selection = {"split": getattr(dm, "splits", {}).get("test"), "num_frames": getattr(dm, "num_frames", None),
                     "resolution": getattr(dm, "resolution", None), "frame_stride": getattr(dm, "frame_stride", None),
                     "batch_size": getattr(dm, "eval_batch_size", None), "seed": getattr(dm, "seed", None),
                     "limit_test_batches": trainer.limit_test_batches, "world_size": trainer.world_size}
        clips_per_video = getattr(dm, "eval_clips_per_video", 1)
        if clips_per_video != 1:  # older keys stay valid for one clip per video
            selection["eval_clips_per_video"] = clips_per_video
        key = test_set_key(digest, selection, fvds[0])
        path = cache_dir() / "fvd_stats" / f"{key}.npz"
        reused = [fvd.attach_real_stats_file(path, key) for fvd in fvds]
        return {"file": str(path), "manifest_sha256": digest, "reused": all(reused)}

    def save_real_stats(self, stats: dict[str, Any] | None) -> None:
        """Write the real statistics attached by :meth:`attach_real_stats` unless they were reused (rank 0 only)."""
        if not stats or stats["reused"]:
            return
        for fvd in self.fvd_metrics():
            try:
                if fvd.save_attached_real_stats(stats["manifest_sha256"]) is not None:
                    return
            except OSError as err:  # a read-only cache only costs the next run the I3D pass
                log.warning("could not cache the real FVD statistics in %s: %s", stats["file"], err)
                return
