"""``test --task``: evaluate a trained MTM on task plugins (mixed into :class:`~magvit_pl.lit.mtm.MTMModule`).

For every evaluated task and test batch: sample with COMMIT decoding, feed the task's metrics (FVD when
available, PSNR/SSIM on the given region), measure how many condition tokens survive decoding, and write
one sample grid per task; at the end print the table and write ``results.json`` in the run directory.
"""
from __future__ import annotations

import logging
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
        if self.trainer.is_global_zero:
            from magvit_pl.lit.report import write_results

            write_results(results, self.hparams.eval_task or "all", media_dir(self.trainer).parent, protocol={
                "sample_steps": self.hparams.sample_steps, "seed": self.hparams.seed, "num_frames": self.hparams.num_frames,
                "resolution": self.hparams.resolution, "tokenizer_ckpt": self.hparams.tokenizer_ckpt,
            })
        self._test_metrics = None
