"""COMMIT: conditional masked modeling by interior tokens (MAGVIT §3.2), as pure tensor functions.

One training step, for tokens ``z = f(V)`` of the clip and ``z̃ = f(Ṽ)`` of its padded condition
video (both ``(B, N)``, flattened row-major over ``(t, h, w)``) and a latent condition mask ``(B, N)``:

1. ``sample_mask``: one ratio per step, ``γ = cos(π/2·r)``, ``r ~ U[0, 1)``; mask ``⌊N·γ⌋`` (≥ 1)
   random positions of each sample.
2. ``corrupt``: masked ∩ condition → ``z̃``; masked outside → ``[MASK]``; unmasked → ``z``.
3. ``build_inputs``: prepend ``[task token][class token or UNCOND]``.
4. ``commit_loss``: cross-entropy to ``z`` at all N video positions, split into *refine* (masked ∩
   condition), *mask* (masked outside) and *reconstruct* (unmasked) with equal default weights,
   label smoothing 1e-4; the two prefix positions carry no loss.

``mode='naive'`` is the ablation the paper compares COMMIT against ("latent masking" as in MaskGIT
inpainting; ``condition_mode='input->input'`` in the official code): the condition region is never
masked and is given as ground-truth tokens ``z`` (at inference only ``z̃`` exists, which is the
train/test mismatch COMMIT removes), every masked position is ``[MASK]``, and the condition region
carries no loss. Use ``sample_mask(..., maskable=~cond_mask)`` with it so the ratio counts only the
positions that can be masked, as the official code does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from magvit_pl.run.errors import UserError

Mode = Literal["commit", "naive"]
MODES: tuple[str, ...] = ("commit", "naive")
Schedule = Literal["cosine", "linear", "exp"]
PREFIX_LEN = 2  # [task token][class token or UNCOND]


@dataclass(frozen=True)
class CommitConfig:
    """How the MTM is trained (and how its decoding re-masks, which shares the schedule and mode).

    Args:
        mode: ``commit`` (the paper) or ``naive`` (plain MTM ablation: no z̃ in the input).
        mask_schedule: Mask-ratio schedule used in training and decoding.
        loss_weights: Weights of the refine / mask / reconstruct token groups.
        label_smoothing: Label smoothing of the token cross-entropy.
        class_dropout_prob: Probability of replacing the class token by UNCOND in training
            (classifier-free guidance).
    """

    mode: Mode = "commit"
    mask_schedule: Schedule = "cosine"
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    label_smoothing: float = 1e-4
    class_dropout_prob: float = 0.0


@dataclass(frozen=True)
class Vocab:
    """Token ids of the stage-2 vocabulary.

    Layout: codes ``[0, K)``; class tokens ``[K, K + num_classes)``; ``UNCOND = K + num_classes``;
    ``MASK = K + num_classes + 1``; then one token per task, in ``task_names`` order. The MTM
    checkpoint stores this table, so installing a new task plugin never shifts an existing model's ids.
    """

    codebook_size: int
    num_classes: int
    task_names: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "task_names", tuple(self.task_names))
        if self.codebook_size < 1 or self.num_classes < 0:
            raise UserError(f"bad vocabulary: codebook_size={self.codebook_size}, num_classes={self.num_classes}")
        dup = sorted({n for n in self.task_names if self.task_names.count(n) > 1})
        if dup:
            raise UserError(f"task names must be unique; repeated: {', '.join(dup)}")

    @property
    def uncond(self) -> int:
        """Id of the 'no class' token (unconditional / classifier-free guidance)."""
        return self.codebook_size + self.num_classes

    @property
    def mask(self) -> int:
        """Id of ``[MASK]``."""
        return self.codebook_size + self.num_classes + 1

    @property
    def size(self) -> int:
        """Total number of token ids (the transformer's ``vocab_size``)."""
        return self.codebook_size + self.num_classes + 2 + len(self.task_names)

    @property
    def prefix_len(self) -> int:
        return PREFIX_LEN

    def task_id(self, name: str) -> int:
        """Token id of task ``name``."""
        if name not in self.task_names:
            known = ", ".join(self.task_names) or "(none)"
            raise UserError(f"task {name!r} is not in this model's vocabulary; known: {known}")
        return self.mask + 1 + self.task_names.index(name)

    def class_token(
        self, labels: Tensor | None, batch_size: int = 1, device: torch.device | str | None = None
    ) -> Tensor:
        """Class token ids ``(B,)``: ``K + label``, or UNCOND for every sample when ``labels`` is None."""
        if labels is None:
            return torch.full((batch_size,), self.uncond, dtype=torch.long, device=device)
        labels = labels.reshape(-1).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            lo, hi = labels.min().item(), labels.max().item()
            raise UserError(f"class labels must be in [0, {self.num_classes}); got {lo}..{hi}")
        return labels + self.codebook_size

    def to_dict(self) -> dict:
        """Plain dict for checkpoints (``from_dict`` restores it)."""
        return {"codebook_size": self.codebook_size, "num_classes": self.num_classes,
                "task_names": list(self.task_names)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(int(d["codebook_size"]), int(d["num_classes"]), tuple(d["task_names"]))


def mask_ratio_schedule(r: Tensor | float, kind: str = "cosine", total: int = 1024) -> Tensor:
    """Fraction of tokens to mask for progress ``r`` in [0, 1]; clamped to [1e-6, 1].

    Args:
        r: uniform sample (training) or decoding progress ``t/K`` (sampling).
        kind: ``cosine`` cos(π/2·r) (MAGVIT, MaskGIT); ``linear`` 1 − r; ``powP`` 1 − r^P (e.g.
            ``pow2``, ``pow0.5``); ``exp`` 1 − 2^(−log2(total)·(1 − r)); ``log`` −log2(r)/log2(total).
        total: number of tokens (``exp`` and ``log`` only).
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    if kind == "cosine":
        out = torch.cos(math.pi / 2 * r)
    elif kind == "linear":
        out = 1.0 - r
    elif kind.startswith("pow"):
        try:
            p = float(kind[3:])
        except ValueError:
            raise UserError(f"mask schedule {kind!r}: write the power after 'pow', e.g. pow2") from None
        out = 1.0 - r**p
    elif kind == "exp":
        out = 1.0 - torch.exp2(-math.log2(total) * (1.0 - r))
    elif kind == "log":
        out = -torch.log2(r) / math.log2(total)
    else:
        raise UserError(f"mask schedule {kind!r} is not known; choose cosine, linear, pow<P>, exp or log")
    return out.clamp(1e-6, 1.0)


def sample_mask(
    batch: int,
    N: int,
    generator: torch.Generator | None = None,
    schedule: str = "cosine",
    maskable: Tensor | None = None,
    r: float | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random training mask ``(B, N)`` bool, True = masked; one ratio for the whole batch.

    ``γ = schedule(r)``, ``r ~ U[0, 1)`` (from ``generator``); each sample masks
    ``max(1, ⌊n·γ⌋)`` positions chosen uniformly among its ``n`` maskable ones.

    Args:
        batch: batch size B.
        N: number of video tokens.
        generator: torch generator (on ``device``) for reproducible masks.
        schedule: see :func:`mask_ratio_schedule`.
        maskable: optional ``(B, N)`` bool, positions that may be masked (naive mode: ``~cond_mask``);
            default all.
        r: use this progress instead of sampling it (tests, evaluation at a fixed ratio).
        device: device of the result.
    """
    if maskable is not None:
        device = maskable.device
        maskable = maskable.reshape(batch, N)
    if r is None:
        r = float(torch.rand((), generator=generator, device=device))
    gamma = float(mask_ratio_schedule(r, schedule, total=N))
    n = torch.full((batch,), N, device=device) if maskable is None else maskable.sum(1)  # (B,)
    num = torch.floor(n.double() * gamma).long().clamp(min=1)
    num = torch.minimum(num, n)  # (B,)
    scores = torch.rand((batch, N), generator=generator, device=device)
    if maskable is not None:
        scores = scores.masked_fill(~maskable, 2.0)  # never chosen while maskable ones remain
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, N) rank of each position's score
    return rank < num[:, None]


def corrupt(z: Tensor, z_cond: Tensor, cond_mask: Tensor, mask: Tensor, vocab: Vocab, mode: Mode = "commit") -> Tensor:
    """Model inputs ``(B, N)`` for the video positions.

    Args:
        z: target tokens ``(B, N)`` (any ``(B, ...)`` shape is flattened).
        z_cond: tokens of the padded condition video ``(B, N)``.
        cond_mask: ``(B, N)`` bool, True where the token belongs to the condition.
        mask: ``(B, N)`` bool from :func:`sample_mask`, True = masked.
        vocab: the vocabulary (for the ``[MASK]`` id).
        mode: ``commit``: masked ∩ condition → ``z̃``, masked outside → ``[MASK]``, unmasked → ``z``.
            ``naive``: the condition region is always given as ``z``; masked elsewhere → ``[MASK]``.
    """
    B = z.shape[0]
    z, z_cond = z.reshape(B, -1), z_cond.reshape(B, -1)
    cond_mask, mask = cond_mask.reshape(B, -1), mask.reshape(B, -1)
    if mode == "commit":
        fill = torch.where(cond_mask, z_cond, torch.full_like(z, vocab.mask))
        return torch.where(mask, fill, z)
    if mode == "naive":
        return torch.where(mask & ~cond_mask, torch.full_like(z, vocab.mask), z)
    raise UserError(f"conditioning mode {mode!r} is not known; choose one of {', '.join(MODES)}")


def build_prefix(
    vocab: Vocab,
    task: str | Tensor,
    batch_size: int,
    labels: Tensor | None = None,
    class_dropout_prob: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Prefix ``(B, 2)``: ``[task token][class token or UNCOND]``.

    Args:
        vocab: the vocabulary.
        task: a task name (same for the batch) or task token ids ``(B,)``.
        batch_size: B.
        labels: class labels ``(B,)`` for class-conditional tasks; None → UNCOND.
        class_dropout_prob: replace each sample's class token by UNCOND with this probability
            (classifier-free guidance training).
        generator: torch generator for the class dropout.
        device: device of the result.
    """
    if labels is not None:
        device = labels.device
    if isinstance(task, str):
        task_tok = torch.full((batch_size,), vocab.task_id(task), dtype=torch.long, device=device)
    else:
        task_tok = task.reshape(-1).long().to(device).expand(batch_size)
    cls_tok = vocab.class_token(labels, batch_size, device)
    prefix = torch.stack([task_tok, cls_tok], dim=1)  # (B, 2)
    return drop_class_tokens(prefix, vocab, class_dropout_prob, generator)


def drop_class_tokens(prefix: Tensor, vocab: Vocab, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """``prefix`` ``(B, 2)`` with each sample's class token replaced by UNCOND with probability ``prob``
    (classifier-free guidance training); ``prefix`` itself when ``prob`` is 0."""
    if prob <= 0:
        return prefix
    drop = torch.rand(prefix.shape[0], generator=generator, device=prefix.device) < prob  # (B,)
    cls_tok = torch.where(drop, torch.full_like(prefix[:, 1], vocab.uncond), prefix[:, 1])
    return torch.stack([prefix[:, 0], cls_tok], dim=1)


def build_inputs(
    video_tokens: Tensor,
    vocab: Vocab,
    task: str | Tensor,
    labels: Tensor | None = None,
    class_dropout_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Full transformer input ``(B, 2 + N)``: :func:`build_prefix` followed by the video tokens."""
    B = video_tokens.shape[0]
    video_tokens = video_tokens.reshape(B, -1)
    prefix = build_prefix(vocab, task, B, labels, class_dropout_prob, generator, video_tokens.device)
    return torch.cat([prefix, video_tokens], dim=1)


def region_masks(mask: Tensor, cond_mask: Tensor, mode: Mode = "commit") -> dict[str, Tensor]:
    """The three loss regions ``(B, N)`` bool: ``refine`` (masked ∩ condition), ``mask`` (masked
    outside the condition), ``recon`` (unmasked; in naive mode the given condition is excluded)."""
    B = mask.shape[0]
    mask, cond_mask = mask.reshape(B, -1), cond_mask.reshape(B, -1)
    if mode == "naive":
        return {"refine": torch.zeros_like(mask), "mask": mask & ~cond_mask, "recon": ~mask & ~cond_mask}
    return {"refine": mask & cond_mask, "mask": mask & ~cond_mask, "recon": ~mask}


def commit_loss(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    cond_mask: Tensor,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    label_smoothing: float = 1e-4,
    mode: Mode = "commit",
) -> tuple[Tensor, dict[str, Tensor]]:
    """COMMIT token loss and its parts.

    ``loss = mean_b [ Σ_i w_i·CE_i / Σ_i w_i ]`` over the N video positions of each sample, where
    ``w_i`` is the weight of position i's region (as in the official trainer); prefix positions get
    no weight.

    Args:
        logits: ``(B, N, K)``, or ``(B, P + N, K)`` in which case the first P (prefix) are dropped.
        targets: ground-truth tokens ``z`` ``(B, N)``.
        mask: ``(B, N)`` bool, True = masked.
        cond_mask: ``(B, N)`` bool condition region.
        weights: ``(refine, mask, recon)`` region weights.
        label_smoothing: as in ``F.cross_entropy`` (target ``1−ε`` on the code, ``ε/K`` everywhere).
        mode: ``commit`` or ``naive`` (see :func:`corrupt`).

    Returns:
        ``(loss, parts)``; parts holds the mean cross-entropy of each region (``refine``, ``mask``,
        ``recon``; 0 when the region is empty in this batch) and ``mask_ratio``, all detached.
    """
    B = targets.shape[0]
    targets = targets.reshape(B, -1)
    N = targets.shape[1]
    logits = logits[:, -N:]  # (B, N, K): drop the prefix positions
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", label_smoothing=label_smoothing)  # (B, N)
    regions = region_masks(mask, cond_mask, mode)
    w = sum(wt * regions[name].to(ce.dtype) for wt, name in zip(weights, ("refine", "mask", "recon")))  # (B, N)
    loss = ((ce * w).sum(1) / (w.sum(1) + 1e-8)).mean()
    parts = {}
    with torch.no_grad():
        for name, region in regions.items():
            cnt = region.sum()
            parts[name] = (ce * region).sum() / cnt if cnt > 0 else ce.new_zeros(())
        parts["mask_ratio"] = mask.reshape(B, -1).to(ce.dtype).mean()
    return loss, parts


def masked_accuracy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Top-1 accuracy of ``argmax(logits)`` against ``targets`` over the masked positions (0 if none).

    ``logits`` may include the prefix positions (the last N are used)."""
    B = targets.shape[0]
    targets, mask = targets.reshape(B, -1), mask.reshape(B, -1)
    pred = logits[:, -targets.shape[1] :].argmax(-1)  # (B, N)
    n = mask.sum()
    if n == 0:
        return torch.zeros((), device=logits.device)
    return ((pred == targets) & mask).sum().float() / n
