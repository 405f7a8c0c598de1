"""``test`` on a tokenizer run (mixed into :class:`~magvit_pl.lit.tokenizer.TokenizerModule`).

Reconstruction quality of the EMA tokenizer on the data module's test split, next to the pooled
no-learning baseline at the same latent grid (:func:`~magvit_pl.metrics.reconstruction.pooled_baseline`):
PSNR, SSIM, LPIPS (when its weights are fetched) and reconstruction FVD (clips of at least 9 frames,
I3D fetched) for both, and the codebook usage and perplexity of the tokenizer's codes. At the end it
prints a table and writes, into the test run's folder, ``results.json`` (values and protocol) and
``media/test_reconstruction.{mp4,gif,png}`` (rows: original, baseline, tokenizer).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from magvit_pl.metrics.i3d import MIN_FRAMES
from magvit_pl.metrics.reconstruction import COLUMNS, ReconstructionMetrics, pooled_baseline
from magvit_pl.models.quantizers import histogram_stats
from magvit_pl.run.media import save_frames_png, save_video_grid
from magvit_pl.run.report import print_table, save_results
from magvit_pl.run.run_dir import media_dir

log = logging.getLogger(__name__)

ROWS = ("tokenizer", "baseline")


class ReconstructionTest:
    """Test hooks; expect ``self.ema_tokenizer``, ``self.ema_reconstruct(video) -> (recon, quantizer output)``
    and ``self.hparams.num_media_clips`` / ``media_fps``."""

    def on_test_epoch_start(self) -> None:
        frames = getattr(getattr(self.trainer, "datamodule", None), "num_frames", None)
        fvd = frames is None or frames >= MIN_FRAMES
        self._test_metrics = {row: ReconstructionMetrics(fvd=fvd, device=self.device) for row in ROWS}
        if not fvd:  # said once, not built: loading I3D for nothing costs seconds
            for m in self._test_metrics.values():
                m.skipped["rfvd"] = f"clips have {frames} frames, I3D needs {MIN_FRAMES}"
        self._test_hist = torch.zeros(self.ema_tokenizer.codebook_size, device=self.device)
        self._test_media: list[torch.Tensor] = []
        self._test_shape: list[int] = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = batch["video"]
        recon, q = self.ema_reconstruct(video)
        recon = recon.clamp(-1, 1)
        base = pooled_baseline(video, self.ema_tokenizer.downsample_factors)
        self._test_metrics["tokenizer"].update(recon, video)
        self._test_metrics["baseline"].update(base, video)
        self._test_hist += torch.bincount(q.indices.flatten(), minlength=self._test_hist.numel())
        self._test_shape = list(video.shape[2:])
        if batch_idx == 0:
            n = self.hparams.num_media_clips
            self._test_media = [video[:n].cpu(), base[:n].cpu(), recon[:n].cpu()]

    def on_test_epoch_end(self) -> None:
        hist = self._test_hist
        if self.trainer.world_size > 1:
            hist = self.all_gather(hist).sum(0)
        usage, perplexity = histogram_stats(hist)
        results = {row: m.compute() for row, m in self._test_metrics.items()}
        clips = int(self.trainer.strategy.reduce(torch.tensor(float(results["tokenizer"]["clips"]), device=self.device), reduce_op="sum"))
        results["tokenizer"].update(codebook_usage=float(usage), perplexity=float(perplexity))
        for row, values in results.items():
            values["clips"] = clips
            for key, value in values.items():
                if isinstance(value, float):
                    self.log(f"test/{row}/{key}", value, sync_dist=False)
        if self.trainer.is_global_zero:
            self._write_test_report(results, clips)
        self._test_metrics, self._test_media = None, []

    def _write_test_report(self, results: dict[str, dict], clips: int) -> None:
        tok = self.ema_tokenizer
        factors = list(tok.downsample_factors)
        t, h, w = self._test_shape
        dm = getattr(self.trainer, "datamodule", None)
        split = getattr(dm, "splits", {}).get("test", "test")
        protocol = {
            "split": split, "data_dir": str(getattr(dm, "root", None)), "clips": clips,
            "frames": t, "resolution": [h, w], "grid": list(tok.token_grid(t, h, w)), "downsample": factors,
            "codebook_size": int(tok.codebook_size), "ckpt_path": self.trainer.ckpt_path, "weights": "EMA",
            "baseline": f"avg-pool {tuple(factors)} then trilinear upsampling (same latent grid, no quantisation)",
            "frame_metrics": "per frame in [0, 1] (PSNR, SSIM 11x11 Gaussian), LPIPS-VGG16 in [-1, 1], mean over frames",
        }
        labels = {"tokenizer": "tokenizer (EMA)", "baseline": f"baseline (avg-pool {'x'.join(map(str, factors))})"}
        print_table({labels[r]: v for r, v in results.items()},
                    title=f"test: reconstruction of the {split} split ({clips} clips of {t}x{h}x{w}, grid {protocol['grid']})",
                    columns=COLUMNS, extra=(("codebook_usage", "codes used", ".3f"), ("perplexity", "perplexity", ".1f")))
        run_dir = media_dir(self.trainer).parent
        save_results(run_dir, {"evaluation": "reconstruction", "results": results, "protocol": protocol})
        if self._test_media:
            stem = media_dir(self.trainer) / "test_reconstruction"
            save_video_grid(stem, self._test_media, fps=self.hparams.media_fps)
            save_frames_png(f"{stem}.png", self._test_media, n=len(self._test_media[0]))
        log.info("wrote %s and %s/test_reconstruction.{mp4,gif,png}", run_dir / "results.json", media_dir(self.trainer))
