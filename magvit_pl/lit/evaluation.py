"""``test --task``: evaluate a trained MTM on task plugins (mixed into :class:`~magvit_pl.lit.mtm.MTMModule`).

For every evaluated task and test batch: sample with COMMIT decoding, feed the task's metrics (FVD when
available, PSNR/SSIM on the given region), measure how many condition tokens survive decoding, and write
one sample grid per task; at the end print the table and write ``results.json`` in the run directory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from magvit_pl.errors import UserError
from magvit_pl.lit.common import media_dir

log = logging.getLogger(__name__)


class TaskEvaluation:
    """Test hooks; expects ``self.hparams`` (eval_task, num_frames, seed, …), ``task_names``, ``task()`` and ``generate()``."""

    def eval_task_names(self) -> list[str]:
        """Tasks ``test`` evaluates: ``eval_task`` (a task or a family) among the trained ones, else all trained."""
        name = self.hparams.eval_task
        if not name:
            return list(self.task_names)
        from magvit_pl.tasks import resolve_tasks

        wanted = [t.name for t in resolve_tasks(name)]
        missing = [n for n in wanted if n not in self.task_names]
        if missing:
            raise UserError(f"--task {name}: this model was not trained on {', '.join(missing)}; it knows: {', '.join(self.task_names)}")
        return wanted

    def on_test_epoch_start(self) -> None:
        from torch.nn import ModuleDict
        from torchmetrics import MetricCollection

        names = self.eval_task_names()
        fvd_ok = self.hparams.num_frames >= 9
        if not fvd_ok:
            log.warning("FVD skipped: clips have %d frames and the I3D protocol needs at least 9", self.hparams.num_frames)
        self._test_metrics = ModuleDict({n: MetricCollection(self.task(n).metrics(include_fvd=fvd_ok), compute_groups=False) for n in names}).to(self.device)
        self._test_agree: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self._fvd_stats = self._attach_fvd_stats()

    def _fvd_metrics(self) -> list[Any]:
        return [metrics["fvd"] for metrics in self._test_metrics.values() if "fvd" in metrics]

    def _attach_fvd_stats(self) -> dict[str, Any] | None:
        """Cache the test set's real FVD statistics in ``<weights cache>/fvd_stats/<key>.npz``, the key made of the
        shard manifest's sha256, what selects the clips and the FVD protocol (:func:`~magvit_pl.metrics.fvd.test_set_key`):
        the next ``test`` of the same data skips the I3D pass over the real clips."""
        fvds = self._fvd_metrics()
        dm = getattr(self.trainer, "datamodule", None)
        manifest = Path(getattr(dm, "root", "")) / "manifest.json" if dm is not None else None
        if not fvds or manifest is None or not manifest.is_file():
            return None
        from magvit_pl.metrics.fvd import test_set_key
        from magvit_pl.weights import cache_dir, sha256_file

        digest = sha256_file(manifest)
        selection = {"split": getattr(dm, "splits", {}).get("test"), "num_frames": getattr(dm, "num_frames", None),
                     "resolution": getattr(dm, "resolution", None), "frame_stride": getattr(dm, "frame_stride", None),
                     "batch_size": getattr(dm, "eval_batch_size", None), "seed": getattr(dm, "seed", None),
                     "limit_test_batches": self.trainer.limit_test_batches, "world_size": self.trainer.world_size}
        key = test_set_key(digest, selection, fvds[0])
        path = cache_dir() / "fvd_stats" / f"{key}.npz"
        reused = [fvd.attach_real_stats_file(path, key) for fvd in fvds]
        return {"file": str(path), "manifest_sha256": digest, "reused": all(reused)}

    def _save_fvd_stats(self) -> None:
        if not self._fvd_stats or self._fvd_stats["reused"] or not self.trainer.is_global_zero:
            return
        for fvd in self._fvd_metrics():
            try:
                if fvd.save_attached_real_stats(self._fvd_stats["manifest_sha256"]) is not None:
                    return
            except OSError as err:  # a read-only cache only costs the next run the I3D pass
                log.warning("could not cache the real FVD statistics in %s: %s", self._fvd_stats["file"], err)
                return

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        z = self.clip_tokens(batch)  # shared by every task
        for name, metrics in self._test_metrics.items():
            out = self.generate(batch, name, seed=self.hparams.seed + batch_idx, z=z)
            self.task(name).update_metrics(dict(metrics.items()), out["generated"], batch["video"], out["cond"])
            cm = out["cond_mask"]
            if cm.any():  # share of condition tokens that decoding left equal to z̃ (COMMIT keeps the condition)
                self._test_agree[name].append(((out["tokens"] == out["z_cond"]) & cm).sum() / cm.sum())
            if batch_idx == 0 and self.trainer.is_global_zero:
                from magvit_pl.media import save_video_grid

                n = self.hparams.num_media_clips
                stem = media_dir(self.trainer) / f"test_{name}"
                save_video_grid(stem, [out["condition"][:n], out["generated"][:n], batch["video"][:n]], fps=self.hparams.media_fps)

    def on_test_epoch_end(self) -> None:
        results: dict[str, dict[str, float]] = {}
        for name, metrics in self._test_metrics.items():
            values = {k: float(v) for k, v in metrics.compute().items()}
            if self._test_agree[name]:
                values["cond_token_agreement"] = float(torch.stack(self._test_agree[name]).mean())
            results[name] = values
            for k, v in values.items():
                self.log(f"test/{name}/{k}", v, sync_dist=False)
        self._save_fvd_stats()
        if self.trainer.is_global_zero:
            from magvit_pl.lit.report import write_results

            write_results(results, self.hparams.eval_task or "all", media_dir(self.trainer).parent, protocol={
                "sample_steps": self.hparams.sample_steps, "seed": self.hparams.seed, "num_frames": self.hparams.num_frames,
                "resolution": self.hparams.resolution, "tokenizer_ckpt": self.hparams.tokenizer_ckpt,
                "fvd_real_stats": {k: v for k, v in (self._fvd_stats or {}).items() if k != "manifest_sha256"} or None,
            })
        self._test_metrics = None
