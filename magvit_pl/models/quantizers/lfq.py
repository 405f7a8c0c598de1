"""Lookup-free quantization (LFQ), from MAGVIT-v2: https://arxiv.org/abs/2310.05737

Each of the D latent channels is quantized to its sign (±code_scale), so the codebook is implicit:
K = 2^D codes, token id = Σ_i 2^i · [z_i > 0]. No embedding table, no codebook loss; a commitment
loss and an entropy penalty (per-latent entropy low, batch-mean entropy high), computed over the whole
codebook or over ``entropy_groups`` sub-codebooks of D / groups bits each, with an annealed weight.

The code distribution used by the entropy term is p(c | z) ∝ exp(−‖z − c‖² / T) over all 2^D codes;
it factorises over bits, p(bit_i = 1 | z) = sigmoid(4 · code_scale · z_i / T), which is how it is
computed here without materialising distances to every code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from magvit_pl.run.checks import check_args
from magvit_pl.run.errors import UserError
from magvit_pl.models.config import ConfigMixin
from magvit_pl.models.quantizers.base import Quantizer, QuantizerOutput, entropy_loss


class LookupFreeQuantizer(ConfigMixin, Quantizer):
    """Sign quantizer with an implicit 2^dim codebook.

    Args:
        dim: Number of latent channels D (= bits per token); the codebook has 2^dim codes and the
            tokenizer's ``embedding_dim`` must equal it.
        commitment_weight: Weight of ‖z − sg(q)‖².
        entropy_weight: Weight of the entropy penalty (0 turns it off).
        entropy_groups: Split the D bits into this many sub-codebooks for the entropy penalty (their
            penalties are summed); use > 1 for large D (2^D probabilities per latent otherwise).
        entropy_temperature: Temperature T of p(c | z) ∝ exp(−‖z − c‖² / T).
        entropy_anneal_steps: Steps over which the entropy weight decays from
            (1 + entropy_anneal_ratio) × entropy_weight to entropy_weight; 0 keeps it constant.
        entropy_anneal_ratio: Extra entropy weight at step 0, as a multiple of ``entropy_weight``.
        code_scale: Magnitude of each code entry (codes are ±code_scale).
        norm_groups: Groups of the non-affine GroupNorm applied to the latent first; 0 disables it.
    """

    def __init__(
        self,
        dim: int = 10,  # bits per token; K = 2**dim codes
        commitment_weight: float = 0.25,  # on ‖z − sg(q)‖²
        entropy_weight: float = 0.1,  # on the entropy penalty
        entropy_groups: int = 1,  # sub-codebooks for the entropy penalty
        entropy_temperature: float = 0.01,  # T in p(c|z) ∝ exp(−‖z − c‖²/T)
        entropy_anneal_steps: int = 0,  # 0: constant entropy weight
        entropy_anneal_ratio: float = 0.0,  # extra weight at step 0, × entropy_weight
        code_scale: float = 1.0,  # codes are ±code_scale
        norm_groups: int = 1,  # non-affine GroupNorm before quantizing; 0 = none
    ):
        super().__init__()
        check_args("quantizer", locals(), {"dim": ">= 1", "commitment_weight": ">= 0", "entropy_weight": ">= 0",
                                           "entropy_groups": ">= 1", "entropy_temperature": "> 0", "entropy_anneal_steps": ">= 0",
                                           "entropy_anneal_ratio": ">= 0", "code_scale": "> 0", "norm_groups": ">= 0"})
        if dim > 30:
            raise UserError(f"quantizer.dim={dim}: must be in [1, 30] (2^dim codes)")
        if dim % entropy_groups:
            raise UserError(f"quantizer.entropy_groups={entropy_groups}: must divide dim ({dim})")
        if norm_groups and dim % norm_groups:
            raise UserError(f"quantizer.norm_groups={norm_groups}: must divide dim ({dim}), or be 0")
        self.dim = dim
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.entropy_groups = entropy_groups
        self.entropy_temperature = entropy_temperature
        self.entropy_anneal_steps = entropy_anneal_steps
        self.entropy_anneal_ratio = entropy_anneal_ratio
        self.code_scale = code_scale
        self.norm = nn.GroupNorm(norm_groups, dim, eps=1e-6, affine=False) if norm_groups else nn.Identity()
        self.register_buffer("bit_weights", 2 ** torch.arange(dim, dtype=torch.long), persistent=False)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def codebook_size(self) -> int:
        return 2**self.dim

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes or latents (..., D) → ids (...): Σ_i 2^i · [x_i > 0]."""
        return ((codes > 0).long() * self.bit_weights).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Ids (...) → codes (..., D) with entries ±code_scale."""
        bits = (indices[..., None] & self.bit_weights) > 0  # (..., D)
        return torch.where(bits, self.code_scale, -self.code_scale).float()

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) → codes (B, D, t, h, w)."""
        return self.indices_to_codes(indices).permute(0, 4, 1, 2, 3)

    def _forward(self, z: torch.Tensor, step: int | None) -> QuantizerOutput:
        B, D, T, H, W = z.shape
        assert D == self.dim, f"latent has {D} channels but LFQ has dim {self.dim}; set embedding_dim={self.dim}"
        z = self.norm(z)
        flat = z.permute(0, 2, 3, 4, 1).reshape(-1, D)  # (N, D)
        q = torch.where(flat > 0, self.code_scale, -self.code_scale)  # (N, D)
        indices = self.codes_to_indices(flat)  # (N,)
        terms = {
            "commitment": self.commitment_weight * F.mse_loss(flat, q.detach()),
            "entropy": self.entropy_term(step, lambda: self.grouped_entropy(flat)),
        }
        return self.finish(flat, q, indices, (B, T, H, W, D), terms)[0]

    def _indices(self, z: torch.Tensor) -> torch.Tensor:
        return self.codes_to_indices(self.norm(z).permute(0, 2, 3, 4, 1))  # (B, t, h, w)

    def grouped_entropy(self, flat: torch.Tensor) -> torch.Tensor:
        """Entropy penalty of ``flat`` (N, D), summed over the bit groups."""
        G = self.entropy_groups
        dg = self.dim // G
        # per-bit logit of 'bit is 1': (‖z + s‖² − ‖z − s‖²) / T = 4·s·z / T
        a = (4.0 * self.code_scale / self.entropy_temperature) * flat.float()  # (N, D)
        log_on, log_off = F.logsigmoid(a), F.logsigmoid(-a)
        codes = torch.arange(2**dg, device=flat.device)
        bits = ((codes[:, None] >> torch.arange(dg, device=flat.device)) & 1).float()  # (Kg, dg)
        total = flat.new_zeros((), dtype=torch.float32)
        for g in range(G):
            sl = slice(g * dg, (g + 1) * dg)
            log_p = log_on[:, sl] @ bits.t() + log_off[:, sl] @ (1 - bits).t()  # (N, Kg), normalised
            total = total + entropy_loss(log_p)
        return total
