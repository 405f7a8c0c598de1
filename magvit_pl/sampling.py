"""Decoding: COMMIT non-autoregressive decoding (MaskGIT style) and an autoregressive baseline.

:func:`decode` follows the official MAGVIT/MaskGIT parallel decoder. The state is the video token
sequence plus an ``unknown`` mask. Initially every position is unknown and shows ``z̃`` inside the
condition region and ``[MASK]`` outside. Each of the K steps t = 0 … K−1:

1. one model pass on ``[prefix][tokens]`` gives logits ``(B, N, codebook)``;
2. a token is sampled at every position (temperature, optional top-k); known positions keep theirs;
3. confidence = ``log p(sampled)`` (+∞ for known positions) ``+ choice_temperature·(1 − (t+1)/K)·Gumbel``;
4. ``n = max(1, ⌊N·schedule((t+1)/K)⌋)``, capped at (#unknown − 1), least confident positions are
   re-masked (showing ``z̃`` again inside the condition, ``[MASK]`` outside); the rest become known
   and stay fixed.

The result is the sampled sequence of the last step, which contains no ``[MASK]``. The choice
temperature anneals linearly with the progress *after* the step, ``(t+1)/K``, as in the official code,
so the last step adds no noise.

Exactly K model calls are made. With classifier-free guidance (``guidance_scale > 0``) the
conditional and unconditional sequences are concatenated along the batch, so it is still K calls,
each on a batch of 2B; logits are ``c + s·(c − u)``, where the unconditional pass sees the
``uncond_prefix`` (class token → UNCOND) and ``[MASK]`` at every unknown position (no ``z̃``).

Cost: a known position keeps its token and an infinite confidence whatever its logits, so only the
unknown positions are sampled and scored, with the same random draws as sampling every position (the
tokens do not change). A model whose class sets ``supports_logits_at`` (as
:class:`~magvit_pl.models.transformer.BidirectionalTransformer`) is called as ``model_fn(seq,
logits_at=mask)`` and computes those positions' logits only: about two thirds of them over a 12-step
cosine schedule. At temperature 1 without top-k one softmax pass gives both the sampling CDF and
``log p``; one sort ranks the confidences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from magvit_pl.commit import Mode, Vocab, mask_ratio_schedule
from magvit_pl.run.errors import UserError

ModelFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SamplingConfig:
    """How clips are sampled (validation grids, ``test``, ``generate``) with :func:`decode`.

    Args:
        steps: Decoding steps K (model calls per clip; 12 in the paper).
        choice_temperature: Gumbel temperature of the confidence (annealed linearly to 0).
        temperature: Sampling temperature of the token distribution (0 = greedy).
        top_k: Sample among the k most likely codes only (None = all codes).
        guidance_scale: Classifier-free guidance scale (0 = off).
        keep_condition: Hold the condition tokens z̃ fixed while decoding and sample only the other
            positions. False (the paper's COMMIT decoding) re-predicts them too, so a given frame can
            change. With a causal tokenizer (``causal: true`` or ``decoder``) a given first frame then
            decodes from exactly its condition tokens. A model trained with ``commit.mode: naive``
            always decodes this way.
    """

    steps: int = 12
    choice_temperature: float = 4.5
    temperature: float = 1.0
    top_k: int | None = None
    guidance_scale: float = 0.0
    keep_condition: bool = False


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise ``−log(−log U)``."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ids from ``logits (..., K)``; returns ``(...)`` long.

    Args:
        logits: unnormalised scores.
        temperature: divide the logits by this; 0 = greedy (argmax).
        top_k: sample only among the k largest logits.
        generator: torch generator for reproducible draws.
    """
    u = None if temperature == 0 else torch.rand((*logits.shape[:-1], 1), generator=generator, device=logits.device)
    return _inverse_cdf(logits, u, temperature, top_k)


def _inverse_cdf(logits: Tensor, u: Tensor | None, temperature: float, top_k: int | None) -> Tensor:
    """The ids :func:`sample_logits` draws from ``logits (..., K)`` with the uniforms ``u (..., 1)`` (None: greedy)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)
    # inverse-CDF sampling: one uniform per row (4x cheaper than Gumbel-max over the whole vocab)
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)  # (..., K)
    return _search(cdf, u)


def _search(cdf: Tensor, u: Tensor) -> Tensor:
    """The first index where the (unnormalised) ``cdf (..., K)`` exceeds ``u · total`` (``u (..., 1)`` in [0, 1))."""
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0]
    return idx.clamp_(max=cdf.shape[-1] - 1)


def _sample_with_logp(logits: Tensor, u: Tensor | None, temperature: float, top_k: int | None) -> tuple[Tensor, Tensor]:
    """``(ids, log p(ids))`` ``(M,)`` for rows of ``logits (M, K)``: ids as :func:`sample_logits` draws them with
    the uniforms ``u (M, 1)``, ``log p`` under the untempered, unrestricted distribution ``softmax(logits)``.
    At temperature 1 without top-k one pass of exponentials serves both."""
    peak = logits.amax(-1, keepdim=True)  # (M, 1)
    e = (logits - peak).exp_()  # (M, K), unnormalised probabilities
    lse = peak[:, 0] + e.sum(-1).log_()  # (M,) log-sum-exp
    if temperature == 1 and (top_k is None or top_k >= logits.shape[-1]):
        ids = _search(e.cumsum_(-1), u)
    else:
        ids = _inverse_cdf(logits, u, temperature, top_k)
    return ids, logits.gather(-1, ids[:, None])[:, 0] - lse


@torch.no_grad()
def decode(
    model_fn: ModelFn,
    z_cond: Tensor,
    cond_mask: Tensor,
    prefix: Tensor,
    vocab: Vocab,
    steps: int = 12,
    schedule: str = "cosine",
    choice_temperature: float = 4.5,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
    mode: Mode = "commit",
    uncond_prefix: Tensor | None = None,
) -> Tensor:
    """COMMIT decoding; returns video tokens ``(B, N)`` in ``[0, codebook_size)``.

    Args:
        model_fn: maps token ids ``(B', P + N)`` to logits ``(B', P + N, V)`` with ``V ≥ codebook``
            (a :class:`BidirectionalTransformer` in eval mode works as is).
        z_cond: condition tokens ``z̃`` ``(B, N)`` (any ``(B, ...)`` shape; ignored outside the mask).
        cond_mask: ``(B, N)`` bool, True where a position belongs to the condition.
        prefix: ``(B, P)`` prefix ids, ``[task][class or UNCOND]`` or ``[class or UNCOND]`` (see ``commit.build_prefix``).
        vocab: the vocabulary.
        steps: number of decoding steps K (model calls), 1 ≤ K ≤ N (each step fixes at least one token).
        schedule: mask schedule name (``commit.mask_ratio_schedule``).
        choice_temperature: Gumbel noise scale on the confidence, annealed to 0.
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the top-k codes only.
        guidance_scale: classifier-free guidance scale; 0 disables it.
        generator: torch generator; the same seed gives the same output.
        mode: ``commit``, or ``naive`` for a model trained with ``commit.corrupt(mode='naive')``:
            the condition positions are given ``z̃`` and never re-predicted.
        uncond_prefix: prefix of the unconditional pass for guidance; default ``prefix`` with its
            class token replaced by UNCOND (``commit.uncond_prefix`` also sets the official task token).
    """
    if steps < 1:
        raise UserError(f"decoding steps must be >= 1, got {steps}")
    B = prefix.shape[0]
    z_cond = z_cond.reshape(B, -1).long()
    N = z_cond.shape[1]
    if steps > N:  # each step fixes at least one token: more steps only burn time (10^8 of them: for ever)
        raise UserError(f"decoding steps must be at most the number of tokens per clip ({N}), got {steps}")
    tokens, unknown, refill = _start(z_cond, cond_mask.reshape(B, -1).bool(), vocab.mask, mode)
    num_maskable = unknown.sum(1)  # (B,)
    if guidance_scale != 0.0 and uncond_prefix is None:
        uncond_prefix = prefix.clone()
        uncond_prefix[:, -1] = vocab.uncond  # the class token is the last prefix token

    sampled = tokens
    for step in range(steps):
        logits = _step_logits(model_fn, prefix, tokens, unknown, vocab, guidance_scale, uncond_prefix)  # (M, K)
        # one uniform per position, known ones included: the draws of sampling every position
        u = None if temperature == 0 else torch.rand((B, N, 1), generator=generator, device=tokens.device)[unknown]
        ids, logp = _sample_with_logp(logits, u, temperature, top_k)  # (M,), (M,)
        sampled = tokens.masked_scatter(unknown, ids)  # (B, N): known positions keep their token
        remask = _least_confident(logp, unknown, num_maskable, (step + 1) / steps, schedule, choice_temperature, generator)
        tokens = torch.where(remask, refill, sampled)
        unknown = remask
    return sampled


def _start(z_cond: Tensor, cond: Tensor, mask_id: int, mode: Mode) -> tuple[Tensor, Tensor, Tensor]:
    """The first input of decoding: ``(tokens, unknown, refill)``, each ``(B, N)``.

    ``unknown`` marks the positions decoding predicts (all of them under COMMIT, the non-condition ones
    under ``naive``); ``refill`` is what such a position shows while it is masked (``z̃`` on condition
    positions under COMMIT, else [MASK]); ``tokens`` = ``refill`` where unknown, ``z̃`` elsewhere.
    """
    masks = torch.full_like(z_cond, mask_id)
    if mode == "commit":
        unknown = torch.ones_like(cond)
        refill = torch.where(cond, z_cond, masks)  # what a re-masked position shows
    elif mode == "naive":
        unknown = ~cond
        refill = masks
    else:
        raise UserError(f"conditioning mode {mode!r} is not known; choose commit or naive")
    return torch.where(unknown, refill, z_cond), unknown, refill


def _step_logits(model_fn: ModelFn, prefix: Tensor, tokens: Tensor, unknown: Tensor, vocab: Vocab,
                 guidance_scale: float, uncond_prefix: Tensor | None) -> Tensor:
    """Logits ``(M, K)`` over the codebook at the M unknown video positions (row-major), with classifier-free
    guidance ``c + s·(c − u)`` when ``guidance_scale`` s ≠ 0 (u: the unconditional pass, all unknown
    positions [MASK]; both passes in one batch)."""
    seq = torch.cat([prefix, tokens], dim=1)  # (B, P + N)
    if guidance_scale == 0.0:
        return _unknown_logits(model_fn, seq, unknown, vocab.codebook_size)  # (M, K)
    useq = torch.cat([uncond_prefix, torch.where(unknown, torch.full_like(tokens, vocab.mask), tokens)], dim=1)
    both = _unknown_logits(model_fn, torch.cat([seq, useq], dim=0), unknown.repeat(2, 1), vocab.codebook_size)  # (2M, K)
    c, u = both.chunk(2, dim=0)
    return c + guidance_scale * (c - u)


def _unknown_logits(model_fn: ModelFn, seq: Tensor, unknown: Tensor, codebook_size: int) -> Tensor:
    """Logits ``(M, K)`` at the M positions where ``unknown`` ``(B', N)`` is True, of the video part of ``seq``
    ``(B', P + N)``; only those are computed when the model ``supports_logits_at``."""
    N = unknown.shape[1]
    if getattr(model_fn, "supports_logits_at", False):
        at = torch.cat([torch.zeros_like(seq[:, :-N], dtype=torch.bool), unknown], dim=1)  # (B', P + N)
        return model_fn(seq, logits_at=at)[:, :codebook_size].float()  # (M, K)
    return model_fn(seq)[:, -N:, :codebook_size][unknown].float()  # (M, K)


def _least_confident(logp: Tensor, unknown: Tensor, num_maskable: Tensor, progress: float,
                     schedule: str, choice_temperature: float, generator: torch.Generator | None) -> Tensor:
    """``(B, N)`` bool: the positions masked again after a step. Of the unknown positions (``logp`` ``(M,)``:
    log p of their sampled tokens, row-major), the ``⌊maskable · ratio(progress)⌋`` (at least 1, at most all
    but one) with the lowest confidence ``log p(sampled) + choice_temperature · (1 − progress) · Gumbel``;
    known positions never."""
    B, N = unknown.shape
    conf = torch.full((B, N), float("inf"), device=unknown.device).masked_scatter_(unknown, logp)
    conf = conf + choice_temperature * (1.0 - progress) * gumbel(conf.shape, generator, unknown.device)
    ratio = float(mask_ratio_schedule(progress, schedule, total=N))
    num = torch.floor(num_maskable.double() * ratio).long().clamp(min=1)
    num = torch.minimum(num, unknown.sum(1) - 1).clamp(min=0)  # (B,)
    order = conf.argsort(dim=1, stable=True)  # (B, N), least confident first
    first = torch.arange(N, device=unknown.device) < num[:, None]  # (B, N): the first num of each row
    return torch.zeros_like(unknown).scatter_(1, order, first)


@torch.no_grad()
def decode_autoregressive(
    model: torch.nn.Module,
    prefix: Tensor,
    N: int,
    kv_cache: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Raster-order decoding of N tokens after ``prefix`` with a causal transformer (baseline).

    ``model`` is a :class:`~magvit_pl.models.transformer.BidirectionalTransformer` run with
    ``causal=True`` (put it in eval mode first). The logits at the last position predict the next
    token. With ``kv_cache`` each step feeds one new token and reuses the stored keys/values;
    without it each step re-runs the whole prefix (same outputs, O(N²) work). N model calls either way.

    Args:
        model: the transformer.
        prefix: ``(B, P)`` prefix ids.
        N: number of tokens to generate.
        kv_cache: reuse keys/values between steps.
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the top-k codes only.
        generator: torch generator.
    """
    B, P = prefix.shape
    out = torch.empty((B, N), dtype=torch.long, device=prefix.device)
    if kv_cache:
        cache = model.new_kv_cache(B, P + N)
        logits = model(prefix, kv_cache=cache)  # (B, P, K)
        for i in range(N):
            out[:, i] = sample_logits(logits[:, -1].float(), temperature, top_k, generator)
            if i + 1 < N:
                logits = model(out[:, i : i + 1], kv_cache=cache)  # (B, 1, K)
        return out
    seq = prefix
    for i in range(N):
        logits = model(seq, causal=True)[:, -1].float()  # (B, K)
        out[:, i] = sample_logits(logits, temperature, top_k, generator)
        seq = torch.cat([prefix, out[:, : i + 1]], dim=1)
    return out
