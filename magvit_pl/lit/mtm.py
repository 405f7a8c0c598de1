"""Stage 2: the LightningModule that trains the masked token transformer with COMMIT (MAGVIT §2).

Thin glue over :mod:`magvit_pl.lit.mtm_batch` (one batch: tokenize, COMMIT step, sampling), the task
plugins and a frozen tokenizer from a stage-1 checkpoint, whose EMA weights the MTM checkpoint keeps.
Options come in groups (:mod:`magvit_pl.lit.mtm_options`): ``--model.transformer.hidden_dim`` …
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from magvit_pl.commit import CommitConfig, TaskSchedule, Vocab
from magvit_pl.lit.common import NonFiniteGuard
from magvit_pl.lit.evaluation import EvalConfig, TaskEvaluator, eval_task_names, make_plan, sample_seed
from magvit_pl.run.checks import check_args
from magvit_pl.run.checkpoint import check_init_kwargs, load_weights, read_model_checkpoint
from magvit_pl.run.errors import UserError
from magvit_pl.run.run_dir import media_dir
from magvit_pl.lit.mtm_batch import Sample, clip_tokens, commit_step, sample, tokenize
from magvit_pl.run.report import write_results
from magvit_pl.lit.mtm_options import FLAT_LAYOUT, OptimConfig, TaskConfig, constructor_args, is_flat_layout, with_defaults
from magvit_pl.run.media import save_media
from magvit_pl.models.attention import resolve_backend
from magvit_pl.models.checkpointing import apply_activation_checkpointing, drop_legacy_flag
from magvit_pl.models.config import build_from_config
from magvit_pl.models.transformer import BidirectionalTransformer, TransformerConfig
from magvit_pl.pretrained import load_tokenizer_any
from magvit_pl.sampling import SamplingConfig
from magvit_pl.lit.schedules import total_training_steps, warmup_cosine
from magvit_pl.tasks import Task, discover_tasks, get_task
from magvit_pl.lit.token_cache import TokenCache, clip_hashes

log = logging.getLogger(__name__)
# what each numeric hyper-parameter of MTMModule may be (checked by magvit_pl.run.checks.check_args on self.hparams)
# one-line checks of the numeric options (magvit_pl.run.checks), per option group ("" = the module's own arguments)
ARG_RULES: dict[str, dict[str, str]] = {
    "": {"num_classes": ">= 0", "num_frames": ">= 1", "resolution": ">= 1", "num_media_clips": ">= 0", "media_fps": ">= 1",
         "max_consecutive_nonfinite": ">= 1", "token_cache_clips": ">= 0"},
    "tasks": {"num_cond_frames": ">= 0"},
    "transformer": {"hidden_dim": ">= 1", "num_layers": ">= 1", "num_heads": ">= 1", "mlp_dim": ">= 1", "dropout": "[0, 1)",
                    "attention_dropout": "[0, 1)", "layer_norm_eps": "> 0"},
    "commit": {"loss_weights": ">= 0", "label_smoothing": "[0, 1)", "class_dropout_prob": "[0, 1]"},
    "sampling": {"steps": ">= 1", "choice_temperature": ">= 0", "temperature": ">= 0", "top_k": ">= 1", "guidance_scale": ">= 0"},
    "optim": {"lr": "> 0", "betas": "[0, 1)", "weight_decay": ">= 0", "warmup_steps": ">= 0", "min_lr_ratio": "[0, 1]"},
    "evaluation": {"num_samples": ">= 1", "num_repeats": ">= 1"},
}
# The data module keeps Lightning's default hook; the model's (token-cache hashing) is the one meant to run.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


class MTMModule(LightningModule):
    """Multi-task COMMIT training of a bidirectional transformer on frozen tokenizer tokens.

    Args:
        tokenizer_ckpt: Stage-1 checkpoint (``runs/tokenizer/latest/checkpoints/last.ckpt``) or tokenizer model folder
            (``export --format safetensors``); its EMA tokenizer is frozen.
        num_classes: Number of class labels in the data (class tokens; the data module must agree); 0 for
            data without classes (BAIR), which then trains no class-conditional task.
        num_frames: Frames per clip (must match the data module; the CLI sets it from ``data.num_frames``).
        resolution: Clip height and width (must match the data module; the CLI sets it from ``data.resolution``).
        tasks: Tasks to train on and the run-wide task options.
        transformer: Size and regularisation of the transformer (B: the defaults).
        commit: COMMIT training: conditioning mode, mask schedule, loss weights, class dropout.
        sampling: Decoding of samples (validation grids, ``test``, ``generate``).
        optim: AdamW and its warmup-cosine schedule.
        evaluation: The sampling protocol of ``test`` (samples per repeat, repeats).
        activation_checkpointing: Recompute transformer blocks in backward to save memory (applied
            from outside the transformer, in ``configure_model``).
        eval_task: Task name or family evaluated by ``test`` (``None`` = every trained task; set by ``--task``).
        num_media_clips: Clips per sample grid written at each validation.
        media_fps: Frame rate of the written grids.
        max_consecutive_nonfinite: Stop after this many consecutive NaN/inf losses.
        seed: Seed of the task cycle and the masks (saved with the checkpoint).
        token_cache_clips: Keep the frozen tokenizer's tokens of up to this many clips, keyed by the clip's
            pixels, and look them up instead of encoding a clip seen before (0 = off). Pays off when
            augmentation is off (see :mod:`magvit_pl.lit.token_cache`); z̃ is still encoded per task.
        tokenizer: The frozen tokenizer itself, already built (``from_checkpoint`` passes the one stored
            in the MTM checkpoint); ``None`` = load it from ``tokenizer_ckpt`` in ``configure_model``.
    """

    def __init__(
        self,
        tokenizer_ckpt: str,
        num_classes: int,
        num_frames: int = 16,
        resolution: int = 64,
        tasks: TaskConfig | None = TaskConfig(),
        transformer: TransformerConfig | None = TransformerConfig(),
        commit: CommitConfig | None = CommitConfig(),
        sampling: SamplingConfig | None = SamplingConfig(),
        optim: OptimConfig | None = OptimConfig(),
        evaluation: EvalConfig | None = EvalConfig(),
        activation_checkpointing: bool = False,
        eval_task: str | None = None,
        num_media_clips: int = 4,
        media_fps: int = 8,
        max_consecutive_nonfinite: int = 5,
        seed: int = 0,
        token_cache_clips: int = 0,
        tokenizer: torch.nn.Module | None = None,
    ):
        super().__init__()
        g = with_defaults(tasks=tasks, transformer=transformer, commit=commit, sampling=sampling, optim=optim, evaluation=evaluation)
        check_args("model", locals(), ARG_RULES[""])
        for group, rules in ARG_RULES.items():
            if group:
                check_args(f"model.{group}", dataclasses.asdict(g[group]), rules)
        self.task_config, self.transformer_config, self.commit_config = g["tasks"], g["transformer"], g["commit"]
        self.sampling_config, self.optim_config, self.eval_config = g["sampling"], g["optim"], g["evaluation"]
        self.task_names = list(self.task_config.names or sorted(discover_tasks()))
        self._tasks: dict[str, Task] = {}
        self.task_config.check_classes(num_classes, {n: self.task(n).uses_class for n in self.task_names})
        self.schedule = TaskSchedule(self.task_names, self.task_config.weight_list(self.task_names), self.task_config.schedule, seed)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.hparams.update({name: dataclasses.asdict(value) for name, value in g.items()})  # plain data in checkpoints
        self.hparams["tasks"]["names"] = list(self.task_names)  # explicit: a new plugin never shifts the vocabulary
        self.tokenizer = tokenizer
        self.transformer: BidirectionalTransformer | None = None  # built with the vocabulary in configure_model
        self.vocab: Vocab | None = None
        self.grid: tuple[int, int, int] | None = None
        self.guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.token_cache = TokenCache(token_cache_clips) if token_cache_clips else None
        self.evaluator: TaskEvaluator | None = None
        self._fvd_stats: dict[str, Any] | None = None  # the test set's cached real FVD statistics (file, reused)
        self._plan = None  # the test's SamplePlan
        self._clips_seen = 0
        self._val_acc: dict[str, list[torch.Tensor]] = {}
        self._val_batch: dict[str, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> "MTMModule":
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # frozen: never leaves eval mode
        return self

    # ----------------------------------------------------------------------------------------- build
    def configure_model(self) -> None:
        """Load the frozen tokenizer (unless given), then build the vocabulary and the transformer it sizes."""
        if self.transformer is not None:
            return
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer_any(hp.tokenizer_ckpt)  # a checkpoint or a model folder
        k = self.tokenizer.codebook_size
        self.grid = self.tokenizer.token_grid(hp.num_frames, hp.resolution, hp.resolution)
        self.vocab = self.task_config.vocab(k, hp.num_classes, {n: self.task(n).family for n in self.task_names})
        seq_len = self.vocab.prefix_len + math.prod(self.grid)
        self.transformer = BidirectionalTransformer(self.vocab.size, seq_len, self.transformer_config, codebook_size=k,
                                                    grid=self.grid)
        if hp.activation_checkpointing:
            apply_activation_checkpointing(self.transformer)

    @property
    def uncond_task(self) -> str | None:
        """The task whose token the unconditional guidance pass sees: the generation task when the model learned
        one (the official full-generation token), else None (each task's own)."""
        return next((n for n in self.task_names if self.task(n).family == "generation"), None) if self.vocab.task_token else None

    def task(self, name: str) -> Task:
        if name not in self._tasks:
            self._tasks[name] = get_task(name, shared=self.task_config.shared_options())
        return self._tasks[name]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None:
            for attr in ("num_frames", "resolution", "num_classes"):
                want, have = getattr(self.hparams, attr), getattr(dm, attr, None)
                if have is not None and have != want:
                    raise UserError(f"model.{attr}={want} but data.{attr}={have}; set both to the same value")

    def on_fit_start(self) -> None:
        asked = self.transformer_config.attention_backend
        rank_zero_info(f"attention backend: {resolve_backend(asked, self.device)} on {self.device.type} (asked for {asked}); "
                       f"activation checkpointing {'on' if self.hparams.activation_checkpointing else 'off'}")

    def configure_optimizers(self):
        o = self.optim_config
        # weight decay on Linear weight matrices only (not embeddings, LayerNorm or biases), as the official code
        opt = torch.optim.AdamW(self.transformer.param_groups(o.weight_decay), lr=o.lr, betas=tuple(o.betas))
        total = total_training_steps(self.trainer)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}  # `lr`: LearningRateMonitor

    # -------------------------------------------------------------------------------------- training
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.token_cache is not None and isinstance(batch, dict) and torch.is_tensor(batch.get("video")):
            batch["clip_hash"] = clip_hashes(batch["video"])  # hashed on the host, before the copy to the device
        return batch

    def clip_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """z (B, N) of ``batch["video"]``: from the token cache when it is on, else encoded."""
        return clip_tokens(self.tokenizer, batch["video"], self.token_cache, batch.get("clip_hash"))

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        task = self.task(self.schedule.task_at(self.global_step))  # one task per batch (tasks.schedule)
        inputs = tokenize(self.tokenizer, self.vocab, task, batch["video"], batch.get("label"), z=self.clip_tokens(batch))
        loss, parts, acc = commit_step(self.transformer, inputs, self.vocab, self.commit_config, drop_classes=task.uses_class)
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
            inputs = tokenize(self.tokenizer, self.vocab, self.task(name), batch["video"], batch.get("label"), z=z)
            loss, _, acc = commit_step(self.transformer, inputs, self.vocab, self.commit_config, generator=gen)
            self.log(f"val/acc/{name}", acc, sync_dist=True, batch_size=inputs.z.shape[0])
            self.log(f"val/loss/{name}", loss, sync_dist=True, batch_size=inputs.z.shape[0])
            self._val_acc.setdefault(name, []).append(acc)
        if batch_idx == 0:
            n = self.hparams.num_media_clips
            self._val_batch = {k: v[:n] for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_epoch_end(self) -> None:
        if self._val_acc:
            self.log("val/acc", torch.stack([torch.stack(v).mean() for v in self._val_acc.values()]).mean(), prog_bar=True, sync_dist=True)
        self._val_acc = {}
        if self._val_batch is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            for name in self.task_names:
                out = self.generate(self._val_batch, name, seed=self.hparams.seed)
                self._save_grid(f"samples_{name}_step{self.global_step:07d}", out, self._val_batch["video"])
        self._val_batch = None

    def _save_grid(self, stem: str, out: Sample, real: torch.Tensor) -> None:
        """``media/STEM.mp4`` (and .gif): condition | generated | real, for up to ``num_media_clips`` clips."""
        n = self.hparams.num_media_clips
        clips = [out.inputs.condition.video[:n], out.generated[:n], real[:n]]
        save_media(self.trainer, stem, clips, fps=self.hparams.media_fps)

    # ------------------------------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        names = eval_task_names(self.hparams.eval_task, self.task_names)
        ev = self.eval_config
        self.evaluator = TaskEvaluator({n: self.task(n) for n in names}, self.hparams.num_frames, self.device, ev.num_repeats)
        self._plan = make_plan(ev, self.trainer)
        self._clips_seen = 0
        # the real statistics of the whole test set are every repeat's only when each repeat is the test set once
        self._fvd_stats = self.evaluator.attach_real_stats(self.trainer) if ev.num_samples is None else None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        video = batch["video"]
        groups = self._plan.groups(self._clips_seen, video.shape[0])  # [(pass, clips sampled, [(lo, hi, repeat)])]
        self._clips_seen += video.shape[0]
        self.evaluator.begin_batch(video)
        for name in self.evaluator.names:
            inputs = tokenize(self.tokenizer, self.vocab, self.task(name), video, batch.get("label"), need_z=False)
            for p, k, spans in groups:
                out = self._sample(inputs.head(k), sample_seed(self.hparams.seed, batch_idx, p))
                for lo, hi, repeat in spans:
                    self.evaluator.update(name, out, repeat, (lo, hi))
                if batch_idx == 0 and p == 0 and self.trainer.is_global_zero:
                    self._save_grid(f"test_{name}", out, video)

    def on_test_epoch_end(self) -> None:
        hp = self.hparams
        results, per_repeat = self.evaluator.compute()
        for name, values in results.items():
            for k, v in values.items():
                self.log(f"test/{name}/{k}", v, sync_dist=False)
        counts = self.evaluator.count_table(self._clips_seen).to(self.device)  # (tasks + 1, repeats)
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        if self.trainer.is_global_zero:
            self.evaluator.save_real_stats(self._fvd_stats)
            stats = {k: v for k, v in (self._fvd_stats or {}).items() if k != "manifest_sha256"} or None
            protocol = {"sample_steps": self.sampling_config.steps, "seed": hp.seed, "num_frames": hp.num_frames,
                        "resolution": hp.resolution, "tokenizer_ckpt": hp.tokenizer_ckpt, "fvd_real_stats": stats,
                        "guidance_scale": self.sampling_config.guidance_scale,
                        "keep_condition": self.sampling_config.keep_condition,
                        "evaluation": self.evaluator.protocol(self.eval_config, getattr(self.trainer, "datamodule", None), counts, per_repeat)}
            write_results(results, hp.eval_task or "all", media_dir(self.trainer).parent, protocol=protocol)
        self.evaluator = None

    # ------------------------------------------------------------------------------------ generation
    def _sample(self, inputs, seed: int, steps: int | None = None) -> Sample:
        gen = torch.Generator(device=inputs.z_cond.device).manual_seed(seed)
        return sample(self.transformer, self.tokenizer, inputs, self.vocab, self.grid, self.commit_config,
                      self.sampling_config, gen, steps, uncond_task=self.uncond_task)

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], task_name: str, seed: int = 0, steps: int | None = None,
                 z: torch.Tensor | None = None) -> Sample:
        """Sample clips for ``task_name`` conditioned on ``batch`` (``video`` and, if used, ``label``).

        ``steps`` overrides ``sampling.steps``. Only the task's condition video is encoded (sampling needs no
        tokens of the clip itself); ``z`` (the clips' tokens), when passed, is kept in the result's inputs.
        """
        inputs = tokenize(self.tokenizer, self.vocab, self.task(task_name), batch["video"], batch.get("label"), z=z, need_z=False)
        return self._sample(inputs, seed, steps)

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu") -> "MTMModule":
        """Rebuild a trained MTM (with its frozen tokenizer) from its checkpoint alone, in eval mode
        (checkpoints of the old flat option layout too). Everything in the file is checked before anything
        is built: allow-listed classes, plain data, hyper-parameters that are arguments of this class."""
        meta, hparams, state_dict = read_model_checkpoint(path, "mtm")
        args = constructor_args(hparams)
        check_init_kwargs(cls, args, f"checkpoint {path}")
        tokenizer = build_from_config(drop_legacy_flag(meta["tokenizer_config"]), f"checkpoint {path}")
        model = cls(**{**args, "tokenizer": tokenizer.eval().requires_grad_(False)})
        model.configure_model()
        load_weights(model, state_dict, path)
        return model.eval().to(map_location)

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["magvit"] = {
            "kind": "mtm",
            "vocab": self.vocab.to_dict(),
            "task_table": {name: self.vocab.task_id(name) for name in self.task_names} if self.vocab.task_token else {},
            "token_grid": list(self.grid),
            "tokenizer_config": self.tokenizer.init_config,
            "cycle": self.schedule.state(),
            "nonfinite_steps": self.guard.total,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if is_flat_layout(checkpoint.get("hyper_parameters", {})):  # its options would be merged wrongly
            raise UserError(f"this checkpoint {FLAT_LAYOUT}")
        meta = checkpoint.get("magvit", {})
        saved = meta.get("vocab", {})
        if saved and saved.get("codebook_size") != self.vocab.codebook_size:
            raise UserError(f"tokenizer codebook size {self.vocab.codebook_size} does not match the MTM checkpoint's {saved.get('codebook_size')}")
        if saved and Vocab.from_dict(saved).task_token != self.vocab.task_token:
            has = Vocab.from_dict(saved).task_token
            raise UserError(f"the MTM checkpoint's sequences {'have' if has else 'have no'} task token but this model's "
                            f"{'do not' if has else 'do'}; set --model.tasks.task_token {'always' if has else 'never'}")
        grid = meta.get("token_grid")
        if grid and tuple(grid) != tuple(self.grid):
            raise UserError(f"tokenizer token grid {tuple(self.grid)} does not match the MTM checkpoint's {tuple(grid)}")
        self.schedule.load_state(meta.get("cycle", {}))
        self.guard.total = int(meta.get("nonfinite_steps", 0))

