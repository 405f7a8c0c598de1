"""Stage 2 on one batch, as functions of their inputs: clips → :class:`TokenizedBatch` → COMMIT loss or
sampled clips. :class:`~magvit_pl.lit.mtm.MTMModule` calls these with its networks and options.

Shapes: clips ``(B, C, T, H, W)`` in [-1, 1]; tokens ``(B, N)`` flattened row-major over the token
grid ``(t, h, w)``; prefix ``(B, P)`` = ``[task token][class token or UNCOND]`` (P = 2), or
``[class token or UNCOND]`` (P = 1) for a single-task model without task tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from magvit_pl import commit, sampling
from magvit_pl.commit import CommitConfig, Vocab
from magvit_pl.sampling import SamplingConfig
from magvit_pl.tasks import Condition, Task
from magvit_pl.lit.token_cache import TokenCache, clip_hashes


@dataclass
class TokenizedBatch:
    """What COMMIT needs of one batch for one task.

    Attributes:
        z: ``(B, N)`` tokens of the clip (the targets); None when only sampling (it needs no ground truth).
        z_cond: ``(B, N)`` tokens of the condition video Ṽ (zeros when the task gives no pixel).
        cond_mask: ``(B, N)`` bool, True at the condition tokens (their z̃ is used).
        prefix: ``(B, P)`` task and class (or UNCOND) tokens.
        condition: the task's condition: Ṽ ``(B, C, T, H, W)`` and its pixel mask ``(B, 1, T, H, W)``.
    """

    z: Tensor | None
    z_cond: Tensor
    cond_mask: Tensor
    prefix: Tensor
    condition: Condition

    def head(self, k: int) -> "TokenizedBatch":
        """The first ``k`` clips (itself when it has no more)."""
        if k >= self.z_cond.shape[0]:
            return self
        cond = Condition(video=self.condition.video[:k], pixel_mask=self.condition.pixel_mask[:k])
        return TokenizedBatch(z=None if self.z is None else self.z[:k], z_cond=self.z_cond[:k], cond_mask=self.cond_mask[:k],
                              prefix=self.prefix[:k], condition=cond)


@dataclass
class Sample:
    """Clips sampled for one task: ``generated`` ``(B, C, T, H, W)`` in [-1, 1], their ``tokens``
    ``(B, N)``, and the ``inputs`` they were conditioned on."""

    generated: Tensor
    tokens: Tensor
    inputs: TokenizedBatch


@torch.no_grad()
def clip_tokens(tokenizer: nn.Module, video: Tensor, cache: TokenCache | None = None, keys: list[str] | None = None) -> Tensor:
    """z ``(B, N)`` of ``video``: looked up in ``cache`` (by ``keys``, the clips' content hashes, computed
    here when not given) when there is one, else encoded."""
    if cache is not None:
        return cache.encode(video, keys or clip_hashes(video), tokenizer.encode)
    return tokenizer.encode(video).reshape(video.shape[0], -1)


@torch.no_grad()
def tokenize(tokenizer: nn.Module, vocab: Vocab, task: Task, video: Tensor, labels: Tensor | None = None,
             z: Tensor | None = None, need_z: bool = True) -> TokenizedBatch:
    """z, z̃, the latent condition mask and the prefix of ``task`` on ``video`` with the frozen ``tokenizer``.

    ``labels`` (B,) are used only by class-conditional tasks. ``z`` (the clip's tokens) may be passed in
    when several tasks share one batch: it does not depend on the task. ``need_z=False`` (sampling) leaves
    ``z`` as given, None by default: the clip itself is not encoded, only its condition video Ṽ, and that
    only when the task gives pixels.
    """
    b = video.shape[0]
    cond = task.build_condition(video)
    if z is None and need_z:
        z = tokenizer.encode(video).reshape(b, -1)
    cond_mask = task.latent_mask(cond.pixel_mask, tokenizer.downsample_factors).reshape(b, -1)
    if cond.pixel_mask.any():
        z_cond = tokenizer.encode(cond.video).reshape(b, -1)
    else:
        z_cond = torch.zeros(cond_mask.shape, dtype=torch.long, device=video.device)
    prefix = commit.build_prefix(vocab, task.name, b, labels=labels if task.uses_class else None, device=video.device)
    return TokenizedBatch(z=z, z_cond=z_cond, cond_mask=cond_mask, prefix=prefix, condition=cond)


def commit_step(transformer: nn.Module, inputs: TokenizedBatch, vocab: Vocab, config: CommitConfig,
                generator: torch.Generator | None = None, drop_classes: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One COMMIT step: sample a mask, corrupt, run ``transformer``; returns (loss, loss parts, masked accuracy).

    ``drop_classes``: replace class tokens by UNCOND with ``config.class_dropout_prob`` (training of a
    class-conditional task, for classifier-free guidance).
    """
    t = inputs
    b, n = t.z.shape
    maskable = ~t.cond_mask if config.mode == "naive" else None
    mask = commit.sample_mask(b, n, generator=generator, schedule=config.mask_schedule, maskable=maskable, device=t.z.device)
    video_in = commit.corrupt(t.z, t.z_cond, t.cond_mask, mask, vocab, mode=config.mode)  # (B, N)
    prefix = commit.drop_class_tokens(t.prefix, vocab, config.class_dropout_prob) if drop_classes else t.prefix
    logits = transformer(torch.cat([prefix, video_in], 1))[:, vocab.prefix_len:]  # (B, N, K)
    loss, parts = commit.commit_loss(logits, t.z, mask, t.cond_mask, weights=tuple(config.loss_weights),
                                     label_smoothing=config.label_smoothing, mode=config.mode)
    return loss, parts, commit.masked_accuracy(logits, t.z, mask)


@torch.no_grad()
def sample(transformer: nn.Module, tokenizer: nn.Module, inputs: TokenizedBatch, vocab: Vocab, grid: tuple[int, int, int],
           commit_config: CommitConfig, config: SamplingConfig, generator: torch.Generator, steps: int | None = None,
           uncond_task: str | None = None) -> Sample:
    """COMMIT-decode tokens for ``inputs`` (``steps`` overrides ``config.steps``) and decode them to clips.

    With classifier-free guidance the unconditional pass sees UNCOND as class and, when ``uncond_task`` is
    given, that task's token (the official code: full generation, when the model learned it).
    """
    was_training = transformer.training
    transformer.eval()
    uncond = commit.uncond_prefix(inputs.prefix, vocab, uncond_task) if config.guidance_scale else None
    tokens = sampling.decode(
        transformer, inputs.z_cond, inputs.cond_mask, inputs.prefix, vocab, steps=steps or config.steps,
        schedule=commit_config.mask_schedule, choice_temperature=config.choice_temperature,
        temperature=config.temperature, top_k=config.top_k, guidance_scale=config.guidance_scale,
        generator=generator, mode="naive" if config.keep_condition else commit_config.mode, uncond_prefix=uncond,
    )
    transformer.train(was_training)
    video = tokenizer.decode(tokens.reshape(-1, *grid)).clamp(-1, 1)  # (B, C, T, H, W)
    return Sample(generated=video, tokens=tokens, inputs=inputs)
