"""Stage 1: the LightningModule that trains the 3D-VQ tokenizer with a 3D discriminator.

Thin glue: the networks live in ``magvit_pl.models``, the losses in ``magvit_pl.losses``. Manual
optimisation updates the generator (tokenizer) and the discriminator once each per batch; the EMA of
the generator is "the tokenizer" that stage 2 loads (see :func:`magvit_pl.run.checkpoint.load_tokenizer`).
``trainer.global_step`` counts generator updates (the discriminator step does not advance it).
``test`` reports reconstruction metrics next to the pooled baseline (:mod:`magvit_pl.lit.reconstruction`).

Pixels are in [-1, 1]; the L2 and R1 terms are computed in the official [0, 1] units by default
(``unit_range_losses``, see :mod:`magvit_pl.losses`), so the official weights give the official balance.
The two-stage recipe of the paper: train a per-frame 2D tokenizer (``per_frame``, 1×3×3 kernels), then
``init_from`` its checkpoint to inflate generator, EMA and discriminator into the 3D run
(``configs/paper/tokenizer_2d.yaml``, docs/paper_fidelity.md).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from magvit_pl import losses
from magvit_pl.data.transforms import from_frames, to_frames
from magvit_pl.lit.common import NonFiniteGuard, update_ema
from magvit_pl.lit.reconstruction import ReconstructionTest
from magvit_pl.lit.schedules import LR_SCHEDULES, LRSchedule, lr_multiplier, total_training_steps
from magvit_pl.metrics.frame import VideoPSNR, VideoSSIM
from magvit_pl.models.checkpointing import apply_activation_checkpointing
from magvit_pl.models.discriminator import StyleGANDiscriminator3D
from magvit_pl.models.inflation import flax_style_init_, init_run_from_checkpoint
from magvit_pl.models.quantizers import histogram_stats
from magvit_pl.models.tokenizer import VQTokenizer
from magvit_pl.run.checks import check_args
from magvit_pl.run.errors import UserError
from magvit_pl.run.media import save_media
from magvit_pl.tasks import build_fvd

log = logging.getLogger(__name__)
# what each numeric argument of TokenizerModule may be (magvit_pl.run.checks)
ARG_RULES = {
    "lr": "> 0", "disc_lr": "> 0", "betas": "[0, 1)", "warmup_steps": ">= 0", "min_lr_ratio": "[0, 1]",
    "recon_weight": ">= 0", "perceptual_weight": ">= 0", "gan_weight": ">= 0", "disc_start_step": ">= 0",
    "r1_cost": ">= 0", "r1_every": ">= 1", "lecam_weight": ">= 0", "lecam_decay": "[0, 1]", "ema_decay": "[0, 1]",
    "max_consecutive_nonfinite": ">= 1", "num_media_clips": ">= 0", "media_fps": ">= 1",
}


class TokenizerModule(ReconstructionTest, LightningModule):
    """Trains a :class:`VQTokenizer` (MAGVIT §1): L2 + perceptual + GAN + quantizer losses, R1 and LeCam for D.

    Args:
        tokenizer: The 3D-VQ tokenizer to train (encoder, quantizer, decoder).
        discriminator: 3D StyleGAN discriminator; ``None`` trains without the GAN loss.
        perceptual: Perceptual loss module; ``None`` (or backbone ``none``) skips it.
        lr: Peak learning rate of the tokenizer (Adam).
        disc_lr: Peak learning rate of the discriminator (Adam).
        betas: Adam betas for both optimisers (the paper uses (0, 0.99)).
        warmup_steps: Linear warmup steps before the cosine decay.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        recon_weight: Weight of the L2 reconstruction loss.
        unit_range_losses: Compute the L2 reconstruction loss and the R1 penalty in [0, 1] pixel units, the
            official ones (L2 / 4 and R1 × 4 relative to the model's [-1, 1] pixels), so the official weights
            give the official balance; False computes them on the [-1, 1] pixels.
        perceptual_weight: Weight of the perceptual loss.
        gan_weight: Weight of the generator's non-saturating GAN loss.
        disc_start_step: Generator step at which the discriminator and GAN loss switch on.
        r1_cost: R1 gradient-penalty cost on real clips (0 disables).
        r1_every: Apply R1 every N discriminator steps (lazy regularisation, scaled by N).
        lecam_weight: Weight of the LeCam regulariser (0 disables).
        lecam_decay: EMA decay of the LeCam anchors.
        lecam_mode: ``batch_mean``: LeCam on the batch-mean logits, as the official trainer; ``per_sample``:
            on each sample's logit, as the LeCam authors' code.
        ema_decay: Decay of the generator EMA (the EMA weights are the tokenizer stage 2 uses).
        ema_warmup: Ramp the EMA decay as min(decay, (1+step)/(10+step)) so short runs are not dominated by
            init; off = constant ``ema_decay`` from the first step, as the official code.
        init_from: Checkpoint to initialise from at the start of ``fit`` (kernels of a 2D model are inflated).
            A TokenizerModule checkpoint initialises the tokenizer from its tokenizer, the EMA from its EMA and
            the discriminator from its discriminator (see ``init_discriminator``), as the official code; a plain
            tokenizer state dict initialises tokenizer and EMA.
        inflation: How 2D kernels become 3D: ``central`` (zero except the temporal centre) or ``average``.
        init_prefix: Read only the tokenizer weights under this key prefix of ``init_from`` (e.g.
            ``ema_tokenizer.``) for tokenizer and EMA; the discriminator is then not initialised.
        init_discriminator: Also initialise the discriminator from ``init_from``'s discriminator when it has one
            (entries that cannot be inflated, e.g. a Dense layer of another size, keep their fresh values).
        per_frame: Train and evaluate on single frames: clips (B, C, T, H, W) become (B·T, C, 1, H, W) (the 2D
            stage; use a tokenizer and discriminator with ``temporal_kernel_size=1`` and ``num_frames=1``).
        flax_init: Re-initialise the tokenizer's convs Flax-style (lecun-normal kernels, zero biases), as the
            official code; default: PyTorch's own initialisation.
        lr_schedule: ``warmup_cosine`` (linear warmup, cosine to ``min_lr_ratio`` over the remaining steps) or
            ``official`` (scenic's form: rate 0 at step 0, cosine over all steps; ``min_lr_ratio`` unused).
        max_consecutive_nonfinite: Stop after this many consecutive steps with a NaN/inf loss.
        val_fvd: Reconstruction FVD at validation when the I3D weights are fetched and clips have ≥ 9
            frames (otherwise skipped with a one-time notice).
        num_media_clips: Clips shown in the reconstruction grid written at each validation and by ``test``.
        media_fps: Frame rate of the written grids.
        activation_checkpointing: Recompute every residual block of the tokenizer and the discriminator
            in the backward pass instead of keeping its activations (applied in ``configure_model``;
            same outputs and gradients). What it saves and costs: ``benchmarks/memory.py`` (figures in
            benchmarks/README.md).
    """

    def __init__(
        self,
        tokenizer: VQTokenizer,
        discriminator: StyleGANDiscriminator3D | None = None,
        perceptual: losses.PerceptualLoss | None = None,
        lr: float = 1e-4,
        disc_lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.99),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        recon_weight: float = 1.0,
        unit_range_losses: bool = True,
        perceptual_weight: float = 0.1,
        gan_weight: float = 0.1,
        disc_start_step: int = 0,
        r1_cost: float = 10.0,
        r1_every: int = 1,
        lecam_weight: float = 0.001,
        lecam_decay: float = 0.999,
        lecam_mode: losses.LeCamMode = "batch_mean",
        ema_decay: float = 0.999,
        ema_warmup: bool = False,
        init_from: str | None = None,
        inflation: Literal["central", "average"] = "central",
        init_prefix: str = "",
        init_discriminator: bool = True,
        per_frame: bool = False,
        flax_init: bool = False,
        lr_schedule: LRSchedule = "warmup_cosine",
        max_consecutive_nonfinite: int = 5,
        val_fvd: bool = True,
        num_media_clips: int = 4,
        media_fps: int = 8,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        check_args("model", locals(), ARG_RULES)
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(f"model.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["tokenizer", "discriminator", "perceptual"])
        self.automatic_optimization = False
        if flax_init:
            flax_style_init_(tokenizer)
        self.tokenizer = tokenizer
        self.ema_tokenizer = copy.deepcopy(tokenizer).requires_grad_(False).eval()
        self.discriminator = discriminator
        # PerceptualLoss keeps its frozen network out of the state dict (it is rebuilt from its weights file).
        use_perceptual = perceptual is not None and perceptual.backbone != "none" and perceptual_weight > 0
        self.perceptual = perceptual if use_perceptual else None
        self.lecam = losses.LeCamEMA(decay=lecam_decay, mode=lecam_mode)
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.val_psnr = VideoPSNR()  # per frame, like `test` and `reconstruct`
        self.val_ssim = VideoSSIM()
        self.val_fvd = None  # built in setup when wanted and possible
        self._val_hist: torch.Tensor | None = None
        self._media: list[torch.Tensor] = []

    # ----------------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.hparams.activation_checkpointing:  # from outside the networks; the EMA copy never trains
            apply_activation_checkpointing(self.tokenizer)
            if self.discriminator is not None:
                apply_activation_checkpointing(self.discriminator)

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision) if self._trainer is not None else "32"
        if precision.startswith("16"):
            raise UserError(f"trainer.precision={precision} is not supported by the tokenizer (GAN + manual optimisation); use bf16-mixed on GPU or 32-true")
        if self.hparams.val_fvd and self.val_fvd is None and stage in ("fit", "validate"):
            self.val_fvd = build_fvd()  # None (logged once, with the fetch command) without I3D weights
        if stage == "fit" and self.hparams.init_from and self.global_step == 0:
            self.init_from_checkpoint(self.hparams.init_from)

    def init_from_checkpoint(self, path: str) -> list[str]:
        """Initialise tokenizer, EMA and (``init_discriminator``) discriminator from ``path``, inflating 2D
        kernels (see ``init_from``); returns the parts initialised."""
        hp = self.hparams
        disc = self.discriminator if hp.init_discriminator else None
        done = init_run_from_checkpoint(path, self.tokenizer, self.ema_tokenizer, disc, hp.inflation, hp.init_prefix)
        log.info("init_from %s (%s inflation): %s", path, hp.inflation, ", ".join(done))
        return done

    def configure_optimizers(self):
        hp = self.hparams
        total = total_training_steps(self.trainer)
        opts = [torch.optim.Adam(self.tokenizer.parameters(), lr=hp.lr, betas=tuple(hp.betas))]
        if self.discriminator is not None:
            opts.append(torch.optim.Adam(self.discriminator.parameters(), lr=hp.disc_lr, betas=tuple(hp.betas)))
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_multiplier(hp.lr_schedule, s, hp.warmup_steps, total, hp.min_lr_ratio))
                  for o in opts]
        # named, stepped per step: the CLI's LearningRateMonitor logs them as `lr` and `disc_lr` to every logger
        return opts, [{"scheduler": s, "interval": "step", "name": n} for s, n in zip(scheds, ("lr", "disc_lr"))]

    # -------------------------------------------------------------------------------------- training
    def _disc_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.hparams.disc_start_step

    def model_clips(self, video: torch.Tensor) -> torch.Tensor:
        """The clips the networks see: ``video`` itself, or with ``per_frame`` each frame as a 1-frame clip
        ``(B·T, C, 1, H, W)``."""
        if not self.hparams.per_frame:
            return video
        return to_frames(video).unsqueeze(2)  # (B·T, C, 1, H, W)

    def ema_reconstruct(self, video: torch.Tensor):
        """(reconstruction ``(B, C, T, H, W)``, quantizer output) of ``video`` by the EMA tokenizer (frame by
        frame with ``per_frame``)."""
        recon, q = self.ema_tokenizer(self.model_clips(video))
        if self.hparams.per_frame:
            recon = from_frames(recon.squeeze(2), video.shape[0])  # (B, C, T, H, W)
        return recon, q

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = self.model_clips(batch["video"])
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        disc_on = self._disc_active()
        step = self._generator_step(video, opts[0], scheds[0], disc_on)
        if step is None:  # skipped: a non-finite loss
            return
        recon, logs = step
        if disc_on:
            logs.update(self._discriminator_step(video, recon, opts[1], scheds[1]))
        self.log("train/loss", logs.pop("train/loss"), prog_bar=True)
        self.log_dict(logs)

    def _generator_step(self, video: torch.Tensor, opt, sched, disc_on: bool) -> tuple[torch.Tensor, dict] | None:
        """One tokenizer update (L2 + perceptual + GAN + quantizer losses), then the EMA: the reconstruction and
        the step's logs, or ``None`` when a non-finite loss made the guard skip the step."""
        hp = self.hparams
        self.toggle_optimizer(opt)
        recon, q = self.tokenizer(video)
        terms = {"recon": losses.reconstruction_loss(recon, video, hp.unit_range_losses) * hp.recon_weight, "quantizer": q.loss}
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(video, recon) * hp.perceptual_weight
        if disc_on and hp.gan_weight > 0:
            terms["gan"] = losses.generator_gan_loss(self.discriminator(recon)) * hp.gan_weight
        loss_g = sum(terms.values())
        if not self.guard.check(self.global_step, terms):
            opt.zero_grad(set_to_none=True)
            self.untoggle_optimizer(opt)
            self.log("train/nonfinite_steps", float(self.guard.total), prog_bar=True)
            return None
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt.step()
        sched.step()
        self.untoggle_optimizer(opt)
        decay = hp.ema_decay
        if hp.ema_warmup:
            decay = min(decay, (1 + self.global_step) / (10 + self.global_step))
        update_ema(self.ema_tokenizer, self.tokenizer, decay)

        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs["train/loss"] = loss_g.detach()
        logs.update({f"train/q_{k}": v for k, v in q.metrics.items()})
        return recon, logs

    def _discriminator_step(self, video: torch.Tensor, recon: torch.Tensor, opt, sched) -> dict:
        """One discriminator update (GAN loss, lazy R1, LeCam) through the raw optimiser, so that
        ``global_step`` counts generator steps only; its logs (none when a non-finite loss skipped it)."""
        hp = self.hparams
        self.toggle_optimizer(opt)
        apply_r1 = hp.r1_cost > 0 and self.global_step % hp.r1_every == 0
        real = video.detach().requires_grad_(apply_r1)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(recon.detach())
        d_terms = {"d_gan": losses.discriminator_gan_loss(real_logits, fake_logits)}
        if apply_r1:
            d_terms["r1"] = losses.r1_penalty(real_logits, real, cost=hp.r1_cost, unit_range=hp.unit_range_losses) * hp.r1_every
        if hp.lecam_weight > 0:
            d_terms["lecam"] = self.lecam.loss(real_logits, fake_logits) * hp.lecam_weight
        loss_d = sum(d_terms.values())
        logs = {}
        if self.guard.check(self.global_step, d_terms):
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt.optimizer.step()
            sched.step()
            self.lecam.update(real_logits.detach(), fake_logits.detach())
            logs.update({f"train/{k}": v.detach() for k, v in d_terms.items()})
            logs["train/logits_real"] = real_logits.detach().mean()
            logs["train/logits_fake"] = fake_logits.detach().mean()
        self.untoggle_optimizer(opt)
        return logs

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = batch["video"]
        recon, q = self.ema_reconstruct(video)
        recon = recon.clamp(-1, 1)
        self.val_psnr.update(recon, video)
        self.val_ssim.update(recon, video)
        if self.val_fvd is not None:
            if video.shape[2] >= self.val_fvd.min_frames:
                self.val_fvd.update(video, real=True)
                self.val_fvd.update(recon, real=False)
            elif batch_idx == 0:
                log.warning("reconstruction FVD skipped: clips have %d frames, I3D needs %d", video.shape[2], self.val_fvd.min_frames)
        hist = torch.bincount(q.indices.flatten(), minlength=self.ema_tokenizer.codebook_size)
        self._val_hist = hist if self._val_hist is None else self._val_hist + hist
        self.log("val/recon", F.mse_loss(recon, video), sync_dist=True, batch_size=video.shape[0])
        if batch_idx == 0:
            n = self.hparams.num_media_clips
            self._media = [video[:n].cpu(), recon[:n].cpu()]

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True, sync_dist=False)
        self.log("val/ssim", self.val_ssim.compute(), prog_bar=True, sync_dist=False)
        self.val_psnr.reset()
        self.val_ssim.reset()
        if self.val_fvd is not None and self.val_fvd.update_count > 0:
            self.log("val/fvd", self.val_fvd.compute(), prog_bar=True, sync_dist=False)
            self.val_fvd.reset()
        if self._val_hist is not None:
            hist = self._val_hist.float()
            if self.trainer.world_size > 1:
                hist = self.all_gather(hist).sum(0)
            usage, perplexity = histogram_stats(hist)
            self.log("val/codebook_usage", usage)
            self.log("val/perplexity", perplexity)
            self._val_hist = None
        if self._media and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            save_media(self.trainer, f"reconstruction_step{self.global_step:07d}", self._media, fps=self.hparams.media_fps)
        self._media = []

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["magvit"] = {
            "kind": "tokenizer",
            "tokenizer_config": self.tokenizer.init_config,
            "token_grid_downsample": list(self.tokenizer.downsample_factors),
            "codebook_size": int(self.tokenizer.codebook_size),
            "nonfinite_steps": self.guard.total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.total = int(checkpoint.get("magvit", {}).get("nonfinite_steps", 0))

    # --------------------------------------------------------------------------------- inference API
    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Tokens (B, t, h, w) of ``video`` (B, 3, T, H, W) in [-1, 1], with the EMA tokenizer."""
        return self.ema_tokenizer.encode(video)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] from tokens, with the EMA tokenizer."""
        return self.ema_tokenizer.decode(tokens).clamp(-1, 1)

