"""Stage 2: the LightningModule that trains the masked token transformer with COMMIT (MAGVIT §2).

Thin glue over :mod:`magvit_pl.commit` (input corruption, loss), :mod:`magvit_pl.sampling`
(non-autoregressive decoding), :mod:`magvit_pl.tasks` (task plugins) and a frozen tokenizer loaded
from a stage-1 checkpoint. The frozen tokenizer's EMA weights are kept inside the MTM checkpoint, so
``test`` and ``generate`` need only the MTM checkpoint.
"""
from __future__ import annotations

import logging
import random
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule

from magvit_pl import commit, sampling
from magvit_pl.checks import check_args
from magvit_pl.checkpoint import load_tokenizer
from magvit_pl.errors import UserError
from magvit_pl.lit.common import NonFiniteGuard, media_dir
from magvit_pl.lit.evaluation import TaskEvaluation
from magvit_pl.models.transformer import BidirectionalTransformer
from magvit_pl.schedules import total_training_steps, warmup_cosine
from magvit_pl.tasks import Task, discover_tasks, get_task
from magvit_pl.token_cache import TokenCache, clip_hashes

log = logging.getLogger(__name__)
# what each numeric hyper-parameter of MTMModule may be (checked by magvit_pl.checks.check_args on self.hparams)
ARG_RULES = {
    "num_classes": ">= 1", "num_frames": ">= 1", "resolution": ">= 1", "num_cond_frames": ">= 0", "hidden_dim": ">= 1",
    "num_layers": ">= 1", "num_heads": ">= 1", "mlp_dim": ">= 1", "dropout": "[0, 1)", "attention_dropout": "[0, 1)",
    "loss_weights": ">= 0", "label_smoothing": "[0, 1)", "class_dropout_prob": "[0, 1]", "lr": "> 0", "betas": "[0, 1)",
    "weight_decay": ">= 0", "warmup_steps": ">= 0", "min_lr_ratio": "[0, 1]", "sample_steps": ">= 1",
    "choice_temperature": ">= 0", "sample_temperature": "> 0", "top_k": ">= 1", "guidance_scale": ">= 0",
    "num_media_clips": ">= 0", "media_fps": ">= 1", "max_consecutive_nonfinite": ">= 1",
}
# The data module keeps Lightning's default hook; the model's (token-cache hashing) is the one meant to run.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


