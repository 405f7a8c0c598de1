"""What every quantizer shares: the output type, the fp32 region, the entropy penalty, code-histogram
statistics, the annealed entropy weight and the :class:`Quantizer` base class (subclasses: ``vq.py``, ``lfq.py``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class QuantizerOutput:
    """What a quantizer returns.

    quantized: (B, D, t, h, w) codes with a straight-through gradient to the input.
    indices: (B, t, h, w) long token ids.
    loss: scalar quantizer loss (already weighted; add it to the generator loss).
    metrics: detached scalars: ``usage`` (fraction of the codebook used in the batch), ``perplexity``
        (of the batch's code histogram), ``commitment``, ``entropy`` (each as weighted in ``loss``), ...
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: distances, argmin and entropies are computed in fp32 even under bf16 training."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy minus the entropy of the batch-mean distribution.

    ``logits``: (N, K) unnormalised log-probabilities of the N latents over the K codes. Low when each
    latent is confident (low per-sample entropy) and the batch spreads over the codes (high mean
    entropy). The 1e-5 inside the log of the batch-mean follows the official MAGVIT code.
    """
    logits = logits.float()
    log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    return sample_entropy - avg_entropy


def code_histogram_stats(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts (K,), usage (fraction of codes used) and perplexity of the hard code histogram."""
    flat = indices.reshape(-1)
    ones = torch.ones_like(flat, dtype=torch.float32)
    counts = torch.zeros(codebook_size, device=flat.device).scatter_add_(0, flat, ones)  # (K,)
    return counts, *histogram_stats(counts)


def histogram_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Usage (fraction of the K codes seen at least once) and perplexity of a code histogram ``counts`` (K,)."""
    counts = counts.float()
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-torch.xlogy(probs, probs).sum())
    usage = (counts > 0).float().mean()
    return usage, perplexity


def annealed_weight(weight: float, ratio: float, anneal_steps: int, step: torch.Tensor | int) -> torch.Tensor | float:
    """``weight · (1 + ratio · max(0, 1 − step/anneal_steps))``: starts at ``(1+ratio)·weight`` and decays
    linearly to ``weight`` (the official trainer's 'entropy_loss_enlarge' schedule). No annealing when
    ``anneal_steps`` is 0."""
    if anneal_steps <= 0 or ratio == 0:
        return weight
    step = torch.as_tensor(step, dtype=torch.float32)
    return weight * (1.0 + ratio * torch.clamp(1.0 - step / anneal_steps, min=0.0))


class Quantizer(nn.Module):
    """What VQ and LFQ share: the fp32 ``forward`` wrapper, the annealed entropy weight, the step count
    and the output (straight-through codes, histogram metrics). Subclasses implement ``_forward``."""

    num_steps: torch.Tensor
    entropy_weight: float
    entropy_anneal_ratio: float
    entropy_anneal_steps: int

    def forward(self, z: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, D, t, h, w). ``step`` sets the entropy-annealing step (default: the count of
        training forwards so far). Runs in fp32 (autocast off); the codes come out fp32."""
        with fp32_region(z.device):
            return self._forward(z.float(), step)

    def _forward(self, z: torch.Tensor, step: int | None) -> QuantizerOutput:
        raise NotImplementedError

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) of ``z`` (B, D, t, h, w): the ``indices`` of ``forward`` without its losses,
        statistics or training-time updates (what encoding needs)."""
        with fp32_region(z.device):
            return self._indices(z.float())

    def _indices(self, z: torch.Tensor) -> torch.Tensor:
        return self._forward(z, None).indices

    def entropy_term(self, step: int | None, penalty) -> torch.Tensor:
        """The annealed entropy weight times ``penalty()`` (not evaluated when the weight is 0)."""
        if self.entropy_weight == 0:
            return torch.zeros((), dtype=torch.float32, device=self.num_steps.device)
        step = self.num_steps if step is None else step
        w = annealed_weight(self.entropy_weight, self.entropy_anneal_ratio, self.entropy_anneal_steps, step)
        return w * penalty()

    def finish(self, flat: torch.Tensor, q: torch.Tensor, indices: torch.Tensor, shape: tuple[int, ...],
               terms: dict[str, torch.Tensor]) -> tuple[QuantizerOutput, torch.Tensor]:
        """Assemble the output from latents ``flat`` (N, D), codes ``q`` (N, D), ids (N,) and loss terms.

        Returns the output and the code counts (K,) of the batch; advances the step count in training.
        """
        B, T, H, W, D = shape
        counts, usage, perplexity = code_histogram_stats(indices, self.codebook_size)
        if self.training:
            self.num_steps += 1
        q = flat + (q - flat).detach()  # straight-through
        quantized = q.view(B, T, H, W, D).permute(0, 4, 1, 2, 3)  # (B, D, t, h, w)
        metrics = {"usage": usage, "perplexity": perplexity, **{k: v.detach() for k, v in terms.items()}}
        out = QuantizerOutput(quantized, indices.view(B, T, H, W), sum(terms.values()), metrics)
        return out, counts
