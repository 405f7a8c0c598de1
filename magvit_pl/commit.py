"""COMMIT: conditional masked modeling by interior tokens (MAGVIT §3.2), as pure tensor functions.

One training step, for tokens ``z = f(V)`` of the clip and ``z̃ = f(Ṽ)`` of its padded condition
video (both ``(B, N)``, flattened row-major over ``(t, h, w)``) and a latent condition mask ``(B, N)``:

1. ``sample_mask``: one ratio per step, ``γ = cos(π/2·r)``, ``r ~ U[0, 1)``; mask ``⌊N·γ⌋`` (≥ 1)
   random positions of each sample.
2. ``corrupt``: masked ∩ condition → ``z̃``; masked outside → ``[MASK]``; unmasked → ``z``.
3. ``build_inputs``: prepend ``[task token][class token or UNCOND]`` (a single-task model has no task
   token: ``[class token or UNCOND]``, as the official code, whose multi-task flag adds the task token).
4. ``commit_loss``: cross-entropy to ``z`` at all N video positions, split into *refine* (masked ∩
   condition), *mask* (masked outside) and *reconstruct* (unmasked) with equal default weights,
   label smoothing 1e-4; the prefix positions carry no loss.

Which task a step trains (step 0 of the official loop) is chosen by :class:`TaskSchedule`.

``mode='naive'`` is the ablation the paper compares COMMIT against ("latent masking" as in MaskGIT
inpainting; ``condition_mode='input->input'`` in the official code): the condition region is never
masked and is given as ground-truth tokens ``z`` (at inference only ``z̃`` exists, which is the
train/test mismatch COMMIT removes), every masked position is ``[MASK]``, and the condition region
carries no loss. Use ``sample_mask(..., maskable=~cond_mask)`` with it so the ratio counts only the
positions that can be masked, as the official code does.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from magvit_pl.run.errors import UserError

Mode = Literal["commit", "naive"]
MODES: tuple[str, ...] = ("commit", "naive")
Schedule = Literal["cosine", "linear", "exp"]
# task families whose tasks share one task token under ``shared_task_tokens`` (the official code gives
# inpainting the outpainting token: task_registry.py:191-194, "from cl/471393755")
SHARED_TOKEN_FAMILIES: tuple[str, ...] = ("outpainting", "inpainting")


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
    ``MASK = K + num_classes + 1``; then one token per task token key, in ``task_names`` order. The MTM
    checkpoint stores this table, so installing a new task plugin never shifts an existing model's ids.

    Args:
        codebook_size: K, the tokenizer's codes.
        num_classes: class labels (0: none, e.g. BAIR; every class token is then UNCOND).
        task_names: the tasks the model learns.
        task_token: whether sequences start with a task token (``[task][class] + N``); False is the
            single-task layout ``[class] + N`` of the official code (``multi_task`` off), for one task only.
        token_keys: per task, the key of its task token; tasks with equal keys share one token (the
            official code's out/inpainting sharing, :func:`official_token_keys`). None: one token per task.
    """

    codebook_size: int
    num_classes: int
    task_names: tuple[str, ...] = ()
    task_token: bool = True
    token_keys: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "task_names", tuple(self.task_names))
        if self.token_keys is not None:
            object.__setattr__(self, "token_keys", tuple(self.token_keys))
        if self.codebook_size < 1 or self.num_classes < 0:
            raise UserError(f"bad vocabulary: codebook_size={self.codebook_size}, num_classes={self.num_classes}")
        dup = sorted({n for n in self.task_names if self.task_names.count(n) > 1})
        if dup:
            raise UserError(f"task names must be unique; repeated: {', '.join(dup)}")
        if not self.task_token and len(self.task_names) > 1:
            raise UserError(f"a sequence without a task token can serve one task only; got {len(self.task_names)}: "
                            f"{', '.join(self.task_names)} (use task tokens for multi-task training)")
        if self.token_keys is not None and len(self.token_keys) != len(self.task_names):
            raise UserError(f"token_keys needs one key per task ({len(self.task_names)}), got {len(self.token_keys)}")

    @property
    def uncond(self) -> int:
        """Id of the 'no class' token (unconditional / classifier-free guidance)."""
        return self.codebook_size + self.num_classes

    @property
    def mask(self) -> int:
        """Id of ``[MASK]``."""
        return self.codebook_size + self.num_classes + 1

    @property
    def keys(self) -> tuple[str, ...]:
        """The distinct task token keys, in order of first appearance (one token each)."""
        keys = self.token_keys if self.token_keys is not None else self.task_names
        return tuple(dict.fromkeys(keys)) if self.task_token else ()

    @property
    def size(self) -> int:
        """Total number of token ids (the transformer's ``vocab_size``)."""
        return self.codebook_size + self.num_classes + 2 + len(self.keys)

    @property
    def prefix_len(self) -> int:
        """Tokens before the video tokens: 2 (``[task][class]``), or 1 (``[class]``) without task tokens."""
        return 2 if self.task_token else 1

    def task_id(self, name: str) -> int:
        """Token id of task ``name`` (tasks sharing a key share it)."""
        if name not in self.task_names:
            known = ", ".join(self.task_names) or "(none)"
            raise UserError(f"task {name!r} is not in this model's vocabulary; known: {known}")
        if not self.task_token:
            raise UserError(f"this model's sequences have no task token (single-task layout); task {name!r} has no id")
        key = self.token_keys[self.task_names.index(name)] if self.token_keys is not None else name
        return self.mask + 1 + self.keys.index(key)

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
                "task_names": list(self.task_names), "task_token": self.task_token,
                "token_keys": None if self.token_keys is None else list(self.token_keys)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """From :meth:`to_dict`; a dict written before the layout options existed is the old layout (a task
        token per task)."""
        keys = d.get("token_keys")
        return cls(int(d["codebook_size"]), int(d["num_classes"]), tuple(d["task_names"]),
                   task_token=bool(d.get("task_token", True)), token_keys=None if keys is None else tuple(keys))


