"""``test --task``: score a trained MTM's samples, task by task.

:class:`TaskEvaluator` holds, for every evaluated task, its metrics (FVD when available, PSNR/SSIM on
the given region, any the task adds) and the share of condition tokens that decoding kept. It is fed
:class:`~magvit_pl.lit.mtm_batch.Sample` objects and knows nothing of the LightningModule that calls it;
:meth:`~magvit_pl.lit.mtm.MTMModule.test_step` samples, feeds it and writes one grid per task, and
``on_test_epoch_end`` prints the table and writes ``results.json`` (:mod:`magvit_pl.run.report`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn import ModuleDict
from torchmetrics import MetricCollection

from magvit_pl.lit.mtm_batch import Sample
from magvit_pl.metrics.fvd import test_set_key
from magvit_pl.run.errors import UserError
from magvit_pl.run.files import sha256_file
from magvit_pl.run.weights import cache_dir
from magvit_pl.tasks import Task, resolve_tasks

log = logging.getLogger(__name__)

FVD_MIN_FRAMES = 9  # the I3D protocol


def eval_task_names(eval_task: str | None, trained: list[str]) -> list[str]:
    """Tasks ``test`` evaluates: ``eval_task`` (a task or a family) among the ``trained`` ones, else all trained."""
    if not eval_task:
        return list(trained)
    wanted = [t.name for t in resolve_tasks(eval_task)]
    missing = [n for n in wanted if n not in trained]
    if missing:
        raise UserError(f"--task {eval_task}: this model was not trained on {', '.join(missing)}; it knows: {', '.join(trained)}")
    return wanted


class TaskEvaluator:
    """Metrics and condition-token agreement of a set of tasks over a test run.

    Args:
        tasks: the evaluated tasks by name (each builds its own metrics).
        num_frames: frames per clip; FVD is skipped (with a warning) below the I3D protocol's 9.
        device: where the metrics live (the samples' device).
    """

    def __init__(self, tasks: dict[str, Task], num_frames: int, device: torch.device | str = "cpu"):
        fvd_ok = num_frames >= FVD_MIN_FRAMES
        if not fvd_ok:
            log.warning("FVD skipped: clips have %d frames and the I3D protocol needs at least %d", num_frames, FVD_MIN_FRAMES)
        self.tasks = dict(tasks)
        self.metrics = ModuleDict({n: MetricCollection(t.metrics(include_fvd=fvd_ok), compute_groups=False) for n, t in self.tasks.items()}).to(device)
        self.agreement: dict[str, list[torch.Tensor]] = {n: [] for n in self.tasks}

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def update(self, name: str, sample: Sample, real: torch.Tensor) -> None:
        """Score ``sample`` (generated for task ``name``) against the ``real`` clips ``(B, C, T, H, W)``."""
        self.tasks[name].update_metrics(dict(self.metrics[name].items()), sample.generated, real, sample.inputs.condition)
        t, cm = sample.inputs, sample.inputs.cond_mask
        if cm.any():  # share of condition tokens that decoding left equal to z̃ (COMMIT keeps the condition)
            self.agreement[name].append(((sample.tokens == t.z_cond) & cm).sum() / cm.sum())

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}``, with ``cond_token_agreement`` for tasks that give tokens."""
        results: dict[str, dict[str, float]] = {}
        for name, metrics in self.metrics.items():
            values = {k: float(v) for k, v in metrics.compute().items()}
            if self.agreement[name]:
                values["cond_token_agreement"] = float(torch.stack(self.agreement[name]).mean())
            results[name] = values
        return results

    # ---- the real side of FVD, computed once per test set
    def fvd_metrics(self) -> list[Any]:
        return [metrics["fvd"] for metrics in self.metrics.values() if "fvd" in metrics]

    def attach_real_stats(self, trainer: Any) -> dict[str, Any] | None:
        """Cache the test set's real FVD statistics in ``<weights cache>/fvd_stats/<key>.npz``, the key made of
        the shard manifest's sha256, what selects the clips and the FVD protocol
        (:func:`~magvit_pl.metrics.fvd.test_set_key`): the next ``test`` of the same data skips the I3D pass over
        the real clips. Returns ``{"file", "manifest_sha256", "reused"}``, or None without FVD or a manifest."""
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