class MTMModule(TaskEvaluation, LightningModule):
    """Multi-task COMMIT training of a bidirectional transformer on frozen tokenizer tokens."""

    def __init__(
        self,
        tokenizer_ckpt: str,
        num_classes: int,
        num_frames: int = 16,
        resolution: int = 64,
        tasks: list[str] | None = None,
        num_cond_frames: int = 1,
        hidden_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        pre_norm: bool = False,
        attention_backend: Literal["sdpa", "xformers", "math"] = "sdpa",
        activation_checkpointing: bool = False,
        mode: Literal["commit", "naive"] = "commit",
        mask_schedule: Literal["cosine", "linear", "exp"] = "cosine",
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        label_smoothing: float = 1e-4,
        class_dropout_prob: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.96),
        weight_decay: float = 0.045,
        warmup_steps: int = 5000,
        min_lr_ratio: float = 0.0,
        sample_steps: int = 12,
        choice_temperature: float = 4.5,
        sample_temperature: float = 1.0,
        top_k: int | None = None,
        guidance_scale: float = 0.0,
        eval_task: str | None = None,
        num_media_clips: int = 4,
        media_fps: int = 8,
        max_consecutive_nonfinite: int = 5,
        seed: int = 0,
        token_cache_clips: int = 0,
    ):
        """
        Args:
            tokenizer_ckpt: Stage-1 checkpoint (``runs/tokenizer/latest/checkpoints/last.ckpt``); its EMA tokenizer is frozen.
            num_classes: Number of class labels in the data (class tokens; the data module must agree).
            num_frames: Frames per clip (must match the data module).
            resolution: Clip height and width (must match the data module).
            tasks: Task names to train on; ``None`` = every installed task. Stored in the checkpoint.
            num_cond_frames: Given frames of the prediction tasks (1 for BAIR, 5 for Kinetics-600).
            hidden_dim: Transformer width (B: 768, L: 1024).
            num_layers: Transformer depth (B: 12, L: 24).
            num_heads: Attention heads (B: 12, L: 16).
            mlp_dim: MLP width (B: 3072, L: 4096).
            dropout: Dropout on embeddings and residual branches.
            attention_dropout: Dropout on attention probabilities.
            pre_norm: Pre-LN blocks instead of BERT's post-LN.
            attention_backend: ``sdpa`` (default), ``xformers`` (CUDA only, else falls back to sdpa) or ``math``.
            activation_checkpointing: Recompute transformer blocks in backward to save memory.
            mode: ``commit`` (the paper) or ``naive`` (plain MTM ablation: no z̃ in the input).
            mask_schedule: Mask-ratio schedule used in training and decoding.
            loss_weights: Weights of the refine / mask / reconstruct token groups.
            label_smoothing: Label smoothing of the token cross-entropy.
            class_dropout_prob: Probability of replacing the class token by UNCOND (classifier-free guidance).
            lr: Peak learning rate (AdamW).
            betas: AdamW betas.
            weight_decay: Weight decay on weight matrices only.
            warmup_steps: Linear warmup steps before the cosine decay.
            min_lr_ratio: Final learning rate as a fraction of the peak.
            sample_steps: Decoding steps K for samples and tests.
            choice_temperature: Gumbel temperature of the confidence (annealed linearly to 0).
            sample_temperature: Sampling temperature of the token distribution.
            top_k: Sample among the k most likely codes only.
            guidance_scale: Classifier-free guidance scale at sampling time (0 = off).
            eval_task: Task name or family evaluated by ``test`` (``None`` = every trained task).
            num_media_clips: Clips per sample grid written at each validation.
            media_fps: Frame rate of the written grids.
            max_consecutive_nonfinite: Stop after this many consecutive NaN/inf losses.
            seed: Seed of the task cycle and the masks (saved with the checkpoint).
            token_cache_clips: Keep the frozen tokenizer's tokens of up to this many clips, keyed by the clip's
                pixels, and look them up instead of encoding a clip seen before (0 = off). Pays off when
                augmentation is off (see :mod:`magvit_pl.token_cache`); z̃ is still encoded per task.
        """
        super().__init__()
        self.task_names = list(tasks) if tasks else sorted(discover_tasks())
        self.save_hyperparameters()
        check_args("model", self.hparams, ARG_RULES)
        self.hparams["tasks"] = list(self.task_names)  # explicit, so a new plugin never shifts the vocabulary
        self.vocab = commit.Vocab(codebook_size=1, num_classes=num_classes, task_names=tuple(self.task_names))
        self.tokenizer: torch.nn.Module | None = None
        self._tokenizer_config: dict | None = None
        self.transformer: BidirectionalTransformer | None = None
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self._tasks: dict[str, Task] = {}
        self._cycle: list[str] = []
        self._cycle_rng = random.Random(seed)
        self._val_acc: dict[str, list[torch.Tensor]] = {}
        self._val_batch: dict[str, torch.Tensor] | None = None
        if token_cache_clips < 0:
            raise UserError(f"model.token_cache_clips={token_cache_clips}: must be >= 0 (0 = no token cache)")
        self.token_cache = TokenCache(token_cache_clips) if token_cache_clips else None

    def train(self, mode: bool = True) -> "MTMModule":
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # frozen: never leaves eval mode
        return self

    # ----------------------------------------------------------------------------------------- build
    def configure_model(self) -> None:
        if self.transformer is not None:
            return
        hp = self.hparams
        if self._tokenizer_config is not None:  # rebuilt from an MTM checkpoint: weights come with its state dict
            from magvit_pl.models.config import build_from_config

            tok = build_from_config(self._tokenizer_config, "MTM checkpoint").eval().requires_grad_(False)
        else:
            tok = load_tokenizer(hp.tokenizer_ckpt)
        self.tokenizer = tok
        self.grid = tok.token_grid(hp.num_frames, hp.resolution, hp.resolution)
        self.vocab = commit.Vocab(codebook_size=tok.codebook_size, num_classes=hp.num_classes, task_names=tuple(self.task_names))
        n = self.grid[0] * self.grid[1] * self.grid[2]
        self.transformer = BidirectionalTransformer(
            vocab_size=self.vocab.size, seq_len=self.vocab.prefix_len + n, hidden_dim=hp.hidden_dim,
            num_layers=hp.num_layers, num_heads=hp.num_heads, mlp_dim=hp.mlp_dim, dropout=hp.dropout,
            attention_dropout=hp.attention_dropout, pre_norm=hp.pre_norm, attention_backend=hp.attention_backend,
            activation_checkpointing=hp.activation_checkpointing, codebook_size=tok.codebook_size,
        )

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, num_cond_frames=self.hparams.num_cond_frames)
        return self._tasks[name]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            for attr in ("num_frames", "resolution", "num_classes"):
                want, have = getattr(self.hparams, attr), getattr(dm, attr, None)
                if have is not None and have != want:
                    raise UserError(f"model.{attr}={want} but data.{attr}={have}; set both to the same value")

    def on_fit_start(self) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        from magvit_pl.models.attention import resolve_backend

        ran = resolve_backend(self.hparams.attention_backend, self.device)
        rank_zero_info(f"attention backend: {ran} on {self.device.type} (asked for {self.hparams.attention_backend}); "
                       f"activation checkpointing {'on' if self.hparams.activation_checkpointing else 'off'}")

    def configure_optimizers(self):
        hp = self.hparams
        # weight decay on Linear weight matrices only (not embeddings, LayerNorm or biases), as the official code
        opt = torch.optim.AdamW(self.transformer.param_groups(hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = total_training_steps(self.trainer)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------------------------- shared steps
    def _next_task(self) -> str:
        """Cycle through a shuffled task list (reshuffled each cycle), one task per batch."""
        if not self._cycle:
            self._cycle = list(self.task_names)
            self._cycle_rng.shuffle(self._cycle)
        return self._cycle.pop()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.token_cache is not None and isinstance(batch, dict) and torch.is_tensor(batch.get("video")):
            batch["clip_hash"] = clip_hashes(batch["video"])  # hashed on the host, before the copy to the device
        return batch

    @torch.no_grad()
    def clip_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """z (B, N) of ``batch["video"]``: from the token cache when it is on, else encoded."""
        video = batch["video"]
        if self.token_cache is not None:
            keys = batch.get("clip_hash") or clip_hashes(video)
            return self.token_cache.encode(video, keys, self.tokenizer.encode)
        return self.tokenizer.encode(video).reshape(video.shape[0], -1)

    @torch.no_grad()
    def tokenize(self, batch: dict[str, Any], task: Task, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """z, z̃ (B, N), the latent condition mask (B, N) and the prefix (B, 2) for ``task`` on ``batch``.

        ``z`` (the clip's tokens) may be passed in when several tasks share one batch: it does not depend on the task.
        """
        video = batch["video"]
        b = video.shape[0]
        cond = task.build_condition(video)
        z = self.tokenizer.encode(video).reshape(b, -1) if z is None else z
        cond_mask = task.latent_mask(cond.pixel_mask, self.tokenizer.downsample_factors).reshape(b, -1)
        z_cond = self.tokenizer.encode(cond.video).reshape(b, -1) if cond.pixel_mask.any() else torch.zeros_like(z)
        labels = batch.get("label") if task.uses_class else None
        prefix = commit.build_prefix(self.vocab, task.name, b, labels=labels, device=video.device)
        return {"z": z, "z_cond": z_cond, "cond_mask": cond_mask, "prefix": prefix, "condition": cond.video, "cond": cond}

    def _loss(self, t: dict[str, torch.Tensor], task: Task, generator: torch.Generator | None, r: float | None = None):
        hp = self.hparams
        b, n = t["z"].shape
        maskable = ~t["cond_mask"] if hp.mode == "naive" else None
        mask = commit.sample_mask(b, n, generator=generator, schedule=hp.mask_schedule, maskable=maskable, r=r, device=t["z"].device)
        video_in = commit.corrupt(t["z"], t["z_cond"], t["cond_mask"], mask, self.vocab, mode=hp.mode)
        prefix = t["prefix"]
        if self.training and task.uses_class and hp.class_dropout_prob > 0:
            drop = torch.rand(b, device=prefix.device) < hp.class_dropout_prob
            prefix = prefix.clone()
            prefix[:, 1] = torch.where(drop, torch.full_like(prefix[:, 1], self.vocab.uncond), prefix[:, 1])
        logits = self.transformer(torch.cat([prefix, video_in], 1))[:, self.vocab.prefix_len :]
        loss, parts = commit.commit_loss(logits, t["z"], mask, t["cond_mask"], weights=tuple(hp.loss_weights), label_smoothing=hp.label_smoothing, mode=hp.mode)
        return loss, parts, commit.masked_accuracy(logits, t["z"], mask)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        task = self.task(self._next_task())
        t = self.tokenize(batch, task, z=self.clip_tokens(batch))
        loss, parts, acc = self._loss(t, task, generator=None)
        if not self.guard.check(self.global_step, {"loss": loss}):
            return None  # Lightning skips the optimiser step
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"})
        self.log(f"train/acc/{task.name}", acc)
        if self.token_cache is not None:
            self.log("train/token_cache_hit_rate", self.token_cache.hit_rate)
        return loss

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator(device=batch["video"].device).manual_seed(self.hparams.seed + batch_idx)
        z = self.clip_tokens(batch)  # shared by every task
        for name in self.task_names:
            task = self.task(name)
            t = self.tokenize(batch, task, z=z)
            loss, _, acc = self._loss(t, task, generator=gen)
            self.log(f"val/acc/{name}", acc, sync_dist=True, batch_size=t["z"].shape[0])
            self.log(f"val/loss/{name}", loss, sync_dist=True, batch_size=t["z"].shape[0])
            self._val_acc.setdefault(name, []).append(acc)
        if batch_idx == 0:
            n = self.hparams.num_media_clips
            self._val_batch = {k: v[:n] for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_epoch_end(self) -> None:
        if self._val_acc:
            self.log("val/acc", torch.stack([torch.stack(v).mean() for v in self._val_acc.values()]).mean(), prog_bar=True, sync_dist=True)
        self._val_acc = {}
        if self._val_batch is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            from magvit_pl.media import save_video_grid

            for name in self.task_names:
                out = self.generate(self._val_batch, name, seed=self.hparams.seed)
                stem = media_dir(self.trainer) / f"samples_{name}_step{self.global_step:07d}"
                save_video_grid(stem, [out["condition"], out["generated"], self._val_batch["video"]], fps=self.hparams.media_fps)
        self._val_batch = None

    # ------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], task_name: str, seed: int = 0, steps: int | None = None,
                 z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Sample clips for ``task_name`` conditioned on ``batch`` (``video`` and, if used, ``label``).

        Returns ``condition`` (the padded condition video), ``generated`` (B, 3, T, H, W) in [-1, 1] and
        ``tokens`` (B, N).
        """
        hp = self.hparams
        task = self.task(task_name)
        was_training = self.transformer.training
        self.transformer.eval()
        t = self.tokenize(batch, task, z=z)
        gen = torch.Generator(device=batch["video"].device).manual_seed(seed)
        tokens = sampling.decode(
            self.transformer, t["z_cond"], t["cond_mask"], t["prefix"], self.vocab, steps=steps or hp.sample_steps,
            schedule=hp.mask_schedule, choice_temperature=hp.choice_temperature, temperature=hp.sample_temperature,
            top_k=hp.top_k, guidance_scale=hp.guidance_scale, generator=gen, mode=hp.mode,
        )
        self.transformer.train(was_training)
        video = self.tokenizer.decode(tokens.reshape(-1, *self.grid)).clamp(-1, 1)
        return {"condition": t["condition"], "generated": video, "tokens": tokens, "z_cond": t["z_cond"],
                "cond_mask": t["cond_mask"], "cond": t["cond"]}

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu") -> "MTMModule":
        """Rebuild a trained MTM (with its frozen tokenizer) from its checkpoint alone, in eval mode."""
        from magvit_pl.checkpoint import load_weights, read_model_checkpoint

        meta, hparams, state_dict = read_model_checkpoint(path, "mtm", cls)  # checked: allow-listed classes, plain data
        model = cls(**hparams)
        model._tokenizer_config = meta["tokenizer_config"]
        model.configure_model()
        load_weights(model, state_dict, path)
        return model.eval().to(map_location)

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["magvit"] = {
            "kind": "mtm",
            "vocab": self.vocab.to_dict(),
            "task_table": {name: self.vocab.task_id(name) for name in self.task_names},
            "token_grid": list(self.grid),
            "tokenizer_config": self.tokenizer.init_config,
            "cycle": {"remaining": list(self._cycle), "rng": _rng_state_to_list(self._cycle_rng.getstate())},
            "nonfinite_steps": self.guard.total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("magvit", {})
        saved = meta.get("vocab", {})
        if saved and saved.get("codebook_size") != self.vocab.codebook_size:
            raise UserError(f"tokenizer codebook size {self.vocab.codebook_size} does not match the MTM checkpoint's {saved.get('codebook_size')}")
        grid = meta.get("token_grid")
        if grid and tuple(grid) != tuple(self.grid):
            raise UserError(f"tokenizer token grid {tuple(self.grid)} does not match the MTM checkpoint's {tuple(grid)}")
        cycle = meta.get("cycle", {})
        self._cycle = list(cycle.get("remaining", []))
        if cycle.get("rng"):
            version, state, gauss = cycle["rng"]
            self._cycle_rng.setstate((version, tuple(state), gauss))
        self.guard.total = int(meta.get("nonfinite_steps", 0))


def _rng_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