def official_token_keys(task_names: Sequence[str], families: Sequence[str]) -> tuple[str, ...]:
    """Task token keys that share tokens the way the official code does: every task of the outpainting and
    inpainting families gets one token (``SpecialTokens.TASK_OUTPAINTING``, task_registry.py:163 and :191-194);
    every other task its own."""
    shared = "+".join(SHARED_TOKEN_FAMILIES)
    return tuple(shared if fam in SHARED_TOKEN_FAMILIES else name for name, fam in zip(task_names, families))


# -------------------------------------------------------------------------------- task schedule
TaskScheduleKind = Literal["cycle", "official"]
TASK_SCHEDULES: tuple[str, ...] = ("cycle", "official")


def task_counts(weights: Sequence[float]) -> list[int]:
    """How often each task appears in the official task list: ``round(w · 100 / min(1, min w))``
    (maskgvt_train_lib.py:330-336), e.g. 100 each for equal weights 1."""
    if not weights or any(not math.isfinite(w) or w <= 0 for w in weights):
        raise UserError(f"task weights must be positive numbers, got {list(weights)}")
    norm = 100.0 / min(1.0, min(weights))
    return [max(1, int(round(w * norm))) for w in weights]


class TaskSchedule:
    """Which task each training step trains (one task per batch).

    * ``cycle``: walk a shuffled list holding each task in proportion to its weight (once each for equal
      weights), reshuffled at the end of every pass; its state is saved in checkpoints (:meth:`state`).
    * ``official``: the official schedule (maskgvt_trainer.py:474-476 and :551): the list of
      :func:`task_counts` copies is permuted once with the run's seed and indexed by the step,
      ``list[(step + 1) % len]`` (the official loop counts steps from 1). Stateless: a resumed run continues
      from its step.

    Args:
        names: the tasks.
        weights: relative sampling weight per task (None: equal).
        kind: ``cycle`` or ``official``.
        seed: seed of the shuffles / the permutation.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None, kind: TaskScheduleKind = "cycle",
                 seed: int = 0):
        if kind not in TASK_SCHEDULES:
            raise UserError(f"task schedule must be one of {', '.join(TASK_SCHEDULES)}; got {kind!r}")
        if not names:
            raise UserError("the task schedule needs at least one task")
        self.names, self.kind = list(names), kind
        weights = [1.0] * len(self.names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.names):
            raise UserError(f"one weight per task needed ({len(self.names)}), got {len(weights)}")
        counts = task_counts(weights)
        if kind == "cycle":
            g = math.gcd(*counts)
            counts = [c // g for c in counts]  # the shortest list with the same proportions
        self.pool = [n for n, c in zip(self.names, counts) for _ in range(c)]
        self._rng = random.Random(seed)
        self._remaining: list[str] = []
        if kind == "official":
            perm = torch.randperm(len(self.pool), generator=torch.Generator().manual_seed(seed)).tolist()
            self.sequence = [self.pool[i] for i in perm]

    def task_at(self, step: int) -> str:
        """The task of training step ``step`` (0-based global step). ``cycle`` ignores ``step`` and advances."""
        if self.kind == "official":
            return self.sequence[(step + 1) % len(self.sequence)]
        if not self._remaining:
            self._remaining = list(self.pool)
            self._rng.shuffle(self._remaining)
        return self._remaining.pop()

    def state(self) -> dict[str, Any]:
        """Plain data to resume the ``cycle`` exactly (what is left of the pass and the shuffle RNG)."""
        version, internal, gauss = self._rng.getstate()
        return {"remaining": list(self._remaining), "rng": [version, list(internal), gauss]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._remaining = list(state.get("remaining", []))
        if state.get("rng"):
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))


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
    task: str | Tensor | None,
    batch_size: int,
    labels: Tensor | None = None,
    class_dropout_prob: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Prefix ``(B, P)``: ``[task token][class token or UNCOND]``, or ``[class token or UNCOND]`` for a
    vocabulary without task tokens (``task`` is then ignored).

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
    cls_tok = vocab.class_token(labels, batch_size, device)
    if not vocab.task_token:
        prefix = cls_tok[:, None]  # (B, 1)
    else:
        if isinstance(task, str):
            task_tok = torch.full((batch_size,), vocab.task_id(task), dtype=torch.long, device=device)
        else:
            task_tok = task.reshape(-1).long().to(device).expand(batch_size)
        prefix = torch.stack([task_tok, cls_tok], dim=1)  # (B, 2)
    return drop_class_tokens(prefix, vocab, class_dropout_prob, generator)


def uncond_prefix(prefix: Tensor, vocab: Vocab, task: str | None = None) -> Tensor:
    """The prefix of the unconditional pass of classifier-free guidance: the class token (the last prefix
    token) → UNCOND and, with task tokens and ``task`` given, the task token → ``task``'s (the official code
    uses the full-generation task token when the model learned full generation, maskgvt_train_lib.py:173-185)."""
    out = prefix.clone()
    out[:, -1] = vocab.uncond
    if task is not None and vocab.task_token:
        out[:, 0] = vocab.task_id(task)
    return out


def drop_class_tokens(prefix: Tensor, vocab: Vocab, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """``prefix`` ``(B, P)`` with each sample's class token (the last one) replaced by UNCOND with probability
    ``prob`` (classifier-free guidance training); ``prefix`` itself when ``prob`` is 0."""
    if prob <= 0:
        return prefix
    drop = torch.rand(prefix.shape[0], generator=generator, device=prefix.device) < prob  # (B,)
    out = prefix.clone()
    out[:, -1] = torch.where(drop, torch.full_like(prefix[:, -1], vocab.uncond), prefix[:, -1])
    return out


def build_inputs(
    video_tokens: Tensor,
    vocab: Vocab,
    task: str | Tensor | None,
    labels: Tensor | None = None,
    class_dropout_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Full transformer input ``(B, P + N)``: :func:`build_prefix` followed by the video tokens."""
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
